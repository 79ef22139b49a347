"""Library mistakes get errors that say what was expected, or simply work.

From a user-side review (repro 04_api_mistakes.py): a key as the hex text
`pinecone-trio` prints, `listen=` one string instead of a list, a DHT topic of the
wrong type, a call on a node whose block has ended.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from pinecone_trio import Identity, PublicKey, open_node
from pinecone_trio.cli import write_json_atomically
from pinecone_trio.dht import DhtEngine, RecordStore, open_dht, topic_id
from pinecone_trio.testing import open_network

# --- connect(key, protocol) with the key as text --------------------------------------


async def test_connect_takes_a_hex_key_with_a_protocol(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        async with b.listen("/chat/v1") as listener:
            for target in (b.public_key.hex(), b.public_key.hex().upper() + "\n"):
                with trio.fail_after(30):
                    stream = await a.connect(target, "/chat/v1")
                    accepted = await listener.accept()
                assert stream.remote_key == b.public_key
                assert accepted.remote_key == a.public_key
                await stream.aclose()
                await accepted.aclose()


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        ("tcp://127.0.0.1:7000", TypeError, "connect\\(uri\\) takes no protocol"),
        ("abcd", ValueError, "target is the peer's key: a PublicKey, 32 bytes or 64 hex"),
        ("zz" * 32, ValueError, "target is the peer's key"),
        (b"short", ValueError, "target is the peer's key.*32 bytes, not 5"),
        (42, TypeError, "target is the peer's key.*not int"),
    ],
)
async def test_connect_with_a_protocol_names_what_a_target_is(
    target: object, error: type[Exception], match: str
) -> None:
    async with open_node(Identity.generate()) as node:
        with pytest.raises(error, match=match):
            await node.connect(target, "/chat/v1")  # type: ignore[call-overload]


async def test_connect_without_a_protocol_needs_a_uri() -> None:
    async with open_node(Identity.generate()) as node:
        with pytest.raises(TypeError, match="needs a protocol name"):
            await node.connect(Identity.generate().public_key)  # type: ignore[call-overload]


def test_public_key_from_text_points_at_from_hex() -> None:
    with pytest.raises(TypeError, match=r"PublicKey\.from_hex"):
        PublicKey("ab" * 32)  # type: ignore[arg-type]


# --- one string where a list of strings is expected ------------------------------------


async def test_listen_and_static_peers_take_one_uri_as_a_string() -> None:
    async with open_node(Identity.generate(), listen="tcp://127.0.0.1:0") as a:
        assert len(a.listen_uris) == 1 and a.listen_uris[0].startswith("tcp://127.0.0.1:")
        async with open_node(Identity.generate(), static_peers=a.listen_uris[0]) as b:
            assert [s["uri"] for s in b.status()["static_peers"]] == a.listen_uris
            with trio.fail_after(30):
                await b.wait_for(lambda: a.public_key in b.peer_keys())


async def test_node_run_takes_one_uri_as_a_string() -> None:
    from pinecone_trio.node import Node

    node = Node(Identity.generate())
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(node.run, listen="memory://"))
        assert len(node.listen_uris) == 1 and node.listen_uris[0].startswith("memory://")
        nursery.cancel_scope.cancel()


def test_one_interface_name_is_a_list_of_one() -> None:
    from pinecone_trio.node import _strings

    assert _strings("multicast_interfaces", "eth0") == ["eth0"]
    assert _strings("multicast_interfaces", ("eth0", "wlan0")) == ["eth0", "wlan0"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"listen": [b"tcp://127.0.0.1:0"]}, "listen takes strings, not bytes"),
        ({"listen": b"tcp://127.0.0.1:0"}, "listen takes a string or a list of strings"),
        ({"static_peers": [7000]}, "static_peers takes strings, not int"),
    ],
)
async def test_uri_lists_of_another_type_are_refused(
    options: dict[str, object], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        async with open_node(Identity.generate(), **options):  # type: ignore[arg-type]
            pass


# --- DHT topics of the wrong type ---------------------------------------------------------


@pytest.mark.parametrize("topic", [3, 3.0, None, ["chat"]])
async def test_dht_refuses_a_topic_that_is_not_str_or_bytes(
    autojump_clock: trio.testing.MockClock, topic: object
) -> None:
    # bytes(3) == b"\0\0\0": an int topic used to name the three-zero-byte topic.
    name = type(topic).__name__
    with pytest.raises(TypeError, match=f"a DHT topic is str or bytes, not {name}"):
        topic_id(topic)  # type: ignore[arg-type]
    async with open_node(Identity.generate()) as node, open_dht(node) as dht:
        with pytest.raises(TypeError, match=f"not {name}"):
            await dht.lookup(topic)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"not {name}"):
            async with dht.announce(topic, data=b"x"):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(TypeError, match=f"a DHT topic id is 32 bytes .*not {name}"):
            await dht.lookup_id(topic)  # type: ignore[arg-type]
        assert dht.engine.pending() == 0 and dht.engine.announcing() == []


async def test_dht_accepts_every_bytes_like_topic(autojump_clock: trio.testing.MockClock) -> None:
    tid = topic_id(b"chat")
    assert topic_id("chat") == topic_id(bytearray(b"chat")) == topic_id(memoryview(b"chat")) == tid
    async with (
        open_node(Identity.generate()) as node,
        open_dht(node) as dht,
        dht.announce(bytearray(b"chat"), data=memoryview(b"me")),
    ):
        [record] = await dht.lookup(memoryview(b"chat"))
        assert record.data == b"me"
        [record] = await dht.lookup_id(bytearray(tid))
        assert record.data == b"me"


async def test_dht_refuses_record_data_that_is_not_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_node(Identity.generate()) as node, open_dht(node) as dht:
        with pytest.raises(TypeError, match="record data is bytes, not int"):
            async with dht.announce("chat", data=3):  # type: ignore[arg-type]
                pass  # pragma: no cover
        with pytest.raises(TypeError, match="record data is bytes, not str"):
            async with dht.announce("chat", data="me"):  # type: ignore[arg-type]
                pass  # pragma: no cover


def test_dht_engine_and_store_check_topic_ids() -> None:
    engine = DhtEngine(Identity.generate())
    for call in (
        lambda: engine.lookup(3, 0.0),  # type: ignore[arg-type]
        lambda: engine.start_announce(3, b"", 0.0),  # type: ignore[arg-type]
        lambda: engine.stop_announce(3, 0.0),  # type: ignore[arg-type]
        lambda: RecordStore().get(3, 0.0),  # type: ignore[arg-type]
        lambda: RecordStore().has("chat", b"k" * 32),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="a DHT topic id is 32 bytes"):
            call()
    with pytest.raises(ValueError, match="a DHT topic id is 32 bytes, not 4"):
        engine.lookup(b"chat", 0.0)


# --- errors name the file asked for, not a temporary file beside it ----------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_saving_a_key_in_a_missing_directory_names_the_key_file(
    tmp_path: Path, overwrite: bool
) -> None:
    path = tmp_path / "missing-dir" / "node.key"
    with pytest.raises(FileNotFoundError) as info:
        Identity.generate().save(path, overwrite=overwrite)
    assert info.value.filename == str(path)
    assert info.value.strerror == "cannot write key file: No such file or directory"
    assert ".key-" not in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        Identity.load_or_create(path)
    assert info.value.filename == str(path)


def test_status_json_in_a_missing_directory_names_the_status_file(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "s.json"
    with pytest.raises(FileNotFoundError) as info:
        write_json_atomically(str(path), {"a": 1})
    assert info.value.filename == str(path)
    assert ".status-" not in str(info.value)


# --- calls on a node whose block has ended ----------------------------------------------


async def test_a_stopped_node_says_so() -> None:
    other = Identity.generate().public_key
    async with open_node(Identity.generate()) as node:
        pass
    calls = {
        "send": lambda: node.send(other, b"x"),
        "send_closest": lambda: node.send_closest(other, b"x"),
        "receive": node.receive,
        "receive_closest": node.receive_closest,
        "connect(uri)": lambda: node.connect("tcp://127.0.0.1:1"),
        "connect(key, protocol)": lambda: node.connect(other, "/chat/v1"),
        "send_datagram": lambda: node.send_datagram(other, "/chat/v1", b"x"),
        "receive_datagram": lambda: node.receive_datagram("/chat/v1"),
        "service(20).send": lambda: node.service(20).send(other, b"x"),
        "service(21).receive": lambda: node.service(21).receive(),  # made after the stop
    }
    for name, call in calls.items():
        with pytest.raises(trio.ClosedResourceError) as info, trio.fail_after(5):
            await call()
        assert str(info.value) == "the node has stopped", name
    with pytest.raises(trio.ClosedResourceError, match=r"^the node has stopped$"):
        node.add_static_peer("tcp://127.0.0.1:1")


async def test_a_node_that_never_ran_says_so() -> None:
    from pinecone_trio.node import Node

    node = Node(Identity.generate())
    with pytest.raises(RuntimeError, match="the node is not running"):
        await node.connect("tcp://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="the node is not running"):
        node.add_static_peer("tcp://127.0.0.1:1")


async def test_a_datagram_that_cannot_be_sent_is_refused_before_any_dial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A too-large datagram, or a bad protocol name, to a key nobody answers for waited
    # the whole handshake timeout (10 s) and then raised SessionTimeoutError.
    nobody = Identity.generate().public_key
    async with open_node(Identity.generate()) as node:
        limit = node.sessions.max_datagram_size("/chat/v1")
        start = trio.current_time()
        with pytest.raises(ValueError, match=f"at most {limit} bytes"):
            await node.send_datagram(nobody, "/chat/v1", bytes(limit + 1))
        for protocol in ("", "x" * 256):
            with pytest.raises(ValueError, match="protocol name"):
                await node.send_datagram(nobody, protocol, b"x")
        assert trio.current_time() == start
        assert node.sessions.statistics()["sessions"] == 0
