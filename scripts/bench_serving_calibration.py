"""bench_serving: unloaded latencies of the served systems, measured through the same gRPC client.

Per request class: ``reps`` requests one at a time (median TTFT, TPOT, end to end); then ``typical_batch``
text requests at once (median TPOT: a decode step at a small batch, what the TPOT SLO scales). The servers are
warmed up first (`warm_up`: one untimed request per class), so lazy initialisation and first-call costs are not
counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from bench_common import TEXT_PROMPTS, VIDEO_PROMPTS
from bench_serving_client import Hints, RequestResult, replay
from bench_serving_trace import TEXT, RequestClass, TraceRequest


def _alone(cls: RequestClass, tokens: int, tag: str) -> TraceRequest:
    prompt = VIDEO_PROMPTS[0] if cls.video else TEXT_PROMPTS[0]
    return TraceRequest(f"{tag}-{cls.name}", 0.0, cls, prompt, tokens)


def _check(results: list[RequestResult], what: str) -> None:
    bad = [r for r in results if r.error]
    if bad:
        raise RuntimeError(f"calibration ({what}) failed: {bad[0].request_id}: {bad[0].error}")


def warm_up(url: str, classes: tuple[RequestClass, ...], videos: dict[str, bytes]) -> None:
    """One short request per class, one at a time: first-call costs (lazy imports, allocations) are paid here."""
    for cls in classes:
        _check(replay(url, [_alone(cls, 4, "warm")], videos, {}), f"warm-up {cls.name}")


def calibrate(urls: Mapping[str, str], classes: tuple[RequestClass, ...], videos: dict[str, bytes], *, reps: int,
              typical_batch: int, tokens: int, progress: Callable[[str], None] = print) -> dict[str, dict]:
    """Unloaded latencies of every system (name -> gRPC URL, all serving at once and warmed up), measured without SLO
    hints (the SLOs are derived from them). Interleaved: each repetition of a measurement runs on every system in turn,
    so a machine whose speed drifts during the calibration (shared hosts do) shifts every system alike."""
    hints: dict[str, Hints] = {}
    out: dict[str, dict] = {name: {"ttft_ms": {}, "tpot_ms": {}, "e2e_ms": {}, "tokens": tokens,
                                   "typical_batch": typical_batch} for name in urls}
    for cls in classes:
        runs: dict[str, list[RequestResult]] = {name: [] for name in urls}
        for i in range(reps):
            for name, url in urls.items():
                runs[name] += replay(url, [_alone(cls, tokens, f"cal{i}")], videos, hints)
        for name, got in runs.items():
            _check(got, f"{name} {cls.name}")
            cal = out[name]
            cal["ttft_ms"][cls.name] = float(np.median([r.ttft_ms for r in got]))
            cal["tpot_ms"][cls.name] = float(np.median([r.tpot_ms for r in got if r.tpot_ms is not None]))
            cal["e2e_ms"][cls.name] = float(np.median([r.e2e_ms for r in got]))
            ttft, tpot, e2e = (cal[k][cls.name] for k in ("ttft_ms", "tpot_ms", "e2e_ms"))
            progress(f"  unloaded {cls.name:>14} {name:>16}: TTFT {ttft:7.1f} ms  TPOT {tpot:5.2f} ms  "
                     f"e2e ({tokens} tokens) {e2e:7.1f} ms")
    batch_tpot: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(max(1, reps - 1)):
        for name, url in urls.items():
            batch_tpot[name] += batch_tpots(url, typical_batch, tokens, f"{name} batch")
    for name, cal in out.items():
        cal["batch_tpot_ms"] = float(np.median(batch_tpot[name]))
        progress(f"  unloaded TPOT with {typical_batch} text streams at once, {name}: {cal['batch_tpot_ms']:.2f} ms")
    return out


def batch_tpots(url: str, typical_batch: int, tokens: int, what: str = "batch") -> list[float]:
    """TPOT of each of ``typical_batch`` text streams sent at once (no hints): a decode step at a small batch."""
    batch = [TraceRequest(f"batch-{i}", 0.0, TEXT, TEXT_PROMPTS[i % len(TEXT_PROMPTS)], tokens)
             for i in range(typical_batch)]
    got = replay(url, batch, {}, {})
    _check(got, what)
    return [r.tpot_ms for r in got if r.tpot_ms is not None]


def mean_service_s(calibration: dict, shares: dict[str, float], mean_tokens: dict[str, float]) -> float:
    """Mix-weighted unloaded service time of one request: TTFT + (tokens - 1) x TPOT, per class."""
    total = 0.0
    for name, share in shares.items():
        total += share * (calibration["ttft_ms"][name] + (mean_tokens[name] - 1) * calibration["tpot_ms"][name])
    return total / 1e3
