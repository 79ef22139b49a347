"""What every transport provides, URI parsing, and the per-connection handler wrapper.

A transport turns an address into raw, unencrypted `trio.abc.Stream`s: `dial` opens
one, `serve` listens and calls a handler with each accepted stream in its own task.
Links (Noise) are layered on top by `pinecone_trio.link`; transports know nothing of
identities.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import trio

logger = logging.getLogger(__name__)

#: Called with each accepted raw stream, in a task of its own.
Handler = Callable[[trio.abc.Stream], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed transport URI: `tcp://host:port`, `ws://host:port/path`, `memory://name`."""

    scheme: str
    host: str
    port: int
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "memory":
            return f"memory://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_uri(uri: str) -> Address:
    """Parse a transport URI.

    Raises:
        ValueError: if the URI is malformed or names no host or port where one is needed.
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad transport URI {uri!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.path or parts.query or parts.fragment:
            raise ValueError(f"bad memory URI {uri!r}: expected memory://name")
        return Address("memory", parts.netloc, 0)
    if scheme not in ("tcp", "ws"):
        raise ValueError(f"unknown transport in {uri!r} (tcp://, ws:// or memory://)")
    if not parts.hostname or port is None:
        raise ValueError(f"bad {scheme} URI {uri!r}: expected {scheme}://host:port")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"bad {scheme} URI {uri!r}: no query, fragment or user allowed")
    if scheme == "tcp" and parts.path not in ("", "/"):
        raise ValueError(f"bad tcp URI {uri!r}: no path allowed")
    path = (parts.path or "/") if scheme == "ws" else ""
    # An IPv6 zone may be written as RFC 6874 says ("%25eth0") or bare ("%eth0").
    host = parts.hostname.replace("%25", "%", 1) if "%25" in parts.hostname else parts.hostname
    return Address(scheme, host, port, path)


class Transport(Protocol):
    """The two operations every transport offers."""

    async def dial(self, address: Address, *, nursery: trio.Nursery | None) -> trio.abc.Stream:
        """Connect to `address`; raise OSError (TimeoutError on timeout) on failure."""
        ...

    async def serve(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `address`, report the bound URI, then serve until cancelled."""
        ...


async def run_handler(handler: Handler, stream: trio.abc.Stream, where: str) -> None:
    """Run `handler(stream)`; log its failure instead of crashing the listener; close."""
    try:
        await handler(stream)
    except Exception:
        logger.exception("connection handler on %s failed", where)
    finally:
        await stream.aclose()
