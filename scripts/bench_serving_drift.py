"""bench_serving: SLOs that hold however the host's speed drifts during a run.

The SLOs scale the unloaded latencies measured at the start. On a shared host whose speed drifts 1.5-2x within the
hour (the 2-core VM of docs/benchmarks.md), a calibration in a fast moment sets SLOs that no system meets in a slow
one even unloaded: a full run (serving26) had every baseline fail its lowest rate on TPOT alone. So the calibration
is repeated after the load sweeps; the SLOs become the slower of the two, per class (each unloaded latency is still
the fastest system's), every run is judged again by them from its raw per-request times, and the sweeps go on
where the new judgement moves a system's sweep (a rate that now passes opens the next one; the bisection
re-centres). Runs made before are kept as they ran: they were hinted with the tighter SLOs, which only constrains the
SLO-aware engine (ours) more, never less.
"""

from __future__ import annotations

import time

from bench_serving_calibration import calibrate
from bench_serving_client import RequestResult
from bench_serving_metrics import Slos, slos_from, summarize

# What a run records about when and how it ran: kept when it is judged again.
_AS_THEY_RAN = ("started", "host_batch_tpot_ms", "host_slow")


def slower(a: Slos, b: Slos) -> Slos:
    """Per request class the larger TTFT SLO, and the larger TPOT SLO: SLOs an unloaded system meets at both."""
    classes = sorted(set(a.ttft_ms) | set(b.ttft_ms))
    ttft = {k: max(s.ttft_ms[k] for s in (a, b) if k in s.ttft_ms) for k in classes}
    return Slos(ttft, max(a.tpot_ms, b.tpot_ms))


def loosens(before: Slos, after: Slos, tolerance: float = 0.02) -> bool:
    """Whether ``after`` is looser than ``before`` by more than ``tolerance`` anywhere (less is noise: judging again
    and reopening sweeps for a 1 % change would spend minutes on nothing)."""
    if after.tpot_ms > before.tpot_ms * (1 + tolerance):
        return True
    return any(v > before.ttft_ms.get(k, 0.0) * (1 + tolerance) for k, v in after.ttft_ms.items())


def judged(run: dict, raw: list[dict], slos: Slos) -> dict:
    """One run summarised again from its raw per-request times under ``slos``, keeping how it ran."""
    return (summarize([RequestResult(**r) for r in raw], slos, run["rate"])
            | {k: run[k] for k in _AS_THEY_RAN if k in run})


def rejudge(results: dict, slos: Slos) -> None:
    """Every run of every system summarised again from its raw per-request times under ``slos`` (in place)."""
    for entry in results["systems"].values():
        entry["runs"] = [judged(run, entry["raw"][str(run["rate"])], slos) for run in entry["runs"]]


def calibrate_again(urls: dict[str, str], args, classes, videos, slos: Slos, results: dict, why: str) -> Slos:
    """The calibration once more (recorded under ``recalibrations`` with ``why``): the slower SLOs, with every run so
    far judged again by them, or ``slos`` itself when the host is not slower than when they were set."""
    print(f"\n=== calibration again ({why}; the SLOs become the slower one)", flush=True)
    again = calibrate(urls, classes, videos, reps=args.calib_reps, typical_batch=args.typical_batch,
                      tokens=args.calib_tokens)
    measured = slos_from(again.values(), args.ttft_slo_scale, args.tpot_slo_scale)
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "why": why, "calibration": again, "slos": measured.as_dict()}
    results.setdefault("recalibrations", []).append(record)
    record["loosened"] = loosens(slos, measured)
    if not record["loosened"]:
        print("  the host is not slower than when the SLOs were set: SLOs unchanged", flush=True)
        return slos
    slos = slower(slos, measured)
    print(f"  SLOs now: {slos.describe()}", flush=True)
    rejudge(results, slos)
    return slos
