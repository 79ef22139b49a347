"""What every transport provides, URI parsing, and the per-connection handler wrapper.

A transport turns an address into raw, unencrypted `trio.abc.Stream`s: `dial` opens
one, `serve` listens and calls a handler with each accepted stream in its own task.
Links (Noise) are layered on top by `pinecone_trio.link`; transports know nothing of
identities.
"""

from __future__ import annotations

import logging
import socket
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
        expected = "ws://host:port/path" if scheme == "ws" else "tcp://host:port"
        raise ValueError(f"bad {scheme} URI {uri!r}: expected {expected}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"bad {scheme} URI {uri!r}: no query, fragment or user allowed")
    if scheme == "tcp" and parts.path not in ("", "/"):
        raise ValueError(f"bad tcp URI {uri!r}: no path allowed")
    path = (parts.path or "/") if scheme == "ws" else ""
    # An IPv6 zone may be written as RFC 6874 says ("%25eth0") or bare ("%eth0").
    host = parts.hostname.replace("%25", "%", 1) if "%25" in parts.hostname else parts.hostname
    return Address(scheme, host, port, path)


def check_process_uri(option: str, uri: str) -> None:
    """Refuse a URI a command-line program cannot use, naming the option that gave it
    (`pinecone-trio`'s and `hyperlog`'s checks, worded alike).

    memory:// links exist only inside one Python process (they are for tests), so a
    separate process can never reach them.

    Raises:
        ValueError: `uri` is not a usable tcp:// or ws:// URI.
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "memory":
        raise ValueError(
            f"{option} {uri}: memory:// links work only inside one Python process "
            "(for tests); use tcp://HOST:PORT or ws://HOST:PORT/PATH"
        )
    if scheme not in ("tcp", "ws"):
        raise ValueError(
            f"{option} {uri!r}: unknown transport (use tcp://HOST:PORT or ws://HOST:PORT/PATH)"
        )
    parse_uri(uri)  # the rest of the URI: host, port, path


def os_error_in(exc: OSError, context: str) -> OSError:
    """`exc` again, its class and errno kept, with `context` in front of its message
    ("cannot listen on tcp://127.0.0.1:7000: Address already in use")."""
    text = exc.strerror or str(exc) or type(exc).__name__
    try:
        if exc.errno is not None:
            return type(exc)(exc.errno, f"{context}: {text}")
        return type(exc)(f"{context}: {text}")
    except TypeError:  # a subclass with a constructor of its own
        return OSError(exc.errno, f"{context}: {text}")


async def listen_tcp(address: Address) -> list[trio.SocketListener]:
    """`trio.open_tcp_listeners` for `address`, failing with an error that names it.

    Raises:
        OSError: the address cannot be bound ("cannot listen on URI: reason").
    """
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise os_error_in(exc, f"cannot listen on {address}") from exc


async def connect_tcp(address: Address) -> trio.SocketStream:
    """`trio.open_tcp_stream` to `address`; a host name that does not resolve fails
    with an error that names it (not only "Name or service not known").

    Raises:
        OSError: the address cannot be reached.
    """
    try:
        return await trio.open_tcp_stream(address.host, address.port)
    except socket.gaierror as exc:
        raise os_error_in(exc, f"cannot resolve host {address.host!r}") from exc


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
