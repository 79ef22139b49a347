"""Our proofs equal hypercore 11's, node for node, for hundreds of requests.

`test_merkle_hypercore_proofs.json` was produced by the real hypercore 11.37.1 running
`test_merkle_hypercore_proofs.js` (beside this file) for logs of 37 and 64 blocks written
in uneven batches, then condensed: per log the seed, key, final signature (multisig
wrapped, as hypercore sends it), every node that appeared in a proof (index -> size,
hash), and per request the node indices of each part or hypercore's error. The JS
outputs were condensed with a few lines of Python: node lists became index lists, and
each node's size and hash went into the per-log table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hyperlog import crypto
from hyperlog.crypto import TreeNode
from hyperlog.errors import InvalidRequestError
from hyperlog.merkle import MerkleTree
from hyperlog.proof import (
    BlockRequest,
    HashRequest,
    ProofRequest,
    UpgradeRequest,
    create_proof,
    verify_proof,
)

FIXTURE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "test_merkle_hypercore_proofs.json").read_text()
)


def _build(n: int, seed: bytes) -> tuple[MerkleTree, dict[int, TreeNode], list[bytes], Any]:
    kp = crypto.key_pair(seed)
    verifier = crypto.Verifier.from_manifest(crypto.default_manifest(kp.public_key))
    blocks = [b"block-%d-" % i + b"x" * (i % 7) for i in range(n)]
    tree = MerkleTree()
    store: dict[int, TreeNode] = {}
    i = 0
    while i < n:
        k = 1 + i % 5
        batch = tree.append(blocks[i : i + k])
        batch.sign(verifier, kp.secret_key)
        store.update((node.index, node) for node in batch.nodes)
        tree.apply(batch)
        i += k
    return tree, store, blocks, verifier


def _request(r: dict[str, Any]) -> ProofRequest:
    return ProofRequest(
        0,
        block=BlockRequest(**r["block"]) if "block" in r else None,
        hash=HashRequest(**r["hash"]) if "hash" in r else None,
        upgrade=UpgradeRequest(**r["upgrade"]) if "upgrade" in r else None,
    )


@pytest.mark.parametrize("log", FIXTURE["logs"], ids=lambda log: f"n{log['n']}")
def test_proofs_equal_hypercore(log: dict[str, Any]) -> None:
    tree, store, blocks, verifier = _build(log["n"], bytes.fromhex(log["seed"]))
    assert verifier.key.hex() == log["key"]
    assert [(tree.signature or b"").hex()] == [
        sig.hex() for _, sig in crypto.decode_multisig(bytes.fromhex(log["signature"]))
    ]
    for index, (size, digest) in log["nodes"].items():
        assert store[int(index)] == TreeNode(int(index), size, bytes.fromhex(digest))
    assert len(log["cases"]) > 200
    for case in log["cases"]:
        req = _request(case["req"])
        value = blocks[req.block.index] if req.block is not None else None
        if "error" in case:
            with pytest.raises(InvalidRequestError):
                create_proof(tree, req, store.get, value=value)
            continue
        proof = create_proof(tree, req, store.get, value=value)
        got = {
            "block": [n.index for n in proof.block.nodes] if proof.block else None,
            "hash": [n.index for n in proof.hash.nodes] if proof.hash else None,
            "upgrade": [n.index for n in proof.upgrade.nodes] if proof.upgrade else None,
            "additional": (
                [n.index for n in proof.upgrade.additional_nodes] if proof.upgrade else None
            ),
        }
        want = {k: case.get(k) for k in got}
        assert got == want, case["req"]
        if req.upgrade is not None and req.upgrade.start == 0:
            # a fresh reader accepts hypercore's proof (same nodes, same signature)
            verify_proof(MerkleTree(), proof, verifier, store.get)
