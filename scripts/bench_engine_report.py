"""bench_engine: what a run reports (machine, table, timeline PNG)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from bench_common import host_info
from bench_engine_metrics import classify_gaps, step_col, summarize
from bench_engine_trace import RunRecord


def machine_info(device: str) -> dict:
    info = {**host_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def machine_line(m: dict) -> str:
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores, torch {m['torch_threads']} threads"
    return f"{where}; {m['platform']}; torch {m['torch']}; load avg at start {m['loadavg_start'][0]}"


def fv(x, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: dict) -> None:
    pols = results["policies"]
    print(f"\nmachine: {machine_line(results['machine'])}")
    print(f"SLOs: {results['slos']['rule']}")
    print(f"trace: {results['trace']['num_requests']} requests ({results['trace']['num_video']} video) at "
          f"{results['trace']['rate']} req/s over {results['trace']['duration_s']:.0f} s\n")
    print("| policy | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | gap p99 encoder / decode-only ms (ratio) "
          "| tok/s | req/s | SLO attain. | goodput req/s | other CPU |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for name, m in pols.items():
        t, p = m["ttft_ms"], m["tpot_ms"]
        slo = m.get("slo", {})
        print(f"| {name}{' (ERROR)' if m['error'] else ''} | {fv(t['p50'])} / {fv(t['p90'])} / {fv(t['p99'])} "
              f"| {fv(p['p50'], '.1f')} / {fv(p['p90'], '.1f')} / {fv(p['p99'], '.1f')} "
              f"| {fv(m['token_gap_ms_encoder']['p99'], '.1f')} / {fv(m['token_gap_ms_decode_only']['p99'], '.1f')} "
              f"({fv(m['encoder_vs_decode_only_p99'], '.2f')}x) | {m['tokens_per_s']:.1f} | {m['requests_per_s']:.3f} "
              f"| {fv(slo.get('attainment'), '.1%')} | {fv(slo.get('goodput_requests_per_s'), '.3f')} "
              f"| {fv(m['other_cpu_cores'], '.2f')} |")
    print("\n| policy | TTFT text p50 / p99 ms | TTFT video p50 / p99 ms | SLO attain. text / video | TTFT ok "
          "| TPOT ok | mean decode batch | encoder steps |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, m in pols.items():
        tt, tv = m["ttft_ms_by_kind"]["text"], m["ttft_ms_by_kind"]["video"]
        slo = m.get("slo", {})
        by = slo.get("attainment_by_kind", {})
        print(f"| {name} | {fv(tt['p50'])} / {fv(tt['p99'])} | {fv(tv['p50'])} / {fv(tv['p99'])} "
              f"| {fv(by.get('text'), '.0%')} / {fv(by.get('video'), '.0%')} | {fv(slo.get('ttft_attainment'), '.0%')} "
              f"| {fv(slo.get('tpot_attainment'), '.0%')} | {m['steps'].get('mean_decode_batch')} "
              f"| {m['steps'].get('num_encoder_steps')} |")
    print("\n| policy | round | other CPU (cores) | SLO attain. | gap p99 ratio | tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in pols.items():
        for r in m.get("rounds", []):
            print(f"| {name} | {r['round']} | {fv(r['other_cpu_cores'], '.2f')} | {fv(r['slo_attainment'], '.1%')} "
                  f"| {fv(r['encoder_vs_decode_only_p99'], '.2f')}x | {r['tokens_per_s']:.1f} |")
    if results.get("burst"):
        print("\nburst (all at t=0): " + ", ".join(
            f"{k}: {v['tokens_per_s']:.1f} tok/s in {v['span_s']:.1f} s" for k, v in results["burst"].items()))
    print(f"\ntargets: {json.dumps(results['targets'], indent=1)}")


def plot(results: dict, all_runs: dict[str, list[RunRecord]], path: Path) -> bool:
    """Per policy: per-token gaps over time of its round with the least background load (other processes' CPU),
    encoder steps shaded; TTFT/TPOT CDFs over all rounds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return False
    runs = {name: min(r, key=lambda run: run.other_cpu_cores or 0.0) for name, r in all_runs.items() if r}
    names = list(runs)
    fig = plt.figure(figsize=(13, 3.0 * len(names) + 4))
    grid = fig.add_gridspec(len(names) + 1, 2, height_ratios=[3] * len(names) + [3.5])
    tpot_slo = results["slos"]["tpot_slo_ms"]
    colors = {0: "tab:blue", 1: "tab:green", 2: "tab:red"}
    labels = {0: "decode-only gap", 1: "gap with prefill", 2: "gap with encoder work"}
    ax0 = None
    for i, name in enumerate(names):
        run = runs[name]
        ax = fig.add_subplot(grid[i, :], sharex=ax0)
        ax0 = ax0 or ax
        s = run.steps
        if len(s):
            enc = step_col(s, "encoder_tokens") > 0
            spans = _merge_spans(step_col(s, "start_s")[enc] - run.t0, step_col(s, "end_s")[enc] - run.t0)
            ax.broken_barh([(a, b - a) for a, b in spans], (0, 1), transform=ax.get_xaxis_transform(),
                           color="orange", alpha=0.25, label="step ran encoder work")
        gaps, ends, cls = classify_gaps(run)
        for c in (0, 1, 2):
            sel = cls == c
            ax.scatter(ends[sel], gaps[sel], s=3, color=colors[c], label=labels[c], alpha=0.6, linewidths=0)
        ax.axhline(tpot_slo, color="black", ls="--", lw=1, label=f"TPOT SLO {tpot_slo:.0f} ms")
        ax.set_yscale("log")
        ax.set_ylabel("per-token gap (ms)")
        m = summarize([run], results["slos"], None)
        rnd = next(i for i, r in enumerate(all_runs[name]) if r is run)
        ax.set_title(f"{name} (round {rnd}, other CPU {fv(run.other_cpu_cores, '.2f')}): "
                     f"gap p99 encoder {fv(m['token_gap_ms_encoder']['p99'], '.0f')} ms vs decode-only "
                     f"{fv(m['token_gap_ms_decode_only']['p99'], '.0f')} ms; SLO attainment "
                     f"{fv(m.get('slo', {}).get('attainment'), '.0%')}", fontsize=10)
        if i == 0:
            ax.legend(loc="upper right", fontsize=7, ncol=5, markerscale=3)
    ax0.set_xlabel("time since trace start (s)")
    for j, (key, title) in enumerate((("ttft", "TTFT"), ("tpot", "TPOT (per-request mean)"))):
        ax = fig.add_subplot(grid[-1, j])
        for name in names:
            vals = np.concatenate([_per_request(r, key) for r in all_runs[name]])
            if vals.size:
                ax.plot(np.sort(vals), np.arange(1, vals.size + 1) / vals.size, label=name)
        if key == "tpot":
            ax.axvline(tpot_slo, color="black", ls="--", lw=1, label="TPOT SLO")
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"UnifiedServe engine, Poisson trace ({results['trace']['rate']} req/s, "
                 f"{results['trace']['num_video']}/{results['trace']['num_requests']} video) — "
                 f"{machine_line(results['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _merge_spans(starts: np.ndarray, ends: np.ndarray, slack_s: float = 0.005) -> list[tuple[float, float]]:
    spans: list[list[float]] = []
    for a, b in zip(starts, ends, strict=True):
        if spans and a - spans[-1][1] <= slack_s:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans]


def _per_request(run: RunRecord, key: str) -> np.ndarray:
    if key == "ttft":
        return np.asarray([(r.token_times[0] - r.arrival) * 1000.0 for r in run.requests if r.token_times])
    return np.asarray([(r.token_times[-1] - r.token_times[0]) * 1000.0 / (len(r.token_times) - 1)
                       for r in run.requests if len(r.token_times) > 1])
