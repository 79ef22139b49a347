"""``python -m pinecone_trio.sim``: run one scenario on one topology and print metrics.

Examples::

    python -m pinecone_trio.sim --topology grid:10x10 --seed 1
    python -m pinecone_trio.sim --topology ../shared/topologies/fc00.txt --json
    python -m pinecone_trio.sim --topology ba:1000:2 --scenario churn --json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .network import LinkModel
from .scenarios import SCENARIOS, SimOptions, simulate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pinecone_trio.sim",
        description="Simulate pinecone_trio routers in virtual time and measure them.",
    )
    p.add_argument(
        "--topology",
        required=True,
        help="a path-list file, or line:N ring:N grid:RxC tree:N er:N:P geometric:N:R ba:N:M",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenario", choices=SCENARIOS, default="cold")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--signatures", action="store_true", help="real ed25519 (default: null)")
    p.add_argument("--codec", action="store_true", help="pass every frame through the codec")
    p.add_argument("--pairs", type=int, default=1000, help="ordered pairs probed per round")
    p.add_argument("--duration", type=float, default=0.0, help="minimum virtual seconds")
    p.add_argument("--check-interval", type=float, default=0.5, help="virtual s between checks")
    p.add_argument("--converge-limit", type=float, default=300.0, help="virtual s allowed")
    p.add_argument("--latency", type=float, default=0.005, help="one-way link latency, s")
    p.add_argument("--jitter", type=float, default=0.001, help="uniform extra latency, s")
    p.add_argument("--loss", type=float, default=0.0, help="frame loss probability")
    p.add_argument("--bandwidth", type=float, default=0.0, help="bytes/s per link, 0 = inf")
    p.add_argument("--churn-rate", type=float, default=0.01, help="link failures/link/min")
    p.add_argument("--churn-duration", type=float, default=120.0, help="virtual s of churn")
    return p


def options_from(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        seed=args.seed,
        scenario=args.scenario,
        signatures=args.signatures,
        codec=args.codec,
        link=LinkModel(
            latency=args.latency, jitter=args.jitter, loss=args.loss, bandwidth=args.bandwidth
        ),
        max_pairs=args.pairs,
        duration=args.duration,
        check_interval=args.check_interval,
        converge_limit=args.converge_limit,
        churn_rate=args.churn_rate,
        churn_duration=args.churn_duration,
    )


def format_table(result: dict[str, Any]) -> str:
    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in result.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = simulate(args.topology, options_from(args))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=False) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
