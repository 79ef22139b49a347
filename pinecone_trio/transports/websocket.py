"""`ws://host:port/path`: trio-websocket connections carried as byte streams.

`WebSocketStream` adapts a trio-websocket `WebSocketConnection` to `trio.abc.Stream`:
each `send_all` becomes binary messages of at most `MAX_WS_MESSAGE_SIZE` bytes, and
`receive_some` returns message bytes in order, splitting a message across calls when
`max_bytes` is smaller; message boundaries mean nothing. A peer's normal close (code
1000/1001) reads as end of stream, any other close as `trio.BrokenResourceError`. A
text message is a protocol violation and breaks the stream.

trio-websocket reads the socket in `receive_buffer_size` pieces; its default of 4 KiB
costs 2-4x in throughput (shared/anchors/py/results.md §7), so we use
`WS_RECEIVE_BUFFER_SIZE`. A client connection needs a background reader task: `dial`
runs it in the nursery you pass, which must outlive the stream; the stream's
`socket_stream` is its TCP connection (to set keepalive options on).
"""

from __future__ import annotations

import logging
import operator
from http import HTTPStatus
from typing import Final, final

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from .._util import ConflictDetector, single_failure
from ..link.constants import CLOSE_TIMEOUT, DIAL_TIMEOUT
from .base import Address, Handler, connect_tcp, listen_tcp, run_handler

logger = logging.getLogger(__name__)

#: Bytes trio-websocket asks the socket for per read (library default: 4096).
WS_RECEIVE_BUFFER_SIZE: Final = 256 * 1024
#: Largest message we send; a send_all above this is split.
MAX_WS_MESSAGE_SIZE: Final = 256 * 1024
#: Largest message we accept (trio-websocket closes the connection above it).
MAX_WS_RECEIVE_MESSAGE_SIZE: Final = 1024 * 1024
#: Most accepted connections one listener lets sit before their HTTP upgrade request
#: is answered (each waits at most `DIAL_TIMEOUT`); more are closed at once, so a
#: flood of silent connections cannot hold unbounded sockets and tasks. The node's own
#: limit on pending link handshakes applies only after the upgrade.
MAX_PENDING_UPGRADES: Final = 64
#: ... and from any one address, so one host's silent connections cannot take them all
#: (an attacker with many addresses still can: there is no eviction).
MAX_PENDING_UPGRADES_PER_HOST: Final = 8
#: Close codes that mean an orderly end of stream.
_NORMAL_CLOSE_CODES: Final = frozenset({1000, 1001})


