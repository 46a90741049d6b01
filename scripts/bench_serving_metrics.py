"""bench_serving: SLOs, per-run summaries, SLO attainment and goodput."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from bench_serving_client import RequestResult

ATTAINMENT_TARGET = 0.9  # goodput: the highest rate at which >= 90 % of requests meet both SLOs


@dataclass(frozen=True)
class Slos:
    ttft_ms: dict[str, float]  # per request class
    tpot_ms: float  # mean time per output token after the first

    def met(self, r: RequestResult) -> bool:
        """Both SLOs met; an error or a missing class misses."""
        ttft, slo = r.ttft_ms, self.ttft_ms.get(r.class_name)
        if r.error or ttft is None or slo is None or ttft > slo:
            return False
        tpot = r.tpot_ms
        return tpot is None or tpot <= self.tpot_ms  # a 1-token answer has no TPOT

    def describe(self) -> str:
        return f"TPOT {self.tpot_ms:.2f} ms; TTFT " + ", ".join(f"{k} {v:.0f} ms" for k, v in self.ttft_ms.items())

    def as_dict(self) -> dict:
        return {"ttft_ms": {k: round(v, 1) for k, v in self.ttft_ms.items()}, "tpot_ms": round(self.tpot_ms, 2)}


def slos_from(calibrations: Iterable[dict], ttft_scale: float, tpot_scale: float) -> Slos:
    """SLOs relative to the unloaded latencies: for each request class the fastest system's unloaded TTFT
    x ttft_scale; the fastest unloaded TPOT at the typical batch x tpot_scale. The same SLOs judge everyone."""
    calibrations = list(calibrations)
    classes = set().union(*(c["ttft_ms"] for c in calibrations))
    ttft = {k: ttft_scale * min(c["ttft_ms"][k] for c in calibrations if k in c["ttft_ms"]) for k in sorted(classes)}
    return Slos(ttft, tpot_scale * min(c["batch_tpot_ms"] for c in calibrations))


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def summarize(results: list[RequestResult], slos: Slos, rate: float) -> dict:
    ok = [r for r in results if not r.error]
    ttft = [r.ttft_ms for r in ok if r.ttft_ms is not None]
    tpot = [r.tpot_ms for r in ok if r.tpot_ms is not None]
    e2e = [r.e2e_ms for r in ok if r.e2e_ms is not None]
    gaps = [g * 1e3 for r in ok for g in r.gaps_ms]
    ends = [r.end_s for r in ok if r.end_s is not None]
    span = (max(ends) - min(r.arrival_s for r in results)) if ends else 0.0
    tokens = sum(r.num_output_tokens for r in ok)
    met = sum(slos.met(r) for r in results)
    by_class: dict[str, list[bool]] = {}
    for r in results:
        by_class.setdefault(r.class_name, []).append(slos.met(r))
    return {
        "rate": rate, "num_requests": len(results), "num_errors": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "attainment": round(met / len(results), 4) if results else 0.0,
        "attainment_by_class": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_class.items())},
        "ttft_ms": {"p50": _pct(ttft, 50), "p90": _pct(ttft, 90), "p99": _pct(ttft, 99)},
        "tpot_ms": {"p50": _pct(tpot, 50), "p90": _pct(tpot, 90), "p99": _pct(tpot, 99)},
        "e2e_ms": {"p50": _pct(e2e, 50), "p99": _pct(e2e, 99)},
        "gap_ms": {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99)},
        "output_tok_per_s": round(tokens / span, 2) if span > 0 else None,
    }


def goodput(points: Iterable[tuple[float, float]], target: float = ATTAINMENT_TARGET) -> dict:
    """From (rate, attainment) points: ``rate`` = the highest tested rate meeting ``target`` with every lower
    tested rate meeting it too (0 if the lowest fails); ``interpolated`` = where attainment crosses ``target``
    on the line to the next tested rate (as DistServe reports it); ``bounded`` = whether a higher rate failed."""
    points = sorted(points)
    best, nxt = None, None
    for rate, att in points:
        if att >= target:
            best = (rate, att)
        else:
            nxt = (rate, att)
            break
    if best is None:
        return {"rate": 0.0, "interpolated": 0.0, "bounded": True, "below_lowest": points[0][0] if points else None}
    interp = best[0]
    if nxt is not None and best[1] > nxt[1]:
        interp = best[0] + (nxt[0] - best[0]) * (best[1] - target) / (best[1] - nxt[1])
    return {"rate": best[0], "interpolated": round(interp, 4), "bounded": nxt is not None}


def at_common_rate(runs: dict[str, list[dict]]) -> float | None:
    """The highest rate every system ran and met the attainment target at (for the TPOT comparison and CDFs);
    else the lowest rate all of them ran."""
    common = set.intersection(*({run["rate"] for run in rs} for rs in runs.values())) if runs else set()
    if not common:
        return None
    sustained = [r for r in common if all(run["attainment"] >= ATTAINMENT_TARGET
                                          for rs in runs.values() for run in rs if run["rate"] == r)]
    return max(sustained) if sustained else min(common)


def common_sustained_rate(a: list[dict], b: list[dict]) -> float | None:
    """The highest rate both systems ran and met the attainment target at: where the issue's "at a rate both
    sustain" p99 TPOT comparison is made (None: no such rate)."""
    passed = [{run["rate"] for run in runs if run["attainment"] >= ATTAINMENT_TARGET} for runs in (a, b)]
    both = passed[0] & passed[1]
    return max(both) if both else None


def best_rate(runs: list[dict]) -> float | None:
    """Where a system that sustains no rate came closest: the rate of its highest attainment (the lowest such)."""
    if not runs:
        return None
    return min(runs, key=lambda run: (-run["attainment"], run["rate"]))["rate"]


def sustained_rate(runs: list[dict]) -> float | None:
    """The highest rate a system met the attainment target at with every lower rate passing (None: none)."""
    rate = goodput((run["rate"], run["attainment"]) for run in runs)["rate"]
    return rate or None


def comparison_rate(runs: list[dict]) -> float | None:
    """The rate the first system also runs at to compare p99 TPOT with this one: its highest sustained rate, or,
    when it sustains none, its best rate (a stack that meets the SLOs at no rate still has a TPOT to compare)."""
    return sustained_rate(runs) or best_rate(runs)


def tpot_p99_comparisons(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """The first system vs each other one: p99 TPOT of both at their common sustained rate, and the ratio. When the
    other system sustains no rate, at its best rate instead if the first one ran it (`both_sustain` False)."""
    names = list(runs)
    out = {}
    for other in names[1:]:
        rate, both = common_sustained_rate(runs[names[0]], runs[other]), True
        if rate is None and sustained_rate(runs[other]) is None:
            rate, both = best_rate(runs[other]), False
        if rate is None or all(run["rate"] != rate for run in runs[names[0]]):
            out[f"{names[0]} / {other}"] = None
            continue
        p99 = [next(run["tpot_ms"]["p99"] for run in runs[n] if run["rate"] == rate) for n in (names[0], other)]
        ratio = round(p99[0] / p99[1], 3) if p99[0] is not None and p99[1] else None
        out[f"{names[0]} / {other}"] = {"rate": rate, "p99_tpot_ms": p99, "ratio": ratio, "both_sustain": both}
    return out
