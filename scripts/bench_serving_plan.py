"""bench_serving: which rate to run next, from the rates already run (pure logic, no server).

Stateless on purpose: the same function drives a fresh sweep and ``--extend`` of an old results folder, which
then runs only what the current method adds (finer bisection, the other systems' sustained rates)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from bench_serving_metrics import ATTAINMENT_TARGET, comparison_rate, goodput


@dataclass(frozen=True)
class SweepPlan:
    grid: tuple[float, ...]  # rising rates; the sweep stops at the first below stop_below
    stop_below: float = 0.5
    probe_steps: int = 2  # a system failing the lowest grid rate is tried at 1/2, 1/4 of it
    bisect_resolution: float = 0.25  # bisect until first fail - last pass <= this x last pass (0: never)
    extra: tuple[float, ...] = ()  # rates to run in any case (the other systems' sustained rates)


def next_rate(plan: SweepPlan, attainment: Mapping[float, float]) -> float | None:
    """The next rate to run given ``attainment`` per rate already run, or None when the sweep is complete."""
    for rate in sorted(plan.grid):
        if rate not in attainment:
            return rate
        if attainment[rate] < plan.stop_below:
            break
    if not plan.grid:
        return _first_missing(plan.extra, attainment)
    lowest = min(plan.grid)
    for _ in range(plan.probe_steps):
        if attainment.get(lowest, 0.0) >= ATTAINMENT_TARGET:
            break
        lowest = round(lowest / 2, 4)
        if lowest not in attainment:
            return lowest
    mid = _bisection(plan.bisect_resolution, attainment)
    return mid if mid is not None else _first_missing(plan.extra, attainment)


def _bisection(resolution: float, attainment: Mapping[float, float]) -> float | None:
    if resolution <= 0:
        return None
    g = goodput(attainment.items())
    above = [r for r in attainment if r > g["rate"]]
    if not g["rate"] or not above:
        return None
    fail = min(above)
    if fail - g["rate"] <= resolution * g["rate"]:
        return None
    mid = round((g["rate"] + fail) / 2, 4)
    return mid if mid not in attainment else None


def _first_missing(rates: Iterable[float], attainment: Mapping[float, float]) -> float | None:
    return next((r for r in rates if r not in attainment), None)


def next_round(plans: Mapping[str, SweepPlan], attainment: Mapping[str, Mapping[float, float]], first: str
               ) -> list[tuple[str, float]]:
    """One round of an interleaved sweep: (system, rate) for every system whose sweep is not complete, the other
    systems first and ``first`` (ours) last; empty when every sweep is complete. ``first`` also runs at each other
    system's highest sustained rate (or best rate, when it sustains none: metrics.comparison_rate), once that system's
    sweep is complete (its final answer); until every other sweep is, ``first`` may sit a round out and pick the extra
    rates up later."""
    others = [name for name in plans if name != first]
    complete = [name for name in others if next_rate(plans[name], attainment[name]) is None]
    extra = tuple(sorted({rate for name in complete if (rate := comparison_rate(
        [{"rate": r, "attainment": a} for r, a in attainment[name].items()])) is not None}))
    out = []
    for name in [*others, first] if first in plans else others:
        plan = replace(plans[name], extra=plans[name].extra + extra) if name == first else plans[name]
        if (rate := next_rate(plan, attainment[name])) is not None:
            out.append((name, rate))
    return out
