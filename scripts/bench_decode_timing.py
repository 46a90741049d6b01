"""bench_decode: timing on a shared machine (CPU use of other processes, waiting for quiet, interleaved repetitions)
and the frame check between methods."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np


class FlashOut(NamedTuple):
    video: object  # DecodedVideo
    engine_ms: float  # of it, inside the engine: plan, decode, RGB into the output array (no index, hash, sampling)


class CpuMeter:
    """CPU seconds used by *other* processes while a cell ran (machine busy - this process), Linux only."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    @staticmethod
    def _busy() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            return sum(fields) - fields[3] - fields[4], int(own[11]) + int(own[12])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        self._t0, self._b0 = time.perf_counter(), self._busy()

    def other_cores(self) -> float | None:
        """Mean number of cores other processes kept busy since start()."""
        b1, wall = self._busy(), time.perf_counter() - self._t0
        if self._b0 is None or b1 is None or wall <= 0:
            return None
        return round(max(0, (b1[0] - self._b0[0]) - (b1[1] - self._b0[1])) / self._tick / wall, 3)


class Quiet:
    """Runs start when other processes leave the cores alone (other engineers' tests share this machine).

    Before a timed run: wait until other processes used at most ``max_other_cores`` over 0.3 s. After it:
    a run during which they used more is thrown away and run again (``retries`` times at most; the
    quietest attempt is kept, and every kept run's interference is recorded). Waiting is bounded by
    ``patience_s`` for the whole benchmark, after which runs are simply taken and labelled."""

    def __init__(self, max_other_cores: float, retries: int, patience_s: float) -> None:
        self.max_other_cores, self.retries, self.patience_s = max_other_cores, retries, patience_s
        self.waited_s = 0.0
        self.discarded = 0

    def wait(self) -> None:
        while self.waited_s < self.patience_s:
            meter = CpuMeter()
            time.sleep(0.3)
            busy = meter.other_cores()
            if busy is None or busy <= self.max_other_cores:
                return
            time.sleep(1.0)
            self.waited_s += 1.3

    def run(self, fn: Callable[[], object]) -> tuple[float, float | None, object]:
        """(ms, other cores busy, output) of the quietest of up to 1 + retries attempts."""
        best = None
        for attempt in range(1 + self.retries):
            self.wait()
            meter = CpuMeter()
            t0 = time.perf_counter()
            out = fn()
            ms = (time.perf_counter() - t0) * 1e3
            busy = meter.other_cores()
            if best is None or (busy or 0.0) < (best[1] or 0.0):
                best = (ms, busy, out)
            del out
            if busy is None or busy <= self.max_other_cores:
                break
            if attempt < self.retries:
                self.discarded += 1
        return best


def measure_interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int, max_cell_s: float,
                        quiet: Quiet, on_first: Callable[[str, object], None]) -> dict[str, dict]:
    """Per method: median/p90/min ms over ``reps`` timed runs after ``warmup`` untimed ones.

    Methods take turns (run 1 of every method, then run 2...), so a slow spell of this shared machine
    hits them all alike. A method stops early once it has min(3, reps) runs and spent ``max_cell_s``.
    ``on_first(name, output)`` sees each method's first output, which is then dropped; a number a method
    returns (frame count, engine time) is kept per run in ``values``."""
    seen: set[str] = set()

    def take(name: str, out: object) -> None:
        if name not in seen:
            seen.add(name)
            on_first(name, out)

    for _ in range(warmup):
        for name, fn in fns.items():
            quiet.wait()  # untimed, but other people's measurements deserve a quiet machine too
            take(name, fn())
    runs: dict[str, list[tuple[float, float | None, object]]] = {name: [] for name in fns}
    for rep in range(reps):
        for name, fn in fns.items():
            if len(runs[name]) >= min(3, reps) and sum(r[0] for r in runs[name]) / 1e3 > max_cell_s:
                continue
            ms, busy, out = quiet.run(fn)
            take(name, out)
            value = out.engine_ms if isinstance(out, FlashOut) else out if isinstance(out, (int, float)) else None
            runs[name].append((ms, busy, value))
            del out
        print(f"   run {rep + 1}/{reps} of every method done ({quiet.discarded} disturbed runs repeated, "
              f"{quiet.waited_s:.0f} s waited for quiet so far)", flush=True)
    stats = {}
    for name, rs in runs.items():
        ms, busy = [r[0] for r in rs], [r[1] for r in rs]
        stats[name] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                       "min_ms": float(np.min(ms)), "runs_ms": [round(x, 2) for x in ms], "reps": len(ms),
                       "other_cores_busy": busy, "values": [r[2] for r in rs],
                       "disturbed_runs": sum(1 for b in busy if b is not None and b > quiet.max_other_cores)}
    return stats


def as_numpy(frames) -> np.ndarray:
    if hasattr(frames, "device") and getattr(frames.device, "type", "cpu") != "cpu":
        frames = frames.cpu()
    return np.asarray(frames)


def compare(frames: np.ndarray, expected: np.ndarray) -> dict:
    """Bit-exactness against (a)'s frames, and the PSNR in dB (None when exact)."""
    if frames.shape != expected.shape:
        return {"exact": False, "psnr_db": None, "note": f"shape {frames.shape} vs {expected.shape}"}
    if np.array_equal(frames, expected):
        return {"exact": True, "psnr_db": None}
    mse = float(np.mean((frames.astype(np.float64) - expected) ** 2))
    return {"exact": False, "psnr_db": float(10 * np.log10(255**2 / mse))}


def sync_output(video) -> object:
    frames = getattr(video, "frames", video)
    if hasattr(frames, "device") and getattr(frames.device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()
    return video
