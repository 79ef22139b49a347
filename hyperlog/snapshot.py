"""`LogSnapshot`: a read-only view of a `Log` frozen at one head (length, fork, signature).

`Log.snapshot` creates one from a copy of the log's in-memory tree; block reads go to
the live log, limited to the snapshot's length and to what later truncations left.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, final

import trio

from .errors import BlockNotAvailableError
from .merkle import MerkleTree, _require_index, _require_int, seek

if TYPE_CHECKING:
    from .log import Log


@final
class LogSnapshot:
    """A read-only view of a log at the length, fork and signature it had when taken.

    Blocks appended later are invisible. If the log is later truncated below the
    snapshot's length, the blocks past the cut are gone for the snapshot too (their
    `get` raises `BlockNotAvailableError`) instead of returning another fork's data.
    """

    def __init__(self, log: Log, tree: MerkleTree) -> None:
        """Internal: use `Log.snapshot`."""
        self._log = log
        self._tree = tree

    @property
    def key(self) -> bytes:
        """The log key."""
        return self._log.key

    @property
    def length(self) -> int:
        """The length when the snapshot was taken."""
        return self._tree.length

    @property
    def byte_length(self) -> int:
        """The byte length when the snapshot was taken."""
        return self._tree.byte_length

    @property
    def fork(self) -> int:
        """The fork when the snapshot was taken."""
        return self._tree.fork

    @property
    def signature(self) -> bytes | None:
        """The signature of the snapshot's head (signed now if the writer had not yet)."""
        log, t = self._log, self._tree
        current = log._tree
        same = (t.length, t.fork) == (current.length, current.fork)
        if same and t.signature is None:
            t.signature = log._ensure_signed()  # one signature for both
        return log._sign(t)

    def tree_hash(self) -> bytes:
        """The tree hash of the snapshot's head."""
        return self._tree.tree_hash()

    def _valid_below(self) -> int:
        cut = self._tree.length
        for fork, length in self._log._cuts.items():
            if fork > self._tree.fork:
                cut = min(cut, length)
        return cut

    def has(self, index: int) -> bool:
        """Return True if block ``index`` is in the snapshot and held locally."""
        _require_int(index, "a block index")
        return 0 <= index < self._valid_below() and self._log.has(index)

    async def get(
        self,
        index: int,
        *,
        wait: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        """Return block ``index`` of the snapshot (see `Log.get`).

        Raises:
            ValueError: if ``index`` is negative (as `Log.get` says it).
            BlockNotAvailableError: if ``index`` is past the snapshot's end, was truncated
                away since (also while the call waited for it: the block that arrives
                then is another fork's), or is missing and not waited for.
        """
        _require_index(index)
        if not index < self._valid_below():
            await trio.lowlevel.checkpoint()
            raise BlockNotAvailableError(f"block {index} is not in this snapshot")
        value = await self._log.get(index, wait=wait, timeout=timeout)
        # The log may have changed fork while `get` waited (or at its checkpoint): its
        # block `index` is then the new fork's, not this snapshot's.
        if index >= self._valid_below():
            raise BlockNotAvailableError(f"block {index} was truncated away from this snapshot")
        return value

    async def seek(self, byte_offset: int, *, padding: int = 0) -> tuple[int, int]:
        """Like `Log.seek`, within the snapshot's head."""
        _require_int(byte_offset, "a byte offset")
        _require_int(padding, "a padding")
        log = self._log
        try:
            result = seek(self._tree, byte_offset, log._get_node, padding=padding)
        finally:
            if log._readonly:
                log._check_unchanged()
        await trio.lowlevel.checkpoint()
        return result
