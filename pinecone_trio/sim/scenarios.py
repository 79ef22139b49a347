"""Scenarios: cold start, failures, joins, mobility and churn, each fully measured.

Every run has the same spine:

1. **Cold start.** Build the topology (degree-capped at 253 peers, the router's port
   limit), start every engine at virtual time 0 with all links up, and check ground
   truth every `check_interval` seconds until the tree and the snake have both
   converged (`invariants.py`). The convergence times are those check times, so their
   resolution is `check_interval`.
2. **Steady state.** Probe a seeded sample of ordered pairs (all of them on small
   graphs), spread over `probe_window` seconds, and measure delivery and stretch
   (`metrics.py`), control bytes per node per second over `measure_window`, and the
   routing table sizes.
3. **The scenario's event**, then the time until the tree and the snake have converged
   again on the new graph (`recovery_s`), delivery of probes sent right after the
   event, and delivery once recovered:

   * ``cold``: nothing more;
   * ``link-failure``: the link between a random non-root node and its tree parent;
   * ``node-failure``: a random node that is not the root;
   * ``root-departure``: the root of the largest component;
   * ``join``: a new node linked to two random nodes;
   * ``mobility``: a random non-root node loses all its links and is linked to two
     random nodes elsewhere;
   * ``churn``: for `churn_duration` seconds, links fail at `churn_rate` of all links
     per minute (a Poisson process) and each comes back after `churn_downtime`, while
     probes run all the time; delivery during churn is reported.

Randomness comes from one `random.Random` seeded by the seed and scenario name.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final, final

from ..router.constants import MAX_PORT
from ..router.state import RouterConfig
from .generators import build_topology
from .invariants import check_snake, check_tree
from .metrics import Prober, ProbeReport, Summary, sample_pairs
from .network import LinkModel, Network
from .topology import Graph

SCENARIOS: Final = (
    "cold",
    "link-failure",
    "node-failure",
    "root-departure",
    "join",
    "mobility",
    "churn",
)


@final
@dataclass(frozen=True, slots=True)
class SimOptions:
    """Everything a run depends on besides the topology."""

    seed: int = 0
    scenario: str = "cold"
    signatures: bool = False
    codec: bool = False
    link: LinkModel = field(default_factory=LinkModel)
    config: RouterConfig | None = None
    #: Ordered pairs probed per measurement (all pairs when the graph has fewer).
    max_pairs: int = 1000
    probe_window: float = 2.0
    check_interval: float = 0.5
    #: Until the tree has converged it is checked this often (finer than the snake).
    tree_check_interval: float = 0.05
    #: Virtual seconds allowed for convergence and for each recovery.
    converge_limit: float = 300.0
    #: Virtual seconds over which steady-state control traffic is measured.
    measure_window: float = 20.0
    #: The run lasts at least this many virtual seconds (idle at the end if needed).
    duration: float = 0.0
    churn_rate: float = 0.01
    churn_duration: float = 120.0
    churn_downtime: float = 30.0
    degree_limit: int = MAX_PORT

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; one of {', '.join(SCENARIOS)}")
        if min(self.check_interval, self.tree_check_interval, self.converge_limit) <= 0:
            raise ValueError("intervals must be positive")
        if self.probe_window < 0:
            raise ValueError("the probe window cannot be negative")
        if self.max_pairs < 1:
            raise ValueError("probe at least one pair")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _round(x: float, digits: int = 4) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


@final
class Watch:
    """Counts, over checks made while a run goes on, those where ground truth failed."""

    __slots__ = ("checks", "snake_bad", "tree_bad")

    def __init__(self) -> None:
        self.checks = 0
        self.tree_bad = 0
        self.snake_bad = 0

    def check(self, net: Network) -> None:
        self.checks += 1
        self.tree_bad += not check_tree(net).ok
        self.snake_bad += not check_snake(net).ok


@final
class Run:
    """One simulation in progress; `simulate` drives it through its phases."""

    def __init__(self, graph: Graph, options: SimOptions) -> None:
        self.options = options
        self.rng = random.Random(f"scenario:{options.seed}:{options.scenario}")
        self.links_capped = graph.cap_degree(options.degree_limit)
        rss = _rss_bytes()
        self.net = Network(
            graph,
            seed=options.seed,
            link=options.link,
            signatures=options.signatures,
            codec=options.codec,
            config=options.config,
        )
        self.prober = Prober(self.net)
        self.rss_start = rss
        self.checks = 0
        self.check_failures: list[str] = []

    # --- convergence --------------------------------------------------------------------

    def converge(self) -> tuple[float | None, float | None]:
        """Run until tree and snake both match ground truth, or the limit.

        Returns:
            (tree time, snake time), each relative to now, or None if not reached.
        """
        net, opts = self.net, self.options
        start = net.now
        tree_at: float | None = None
        snake_at: float | None = None
        # The tree settles in well under a second, the snake in many 5 s rounds: check
        # the tree finely until it has converged, the (costlier) snake coarsely.
        fine = min(opts.check_interval, opts.tree_check_interval)
        next_snake = start + opts.check_interval
        while net.now - start < opts.converge_limit:
            step = next_snake if tree_at is not None else min(net.now + fine, next_snake)
            net.run_until(step)
            self.checks += 1
            tree_at = (tree_at or net.now) if check_tree(net).ok else None
            if net.now < next_snake:
                continue
            next_snake = net.now + opts.check_interval
            snake_at = (snake_at or net.now) if check_snake(net).ok else None
            if tree_at is not None and snake_at is not None:
                return tree_at - start, snake_at - start
        return (
            None if tree_at is None else tree_at - start,
            None if snake_at is None else snake_at - start,
        )

    # --- probing ------------------------------------------------------------------------

    def probe_round(self, *, at: float | None = None, pairs: int | None = None) -> float:
        """Schedule a round of probe exchanges; return when its first probe goes out."""
        net, opts = self.net, self.options
        start = net.now if at is None else at
        chosen = sample_pairs(net, pairs or opts.max_pairs, self.rng)
        prober = self.prober
        for i, (a, b) in enumerate(chosen):
            t = start + opts.probe_window * i / max(1, len(chosen))
            net.call_at(t, functools.partial(prober.start_nowait, a, b))
        return start

    def probes_done_at(self) -> float:
        """When every probe of rounds scheduled so far has been delivered or timed out,
        including the replies and steady packets they trigger."""
        prober = self.prober
        return self.net.now + self.options.probe_window + 3 * prober.timeout + prober.steady_gap

    def watch(self, start: float, end: float) -> Watch:
        """Check tree and snake every `check_interval` in [start, end) (during a run)."""
        watch = Watch()
        net = self.net
        t = start + self.options.check_interval
        while t < end:
            net.call_at(t, functools.partial(watch.check, net))
            t += self.options.check_interval
        return watch

    def settle_probes(self) -> None:
        """Run until every probe sent so far has been delivered or timed out, including
        the replies and steady packets they trigger."""
        self.net.run_until(self.probes_done_at())

    # --- reporting ----------------------------------------------------------------------

    def table_sizes(self) -> Summary:
        return Summary.of([float(n.state.snake_table_size()) for n in self.net.nodes if n.alive])


def _probe_fields(prefix: str, report: ProbeReport) -> dict[str, Any]:
    first = report.stretch["first"]
    steady = report.stretch["steady"]
    return {
        f"{prefix}delivery_ratio": _round(report.delivery_ratio),
        f"{prefix}first_packet_delivery_ratio": _round(report.ratio("first")),
        f"{prefix}steady_delivery_ratio": _round(report.ratio("steady")),
        f"{prefix}probes_sent": sum(report.sent.values()),
        f"{prefix}probes_delivered": sum(report.delivered.values()),
        f"{prefix}stretch_mean": _round(steady.mean),
        f"{prefix}stretch_p50": _round(steady.p50),
        f"{prefix}stretch_p95": _round(steady.p95),
        f"{prefix}stretch_max": _round(steady.max),
        f"{prefix}first_packet_stretch_mean": _round(first.mean),
        f"{prefix}first_packet_stretch_p50": _round(first.p50),
        f"{prefix}first_packet_stretch_p95": _round(first.p95),
        f"{prefix}first_packet_stretch_max": _round(first.max),
        f"{prefix}forwarding_loops": report.loops,
        f"{prefix}first_packets_with_coords": report.first_with_coords,
        f"{prefix}steady_packets_without_coords": report.steady_without_coords,
        f"{prefix}misdelivered": report.misdelivered,
    }


def simulate(topology: str | Graph, options: SimOptions | None = None) -> dict[str, Any]:
    """Run one scenario on one topology and return its measurements (JSON-ready).

    Args:
        topology: a `Graph`, or a spec for `generators.build_topology`.
        options: the run's parameters.

    Raises:
        ValueError: for a bad topology spec or options.
    """
    opts = options if options is not None else SimOptions()
    wall_start = time.perf_counter()
    cpu_start = time.process_time()
    graph = build_topology(topology, opts.seed) if isinstance(topology, str) else topology
    run = Run(graph, opts)
    net = run.net
    out: dict[str, Any] = {
        "topology": topology if isinstance(topology, str) else "graph",
        "seed": opts.seed,
        "scenario": opts.scenario,
        "signatures": "ed25519" if opts.signatures else "null",
        "codec": opts.codec,
    }

    tree_s, snake_s = run.converge()
    out["nodes"] = graph.node_count()
    out["links"] = graph.link_count()
    out["links_capped"] = run.links_capped
    out["components"] = len(graph.components())
    out["tree_converged_s"] = None if tree_s is None else round(tree_s, 3)
    out["snake_converged_s"] = None if snake_s is None else round(snake_s, 3)
    rss_converged = _rss_bytes()
    out["memory_per_node_bytes"] = (
        max(0, rss_converged - run.rss_start) // max(1, len(net.nodes)) if run.rss_start else None
    )

    # Steady state: probes, control traffic and tables.
    measure_start = net.now
    net.reset_traffic()
    run.probe_round()
    end = max(measure_start + opts.measure_window, run.probes_done_at())
    watch = run.watch(measure_start, end)
    net.run_until(end)
    elapsed = net.now - measure_start
    out["steady_checks"] = watch.checks
    out["steady_tree_bad_checks"] = watch.tree_bad
    out["steady_snake_bad_checks"] = watch.snake_bad
    out.update(_probe_fields("", run.prober.report(since=measure_start)))
    out["control_bytes_per_node_s"] = _round(
        net.stats.control_bytes / max(1, graph.node_count()) / elapsed, 2
    )
    tables = run.table_sizes()
    out["table_size_mean"] = _round(tables.mean, 2)
    out["table_size_p95"] = tables.p95
    out["table_size_max"] = tables.max
    out["coords_cache_max"] = max(
        (n.state.coords_cache_size() for n in net.nodes if n.alive), default=0
    )

    scenario_fields = _run_scenario(run)
    out.update(scenario_fields)

    if net.now < opts.duration:
        net.run_until(opts.duration)
    final_tree = check_tree(net)
    final_snake = check_snake(net)
    out["final_tree_ok"] = final_tree.ok
    out["final_snake_ok"] = final_snake.ok
    if final_tree.ok and final_snake.ok:
        out["final_reconverge_s"] = 0.0
    else:
        tree_s, snake_s = run.converge()
        done = tree_s is not None and snake_s is not None
        out["final_reconverge_s"] = max(tree_s or 0.0, snake_s or 0.0) if done else None
    out["forwarding_loops_total"] = run.prober.loops
    out["probe_revisits_total"] = run.prober.revisits
    out["bootstrap_loops_total"] = run.prober.bootstrap_loops
    out["peers_dropped"] = net.stats.peers_dropped
    out["virtual_s"] = round(net.now, 3)
    out["events"] = net.stats.events
    out["engine_calls"] = net.stats.engine_calls
    out["wall_s"] = round(time.perf_counter() - wall_start, 3)
    out["cpu_s"] = round(time.process_time() - cpu_start, 3)
    return out


def _main_component(run: Run) -> list[int]:
    return run.net.graph.components()[0]


def _root_of(run: Run, members: list[int]) -> int:
    nodes = run.net.nodes
    return max(members, key=lambda a: nodes[a].key)


def _after_event(run: Run, prefix: str) -> dict[str, Any]:
    """Probe right after an event, wait for recovery, then probe again."""
    net = run.net
    event_at = net.now
    run.probe_round()
    tree_s, snake_s = run.converge()
    recovered_at = net.now
    run.settle_probes()
    during = run.prober.report(since=event_at, until=recovered_at)
    after_start = net.now
    run.probe_round()
    run.settle_probes()
    after = run.prober.report(since=after_start)
    recovery = None if tree_s is None or snake_s is None else max(tree_s, snake_s)
    return {
        f"{prefix}recovery_s": recovery,
        f"{prefix}tree_recovery_s": tree_s,
        f"{prefix}snake_recovery_s": snake_s,
        f"{prefix}delivery_ratio_during_recovery": _round(during.delivery_ratio),
        f"{prefix}delivery_ratio_after_recovery": _round(after.delivery_ratio),
        f"{prefix}stretch_mean_after_recovery": _round(after.stretch["steady"].mean),
    }


def _run_scenario(run: Run) -> dict[str, Any]:
    net, rng, name = run.net, run.rng, run.options.scenario
    if name == "cold":
        return {}
    if name == "churn":
        return _churn(run)
    members = _main_component(run)
    root = _root_of(run, members)
    others = [a for a in members if a != root]
    if name == "link-failure":
        victim = rng.choice(others)
        parent_port = net.nodes[victim].state.parent_port
        parent = None if parent_port is None else net.node_of_port(victim, parent_port)
        if parent is None:
            return {"event": "no parent link to fail"}
        net.disconnect(victim, parent)
        return {"event": f"link {victim}-{parent} failed", **_after_event(run, "")}
    if name == "node-failure":
        victim = rng.choice(others)
        net.remove_node(victim)
        return {"event": f"node {victim} failed", **_after_event(run, "")}
    if name == "root-departure":
        net.remove_node(root)
        return {"event": f"root {root} left", **_after_event(run, "")}
    if name == "join":
        new = net.add_node("joined")
        for b in rng.sample(members, min(2, len(members))):
            net.connect(new, b)
        return {"event": f"node {new} joined", **_after_event(run, "")}
    assert name == "mobility"
    mover = rng.choice(others)
    old = net.neighbours(mover)
    candidates = [a for a in others if a != mover and a not in old]
    for b in old:
        net.disconnect(mover, b)
    for b in rng.sample(candidates, min(2, len(candidates))):
        net.connect(mover, b)
    return {"event": f"node {mover} moved", **_after_event(run, "")}


def _churn(run: Run) -> dict[str, Any]:
    net, rng, opts = run.net, run.rng, run.options
    start = net.now
    end = start + opts.churn_duration
    links = net.graph.link_count()
    rate = opts.churn_rate * links / 60.0  # failures per virtual second
    failures = 0
    t = start
    down: list[tuple[int, int]] = []

    def fail() -> None:
        nonlocal failures
        candidates = list(net.graph.links())
        if not candidates:
            return
        a, b = candidates[rng.randrange(len(candidates))]
        if net.disconnect(a, b):
            failures += 1
            down.append((a, b))
            net.call_at(net.now + opts.churn_downtime, lambda: _restore(net, a, b))

    while rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        net.call_at(t, fail)
    # Probes all through the churn, one round per probe window.
    rounds = max(1, int(opts.churn_duration / max(opts.probe_window, 1.0)))
    per_round = max(1, opts.max_pairs // rounds)
    for i in range(rounds):
        run.probe_round(at=start + i * opts.churn_duration / rounds, pairs=per_round)
    net.reset_traffic()
    net.run_until(end)
    elapsed = net.now - start
    control = net.stats.control_bytes / max(1, net.graph.node_count()) / elapsed
    run.settle_probes()
    report = run.prober.report(since=start, until=end)
    net.run_until(end + opts.churn_downtime)  # every failed link is back
    tree_s, snake_s = run.converge()
    return {
        "churn_link_failures": failures,
        "churn_delivery_ratio": _round(report.delivery_ratio),
        "churn_first_packet_delivery_ratio": _round(report.ratio("first")),
        "churn_steady_delivery_ratio": _round(report.ratio("steady")),
        "churn_probes_sent": sum(report.sent.values()),
        "churn_stretch_mean": _round(report.stretch["steady"].mean),
        "churn_control_bytes_per_node_s": _round(control, 2),
        "churn_forwarding_loops": report.loops,
        "recovery_s": None if tree_s is None or snake_s is None else max(tree_s, snake_s),
    }


def _restore(net: Network, a: int, b: int) -> None:
    if net.nodes[a].alive and net.nodes[b].alive:
        net.connect(a, b)
