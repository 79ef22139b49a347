"""Path hints: a peer holding a HAMT tells a sparse reader which blocks a get reads.

Theory of operation
-------------------
A sparse reader that follows pointers one block at a time pays one network round
trip per level. A peer that holds the blocks can instead run the lookup itself
(`Hamt.path_hint`) and answer with the list of block numbers, root first; the reader
then fetches them all at once through replication (`Hamt.get(key, hint=...)`, which
prefetches concurrently) and runs the lookup locally. Blocks still arrive through
hyperlog replication and are verified there: a hint only says *which* blocks to
fetch, so a lying peer can waste a fetch but never change an answer, and a silent
one costs a get at most its `hint_timeout` (`constants.HINT_TIMEOUT`).

The hint protocol runs over any `trio.abc.Stream` (its own connection, or a channel a
multiplexer provides): frames of a 4-byte big-endian length and one msgpack message
(`wire.HintRequest` / `wire.HintReply`), at most `MAX_HINT_FRAME` bytes. Requests are
answered in order. `_Framer` is the sans-IO part; the two coroutines are its shell.
A request names the reader's version, so the hint is the path the reader will walk.

When the request also names the reader's fork and both sides are `hyperlog.Log`s, the
reply carries the blocks themselves with Merkle proofs against the reader's tree
(`hamt.proofs`): the reader verifies and stores them and a cold get is one round
trip instead of two (hint, then replication).
"""

from __future__ import annotations

import struct
from typing import Any, Final, final

import trio

from .errors import CorruptNodeError, HamtError, InvalidKeyError
from .index import Hamt
from .proofs import block_proofs, can_prove
from .wire import (
    MAX_HINT_FRAME,
    MAX_HINT_REPLY_FRAME,
    PROOF_PROBE_KEY,
    BlockProofData,
    HintReply,
    HintRequest,
    decode_hint,
    encode_hint,
)

__all__ = ["PathHintClient", "serve_path_hints"]

_LEN: Final = struct.Struct(">I")
#: Bytes asked of the stream per receive.
RECEIVE_SIZE: Final = 64 * 1024
#: Calls a client may give up on (their late answers are skipped) before it stops.
MAX_ABANDONED_HINTS: Final = 64


@final
class _Framer:
    """Sans-IO length-prefixed framing: feed bytes, take whole frames."""

    def __init__(self, limit: int = MAX_HINT_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        if len(self._buf) < _LEN.size:
            return None
        (n,) = _LEN.unpack_from(self._buf)
        if n > self._limit:
            raise CorruptNodeError(f"hint frame of {n} bytes exceeds {self._limit}")
        if len(self._buf) < _LEN.size + n:
            return None
        frame = bytes(self._buf[_LEN.size : _LEN.size + n])
        del self._buf[: _LEN.size + n]
        return frame


def _frame(payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + payload


async def _next(stream: trio.abc.Stream, framer: _Framer) -> bytes | None:
    # Bounded: each pass either returns a frame or consumes at least one byte; the
    # framer refuses frames over its limit, so the buffer stays bounded too.
    while (frame := framer.next_frame()) is None:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        framer.receive_data(data)
    return frame


async def serve_path_hints(
    stream: trio.abc.Stream,
    db: Hamt[Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer path-hint requests for `db` on `stream` until the peer closes it.

    Raises:
        CorruptNodeError: the peer sent something that is not a hint request.
    """
    framer = _Framer()
    task_status.started()
    while (frame := await _next(stream, framer)) is not None:
        msg = decode_hint(frame)
        if not isinstance(msg, HintRequest):
            raise CorruptNodeError("expected a hint request")
        version = db.version
        if msg.key == PROOF_PROBE_KEY:
            offers = can_prove(db.log)
            await stream.send_all(_frame(encode_hint(HintReply(msg.id, version, [], (), offers))))
            continue
        if 0 < msg.version < version:
            version = msg.version  # the reader's version: the path it will walk
        try:
            blocks = await db.checkout(version).path_hint(msg.key) if version > 1 else []
        except InvalidKeyError:
            blocks = []
        proofs: tuple[BlockProofData, ...] = ()
        if msg.fork is not None and blocks and version == msg.version and can_prove(db.log):
            proofs = block_proofs(db.log, blocks, version, msg.fork)
        reply = HintReply(msg.id, version, blocks, proofs)
        await stream.send_all(_frame(encode_hint(reply)))


@final
class PathHintClient:
    """Asks a peer (running `serve_path_hints`) for the blocks a get reads."""

    def __init__(self, stream: trio.abc.Stream, *, proofs: bool | None = None) -> None:
        """`proofs`: whether the peer gives proofs (None: ask it first, once)."""
        self._stream = stream
        self._framer = _Framer(MAX_HINT_REPLY_FRAME)
        self._lock = trio.Lock()
        self._next_id = 0
        # Ids of requests whose caller gave up before the answer came (see `_exchange`).
        self._abandoned: set[int] = set()
        self._broken = ""
        self._proofs = proofs

    async def path_hint(self, key: str, version: int = 0, fork: int | None = None) -> HintReply:
        """Return the peer's `HintReply` for `key` at `version` (0: the peer's latest).

        With `fork` (and `version` the reader's length), ask for the blocks themselves
        with Merkle proofs against that tree (`HintReply.proofs`). The first such call
        asks the peer whether it gives proofs (`wire.PROOF_PROBE_KEY`): a server from
        before proofs closed the connection on a request with a fork, so it is asked
        without one.

        Pass this client to `open_hamt(..., hints=client)` and every get that misses a
        local block asks for its path once and fetches it all at once.

        Raises:
            HamtError: the peer closed the stream or answered out of turn.
            CorruptNodeError: the peer's reply does not decode.
        """
        async with self._lock:
            if fork is not None:
                if self._proofs is None:
                    self._proofs = (await self._exchange(PROOF_PROBE_KEY, 0, None)).offers_proofs
                if not self._proofs:
                    fork = None
            return await self._exchange(key, version, fork)

    async def _exchange(self, key: str, version: int, fork: int | None) -> HintReply:
        if self._broken:
            raise HamtError(f"hint client unusable: {self._broken}")
        self._next_id = (self._next_id + 1) % 2**32
        req = HintRequest(self._next_id, key, version, fork)
        sent = False
        try:
            await self._stream.send_all(_frame(encode_hint(req)))
            sent = True
            while True:
                frame = await _next(self._stream, self._framer)
                if frame is None:
                    raise HamtError("the hint peer closed the stream")
                reply = decode_hint(frame)
                if isinstance(reply, HintReply) and reply.id in self._abandoned:
                    self._abandoned.discard(reply.id)  # the late answer to a call given up
                    continue
                if not isinstance(reply, HintReply) or reply.id != req.id:
                    raise HamtError("the hint peer answered out of turn")
                return reply
        except BaseException:
            # A call given up (cancelled, timed out) after its request went out: its
            # answer will still come and is skipped then. Cut off while sending, the
            # stream may hold half a frame: nothing more can be asked on it.
            if not sent:
                self._broken = "a request was cut off while being sent"
            elif len(self._abandoned) >= MAX_ABANDONED_HINTS:
                self._broken = "too many hint calls given up"
            else:
                self._abandoned.add(req.id)
            raise
