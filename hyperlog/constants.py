"""Limits and tunables of the hyperlog core (the log, its storage and its command).

Replication has its own constants in `hyperlog.replication.constants`; wire sizes are
in `hyperlog.wire`.
"""

from __future__ import annotations

from typing import Final

#: Most blocks in one log: a block index fits in the 40 bits the SQLite row key gives it
#: (`hyperlog.storage_schema`). Appends past it are refused, and so is any proof that
#: claims a longer log or a block, node or length beyond it (`InvalidProofError`).
MAX_LOG_LENGTH: Final = 1 << 40
#: Largest block we append or store. hypercore suggests at most 15 MB; we keep 8 MiB,
#: the same bound the replication wire uses, so any stored block can be served.
MAX_BLOCK_SIZE: Final = 8 * 1024 * 1024
#: Most blocks in one append call (one signature, one transaction).
MAX_BATCH_BLOCKS: Final = 65536
#: Most bytes in one append call: bounds the memory a single transaction holds.
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024
#: Verified proof groups of at least this many bytes run their SQLite transaction in
#: a worker thread so the Trio loop keeps running; smaller ones run inline, because a
#: thread hop (~60-100 us) would cost more than the work.
THREAD_THRESHOLD_BYTES: Final = 32 * 1024
#: The same line for `Log.append`. Measured A/B (same run, 4,096 single 64 KiB
#: appends, load 4-6): a thread hop per append cost ~180 us of CPU (606 vs 424 us per
#: append, whole process) for no wall-clock gain, so a 64 KiB append (~0.4 ms of
#: hashing and commit) runs inline; batches of 1,000 x 1 KiB (~10 ms) still go to a
#: thread.
APPEND_THREAD_THRESHOLD_BYTES: Final = 256 * 1024
#: Blocks per worker-thread hop when a caller reads a long range (`Log.iter_blocks`).
READ_CHUNK_BLOCKS: Final = 256
#: Most blocks one `Log.get_many` call reads.
MAX_GET_MANY: Final = 65536
#: `Log.get_many` reads more blocks than this in a worker thread.
GET_MANY_THREAD_ABOVE: Final = 64
#: Events buffered per subscriber before new ones are dropped (and counted).
EVENT_BUFFER: Final = 1024
#: Most verified proofs committed in one transaction by `Log.apply_proofs`.
MAX_PROOF_GROUP: Final = 1024
#: Lines per append batch for ``hyperlog append --lines`` (one signature each).
CLI_LINES_PER_BATCH: Final = 1000
#: Default block size for ``hyperlog append --file``.
CLI_DEFAULT_BLOCK_SIZE: Final = 64 * 1024
#: Blocks per batch for ``hyperlog append --file`` is chosen to keep a batch near this.
CLI_FILE_BATCH_BYTES: Final = 4 * 1024 * 1024
#: Store-level metadata name of the log the command line works on.
DEFAULT_LOG_META: Final = "default_log"