@final
class WebSocketStream(trio.abc.Stream):
    """A `trio.abc.Stream` over one WebSocket connection's binary messages.

    Args:
        connection: an open trio-websocket connection.
        raw_stream: the byte stream under it, if you own it; closed by `aclose`.
    """

    def __init__(
        self, connection: WebSocketConnection, raw_stream: trio.abc.Stream | None = None
    ) -> None:
        self.connection = connection
        self._raw = raw_stream
        self._pending = b""
        self._closed = False
        self._eof = False
        self._send_conflict = ConflictDetector("sending on this WebSocket stream")
        self._receive_conflict = ConflictDetector("receiving on this WebSocket stream")
        # A dialled connection's reader task (`_run_client`) has ended: nobody reads
        # the peer's answer to our close frame any more, so `aclose` does not wait for
        # it (it waited CLOSE_TIMEOUT, the peering's 1 s, on every node that left with
        # a ws:// peer: that reader is cancelled with the node).
        self._reader_gone = False
        self._closing: trio.CancelScope | None = None

    def _reader_ended(self) -> None:
        self._reader_gone = True
        if self._closing is not None:
            self._closing.cancel()

    @property
    def socket_stream(self) -> trio.SocketStream | None:
        """The TCP connection a dialled WebSocket runs over, for socket options such as
        keepalive (`setsockopt`); None for a stream a listener accepted (trio-websocket
        keeps that socket to itself). Only set options on it: the WebSocket owns its
        bytes."""
        return self._raw if isinstance(self._raw, trio.SocketStream) else None

    def _closed_error(
        self, exc: BaseException
    ) -> trio.ClosedResourceError | trio.BrokenResourceError:
        if self._closed:
            return trio.ClosedResourceError("this WebSocket stream was closed")
        return trio.BrokenResourceError(f"WebSocket connection closed: {exc}")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if not data:
                await trio.lowlevel.checkpoint()
                return
            with memoryview(data) as view:
                for start in range(0, len(view), MAX_WS_MESSAGE_SIZE):
                    message = bytes(view[start : start + MAX_WS_MESSAGE_SIZE])
                    try:
                        await self.connection.send_message(message)
                    except (ConnectionClosed, trio.BrokenResourceError, OSError) as exc:
                        raise self._closed_error(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if self._pending or self._eof:
                await trio.lowlevel.checkpoint()
            while not self._pending:
                if self._eof:
                    return b""
                try:
                    message = await self.connection.get_message()
                except ConnectionClosed as exc:
                    # get_message can raise without yielding; streams always checkpoint.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if self._closed:
                        raise trio.ClosedResourceError("this WebSocket stream was closed") from exc
                    if exc.reason is not None and exc.reason.code in _NORMAL_CLOSE_CODES:
                        self._eof = True
                        return b""
                    raise trio.BrokenResourceError(f"WebSocket closed: {exc.reason}") from exc
                if isinstance(message, str):
                    raise trio.BrokenResourceError("text message on a binary WebSocket stream")
                self._pending = message
            pending = self._pending
            if max_bytes is None or max_bytes >= len(pending):
                self._pending = b""
                return pending
            self._pending = pending[max_bytes:]
            return pending[:max_bytes]

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            with trio.move_on_after(CLOSE_TIMEOUT) as self._closing:
                if self._reader_gone:
                    self._closing.cancel()  # the close frame goes; no answer is awaited
                await self.connection.aclose()
        finally:
            self._closing = None
            # trio-websocket 0.12 leaves a *client's* TCP socket open when the server
            # closed first (its reader stops at EOF without closing); close it here.
            if self._raw is not None:
                await self._raw.aclose()
        await trio.lowlevel.checkpoint()


@final
class WebSocketTransport:
    """Dial and listen on WebSocket (ws:// only; put TLS in front with a proxy)."""

    async def dial(self, address: Address, *, nursery: trio.Nursery | None) -> trio.abc.Stream:
        if nursery is None:
            raise ValueError(
                f"{address}: a ws:// dial needs a nursery for the connection's reader task"
            )
        stream: WebSocketStream = await nursery.start(_run_client, address)
        return stream

    async def serve(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await listen_tcp(address)
        host, port = listeners[0].socket.getsockname()[:2]
        bound = str(Address("ws", host, port, address.path))

        async def on_request(request: WebSocketRequest) -> None:
            # Whatever one client does must not reach WebSocketServer, which would
            # let the exception end the whole listener.
            try:
                if request.path != address.path:
                    await request.reject(404)
                    return
                connection = await request.accept()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                logger.debug("WebSocket client on %s left during the upgrade", bound)
                return
            await run_handler(handler, WebSocketStream(connection), bound)

        limit = _PendingUpgrades(MAX_PENDING_UPGRADES, MAX_PENDING_UPGRADES_PER_HOST, bound)
        server = trio_websocket.WebSocketServer(
            on_request,
            # Annotated as socket listeners, but any `trio.abc.Listener` works: the
            # server only accepts from them (and shows other kinds by their repr).
            [_LimitedListener(listener, limit) for listener in listeners],  # type: ignore[misc]
            max_message_size=MAX_WS_RECEIVE_MESSAGE_SIZE,
            receive_buffer_size=WS_RECEIVE_BUFFER_SIZE,
            connect_timeout=DIAL_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started(bound)


@final
class _PendingUpgrades:
    """One listener's connections whose upgrade is not answered yet, in all and by
    the host they come from."""

    def __init__(self, limit: int, per_host: int, bound: str) -> None:
        self.limit = limit
        self.per_host = per_host
        self.bound = bound
        self.pending = 0
        self.by_host: dict[str, int] = {}
        self.refused = 0

    def take(self, host: str) -> bool:
        if self.pending >= self.limit or self.by_host.get(host, 0) >= self.per_host:
            self.refused += 1
            return False
        self.pending += 1
        self.by_host[host] = self.by_host.get(host, 0) + 1
        return True

    def give_back(self, host: str) -> None:
        self.pending -= 1
        left = self.by_host[host] - 1
        if left:
            self.by_host[host] = left
        else:
            del self.by_host[host]


def _peer_host(stream: trio.abc.Stream) -> str:
    """The address a connection comes from ("" if the stream has no socket)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return ""
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return ""


@final
class _LimitedListener(trio.abc.Listener[trio.abc.Stream]):
    """Closes new connections at once while `MAX_PENDING_UPGRADES` (or, from their
    host, `MAX_PENDING_UPGRADES_PER_HOST`) wait for theirs.

    trio-websocket answers the upgrade request (101, or 404 for another path) with the
    connection's first write, and writes nothing before it: so a connection stops
    counting at its first `send_all`, at end of stream or a failed read (the client
    left), or when it is closed (the upgrade timed out).
    """

    def __init__(self, inner: trio.abc.Listener[trio.abc.Stream], limit: _PendingUpgrades) -> None:
        self._inner = inner
        self._limit = limit

    async def accept(self) -> trio.abc.Stream:
        limit = self._limit
        while True:  # ends by returning a connection, or by the listener's error
            stream = await self._inner.accept()
            host = _peer_host(stream)
            if limit.take(host):
                return _CountedStream(stream, limit, host)
            logger.debug("WebSocket listener %s: too many pending upgrades", limit.bound)
            await trio.aclose_forcefully(stream)  # (a checkpoint: a flood cannot spin)

    async def aclose(self) -> None:
        await self._inner.aclose()


@final
class _CountedStream(trio.abc.Stream):
    """A stream that holds one pending-upgrade slot until its first write or close."""

    def __init__(self, inner: trio.abc.Stream, limit: _PendingUpgrades, host: str) -> None:
        self._inner = inner
        self._limit: _PendingUpgrades | None = limit
        self._host = host

    def _release(self) -> None:
        if self._limit is not None:
            self._limit.give_back(self._host)
            self._limit = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._release()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._inner.receive_some(max_bytes)
        except BaseException:
            self._release()
            raise
        if not data:
            self._release()  # the client left; trio-websocket closes it only later
        return data

    async def aclose(self) -> None:
        self._release()
        await self._inner.aclose()


@final
class _UpgradeWatch(trio.abc.Stream):
    """A client's TCP stream that ends the dial when the server closes it before the
    upgrade (a listener over its pending-upgrade limit does): trio-websocket would
    wait for the upgrade until `DIAL_TIMEOUT`."""

    def __init__(self, inner: trio.abc.Stream, dial_scope: trio.CancelScope) -> None:
        self._inner = inner
        self._dial_scope = dial_scope
        self.upgraded = False
        self.closed_early = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        if not data and not self.upgraded:
            self.closed_early = True
            self._dial_scope.cancel()
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _run_client(
    address: Address, *, task_status: trio.TaskStatus[WebSocketStream] = trio.TASK_STATUS_IGNORED
) -> None:
    """Own one client connection's reader task, so its failures stay here.

    trio-websocket raises a refused upgrade both from `connect_websocket` and from the
    reader task; running them in a nursery of our own turns that into one OSError for
    the dialer instead of an exception in the caller's nursery.
    """
    started = False
    tcp: trio.abc.Stream | None = None
    stream: WebSocketStream | None = None
    try:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(DIAL_TIMEOUT) as dial_scope:
                tcp = await connect_tcp(address)
                watched = _UpgradeWatch(tcp, dial_scope)
                # Annotated as a socket stream; any trio stream works (an endpoint it
                # cannot name shows as its repr).
                connection = await trio_websocket.wrap_client_stream(
                    nursery,
                    watched,  # type: ignore[arg-type]
                    f"{address.host}:{address.port}",
                    address.path,
                    max_message_size=MAX_WS_RECEIVE_MESSAGE_SIZE,
                    receive_buffer_size=WS_RECEIVE_BUFFER_SIZE,
                )
                watched.upgraded = True
                stream = WebSocketStream(connection, tcp)
                task_status.started(stream)
                started = True
            if not started:
                if watched.closed_early:
                    raise ConnectionRefusedError(
                        f"{address}: the server closed the connection before the upgrade"
                    )
                raise TimeoutError(f"{address}: no WebSocket connection within {DIAL_TIMEOUT} s")
    except Exception as exc:
        if started:
            logger.debug("WebSocket connection to %s ended with %r", address, exc)
            return
        if tcp is not None:
            # trio-websocket does not close the socket when the upgrade is refused.
            await trio.aclose_forcefully(tcp)
        if isinstance(exc, BaseExceptionGroup):
            # The nursery wraps a failed TCP connect: raise the OSError itself, as a
            # tcp:// dial would (not "connection failed (ExceptionGroup(...))").
            leaf = single_failure(exc)
            if isinstance(leaf, OSError):
                raise leaf from leaf.__cause__  # keep the attempts (their OS reasons)
        if isinstance(exc, OSError):
            raise
        rejected = _rejection(exc)
        if rejected is not None:
            raise ConnectionRefusedError(_refused_message(address, rejected)) from exc
        raise ConnectionError(f"{address}: WebSocket connection failed ({exc!r})") from exc
    finally:
        if stream is not None:
            stream._reader_ended()  # its reader task ended (cancelled with the node)


def _rejection(exc: BaseException) -> trio_websocket.ConnectionRejected | None:
    """The server's refusal of the upgrade in `exc` (perhaps inside a group), if any."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        group = exc.subgroup(trio_websocket.ConnectionRejected)
        if group is not None:
            for leaf in _leaves(group):
                if isinstance(leaf, trio_websocket.ConnectionRejected):
                    return leaf
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _refused_message(address: Address, rejected: trio_websocket.ConnectionRejected) -> str:
    """What a dial refused by the server says: the HTTP status, and for 404 (what our
    listeners answer for a path they do not serve) that the path may be wrong."""
    status = rejected.status_code
    try:
        status_text = f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        status_text = f"HTTP {status}"
    message = f"{address}: WebSocket upgrade refused: {status_text}"
    if status == HTTPStatus.NOT_FOUND:
        message += f" (no WebSocket listener on path {address.path!r}: check the path)"
    return message
