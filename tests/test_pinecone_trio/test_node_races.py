"""Races, cancellation and resource bounds of the node shell (review findings).

Each test here failed against the code before its fix; they run in virtual time
(autojump) or without a clock at all, so a loaded machine cannot make them flaky.
"""

from __future__ import annotations

import json
import socket

import pytest
import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.discovery.beacon import Beacon
from pinecone_trio.link.stream import NoiseLink
from pinecone_trio.node import (
    INBOX_SIZE,
    MAX_BEACON_DIALS,
    Node,
    NodeConfig,
    PeerLimitError,
    open_node,
)
from pinecone_trio.peering import InboxItem, Peering, SendBudget
from pinecone_trio.router.actions import Input, PeerDown, PeerType, PeerUp
from pinecone_trio.router.wire import Traffic
from pinecone_trio.transports import serve as serve_transport

from .peering_helpers import make_peering

FULL = b"\xff" * 32


class _GatedInbox:
    """Wraps the node's inbox: a `send` of `PeerUp` waits until the gate opens."""

    def __init__(self, inner: trio.MemorySendChannel[Input]) -> None:
        self.inner = inner
        self.gate = trio.Event()

    def send_nowait(self, item: Input) -> None:
        self.inner.send_nowait(item)

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self.inner.statistics()  # the node's goodbye looks at the inbox

    async def send(self, item: Input) -> None:
        if isinstance(item, PeerUp):
            await self.gate.wait()
        await self.inner.send(item)

    def close(self) -> None:
        self.inner.close()


def _router_ports(node: Node) -> set[int]:
    assert node._state is not None
    return {p.port for p in node._state.peers()}


