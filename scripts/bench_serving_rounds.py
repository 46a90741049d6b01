"""bench_serving, phase 2: the load rounds, each run again when the host was measured slow around it.

In each round every system whose sweep is not complete runs its next rate, ours last (bench_serving_plan.next_round).
The machine's speed drifts on a shared host (the 2-core VM of docs/benchmarks.md: an engine decode step 1.5-2x within
minutes to an hour); round by round a slow spell lands on every system alike, but a round that ran in one is judged by
SLOs set in a faster moment: serving31 had three rounds at 1.7-1.9x the calibration's speed, and their four runs were
the only dips that set two goodputs. So the first system's unloaded TPOT at the typical batch is probed before and
after each round (~1 s each); where the slower probe is more than `slow_host_factor` x the same probe in the
calibration whose SLOs are in force, the calibration first runs again: a spell that lasts makes it slower, the SLOs
follow it (bench_serving_drift) and the round counts, judged by them. A spell that ended leaves the SLOs as they were;
then the round's runs are set aside (summaries kept in results.json under ``discarded_rounds``) and the round runs
again, up to `slow_retries` times; after that the last attempt counts, marked ``host_slow``. Every system of the round
reruns, so the comparison stays side by side. (Retries alone, first tried: a spell that lasted ran one round three
times, 4.5 min each, for nothing.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from bench_serving_calibration import batch_tpots
from bench_serving_client import Hints, replay
from bench_serving_drift import judged
from bench_serving_metrics import Slos, goodput, summarize, tpot_p99_comparisons
from bench_serving_plan import SweepPlan, next_round
from bench_serving_report import write_outputs
from bench_serving_trace import make_trace


def is_slow(speed_ms: float, reference_ms: float, factor: float) -> bool:
    """Whether a round whose slower host probe read ``speed_ms`` ran in a slow spell (factor <= 0: never)."""
    return factor > 0 and reference_ms > 0 and speed_ms > factor * reference_ms


def reference_speed(results: dict, first: str) -> float:
    """The host probe's value when the SLOs in force were set: the first system's unloaded TPOT at the typical batch in
    the slowest calibration that set them (the SLOs follow the slower calibration, bench_serving_drift; one that did
    not loosen them set nothing)."""
    calibrations = [results["systems"][first]["calibration"]]
    calibrations += [r["calibration"][first] for r in results.get("recalibrations", [])
                     if r.get("loosened", True) and first in r["calibration"]]
    return max(c.get("batch_tpot_ms", 0.0) for c in calibrations)


def load_rounds(urls: dict[str, str], systems: list, args, classes, videos, shape, slos: Slos, results: dict,
                again: Callable[[Slos, dict, str], Slos] | None = None) -> tuple[int, Slos]:
    """Phase 2, interleaved. ``again``: the calibration once more (bench_serving_drift.calibrate_again; None where the
    SLOs are given). Returns how many rounds ran (set-aside attempts included) and the SLOs in force at the end."""
    first = systems[0].name
    plans = {s.name: SweepPlan(tuple(results["systems"][s.name]["grid"]), args.stop_below, 0 if args.quick else 2,
                               args.bisect_resolution) for s in systems}
    entries = {name: results["systems"][name] for name in plans}
    reference = reference_speed(results, first)
    retries: dict[tuple, int] = {}
    recalibrated: set[tuple] = set()
    rounds, probe = 0, None
    while todo := next_round(plans, {n: {run["rate"]: run["attainment"] for run in e["runs"]}
                                     for n, e in entries.items()}, first):
        rounds += 1
        n = results["num_rounds"] = results.get("num_rounds", len(results.get("host_speed", []))) + 1
        print(f"\n=== load, round {n}: " + ", ".join(f"{name} at {rate} req/s" for name, rate in todo), flush=True)
        # Every system gets the same SLOs as hints (ttft_slo_ms per class, tpot_slo_ms) and is judged by them.
        hints = {name: Hints(ms, slos.tpot_ms) for name, ms in slos.ttft_ms.items()}
        before = probe if probe is not None else host_speed(urls[first], args, results)
        measured = {name: _one_rate(urls[name], name, rate, args, classes, videos, shape, hints, slos)
                    for name, rate in todo}
        after = probe = host_speed(urls[first], args, results)
        speed, key = max(before, after), tuple(todo)
        slow = is_slow(speed, reference, args.slow_host_factor)
        if slow and again is not None and key not in recalibrated:
            # A spell that lasts is the calibration's to follow (the SLOs loosen, bench_serving_drift); one that ended
            # leaves the calibration as fast as before, and the round runs again.
            recalibrated.add(key)
            slos = again(slos, results, f"round {n} ran at {speed:.2f} ms, > {args.slow_host_factor} x {reference:.2f}")
            reference, probe = reference_speed(results, first), None
            slow = is_slow(speed, reference, args.slow_host_factor)
        if slow and retries.get(key, 0) < args.slow_retries:
            retries[key] = retries.get(key, 0) + 1
            results.setdefault("discarded_rounds", []).append({
                "round": n, "host_batch_tpot_ms": [before, after], "reference_ms": reference,
                "runs": {name: measured[name][0] | {"host_batch_tpot_ms": speed} for name, _ in todo}})
            print(f"  host slow in this round ({speed:.2f} ms > {args.slow_host_factor} x {reference:.2f} ms at the "
                  f"calibration): its runs are set aside and the round runs again ({retries[key]} of at most "
                  f"{args.slow_retries})", flush=True)
            continue
        for name, rate in todo:
            summary, raw = measured[name]
            run = judged(summary | {"host_batch_tpot_ms": speed} | ({"host_slow": True} if slow else {}), raw, slos)
            entry = entries[name]
            entry["raw"][str(rate)] = raw
            entry["runs"] = sorted([r for r in entry["runs"] if r["rate"] != rate] + [run], key=lambda r: r["rate"])
        # A checkpoint per round (no plots): a run stopped part way keeps what it measured, and `--extend DIR`
        # goes on from there (same traces, SLOs and grid; it reruns only the missing rates).
        write_outputs(finish(results, slos), args.out, plots=False)
    if not rounds:
        print("  every planned rate already ran", flush=True)
    return rounds, slos


def host_speed(url: str, args, results: dict) -> float:
    """The first system's unloaded TPOT at the typical batch (~1 s): the host's speed, recorded in results.json so a
    reader sees how far it drifted while the rates ran."""
    tpot = round(sorted(batch_tpots(url, args.typical_batch, args.calib_tokens))[args.typical_batch // 2], 2)
    results.setdefault("host_speed", []).append({"time": time.strftime("%H:%M:%S"), "batch_tpot_ms": tpot})
    print(f"  host speed: unloaded TPOT at batch {args.typical_batch} {tpot:.2f} ms", flush=True)
    return tpot


def _one_rate(url, name, rate, args, classes, videos, shape, hints, slos) -> tuple[dict, list]:
    from tqdm import tqdm

    trace = make_trace(args.seed, rate, args.duration, args.min_requests, classes, shape)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with tqdm(total=len(trace), desc=f"  {name} {rate:7.3f} req/s", unit="req", leave=False) as bar:
        results = replay(url, trace, videos, hints, args.request_timeout, on_done=lambda: bar.update(1))
    summary = summarize(results, slos, rate) | {"started": started}
    print(f"  {name:>16} {rate:7.3f} req/s: {len(trace):3d} requests, SLO attainment {summary['attainment']:.0%}, "
          f"TTFT p50 {summary['ttft_ms']['p50']} ms, TPOT p99 {summary['tpot_ms']['p99']} ms, "
          f"errors {summary['num_errors']}", flush=True)
    return summary, [asdict(r) for r in results]


def finish(results: dict, slos: Slos) -> dict:
    """Goodput per system (its runs were judged by ``slos`` as they ran), ours vs each other system's goodput, and
    p99 TPOT of ours vs each other system at the highest rate both sustain."""
    results["slos"] = slos.as_dict()
    for entry in results["systems"].values():
        entry["goodput"] = goodput((run["rate"], run["attainment"]) for run in entry["runs"])
    names = list(results["systems"])
    if names:
        ours = results["systems"][names[0]]["goodput"]["interpolated"]
        results["goodput_ratios"] = {f"{names[0]} / {n}": (round(ours / g, 2) if g else None)
                                     for n in names[1:] for g in [results["systems"][n]["goodput"]["interpolated"]]}
    results["tpot_p99_at_common_sustained_rate"] = tpot_p99_comparisons(
        {n: e["runs"] for n, e in results["systems"].items()})
    return results
