"""Blocks with their Merkle proofs inside a path hint, for logs that can prove blocks.

Theory of operation
-------------------
A plain hint names the blocks a get reads; the reader then fetches them through
replication, a second round trip. When both logs are `hyperlog.Log`s, the peer can
instead put the blocks themselves in the reply, each with the Merkle uncles from
its leaf up to the root of the *reader's* tree (the reader names its fork and
length in the request). The reader hands them to ``log.apply_proofs``, which
verifies every one against the signed roots it already trusts and stores the good
ones; a proof that does not verify stores nothing and the block is fetched through
replication as before. So a lying peer can still only waste a round trip.

Only duck-typed log methods are used (``create_proof``, ``apply_proofs``, ``fork``,
``has``); hyperlog's proof types are imported when a proof is actually built or
applied, so `hamt` itself does not depend on hyperlog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .wire import MAX_HINT_PROOF_BYTES, MAX_HINT_PROOFS, MAX_PROOF_LEVELS, BlockProofData

__all__ = ["apply_block_proofs", "block_proofs", "can_apply", "can_prove"]

logger = logging.getLogger(__name__)


def _has(log: object, method: str) -> bool:
    return callable(getattr(log, method, None)) and isinstance(getattr(log, "fork", None), int)


def can_prove(log: object) -> bool:
    """Whether `log` can build block proofs (a `hyperlog.Log`)."""
    return _has(log, "create_proof")


def can_apply(log: object) -> bool:
    """Whether `log` can verify and store block proofs (a `hyperlog.Log`)."""
    return _has(log, "apply_proofs") and callable(getattr(log, "has", None))


def block_proofs(
    log: Any, blocks: Sequence[int], length: int, fork: int
) -> tuple[BlockProofData, ...]:
    """Proofs of `blocks` for a reader at (`fork`, `length`); () if none can be given.

    Each proof climbs from the block's leaf to the root of the reader's tree of
    `length` blocks that covers it, so it verifies against roots the reader holds
    even when this log has grown since. At most `MAX_HINT_PROOFS` proofs and
    `MAX_HINT_PROOF_BYTES` of values.
    """
    from hyperlog import flat_tree
    from hyperlog.proof_types import BlockRequest, ProofRequest

    if log.fork != fork or not 0 < length <= log.length:
        return ()
    out: list[BlockProofData] = []
    total = 0
    for seq in blocks:
        if len(out) >= MAX_HINT_PROOFS:
            break
        if not 0 <= seq < length:
            continue
        levels = flat_tree.depth(flat_tree.root_for_leaf(2 * seq, 2 * length))
        if levels > MAX_PROOF_LEVELS:
            continue
        try:
            proof = log.create_proof(ProofRequest(fork, block=BlockRequest(seq, levels)))
        except Exception as exc:  # not held here, or a request hyperlog refuses: skip it
            logger.debug("no proof of block %d: %s", seq, exc)
            continue
        block = proof.block
        if block is None or total + len(block.value) > MAX_HINT_PROOF_BYTES:
            continue
        total += len(block.value)
        out.append(
            BlockProofData(seq, block.value, tuple((n.index, n.size, n.hash) for n in block.nodes))
        )
    return tuple(out)


async def apply_block_proofs(
    log: Any, fork: int, proofs: Sequence[BlockProofData]
) -> list[BlockProofData]:
    """Verify and store `proofs` in `log` (one transaction); return the ones stored.

    Proofs of blocks already held are skipped; ones that fail verification store
    nothing. The values of the returned proofs are verified: the caller may use them
    as they are. Never raises for the log's sake: the blocks are then fetched the
    usual way.
    """
    from hyperlog.crypto import TreeNode
    from hyperlog.proof_types import BlockProof, Proof

    fresh = [p for p in proofs if not log.has(p.index)][:MAX_HINT_PROOFS]
    if not fresh or log.fork != fork:
        return []
    todo = [
        Proof(fork, block=BlockProof(p.index, p.value, tuple(TreeNode(*n) for n in p.nodes)))
        for p in fresh
    ]
    try:
        results = await log.apply_proofs(todo)
    except Exception as exc:  # e.g. the log closed: the plain fetches report it
        logger.debug("hinted block proofs not applied: %s", exc)
        return []
    stored = []
    for p, r in zip(fresh, results, strict=True):
        if isinstance(r, Exception):
            logger.debug("a hinted block proof did not verify: %s", r)
        else:
            stored.append(p)
    return stored
