"""TTFT and inter-token latency per load level from a perf_analyzer --profile-export-file.

    .venv/bin/python perf_analyzer_configs/profile_stats.py bench_out/pa_video_url.json

perf_analyzer prints request latency and throughput, but for a streaming model the numbers that matter are
in the export: per request its send `timestamp` and one `response_timestamps` entry (ns) per streamed
response. TTFT = first response - send; ITL = gaps between consecutive responses.
"""

from __future__ import annotations

import json
import statistics
import sys
from itertools import pairwise
from pathlib import Path


def load_profile(path: str | Path) -> dict:
    # The export echoes every request's inputs; video_bytes are raw file bytes, not valid UTF-8.
    return json.loads(Path(path).read_bytes().decode("utf-8", errors="replace"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def experiment_stats(experiment: dict) -> dict:
    """Milliseconds: TTFT and ITL mean/p50/p99, plus request and response counts, for one load level."""
    ttft, itl = [], []
    for req in experiment["requests"]:
        stamps = req["response_timestamps"]
        if not stamps:
            continue
        ttft.append((stamps[0] - req["timestamp"]) / 1e6)
        itl += [(b - a) / 1e6 for a, b in pairwise(stamps)]
    out = {"mode": experiment["experiment"]["mode"], "value": experiment["experiment"]["value"],
           "requests": len(ttft), "responses": len(ttft) + len(itl)}
    for name, values in (("ttft", ttft), ("itl", itl)):
        if values:
            out |= {f"{name}_mean_ms": statistics.fmean(values), f"{name}_p50_ms": percentile(values, 50),
                    f"{name}_p99_ms": percentile(values, 99)}
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for experiment in load_profile(args[0])["experiments"]:
        stats = experiment_stats(experiment)
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
