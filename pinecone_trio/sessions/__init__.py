"""End-to-end sessions: Noise XX between two public keys over the overlay.

Reliable, ordered streams (`SessionStream`, a `trio.abc.HalfCloseableStream`) and
unreliable datagrams, each named by a protocol, multiplexed on one encrypted session
per pair of keys. See docs/sessions.md.
"""

from .config import SessionConfig
from .manager import DatagramService, SessionManager
from .stream import SessionListener, SessionStream

__all__ = [
    "DatagramService",
    "SessionConfig",
    "SessionListener",
    "SessionManager",
    "SessionStream",
]
