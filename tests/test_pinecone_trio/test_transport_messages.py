"""Transport errors say what failed and where: the URI that cannot be bound, the host
that does not resolve, the HTTP status of a refused WebSocket upgrade."""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator

import pytest
import trio

from pinecone_trio import Identity, open_node
from pinecone_trio.transports import dial, parse_uri, serve


async def _discard(stream: trio.abc.Stream) -> None:
    await stream.aclose()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback TCP port that something else is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("scheme,path", [("tcp", ""), ("ws", "/pinecone")])
async def test_a_bind_failure_names_the_uri(taken_port: int, scheme: str, path: str) -> None:
    uri = f"{scheme}://127.0.0.1:{taken_port}{path}"
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError) as info:
            await nursery.start(serve, uri, _discard)
    assert info.value.errno == errno.EADDRINUSE
    assert info.value.strerror == f"cannot listen on {uri}: Address already in use"
    # ... and so does open_node, which raises the error itself, not a group.
    with pytest.raises(OSError, match=re.escape(f"cannot listen on {uri}: ")):
        async with open_node(Identity.generate(), listen=[uri]):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    "uri", ["tcp://no-such-host.invalid:7300", "ws://no-such-host.invalid:7300/"]
)
async def test_a_host_that_does_not_resolve_is_named(uri: str) -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(socket.gaierror) as info, trio.fail_after(30):
            await dial(uri, nursery=nursery)
    assert str(info.value.strerror).startswith("cannot resolve host 'no-such-host.invalid': ")


def test_a_ws_uri_without_a_port_shows_the_whole_form() -> None:
    with pytest.raises(ValueError, match=re.escape("expected ws://host:port/path")):
        parse_uri("ws://127.0.0.1/x")
    with pytest.raises(ValueError, match=re.escape("expected tcp://host:port")):
        parse_uri("tcp://127.0.0.1")


async def test_a_refused_websocket_upgrade_gives_the_status_and_suspects_the_path() -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, "ws://127.0.0.1:0/pinecone", _discard)
        wrong = bound.removesuffix("/pinecone") + "/typo"
        with pytest.raises(ConnectionRefusedError) as info, trio.fail_after(30):
            await dial(wrong, nursery=nursery)
        assert str(info.value) == (
            f"{wrong}: WebSocket upgrade refused: HTTP 404 Not Found "
            "(no WebSocket listener on path '/typo': check the path)"
        )
        nursery.cancel_scope.cancel()


async def test_a_refusal_with_another_status_gives_that_status() -> None:
    async def bad_request(stream: trio.abc.Stream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, "tcp://127.0.0.1:0", bad_request)
        uri = f"ws://{bound.removeprefix('tcp://')}/"
        with pytest.raises(ConnectionRefusedError) as info, trio.fail_after(30):
            await dial(uri, nursery=nursery)
        assert str(info.value) == f"{uri}: WebSocket upgrade refused: HTTP 403 Forbidden"
        nursery.cancel_scope.cancel()
