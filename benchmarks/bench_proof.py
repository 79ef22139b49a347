"""Proof verification speed: a random block of a 1,000,000-block log (target < 0.5 ms).

Builds the tree in memory with the real engine (hyperlog.merkle), then for random blocks
builds a proof (hyperlog.proof.create_proof) and times verify_proof alone, in two cases:

* ``sparse``: the reader trusts the signed head (its roots) and asks for the block with
  every uncle it misses (~20 nodes): hashing only, no signature;
* ``fresh``: a reader with nothing asks for the block plus an upgrade from length 0:
  the same path, the other roots, the tree hash and one ed25519 verification.

Usage: python benchmarks/bench_proof.py [--quick] [--json] [--blocks N] [--samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

from hyperlog import crypto
from hyperlog.crypto import TreeNode
from hyperlog.merkle import MerkleTree
from hyperlog.proof import (
    BlockRequest,
    ProofRequest,
    UpgradeRequest,
    create_proof,
    missing_nodes,
    verify_proof,
)

TARGET_MS = 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100,000 blocks, 300 samples")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--block-size", type=int, default=64)
    args = ap.parse_args()
    if args.quick:
        args.blocks, args.samples = 100_000, 300

    kp = crypto.key_pair(b"\x07" * 32)
    verifier = crypto.Verifier.from_manifest(crypto.default_manifest(kp.public_key))
    value = os.urandom(args.block_size)
    tree = MerkleTree()
    store: dict[int, TreeNode] = {}
    t0 = time.perf_counter()
    chunk = [value] * 10_000
    left = args.blocks
    while left:
        batch = tree.append(chunk[: min(left, len(chunk))])
        left -= batch.length - batch.start
        for n in batch.nodes:
            store[n.index] = n
        tree.apply(batch)
    last = tree.append([])
    last.sign(verifier, kp.secret_key)
    tree.apply(last)
    build_s = time.perf_counter() - t0

    reader_sparse = tree.snapshot()
    roots = {r.index: r for r in tree.roots}
    rng = random.Random(1)
    results: dict[str, list[float]] = {"sparse": [], "fresh": []}
    cpu: dict[str, list[float]] = {"sparse": [], "fresh": []}
    create_us: list[float] = []
    for _ in range(args.samples):
        i = rng.randrange(args.blocks)
        nodes = missing_nodes(2 * i, tree.length, roots.__contains__)
        req = ProofRequest(0, block=BlockRequest(i, nodes))
        c0 = time.perf_counter()
        proof = create_proof(tree, req, store.get, value=value)
        create_us.append((time.perf_counter() - c0) * 1e6)
        t, c = time.perf_counter(), time.thread_time()
        verify_proof(reader_sparse, proof, verifier, roots.get)
        results["sparse"].append((time.perf_counter() - t) * 1e3)
        cpu["sparse"].append((time.thread_time() - c) * 1e3)

        req = ProofRequest(0, block=BlockRequest(i, 0), upgrade=UpgradeRequest(0, tree.length))
        proof = create_proof(tree, req, store.get, value=value)
        fresh = MerkleTree()
        t, c = time.perf_counter(), time.thread_time()
        verify_proof(fresh, proof, verifier, roots.get)
        results["fresh"].append((time.perf_counter() - t) * 1e3)
        cpu["fresh"].append((time.thread_time() - c) * 1e3)

    summary = {
        name: {
            "median_ms": statistics.median(v),
            "mean_ms": statistics.fmean(v),
            "p99_ms": sorted(v)[int(len(v) * 0.99) - 1],
            "cpu_median_ms": statistics.median(cpu[name]),
            "cpu_mean_ms": statistics.fmean(cpu[name]),
        }
        for name, v in results.items()
    }
    out = {
        "blocks": args.blocks,
        "samples": args.samples,
        "build_s": build_s,
        "create_proof_median_us": statistics.median(create_us),
        "verify": summary,
        "ratios": {
            # below 1.0 means faster than the 0.5 ms target
            "proof_verify_sparse_vs_target": summary["sparse"]["median_ms"] / TARGET_MS,
            "proof_verify_fresh_vs_target": summary["fresh"]["median_ms"] / TARGET_MS,
        },
    }
    if args.json:
        json.dump(out, sys.stdout)
        print()
        return
    print(f"tree of {args.blocks:,} blocks built in {build_s:.1f} s")
    print(f"create_proof median: {out['create_proof_median_us']:.1f} us")
    print(f"{'case':8} {'median ms':>10} {'mean ms':>10} {'p99 ms':>10} {'cpu med ms':>11}")
    for name, s in summary.items():
        print(
            f"{name:8} {s['median_ms']:10.4f} {s['mean_ms']:10.4f} {s['p99_ms']:10.4f}"
            f" {s['cpu_median_ms']:11.4f}"
        )
    print(f"target: {TARGET_MS} ms")


if __name__ == "__main__":
    main()