async def test_connect_cancelled_while_peering_starts_leaks_nothing(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router is slow to take PeerUp (a full inbox) and the caller of connect()
    # gives up meanwhile. Before the fix the peering stayed registered but never ran:
    # its port leaked, the router never heard of it and its link was never read.
    async with (
        open_node(Identity.generate()) as a,
        open_node(Identity.generate(), listen=["memory://"]) as b,
    ):
        gated = _GatedInbox(a._inbox_send)
        monkeypatch.setattr(a, "_inbox_send", gated)
        with trio.move_on_after(1):
            await a.connect(b.listen_uris[0])
        gated.gate.set()
        await trio.sleep(20)  # virtual: keepalive timeouts would have fired by now
        assert set(a._peerings) == _router_ports(a)
        assert (b.public_key in a.peer_keys()) == (a.public_key in b.peer_keys())
        assert len(a._free_ports) + len(a._peerings) == 253


class _StuckStream(trio.abc.Stream):
    """Reads and writes never complete; closing takes forever too."""

    def __init__(self, receive_error: Exception | None = None) -> None:
        self.receive_error = receive_error

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.sleep_forever()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.receive_error is not None:
            raise self.receive_error
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.sleep_forever()


def _peering(
    stream: trio.abc.Stream, budget: SendBudget | None = None, local_key: bytes = b""
) -> tuple[Peering, trio.MemoryReceiveChannel[InboxItem]]:
    return make_peering(stream, budget=budget, local_key=local_key)


async def test_frames_queued_on_an_ending_peering_release_their_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The router may still push onto a peering while it closes its link (up to
    # CLOSE_TIMEOUT). Those frames were never popped: local send budget leaked and
    # `send` would in the end block forever.
    me = Identity.generate().public_key
    budget = SendBudget(10_000, 10)
    peering, _recv = _peering(_StuckStream(), budget, bytes(me))
    frame = Traffic((), (), FULL, bytes(me), FULL, 0, b"x" * 100, 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peering.run)
        await trio.testing.wait_all_tasks_blocked()
        peering.close("test")
        await peering.wait_ended()  # now in the (shielded) link close
        await budget.acquire(100)
        assert peering.enqueue(frame) is frame  # refused: nobody will ever send it
    assert (budget.used, budget.frames) == (0, 0)
    assert len(peering.queue) == 0


async def test_unexpected_link_error_ends_only_the_peering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An outbound peering runs in the node's nursery: an exception escaping it used
    # to crash the whole node.
    peering, _recv = _peering(_StuckStream(receive_error=ValueError("odd link")))
    await peering.run()  # returns instead of raising
    assert peering.end_reason.startswith("internal error")


async def test_cancelled_send_returns_its_budget() -> None:
    # `send` took budget, then was cancelled while the inbox was full: the budget
    # must come back, or enough such cancellations make every `send` block forever.
    node = Node(Identity.generate())
    for _ in range(INBOX_SIZE):
        node._inbox_send.send_nowait(PeerUp(1, bytes(FULL), PeerType.REMOTE, ""))
    with trio.move_on_after(0.05) as scope:
        await node.send(Identity.generate().public_key, b"payload")
    assert scope.cancelled_caught
    assert (node._budget.used, node._budget.frames) == (0, 0)


async def test_static_peer_that_hangs_up_at_once_is_not_redialled_in_a_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    remote = Identity.generate()
    accepted = 0
    storm = trio.Event()

    async def hang_up(stream: trio.abc.Stream) -> None:
        nonlocal accepted
        link = NoiseLink(stream, remote, initiator=False)
        await link.do_handshake()
        accepted += 1
        if accepted >= 30:
            storm.set()
        await link.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_transport, "memory://hangs-up", hang_up)
        async with open_node(Identity.generate(), static_peers=["memory://hangs-up"]) as node:
            with trio.move_on_after(60):  # virtual seconds
                await storm.wait()
            status = node.status()["static_peers"][0]
        nursery.cancel_scope.cancel()
    # 2^n backoff from 1 s: about 7 dials in a minute, never dozens.
    assert 2 <= accepted <= 12, accepted
    assert status["failures"] >= 2


async def test_wait_for_wakes_on_counters(autojump_clock: trio.testing.MockClock) -> None:
    config = NodeConfig(max_peers=1)
    async with (
        open_node(Identity.generate(), listen=["memory://"], config=config) as hub,
        open_node(Identity.generate()) as first,
        open_node(Identity.generate()) as second,
    ):
        await first.connect(hub.listen_uris[0])
        async with trio.open_nursery() as nursery:

            async def refused() -> None:
                with pytest.raises(PeerLimitError):
                    await second.connect(hub.listen_uris[0])

            nursery.start_soon(refused)
            # virtual time: a refusal takes no time, so this fails only if no change
            # notification came (some unrelated later change would wake it by luck)
            with trio.fail_after(1):
                await hub.wait_for(lambda: hub.counters.refused_peer_limit == 1)


async def test_listener_that_cannot_bind_raises_oserror_itself() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with open_node(Identity.generate(), listen=[f"tcp://127.0.0.1:{port}"]):
                pass  # pragma: no cover


async def test_beacons_from_many_keys_start_a_bounded_number_of_dials() -> None:
    async with open_node(Identity.generate()) as node:
        for _ in range(10 * MAX_BEACON_DIALS):
            node._on_beacon(Beacon(Identity.generate().public_key, 1), "127.0.0.1", "eth0")
        assert len(node._dialling) <= MAX_BEACON_DIALS


async def test_status_is_json_with_hex_keys(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_node(Identity.generate(), listen=["memory://"]) as a,
        open_node(Identity.generate(), static_peers=[a.listen_uris[0]]) as b,
    ):
        with trio.fail_after(30):
            await b.wait_for(lambda: b.status()["root_key"] == a.status()["root_key"])
        status = b.status()
    assert json.loads(json.dumps(status, sort_keys=True, allow_nan=False)) == status
    assert status["peers"][0]["public_key"] == a.public_key.hex()
    assert status["static_peers"][0]["public_key"] == a.public_key.hex()


async def test_drop_queue_wakes_a_consumer_when_another_gave_up() -> None:
    # Two tasks wait in node.receive(); one is cancelled. Each waiter used to park on
    # an event of its own, and only the newest was ever set: the other never woke.
    from pinecone_trio._queue import DropQueue

    queue: DropQueue[int] = DropQueue(4)
    got: list[int] = []

    async def consume() -> None:
        got.append(await queue.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as late:
            async with trio.open_nursery() as inner:
                inner.start_soon(consume)
                await trio.testing.wait_all_tasks_blocked()
                late.cancel()
        assert queue.put_nowait(7)
        with trio.fail_after(5):
            while not got:
                await trio.testing.wait_all_tasks_blocked()
    assert got == [7]


async def test_peering_closed_before_the_router_heard_of_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replaced or closed while its PeerUp still waits for room in the inbox: the
    # port is free again at once and the router gets no PeerDown for a port it never
    # knew (which it would count as a dropped input).
    async with (
        open_node(Identity.generate()) as a,
        open_node(Identity.generate(), listen=["memory://"]) as b,
    ):
        gated = _GatedInbox(a._inbox_send)
        monkeypatch.setattr(a, "_inbox_send", gated)
        await a.connect(b.listen_uris[0])
        (peering,) = a._peerings.values()
        peering.close("test")
        with trio.fail_after(5):
            await peering.wait_ended()
        assert a._peerings == {}
        assert len(a._free_ports) == 253
        gated.gate.set()
        await trio.sleep(1)
        assert a.status()["router"]["dropped"].get("unknown_port", 0) == 0
        assert _router_ports(a) == set()


async def test_event_subscribers_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    from pinecone_trio.node import MAX_SUBSCRIBERS

    async with open_node(Identity.generate()) as node, trio.open_nursery() as nursery:

        async def subscribe() -> None:
            async for _ in node.events():
                pass  # pragma: no cover

        for _ in range(MAX_SUBSCRIBERS):
            nursery.start_soon(subscribe)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="subscribers"):
            await subscribe()
        nursery.cancel_scope.cancel()
    assert node._subscribers == set()


async def test_unexpected_dial_failure_of_a_static_peer_does_not_crash_the_node(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pinecone_trio.node_peerings as peerings_module

    async def weird_dial(uri: str, **kwargs: object) -> trio.abc.Stream:
        raise KeyError("a transport bug")

    monkeypatch.setattr(peerings_module, "dial_transport", weird_dial)
    async with open_node(Identity.generate(), static_peers=["memory://nowhere"]) as node:
        with trio.fail_after(60):
            await node.wait_for(lambda: node.status()["static_peers"][0]["failures"] >= 2)
        assert "a transport bug" in node.status()["static_peers"][0]["last_error"]


class _FullForPeerDown(_GatedInbox):
    """As if the inbox were full whenever a `PeerDown` is sent, until the gate opens."""

    def send_nowait(self, item: Input) -> None:
        if isinstance(item, PeerDown) and not self.gate.is_set():
            raise trio.WouldBlock
        self.inner.send_nowait(item)

    async def send(self, item: Input) -> None:
        if isinstance(item, PeerDown):
            await self.gate.wait()
        await self.inner.send(item)


async def test_port_is_reused_only_after_the_router_heard_peer_down(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new peering's PeerUp on a port the router still has up is a local protocol
    # error that ends the node. Before the fix the port was freed after a 5 s
    # (shielded) wait for room in the inbox, whether PeerDown got in or not.
    async with (
        open_node(Identity.generate()) as a,
        open_node(Identity.generate(), listen=["memory://"]) as b,
    ):
        await a.connect(b.listen_uris[0])
        with trio.fail_after(30):
            await a.wait_for(lambda: len(_router_ports(a)) == 1)
        (peering,) = a._peerings.values()
        full = _FullForPeerDown(a._inbox_send)
        monkeypatch.setattr(a, "_inbox_send", full)
        peering.close("test")
        await trio.sleep(30)  # virtual: far beyond any timeout
        assert peering.port not in a._free_ports
        assert _router_ports(a) == {peering.port}  # the router was not told yet
        full.gate.set()
        with trio.fail_after(30):
            await a.wait_for(lambda: not _router_ports(a))
        await trio.testing.wait_all_tasks_blocked()
        assert peering.port in a._free_ports


async def test_a_replaced_announcement_is_not_a_queue_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pinecone_trio.router.actions import SendFrame
    from pinecone_trio.router.wire import Announcement, TreeAnnouncement

    async with (
        open_node(Identity.generate(), listen=["memory://"]) as a,
        open_node(Identity.generate()) as b,
    ):
        await b.connect(a.listen_uris[0])
        with trio.fail_after(30):
            await a.wait_for(lambda: len(_router_ports(a)) == 1)
        (port,) = a._peerings
        frame = TreeAnnouncement(Announcement.new(bytes(a.public_key), 99))
        a._apply([SendFrame(port, frame), SendFrame(port, frame)])  # the writer sends one
        assert a.counters.queue_drops == 0
