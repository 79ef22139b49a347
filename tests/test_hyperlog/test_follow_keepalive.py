"""A follower notices a writer that vanished without a word (no reset: Wi-Fi gone, a
laptop asleep), with the dials the docs show (`trio.open_tcp_stream`, a Noise link):
it sets TCP keepalive on the connection under the stream it dialled
(`hyperlog.follower.set_keepalive`).

Before, only `hyperlog clone --live` set keepalive (in its own dial); a library
follower over `trio.open_tcp_stream` stayed "connected" to a vanished writer for
ever, holding stale data. The black hole here is real TCP on 127.0.0.1: a proxy that
stops forwarding and drops every packet the follower sends it (a socket filter that
accepts nothing, so its kernel acknowledges nothing, probes included). Real clock:
the kernel's timers do the work; with 1 s keepalive and a 3 s user timeout it takes
a few seconds.
"""

from __future__ import annotations

import ctypes
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from functools import partial

import pytest
import trio
import trio.testing

from hyperlog import ConnectedEvent, FollowEvent, LostEvent, follow
from hyperlog.follower import DEFAULT_KEEPALIVE, TcpKeepalive, set_keepalive
from hyperlog.log import open_store
from hyperlog.replication import replicate
from pinecone_trio.identity import Identity
from pinecone_trio.link.stream import NoiseLink

from .test_follow_memory import _writer_and_reader

#: Seconds any wait of these tests may take.
BOUND = 60
#: A keepalive that gives up on a silent peer within about 3 s.
QUICK = TcpKeepalive(idle=1, interval=1, count=2, user_timeout=3)

#: Linux's SO_ATTACH_FILTER, and a classic BPF program of one instruction,
#: ``ret #0``: accept no packet.
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)


def _idle_option() -> int:
    return int(getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", 0)))


def _keepalive_of(sock: trio.socket.SocketType) -> tuple[int, int]:
    """SO_KEEPALIVE and the idle time set on `sock`."""
    on = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    return on, sock.getsockopt(socket.IPPROTO_TCP, _idle_option())


class _Wrapper(trio.abc.Stream):
    """A stream wrapping another one, naming it as pinecone_trio's WebSocket stream
    does (`socket_stream`); it is only looked through, never used."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.socket_stream = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    async def wait_send_all_might_not_block(self) -> None:
        raise NotImplementedError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def test_set_keepalive_finds_the_tcp_connection_under_wrapping_streams() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        wraps: list[Callable[[trio.SocketStream], trio.abc.Stream]] = [
            lambda s: s,
            lambda s: NoiseLink(s, Identity.generate(), initiator=True),  # transport_stream
            _Wrapper,  # socket_stream
            lambda s: trio.SSLStream(s, ssl.create_default_context(), server_hostname="x"),
            lambda s: NoiseLink(_Wrapper(s), Identity.generate(), initiator=True),
        ]
        for n, wrap in enumerate(wraps):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            async with tcp:
                assert _keepalive_of(tcp.socket)[0] == 0  # (off until set)
                assert set_keepalive(wrap(tcp), TcpKeepalive(idle=7 + n)), n
                assert _keepalive_of(tcp.socket) == (1, 7 + n), n
                if hasattr(socket, "TCP_USER_TIMEOUT"):
                    timeout = tcp.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                    assert timeout == DEFAULT_KEEPALIVE.user_timeout * 1000
    # No TCP connection under these: nothing to set, and nothing fails.
    memory, _ = trio.testing.memory_stream_pair()
    assert not set_keepalive(memory) and not set_keepalive(_Wrapper(memory))
    if hasattr(socket, "AF_UNIX"):
        a, b = socket.socketpair(socket.AF_UNIX)
        b.close()
        async with trio.SocketStream(trio.socket.from_stdlib_socket(a)) as unix:
            assert not set_keepalive(_Wrapper(unix))
    for bad in [0, -1, 40000]:
        with pytest.raises(ValueError):
            TcpKeepalive(idle=bad)
    with pytest.raises(ValueError):
        TcpKeepalive(user_timeout=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("keepalive", [QUICK, None])
async def test_the_follower_sets_keepalive_on_what_it_dials_unless_told_not_to(
    keepalive: TcpKeepalive | None,
) -> None:
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])

        async def serve(stream: trio.SocketStream) -> None:
            async with stream, replicate(stream, writer) as session:
                await session.wait_closed()

        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        dialled: list[trio.SocketStream] = []

        async def dial() -> trio.abc.Stream:
            dialled.append(await trio.open_tcp_stream("127.0.0.1", port))
            return dialled[-1]

        with trio.fail_after(BOUND):
            async with follow(reader, dial, keepalive=keepalive) as f:
                await f.wait_connected()
                on, idle = _keepalive_of(dialled[0].socket)
        nursery.cancel_scope.cancel()
    assert (on, idle) == ((1, QUICK.idle) if keepalive else (0, idle))


class _BlackHole:
    """A TCP proxy on 127.0.0.1 to `port` that, once `vanish` is called, forwards
    nothing more on the connections it has and drops every packet arriving on them
    (new connections are forwarded again: the writer is back)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.vanished = False
        self._clients: list[trio.SocketStream] = []
        self._gone = trio.Event()

    async def serve(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.port)
        self._clients.append(client)
        async with client, upstream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pipe, client, upstream)
                nursery.start_soon(self._pipe, upstream, client)
                await self._gone.wait()
                nursery.cancel_scope.cancel()
            await trio.sleep_forever()  # (holds the silent sockets open: no FIN)

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        async for data in source:
            await sink.send_all(data)

    def vanish(self) -> None:
        program = ctypes.create_string_buffer(_DROP_ALL)
        fprog = struct.pack("HP", 1, ctypes.addressof(program))
        for client in self._clients:
            client.socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._clients.clear()
        self._gone.set()
        self._gone = trio.Event()


@pytest.mark.skipif(sys.platform != "linux", reason="the black hole is a Linux socket filter")
async def test_a_follower_notices_a_writer_that_vanished_without_a_word() -> None:
    seen: list[FollowEvent] = []
    changed = trio.Event()

    def on_event(event: FollowEvent) -> None:
        nonlocal changed
        seen.append(event)
        changed.set()
        changed = trio.Event()

    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])

        async def serve(stream: trio.SocketStream) -> None:
            async with stream, replicate(stream, writer) as session:
                await session.wait_closed()

        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        hole = _BlackHole(listeners[0].socket.getsockname()[1])
        proxies = await nursery.start(partial(trio.serve_tcp, hole.serve, 0, host="127.0.0.1"))
        dial = partial(trio.open_tcp_stream, "127.0.0.1", proxies[0].socket.getsockname()[1])
        with trio.fail_after(BOUND):
            async with follow(reader, dial, on_event=on_event, keepalive=QUICK) as f:
                await f.wait_connected()
                hole.vanish()
                await writer.append(b"b")  # (not forwarded: the follower cannot know)
                while not any(isinstance(e, LostEvent) for e in seen):
                    await changed.wait()  # (before: never, bounded by BOUND)
                lost = next(e for e in seen if isinstance(e, LostEvent))
                await f.wait_connected()  # through the proxy again: the writer is back
                with reader.subscribe() as appended:
                    while not reader.has_range(0, 2):
                        await appended.receive()
        nursery.cancel_scope.cancel()
    assert isinstance(lost.error, trio.BrokenResourceError), repr(lost.error)
    assert [type(e) for e in seen[:2]] == [ConnectedEvent, LostEvent]
    assert await reader.get(1) == b"b"
