"""`SessionBase`: every field of a session engine, initialised in one place.

`Session` (engine.py) is assembled from one mixin per subject (engine_handshake.py,
engine_streams.py, engine_send.py), each a subclass of `SessionBase`: the fields live
here, so each part sees all of them with their types, and the few methods one part
calls in another are declared here for the type checker only (they add nothing at
run time). Only `__init__` (and `_new_cc`, which it calls) runs here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..identity import Identity, PublicKey
from . import wire
from .config import MAX_CANDIDATES, REPLAY_WINDOW, SessionConfig
from .congestion import NewReno
from .crypto import PacketCipher, ReplayWindow
from .events import Event, State
from .handshake import SessionHandshake
from .recovery import AckTracker, Recovery
from .streams import RangeSet

if TYPE_CHECKING:
    from .engine_handshake import _Candidate
    from .engine_streams import _Stream


class SessionBase:
    """The state of one session; see `Session` (engine.py) for what it does."""

    def __init__(
        self,
        *,
        identity: Identity,
        local_address: PublicKey,
        remote_address: PublicKey,
        local_index: int,
        expected_key: PublicKey | None,
        config: SessionConfig,
        now: float,
    ) -> None:
        self.identity = identity
        self.local_address = local_address
        self.remote_address = remote_address
        self.local_index = local_index
        self.expected_key = expected_key
        self.config = config
        self.state = State.HANDSHAKE
        self.error: SessionError | None = None
        self.remote_key: PublicKey | None = None
        self.handshake_hash = b""
        self.events: list[Event] = []
        self.changed: set[int] = set()
        self.stats: dict[str, int] = {
            "packets_sent": 0,
            "packets_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "packets_lost": 0,
            "bytes_retransmitted": 0,
            "dropped_unauthenticated": 0,
            "dropped_replayed": 0,
            "dropped_handshake": 0,
            "dropped_early": 0,
            "datagrams_dropped": 0,
            "probes": 0,
        }
        self.created = now
        self._now = now  # the latest `now` we were given (for calls that take none)
        # handshake
        self._hs: SessionHandshake | None = None
        self._hs_packet: bytes | None = None  # our last handshake packet, for re-sending
        self._hs_initiation = b""  # the INITIATION of the handshake we answered and kept
        self._hs_retransmit_at = math.inf
        self._hs_interval = config.handshake_retransmit
        self._hs_deadline = now + config.handshake_timeout
        self._hs_outbox: list[bytes] = []
        self._hs_sent_at = now
        self._hs_resent = False
        # Responder handshakes for the peer's INITIATIONs, beside our own dial or our
        # established session; none touches the session until its FINISH verifies.
        self._candidates: list[_Candidate] = []
        # INITIATIONs we answered whose handshakes lost to another: duplicates of them
        # (the peer re-sending) are ignored rather than answered afresh.
        self._dial_at = math.inf  # a deferred dial of ours starts then (`start_dial`)
        self._superseded: deque[bytes] = deque(maxlen=2 * MAX_CANDIDATES)
        self._remote_index = 0
        self._confirmed = False
        self._finish_packet: bytes | None = None
        # A responder that has sent nothing by this time sends a PING, so the initiator
        # learns the session is confirmed (any TRANSPORT packet does it; see `_seal`).
        self._confirm_at = math.inf
        # transport
        self._send_cipher: PacketCipher | None = None
        self._recv_cipher: PacketCipher | None = None
        self._replay = ReplayWindow(REPLAY_WINDOW)
        self._next_pn = 0
        self._recovery = Recovery(config.max_ack_delay)
        self._cc = self._new_cc()
        self._acks = AckTracker()
        self._probes = 0
        self._need_ping = False
        self._last_recv = now
        self._last_eliciting_sent = now
        self.keepalive = False
        self.corked = False  # the last `packets_to_send(cork=True)` held a tail back
        self.writes = 0  # successful `stream_write` calls, so a caller sees new data
        # streams
        self._streams: dict[int, _Stream] = {}
        self._sendable: dict[int, None] = {}
        self._parity = 0 if local_address < remote_address else 1
        self._next_sid = self._parity
        self._remote_seen = RangeSet()  # remote stream ids already opened, as id // 2
        self._incoming = 0
        self._control: deque[wire.Frame] = deque()
        # Control frames that need no packet of their own (ACCEPT): they ride on the
        # next packet that goes out anyway, the ACK at the latest.
        self._lazy_control: deque[wire.Accept] = deque()
        self._lazy_due = math.inf  # ... or, with nothing going out, by this time
        self._datagrams: deque[wire.Datagram] = deque()
        self._close_frame: wire.Close | None = None
        self._max_data_due = False
        self._max_stream_data_due: set[int] = set()
        # session flow control
        self._send_max = config.session_window
        self._send_used = 0
        self._recv_limit = config.session_window
        self._recv_highest = 0
        self._recv_consumed = 0

    def _new_cc(self) -> NewReno:
        c = self.config
        return NewReno(
            max_packet=c.max_packet_size,
            initial_packets=c.initial_window_packets,
            minimum_packets=c.minimum_window_packets,
            cap=2 * c.session_window,
        )

    if TYPE_CHECKING:
        # Implemented by `Session` (engine.py).
        def _fail(self, error: SessionError, *, notify_peer: str | None = None) -> None: ...
        def _replace(self, candidate: _Candidate, now: float) -> None: ...

        # Implemented by `StreamsMixin` (engine_streams.py).
        def _maybe_forget(self, stream: _Stream) -> None: ...
