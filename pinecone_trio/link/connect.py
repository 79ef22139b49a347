"""Dial and serve Noise links by URI: transports + `NoiseLink`, with failure isolation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .. import transports
from ..errors import LinkError
from ..identity import Identity, PublicKey
from .constants import HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES
from .stream import NoiseLink

logger = logging.getLogger(__name__)

#: Called with each established link, in a task of its own.
LinkHandler = Callable[[NoiseLink], Awaitable[object]]


async def connect_link(
    uri: str,
    identity: Identity,
    expected_key: PublicKey | None = None,
    *,
    capabilities: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    nursery: trio.Nursery | None = None,
) -> NoiseLink:
    """Dial `uri` and complete a Noise handshake as the initiator.

    Args:
        uri: `tcp://host:port`, `ws://host:port/path` or `memory://name`.
        identity: our key pair.
        expected_key: refuse the peer unless it proves this identity.
        capabilities: strings we advertise.
        handshake_timeout: seconds the handshake may take.
        nursery: required for ws:// (see `transports.dial`).

    Returns:
        The established link; close it with `aclose` (or `async with`).

    Raises:
        OSError: the transport could not connect.
        LinkError: a subclass naming why the handshake failed (the connection is closed).
    """
    stream = await transports.dial(uri, nursery=nursery)
    link = NoiseLink(
        stream,
        identity,
        initiator=True,
        expected_key=expected_key,
        capabilities=capabilities,
        handshake_timeout=handshake_timeout,
    )
    try:
        await link.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(link)
        raise
    return link


@dataclass
class LinkServerStatistics:
    """Counters kept by `serve_links` (pass your own instance to read them)."""

    connections: int = 0
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    #: Connections closed unanswered because `max_pending_handshakes` were running.
    refused_overloaded: int = 0
    #: Handshakes running right now.
    pending_handshakes: int = 0
    #: Failed handshakes by error class name, e.g. {"BadHandshake": 2}.
    failures: Counter[str] = field(default_factory=Counter)


async def serve_links(
    uri: str,
    identity: Identity,
    handler: LinkHandler,
    *,
    capabilities: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    message_timeout: float | None = None,
    max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
    statistics: LinkServerStatistics | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `uri`, run the responder handshake per connection, call `handler(link)`.

    Start with `bound = await nursery.start(serve_links, uri, identity, handler)`. A
    failed handshake is logged and counted in `statistics`, and closes only that
    connection; the listener keeps serving everyone else. The link is closed when the
    handler returns. While `max_pending_handshakes` handshakes are in progress, further
    connections are closed at once (a flood of stalled handshakes would otherwise hold
    a task and a socket each for up to `handshake_timeout`; `message_timeout`, if
    given, bounds the wait for each of the dialler's handshake messages as well).

    Raises:
        ValueError: if the URI is malformed.
        OSError: if the address cannot be bound.
    """
    stats = statistics if statistics is not None else LinkServerStatistics()

    async def on_stream(stream: trio.abc.Stream) -> None:
        stats.connections += 1
        if stats.pending_handshakes >= max_pending_handshakes:
            stats.refused_overloaded += 1
            logger.warning("link listener %s: too many handshakes in progress", uri)
            return  # the transport closes the stream
        link = NoiseLink(
            stream,
            identity,
            initiator=False,
            capabilities=capabilities,
            handshake_timeout=handshake_timeout,
            message_timeout=message_timeout,
        )
        async with link:
            stats.pending_handshakes += 1
            try:
                await link.do_handshake()
            except LinkError as exc:
                stats.handshakes_failed += 1
                stats.failures[type(exc).__name__] += 1
                logger.info("link handshake on %s failed: %s: %s", uri, type(exc).__name__, exc)
                return
            finally:
                stats.pending_handshakes -= 1
            stats.handshakes_ok += 1
            try:
                await handler(link)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The peer went away: routine for a listener, not worth a traceback.
                logger.debug("link from %s on %s ended: %r", link.remote_key.short(), uri, exc)

    await transports.serve(uri, on_stream, task_status=task_status)
