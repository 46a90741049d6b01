#!/usr/bin/env python
"""Read an engine step trace (MLLM_ENGINE_TRACE_PATH) after a served run: how well encoder slices kept to their
planned price, how far steps ran over their target, and one request's story step by step.

    .venv/bin/python scripts/step_trace_report.py TRACE.jsonl                 # prices and overruns
    .venv/bin/python scripts/step_trace_report.py TRACE.jsonl --request r2.001-0033   # what the engine did for it

Planned encoder time is what the step's own fitted prices (`enc_w`) give for its slices (start, encoder tokens and,
since 8ecedcd, attention work); traces written before that have no attention column and no piece start, so their
planned time is tokens only.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def records(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def planned_encoder_s(step: dict) -> float:
    w = step["enc_w"]
    total = 0.0
    for e in step["encoder"]:
        if len(e) >= 6 and len(w) >= 3:  # id, tokens, groups, first block, blocks, attention
            total += w[0] * (e[3] == 0) + w[1] * e[1] + w[2] * e[5]
        else:
            total += w[1] * e[1]
    return total


def prices(path: Path) -> dict:
    ratio, with_enc, without = [], [], []
    for r in records(path):
        if r["ev"] != "step":
            continue
        if r["target_s"] > 0 and r["decodes"] > 0:
            (with_enc if r["encoder"] else without).append(r["dur"] / r["target_s"])
        planned = planned_encoder_s(r) if r["encoder"] else 0.0
        if planned > 0:
            ratio.append(r["enc_s"] / planned)

    def pct(v: list[float]) -> dict:
        return {f"p{q}": round(float(np.percentile(v, q)), 2) for q in (10, 50, 90, 99)} | {"n": len(v)} if v else {}

    return {"encoder_actual_over_planned": pct(ratio), "decoding_step_over_target_with_encoder": pct(with_enc),
            "decoding_step_over_target_without_encoder": pct(without)}


def story(path: Path, request: str) -> list[str]:
    """Every step from the request's arrival to its first token or the end: its slices and chunks, the step's
    target and length, and the request's place and urgency key in the queue the step left."""
    lines, full, t0 = [], None, 0.0
    for r in records(path):
        if r["ev"] == "arrival" and full is None and r["id"].startswith(request):
            full, t0 = r["id"], r["t"]
            lines.append(f"arrival {full}: prompt {r['prompt']} tokens, {r['videos']} videos, "
                         f"TTFT SLO {r['ttft_slo_ms']}")
            continue
        if full is None or r["ev"] != "step":
            continue
        queue = [i for i, q in enumerate(r["queue"]) if q[0] == full]
        mine_enc = [e[1:] for e in r["encoder"] if e[0] == full]
        mine_pre = [n for rid, n in r["prefill"] if rid == full]
        if not (queue or mine_enc or mine_pre):
            break  # its first token came out of the previous step
        lines.append(f"{(r['t'] - t0) * 1e3:8.1f} ms  step {r['dur'] * 1e3:5.1f} / target {r['target_s'] * 1e3:5.1f} ms"
                     f"  decodes {r['decodes']}  mine: encoder {mine_enc} prefill {mine_pre}"
                     f"  queue position {queue[0] if queue else '-'} key {r['queue'][queue[0]][1] if queue else '-'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--request", help="request id (prefix) whose steps to print")
    args = ap.parse_args(argv)
    if args.request:
        print("\n".join(story(args.trace, args.request)) or f"no arrival of {args.request!r} in {args.trace}")
    else:
        print(json.dumps(prices(args.trace), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
