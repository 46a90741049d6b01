"""bench_decode: what a run reports (machine, table, PNG, targets)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
from bench_common import host_info


def machine_info() -> dict:
    return {**host_info(), "cpu_count": os.cpu_count(), "av": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
            "numpy": np.__version__, "loadavg_start": list(os.getloadavg())}


def print_table(results: list[dict]) -> None:
    print("\n| workload | method | median ms | p90 ms | runs | vs (a) seq | vs seq-ft | efficiency "
          "| engine ms (eff.) | frames decoded |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in results:
        for r in w["methods"]:
            eff = f"{r['efficiency']:.0%}" if "efficiency" in r else ""
            engine = f"{r['engine_ms']:.0f}" if "engine_ms" in r else ""
            if "engine_efficiency" in r:
                engine += f" ({r['engine_efficiency']:.0%})"
            lat = r["latency"]
            vs = [f"{r[k]:.2f}x" if k in r else "" for k in ("speedup_vs_seq", "speedup_vs_seq-ft")]
            print(f"| {w['name']} | {r['method']} | {lat['median_ms']:.0f} | {lat['p90_ms']:.0f} | {lat['reps']} "
                  f"| {vs[0]} | {vs[1]} | {eff} | {engine} "
                  f"| {r['frames_decoded']} |")
        print(f"| {w['name']} | *bound*: {w['plan_frames']} frames / {w['single_core_fps']:.0f} fps / "
              f"{w['cores']} cores | {w['bound_ms']:.0f} | | | | | | | |")
        print(f"| {w['name']} | *cold index (in FlashCodec's latency)* | {w['index_ms']:.0f} | | | | | | | |")


def plot(results: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is not installed (pip install -e '.[bench]')")
        return False
    names = list(dict.fromkeys(r["method"] for w in results for r in w["methods"]))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 2.4 * len(results)), 6))
    for j, name in enumerate(names):
        xs, ys = [], []
        for i, w in enumerate(results):
            row = next((r for r in w["methods"] if r["method"] == name), None)
            if row:
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(row["latency"]["median_ms"])
        ax.bar(xs, ys, width, label=name)
    for i, w in enumerate(results):
        ax.hlines(w["bound_ms"], i - 0.42, i + 0.42, colors="black", linestyles="dashed",
                  label="bound (plan frames / 1-core rate x cores)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)), [w["name"] for w in results])
    ax.set_ylabel("latency per request, median (ms, log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def check_targets(results: list[dict], cores: int) -> dict:
    """The issue's targets for FlashCodec-pyav with K = cores: >= 3x vs (a) on 720p GOP 30 32 frames,
    >= 70 % efficiency against the bound on every workload."""
    name = f"flashcodec-pyav-k{cores}"
    rows = {w["name"]: next((r for r in w["methods"] if r["method"] == name), None) for w in results}
    eff = {w: r["efficiency"] for w, r in rows.items() if r is not None}
    out = {"method": name, "efficiency": eff, "efficiency_target": 0.7,
           "efficiency_met": bool(eff) and min(eff.values()) >= 0.7}
    if rows.get("720p-gop30-32f") and "speedup_vs_seq" in rows["720p-gop30-32f"]:
        speedup = rows["720p-gop30-32f"]["speedup_vs_seq"]
        out.update(speedup_720p_gop30_32f_vs_seq=speedup, speedup_target=3.0, speedup_met=speedup >= 3.0)
    return out


def report_title(report: dict) -> str:
    m = report["machine"]
    return (f"Sampled-frame decode latency, median of {report['settings']['reps']} runs - {m['cpu']}, "
            f"{m['cores']} cores, PyAV {m['av']}")


def add_ratios(result: dict) -> None:
    by_name = {r["method"]: r["latency"]["median_ms"] for r in result["methods"]}
    for row in result["methods"]:
        for base in ("seq", "seq-ft"):
            if base in by_name:  # not with --no-baselines
                row[f"speedup_vs_{base}"] = by_name[base] / row["latency"]["median_ms"]


def row_text(row: dict) -> str:
    lat = row["latency"]
    text = f"{row['method']:<27} {lat['median_ms']:8.1f} ms (p90 {lat['p90_ms']:8.1f}, n={lat['reps']})"
    if "speedup_vs_seq" in row:
        text += f"  x{row['speedup_vs_seq']:5.2f} vs seq  x{row['speedup_vs_seq-ft']:5.2f} vs seq-ft"
    if "efficiency" in row:
        text += f"  eff {row['efficiency']:4.0%} (engine {row['engine_ms']:.0f} ms: {row['engine_efficiency']:4.0%})"
    check = row.get("check")
    if check and not check["exact"]:
        text += f"  NOT EXACT (PSNR {check['psnr_db']})"
    return text


def json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
