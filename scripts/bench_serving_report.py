"""bench_serving: the printed table, results.json / raw.json, and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bench_serving_client import RequestResult
from bench_serving_markdown import runs_table
from bench_serving_metrics import ATTAINMENT_TARGET, Slos, at_common_rate


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: dict) -> None:
    systems = results["systems"]
    slos = results["slos"]
    print(f"\nSLOs: TPOT {slos['tpot_ms']} ms; TTFT " + ", ".join(f"{k} {v:.0f}" for k, v in slos["ttft_ms"].items())
          + " ms")
    start = results.get("slos_at_start")
    if start and start != slos:  # a calibration after the sweeps found the host slower (bench_serving_drift)
        print(f"  (the slower of {1 + len(results.get('recalibrations', []))} calibrations; at the start: TPOT "
              f"{start['tpot_ms']} ms, TTFT text {start['ttft_ms'].get('text', 0):.0f} ms)")
    speeds = [h["batch_tpot_ms"] for h in results.get("host_speed", [])]
    if speeds:
        print(f"  host speed over the rounds (unloaded TPOT at the typical batch): {min(speeds):.2f}-{max(speeds):.2f} "
              f"ms, median {float(np.median(speeds)):.2f} ms")
    if discarded := results.get("discarded_rounds"):
        print(f"  {len(discarded)} round(s) run again: the host was slower than at the calibration by more than the "
              f"--slow-host-factor (rounds {', '.join(str(d['round']) for d in discarded)})")
    print(f"\n{'system':<16} {'rate':>7} {'n':>4} {'err':>4} {'attain':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'TPOT p99':>9} {'tok/s':>7}")
    for name, entry in systems.items():
        for run in entry["runs"]:
            print(f"{name:<16} {run['rate']:7.3f} {run['num_requests']:4d} {run['num_errors']:4d} "
                  f"{run['attainment']:7.1%} {_fmt(run['ttft_ms']['p50']):>9} {_fmt(run['ttft_ms']['p99']):>9} "
                  f"{_fmt(run['tpot_ms']['p50'], 2):>9} {_fmt(run['tpot_ms']['p99'], 2):>9} "
                  f"{_fmt(run['output_tok_per_s']):>7}" + ("  (host slow)" if run.get("host_slow") else ""))
    print(f"\n{'system':<16} {'goodput req/s':>14} {'(grid)':>8}  unloaded TTFT text / slowest video class (ms)")
    for name, entry in systems.items():
        g, cal = entry["goodput"], entry["calibration"]["ttft_ms"]
        video = max((v for k, v in cal.items() if k != "text"), default=None)
        bound = "" if g["bounded"] else " (no failing rate found: a lower bound)"
        print(f"{name:<16} {g['interpolated']:14.3f} {g['rate']:8.3f}  {cal['text']:.0f} / {_fmt(video, 0)}{bound}")
    for pair, ratio in results.get("goodput_ratios", {}).items():
        print(f"goodput {pair}: {'inf (the other has none)' if ratio is None else f'{ratio:.2f}x'}")
    common = at_common_rate({n: e["runs"] for n, e in systems.items()})
    if common is not None:
        tpot = {n: next(r["tpot_ms"]["p99"] for r in e["runs"] if r["rate"] == common) for n, e in systems.items()}
        first = next(iter(tpot))
        ratios = ", ".join(f"{first}/{n} {tpot[first] / v:.2f}x" for n, v in tpot.items() if n != first and v)
        print(f"p99 TPOT at {common} req/s (a rate all ran): " + ", ".join(f"{n} {v} ms" for n, v in tpot.items())
              + (f" ({ratios})" if ratios else ""))
    for pair, cmp in results.get("tpot_p99_at_common_sustained_rate", {}).items():
        print(f"p99 TPOT {pair} {tpot_rate_words(cmp)}: " + ("none" if cmp is None else
              f"{cmp['rate']} req/s, {cmp['p99_tpot_ms'][0]} vs {cmp['p99_tpot_ms'][1]} ms = {_fmt(cmp['ratio'], 2)}x"))
    print(f"machine: {results['machine']}; wall {results.get('wall_s')} s")


def tpot_rate_words(cmp: dict | None) -> str:
    """Where a p99 TPOT comparison was made (metrics.tpot_p99_comparisons)."""
    if cmp is None or cmp.get("both_sustain", True):
        return "at the highest rate both sustain"
    return "at the other's best rate (it sustains none)"


def write_outputs(results: dict, out: Path, plots: bool = True) -> None:
    raw = {name: entry["raw"] for name, entry in results["systems"].items()}
    slim = {**results,
            "systems": {n: {k: v for k, v in e.items() if k != "raw"} for n, e in results["systems"].items()}}
    common = at_common_rate({n: e["runs"] for n, e in results["systems"].items()})
    slim["common_rate"] = common
    (out / "results.json").write_text(json.dumps(slim, indent=1))
    (out / "raw.json").write_text(json.dumps(raw))
    (out / "runs.md").write_text(runs_table(results) + "\n")
    if not plots:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots (pip install -e .[bench])")
        return
    _plot_attainment(plt, results, out / "attainment.png")
    if common is not None:
        _plot_cdfs(plt, results, common, out / "cdf.png")
    print(f"results in {out}/: results.json raw.json runs.md attainment.png cdf.png")


def _plot_attainment(plt, results: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, entry in results["systems"].items():
        runs = entry["runs"]
        ax.plot([r["rate"] for r in runs], [100 * r["attainment"] for r in runs], marker="o",
                label=f"{name} (goodput {entry['goodput']['interpolated']:.2f} req/s)")
    ax.axhline(100 * ATTAINMENT_TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("arrival rate (req/s, Poisson)")
    ax.set_ylabel("requests meeting TTFT and TPOT SLOs (%)")
    ax.set_ylim(0, 102)
    ax.set_title("SLO attainment vs load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_cdfs(plt, results: dict, rate: float, path: Path) -> None:
    slos = Slos(results["slos"]["ttft_ms"], results["slos"]["tpot_ms"])
    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, entry in results["systems"].items():
        reqs = [RequestResult(**r) for r in entry["raw"].get(str(rate), [])]
        # TTFT relative to each request's own class SLO, so text and video requests share one axis.
        ttft = sorted(r.ttft_ms / slos.ttft_ms[r.class_name] for r in reqs if r.ttft_ms is not None)
        tpot = sorted(r.tpot_ms for r in reqs if r.tpot_ms is not None)
        for ax, values in ((ax_ttft, ttft), (ax_tpot, tpot)):
            if values:
                ax.plot(values, np.arange(1, len(values) + 1) / len(values), label=name)
    ax_ttft.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax_tpot.axvline(slos.tpot_ms, color="grey", linestyle="--", linewidth=1)
    ax_ttft.set_xscale("log")
    ax_ttft.xaxis.set_minor_formatter(plt.NullFormatter())  # log minor labels overlap
    ax_ttft.set_xlabel("TTFT / its class's TTFT SLO (log)")
    ax_tpot.set_xlabel("TPOT (ms, mean per request)")
    for ax in (ax_ttft, ax_tpot):
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CDFs at {rate} req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
