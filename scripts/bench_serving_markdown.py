"""bench_serving: Markdown tables of one results folder (runs.md) and of several runs with medians (summary).

    .venv/bin/python scripts/bench_serving_markdown.py bench_out/serving_s0 bench_out/serving_s1 ...

prints the cross-run summary: each system's goodput per run, ours vs it per run and the median ratio, and p99 TPOT
of ours vs each system at the highest rate both sustain. The numbers come from each folder's results.json, so the
report never holds a hand-copied number."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench_serving_metrics import tpot_p99_comparisons


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def runs_table(results: dict) -> str:
    """Every run of every system (rate in req/s; TTFT/TPOT in ms)."""
    lines = ["| system | rate | n | errors | attainment | TTFT p50 / p99 | TPOT p50 / p99 | out tok/s |",
             "|---|---:|---:|---:|---:|---|---|---:|"]
    for name, entry in results["systems"].items():
        for run in entry["runs"]:
            lines.append(f"| {name} | {run['rate']} | {run['num_requests']} | {run['num_errors']} | "
                         f"{run['attainment']:.1%} | {_ms(run['ttft_ms']['p50'])} / {_ms(run['ttft_ms']['p99'])} | "
                         f"{_ms(run['tpot_ms']['p50'])} / {_ms(run['tpot_ms']['p99'])} | "
                         f"{_ms(run['output_tok_per_s'])} |")
    return "\n".join(lines)


def _label(folder: Path, results: dict) -> str:
    return f"seed {results['args'].get('seed', '?')}" if results.get("args") else folder.name


def summary_table(folders: list[Path]) -> str:
    """Goodput per system per run, ours vs it per run and the median of the ratios, p99 TPOT comparisons."""
    all_results = [json.loads((f / "results.json").read_text()) for f in folders]
    labels = [_label(f, r) for f, r in zip(folders, all_results, strict=True)]
    names = list(all_results[0]["systems"])
    first = names[0]
    head = " / ".join(labels)
    lines = [f"| system | goodput (req/s): {head} | {first} vs it: {head} | median ratio |",
             "|---|---|---|---:|"]
    for name in names:
        goodputs = [r["systems"][name]["goodput"]["interpolated"] if name in r["systems"] else None
                    for r in all_results]
        ours = [r["systems"][first]["goodput"]["interpolated"] for r in all_results]
        ratios = [o / g if g else None for o, g in zip(ours, goodputs, strict=True)]
        known = [x for x in ratios if x is not None]
        median = f"**{statistics.median(known):.2f}x**" if name != first and known else "—"
        lines.append(f"| {name} | " + " / ".join("-" if g is None else f"{g:.3f}" for g in goodputs) + " | "
                     + ("—" if name == first else " / ".join("-" if x is None else f"{x:.2f}x" for x in ratios))
                     + f" | {median} |")
    lines += ["", f"| | p99 TPOT at the highest rate both sustain: {head} | median ratio |", "|---|---|---:|"]
    for name in names[1:]:
        cells, ratios = [], []
        for r in all_results:
            cmp = tpot_p99_comparisons({n: r["systems"][n]["runs"] for n in (first, name)})[f"{first} / {name}"]
            if cmp is None:
                cells.append("no common sustained rate")
                continue
            ours_ms, other_ms = cmp["p99_tpot_ms"]
            best = "" if cmp.get("both_sustain", True) else f" ({name}'s best rate; it sustains none)"
            cells.append(f"{cmp['rate']} req/s{best}: {_ms(ours_ms)} vs {_ms(other_ms)} ms ({cmp['ratio']:.2f}x)")
            ratios.append(cmp["ratio"])
        median = f"**{statistics.median(ratios):.2f}x**" if ratios else "-"
        lines.append(f"| {first} vs {name} | " + " / ".join(cells) + f" | {median} |")
    lines += ["", "| errors | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in names:
        cells = []
        for r in all_results:
            runs = r["systems"].get(name, {}).get("runs", [])
            cells.append(f"{sum(x['num_errors'] for x in runs)} of {sum(x['num_requests'] for x in runs)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    print(summary_table([Path(a) for a in argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
