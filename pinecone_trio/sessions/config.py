"""Session limits, timers and tunables.

Protocol constants (the wire version, hard size limits a peer may not exceed) are
module-level `Final`s; everything a user may reasonably tune lives in the frozen
`SessionConfig`. Timers follow QUIC's defaults (RFC 9000 §10, RFC 9002 §6-§7) unless a
comment says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..router.constants import MAX_TRAFFIC_PAYLOAD

#: Version of the session wire format (handshake packets and the frame array). 2 since
#: streams open optimistically (data before ACCEPT, EARLY streams, refusal returns
#: credit): a version-1 peer would mis-count a refused stream's credit, so the two
#: refuse each other's handshakes instead.
SESSION_VERSION: Final = 2

#: The Noise protocol every session runs (fixed by the design brief).
NOISE_PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"

#: Mixed into every handshake hash, with both routing keys appended, so a handshake
#: message cannot be replayed as anything else (a link handshake, another pair of keys).
NOISE_PROLOGUE: Final = b"pinecone-trio session v1"

#: Largest overlay payload we ever accept or build, whatever the config says: the
#: overlay's own frame limit (a 2-byte length) is 65,535 bytes including its header.
MAX_PACKET_SIZE_LIMIT: Final = 65_535
#: Default packet size: the overlay's traffic payload limit less the node's one-byte
#: service tag (62,782 bytes), so a packet is one overlay frame.
DEFAULT_PACKET_SIZE: Final = MAX_TRAFFIC_PAYLOAD - 1
#: Smallest packet size a config may ask for; below this the fixed headers dominate.
MIN_PACKET_SIZE: Final = 1_200

#: Longest protocol name (UTF-8 bytes) on a stream or datagram.
MAX_PROTOCOL_NAME: Final = 255


def check_protocol_name(protocol: str) -> None:
    """Refuse a protocol name a stream or datagram cannot carry.

    Raises:
        ValueError: `protocol` is empty or longer than `MAX_PROTOCOL_NAME` UTF-8 bytes.
    """
    if not protocol or len(protocol.encode()) > MAX_PROTOCOL_NAME:
        raise ValueError(f"a protocol name is 1..{MAX_PROTOCOL_NAME} UTF-8 bytes")


#: Longest human-readable reason in a REFUSE or CLOSE frame.
MAX_REASON: Final = 512
#: Most ACK ranges we keep and send; older holes are forgotten (the sender then
#: declares those packets lost by its time threshold, a spurious but harmless resend).
MAX_ACK_RANGES: Final = 64
#: Most frames one packet may carry (a decoder limit: bounds work per packet).
MAX_FRAMES_PER_PACKET: Final = 4_096
#: Most responder handshakes one session runs at once for the peer's INITIATIONs. The
#: overlay's source key is not authenticated, so anyone can send an INITIATION in a
#: peer's name: each is answered beside the others and only the one whose FINISH
#: verifies counts. Beyond this many, a new INITIATION replaces the oldest candidate.
MAX_CANDIDATES: Final = 4
#: Replay window, in packets (WireGuard uses 2,048 - 64 bits; we keep 2,048).
REPLAY_WINDOW: Final = 2_048
#: Largest stream id a peer may use (QUIC's varint ceiling, 2^62 - 1).
MAX_STREAM_ID: Final = (1 << 62) - 1
#: Largest offset/credit value (QUIC's 2^62 - 1 as well).
MAX_OFFSET: Final = (1 << 62) - 1
#: Packet numbers are 64-bit and never wrap: a session closes before 2^64 - 1.
MAX_PACKET_NUMBER: Final = (1 << 64) - 1

#: QUIC's packet reordering threshold (RFC 9002 §6.1.1).
PACKET_THRESHOLD: Final = 3
#: QUIC's time threshold multiplier 9/8 (RFC 9002 §6.1.2).
TIME_THRESHOLD: Final = 9 / 8
#: Timer granularity (RFC 9002 kGranularity).
GRANULARITY: Final = 0.001
#: Smallest probe timeout. RFC 9002 has only the 1 ms granularity; a Python process
#: on a busy machine is routinely descheduled for several milliseconds, and each
#: spurious PTO re-sends data and (after three) collapses the congestion window.
MIN_PTO: Final = 0.01
#: RTT assumed before any sample (RFC 9002 kInitialRtt).
INITIAL_RTT: Final = 0.333


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Tunables of one session; every field has a safe default.

    Attributes:
        max_packet_size: Largest overlay payload a session sends. Overlay links are TCP
            and carry large frames, so packets are large (there is no 1,200-byte path MTU
            inside the overlay). Must be between `MIN_PACKET_SIZE` and
            `MAX_PACKET_SIZE_LIMIT`; the node passes its own frame limit here.
        handshake_timeout: A handshake that has not completed after this long fails.
        handshake_retransmit: First handshake retransmission delay; it grows by half
            each time, up to `handshake_retransmit_max`.
        idle_timeout: A session that has received nothing valid for this long closes
            (Pinecone uses 15 s for its QUIC sessions).
        keepalive_interval: A wanted session (one with open streams) sends a PING after
            this long without sending anything that asks for an acknowledgement.
        max_ack_delay: How long a receiver may delay an acknowledgement.
        ack_eliciting_threshold: Ack-eliciting packets received before an ACK is sent
            at once (RFC 9000 suggests 2 for ~1,200-byte packets; ours carry up to
            62 KB, so one ACK per ~250 KB keeps the reverse path quiet; 8 starved a
            lossy path's small congestion window of ACKs, docs/sessions.md).
        stream_window: Receive credit per stream (bytes the peer may send ahead of what
            the application has read).
        session_window: Receive credit across all streams of the session.
        stream_send_buffer: Bytes `send_all` may queue per stream before it blocks.
        max_incoming_streams: Streams the peer may have open at once; more are refused.
        max_datagram_queue: Outgoing datagrams queued before new ones are dropped.
        initial_window_packets: Congestion window at start, in full packets.
        minimum_window_packets: Congestion window floor, in full packets.
        max_burst_packets: Packets one flush may produce before the driver yields.
    """

    max_packet_size: int = DEFAULT_PACKET_SIZE
    handshake_timeout: float = 10.0
    handshake_retransmit: float = 0.5
    handshake_retransmit_max: float = 2.0
    idle_timeout: float = 15.0
    keepalive_interval: float = 5.0
    max_ack_delay: float = 0.005
    ack_eliciting_threshold: int = 4
    stream_window: int = 4 * 1024 * 1024
    session_window: int = 16 * 1024 * 1024
    stream_send_buffer: int = 4 * 1024 * 1024
    max_incoming_streams: int = 4_096
    max_datagram_queue: int = 256
    initial_window_packets: int = 10
    minimum_window_packets: int = 2
    max_burst_packets: int = 16

    def __post_init__(self) -> None:
        if not MIN_PACKET_SIZE <= self.max_packet_size <= MAX_PACKET_SIZE_LIMIT:
            raise ValueError(
                f"max_packet_size must be in [{MIN_PACKET_SIZE}, {MAX_PACKET_SIZE_LIMIT}],"
                f" not {self.max_packet_size}"
            )
        for name in ("handshake_timeout", "handshake_retransmit", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.keepalive_interval >= self.idle_timeout:
            raise ValueError("keepalive_interval must be shorter than idle_timeout")
        if self.stream_window < 1 or self.session_window < self.stream_window:
            raise ValueError("need 1 <= stream_window <= session_window")
        if self.stream_send_buffer < 1 or self.max_incoming_streams < 1:
            raise ValueError("stream_send_buffer and max_incoming_streams must be positive")
        if not 1 <= self.minimum_window_packets <= self.initial_window_packets:
            raise ValueError("need 1 <= minimum_window_packets <= initial_window_packets")
        if self.ack_eliciting_threshold < 1:
            raise ValueError("ack_eliciting_threshold must be positive")
        if self.max_burst_packets < 1:
            raise ValueError("max_burst_packets must be positive")
