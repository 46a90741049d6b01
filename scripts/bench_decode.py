#!/usr/bin/env python
"""Decode latency of one request's sampled frames: FlashCodec vs what video-LLM servers run today.

    .venv/bin/python scripts/bench_decode.py [--quick] [--out bench_out/decode] [--reps 5]
        [--instances 1,2] [--engine pyav|nvdec] [--workloads NAME,...] [--video-dir artifacts/videos]
        [--no-baselines]   # FlashCodec rows + bound only: minutes instead of ~20 for the full workloads

Side by side in one run, on the same clips and the same frame indices (DESIGN.md 7); every method
delivers the sampled frames as one uint8 [T, H, W, 3] RGB array, in sampled order:

- ``seq``      (a) sequential decode with PyAV's default threading, RGB conversion of the sampled frames
               only, up to the last one (what vLLM's loaders do: every frame decoded, sampled ones kept);
- ``seq-all``  (a) converting every frame to RGB (torchvision ``read_video``-style; the extra frames are
               dropped, not kept); once per clip;
- ``seq-ft``   (a) with FFmpeg frame threads on every core (a multi-threaded reader like OpenCV's);
- ``seek``     (b) per sampled frame: seek to its keyframe, decode forward to it (naive "seek per frame");
- ``flashcodec-<engine>-k<K>``  ``decode_video(..., DecoderConfig(engine, num_instances=K), resize=False)``
               with a cold index cache every run (index time included, and reported alone as well);
  ``...-noskip`` the same decoding every packet (non-reference frames too): what skipping them buys;
  ``...-resize`` the same with the Qwen resize.

The baselines get the frame indices for free; FlashCodec pays for its demux index. Every method's frames
are checked against (a) once per workload (bit-exact on CPU, PSNR for GPU engines).

Bound (CPU): frames the plan must decode / (decode rate of a full 1-thread decode of the same clip,
measured in the same runs, x cores); efficiency = bound / measured latency.

Timing: warm-up, then the methods take turns run by run (this machine is shared and its speed drifts);
each run waits for other processes to go quiet and is repeated when they were busy during it; medians
and p90 of ``--reps`` runs. Outputs: a printed table, ``results.json`` and ``latency.png`` in ``--out``.
Numbers, not pass/fail: tests only smoke-run this.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "backends", REPO / "scripts"):  # works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import make_sample_videos as samples  # noqa: E402
from bench_common import host_info  # noqa: E402

from flashcodec import (  # noqa: E402
    DecoderConfig,
    EngineUnavailable,
    SamplingSpec,
    clear_index_cache,
    decode_video,
    get_engine,
    get_index,
    sample_frames,
)
from flashcodec.plan import decode_start, plan_cost, plan_decode  # noqa: E402

DEFAULT_OUT = Path("bench_out/decode")


@dataclass(frozen=True)
class Workload:
    name: str
    clip: samples.SampleSpec
    spec: SamplingSpec
    what: str


_B = samples.BENCH_SET  # 60 s 720p GOP 30, 60 s 720p GOP 250, 10 min 640x360 GOP 250
FULL_WORKLOADS = (
    Workload("720p-gop30-32f", _B[0], SamplingSpec(num_frames=32), "32 frames, 60 s 1280x720 H.264 GOP 30"),
    Workload("720p-gop250-32f", _B[1], SamplingSpec(num_frames=32), "32 frames, 60 s 1280x720 H.264 GOP 250"),
    Workload("720p-gop30-2fps", _B[0], SamplingSpec(fps=2.0), "2 fps (120 frames), 60 s 1280x720 GOP 30"),
    Workload("720p-gop250-2fps", _B[1], SamplingSpec(fps=2.0), "2 fps (120 frames), 60 s 1280x720 GOP 250"),
    Workload("360p-10min-32f", _B[2], SamplingSpec(num_frames=32), "32 frames, 10 min 640x360 H.264 GOP 250"),
)
_D = samples.DEFAULT_SET
QUICK_WORKLOADS = (
    Workload("360p-gop30-8f", _D[1], SamplingSpec(num_frames=8), "8 frames, 10 s 640x360 H.264 GOP 30"),
    Workload("240p-gop250-8f", _D[3], SamplingSpec(num_frames=8), "8 frames, 60 s 320x240 H.264 GOP 250"),
)


# ----------------------------------------------------------------------------------------- baselines


def _open(data: bytes, index) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    container = av.open(io.BytesIO(data), mode="r")
    return container, container.streams[index.stream_index]


def _gather(frames: dict[int, np.ndarray], indices: list[int]) -> np.ndarray:
    """uint8 [T, H, W, 3] in sampled order: the output every method delivers (vLLM's loaders fill a
    preallocated array the same way; FlashCodec's decoders write into theirs)."""
    out = np.empty((len(indices), *frames[indices[0]].shape), dtype=np.uint8)
    for t, i in enumerate(indices):
        out[t] = frames[i]
    return out


def decode_sequential(data: bytes, index, indices: list[int], *, frame_threads: bool = False,
                      convert_all: bool = False) -> np.ndarray:
    """(a): decode every frame in order (the i-th frame out is presentation frame i) up to the last
    sampled one; RGB for the sampled frames (``convert_all``: for every frame, the others dropped)."""
    wanted, last, got = set(indices), max(indices), {}
    container, stream = _open(data, index)
    with container:
        if frame_threads:
            stream.codec_context.thread_type = "AUTO"  # thread_count stays 0 = one per core
        for i, frame in enumerate(container.decode(stream)):
            if convert_all or i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                if i in wanted:
                    got[i] = rgb
            if i >= last:
                break
    return _gather(got, indices)


def decode_seek_each(data: bytes, index, indices: list[int]) -> np.ndarray:
    """(b): for every sampled frame, seek to the keyframe it needs and decode forward to it."""
    got = {}
    container, stream = _open(data, index)
    with container:
        for f in sorted(set(indices)):
            key = int(index.presentation_index[decode_start(index, f)])
            # The keyframe's pts lands on it with mp4/mkv; its dts (smaller with B-frames) is the fallback
            # for a demuxer that lands after it, and lands a GOP early with mp4 (a GOP decoded for nothing).
            for target in dict.fromkeys((int(index.pts[key]), int(min(index.pts[key], index.dts[key])))):
                container.seek(target, stream=stream, backward=True)
                got[f] = _decode_forward_to(container, stream, int(index.pts[f]))
                if got[f] is not None:
                    break
            if got[f] is None:
                raise RuntimeError(f"seek baseline could not reach frame {f}")
    return _gather(got, indices)


def _decode_forward_to(container, stream, want_pts: int) -> np.ndarray | None:
    for frame in container.decode(stream):  # frames come out in presentation order
        if frame.pts == want_pts:
            return frame.to_ndarray(format="rgb24")
        if frame.pts > want_pts:
            return None  # landed after it
    return None


def full_decode_one_core(data: bytes, index) -> int:
    """Full decode on one thread, no conversion: timed, it gives the bound's single-core rate."""
    container, stream = _open(data, index)
    with container:
        stream.codec_context.thread_count = 1
        return sum(1 for _ in container.decode(stream))


# ------------------------------------------------------------------------------------------- timing


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


def _as_numpy(frames) -> np.ndarray:
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


def _sync(video) -> object:
    frames = getattr(video, "frames", video)
    if hasattr(frames, "device") and getattr(frames.device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize()
    return video


# ---------------------------------------------------------------------------------------- workloads


class FlashRow(NamedTuple):
    engine: str
    instances: int
    resize: bool = False
    skip: bool = True  # pyav: skip non-reference frames nobody asked for (False: the -noskip ablation)


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[], object]
    engine: str | None = None  # FlashCodec engine, None for the baselines
    instances: int | None = None
    resize: bool = False
    frames_decoded: int | None = None  # baselines: packets their decoder goes through


class FlashOut(NamedTuple):
    video: object  # DecodedVideo
    engine_ms: float  # of it, inside the engine: plan, decode, RGB into the output array (no index, hash, sampling)


_engine_ms: dict[str, float] = {}


def time_engine(name: str) -> None:
    """Make engine ``name`` record how long its own decode() takes (benchmark instrumentation only)."""
    engine = get_engine(name)
    inner = engine.decode
    if getattr(inner, "timed_by_bench", False):
        return

    def decode(*args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            _engine_ms[name] = (time.perf_counter() - t0) * 1e3

    decode.timed_by_bench = True
    engine.decode = decode


def methods_for(w: Workload, data: bytes, index, indices: list[int], first_on_clip: bool,
                flashcodec: list[FlashRow], baselines: bool = True) -> list[Method]:
    methods = baseline_methods(data, index, indices, first_on_clip) if baselines else []
    for engine, k, resize, skip in flashcodec:
        config = DecoderConfig(engine=engine, num_instances=k)

        def run(config: DecoderConfig = config, resize: bool = resize, skip: bool = skip) -> FlashOut:
            clear_index_cache()  # cold: the demux index is part of the latency
            pyav = get_engine("pyav")
            pyav.skip_nonref = skip  # False: the ablation, every packet of every run decoded
            try:
                video = _sync(decode_video(data, w.spec, config, resize=resize))
            finally:
                pyav.skip_nonref = True
            return FlashOut(video, _engine_ms[config.engine])

        name = f"flashcodec-{engine}-k{k}" + ("-resize" if resize else "") + ("" if skip else "-noskip")
        time_engine(engine)
        methods.append(Method(name, run, engine=engine, instances=k, resize=resize))
    return methods


def baseline_methods(data: bytes, index, indices: list[int], first_on_clip: bool) -> list[Method]:
    unique = sorted(set(indices))
    through_last = int(max(index.decode_index[f] for f in unique)) + 1
    seek_cost = sum(int(index.decode_index[f]) - decode_start(index, f) + 1 for f in unique)
    methods = [Method("seq", lambda: decode_sequential(data, index, indices), frames_decoded=through_last)]
    if first_on_clip:  # the same for every workload on a clip: measured once
        methods.append(Method("seq-all", lambda: decode_sequential(data, index, indices, convert_all=True),
                              frames_decoded=through_last))
    methods.append(Method("seq-ft", lambda: decode_sequential(data, index, indices, frame_threads=True),
                          frames_decoded=through_last))
    methods.append(Method("seek", lambda: decode_seek_each(data, index, indices), frames_decoded=seek_cost))
    return methods


_RATE, _INDEX = "full-decode-1-thread", "index-cold"  # measured alongside, not methods


def run_workload(w: Workload, data: bytes, cores: int, first_on_clip: bool, flashcodec: list[FlashRow],
                 args: argparse.Namespace) -> dict:
    config = DecoderConfig(engine="pyav")
    clear_index_cache()
    index = get_index(data, config)
    sample = sample_frames(index, w.spec, config.max_output_frames)
    indices = [int(i) for i in sample.frame_indices]
    unique = sorted(set(indices))
    plan_frames = plan_cost(plan_decode(index, unique, cores))[0]
    print(f"\n== {w.name}: {w.what} -> {len(unique)} frames; the plan decodes {plan_frames} of "
          f"{index.num_frames} frames", flush=True)

    def cold_index() -> object:
        clear_index_cache()
        return get_index(data, config)

    methods = methods_for(w, data, index, indices, first_on_clip, flashcodec, baselines=not args.no_baselines)
    fns = {_RATE: lambda: full_decode_one_core(data, index), _INDEX: cold_index, **{m.name: m.run for m in methods}}
    reference: list[np.ndarray] = []  # (a)'s frames, the first output of "seq"
    if args.no_baselines:  # still checked against (a): one untimed sequential decode
        reference.append(decode_sequential(data, index, indices))
    checks, outputs = {}, {}

    def on_first(name: str, out: object) -> None:
        if name in (_RATE, _INDEX):
            return
        if isinstance(out, FlashOut):
            out = out.video
        frames = out if isinstance(out, np.ndarray) else _as_numpy(out.frames)
        if not reference:
            reference.append(frames)
        if not name.endswith("-resize"):
            checks[name] = compare(frames, reference[0])
        if not isinstance(out, np.ndarray):
            outputs[name] = (out.num_decoded_frames, out.num_segments)

    stats = measure_interleaved(fns, args.reps, args.warmup, args.max_cell_s, args.quiet, on_first)
    reference.clear()
    rate = stats.pop(_RATE)
    fps_runs = [n / (ms / 1e3) for n, ms in zip(rate["values"], rate["runs_ms"], strict=True)]
    fps = float(np.median(fps_runs))
    bound_ms = plan_frames / (fps * cores) * 1e3
    index_stats = stats.pop(_INDEX)
    result = {"name": w.name, "what": w.what, "clip": w.clip.filename, "sampling": _spec_dict(w.spec),
              "num_sampled": len(indices), "num_unique": len(unique), "plan_frames": plan_frames,
              "clip_frames": index.num_frames, "single_core_fps": fps,
              "single_core_fps_runs": [round(x, 1) for x in fps_runs], "cores": cores, "bound_ms": bound_ms,
              "index_ms": index_stats["median_ms"], "index": index_stats, "methods": []}
    for m in methods:
        row = {"method": m.name, "engine": m.engine, "instances": m.instances, "resize": m.resize,
               "latency": stats[m.name], "frames_decoded": m.frames_decoded, "check": checks.get(m.name)}
        if m.name in outputs:
            row["frames_decoded"], row["num_segments"] = outputs[m.name]
            row["engine_ms"] = float(np.median(stats[m.name]["values"]))  # the engine's share of it
        if m.engine == "pyav":
            row["efficiency"] = bound_ms / stats[m.name]["median_ms"]
            row["engine_efficiency"] = bound_ms / row["engine_ms"]  # decode alone (no index, no stack)
        result["methods"].append(row)
    _add_ratios(result)
    print(f"   1-thread full decode {fps:.0f} frames/s -> bound {bound_ms:.0f} ms on {cores} cores; "
          f"cold index {index_stats['median_ms']:.1f} ms")
    for row in result["methods"]:
        print("   " + _row_text(row), flush=True)
    return result


def _add_ratios(result: dict) -> None:
    by_name = {r["method"]: r["latency"]["median_ms"] for r in result["methods"]}
    for row in result["methods"]:
        for base in ("seq", "seq-ft"):
            if base in by_name:  # not with --no-baselines
                row[f"speedup_vs_{base}"] = by_name[base] / row["latency"]["median_ms"]


def _spec_dict(spec: SamplingSpec) -> dict:
    return {"num_frames": spec.num_frames, "fps": spec.effective_fps if spec.num_frames is None else None}


def _row_text(row: dict) -> str:
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


# ------------------------------------------------------------------------------------------- output


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from flashcodec.config import KNOWN_ENGINES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small clips from the default set, fewer runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for results.json and latency.png")
    p.add_argument("--video-dir", type=Path, default=REPO / "artifacts" / "videos",
                   help="where the sample videos are (missing ones are generated there)")
    p.add_argument("--reps", type=int, help="timed runs per cell (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--engine", default="pyav", choices=[e for e in KNOWN_ENGINES if e != "auto"],
                   help="FlashCodec engine to measure (GPU engines add a CPU pyav K=cores row)")
    p.add_argument("--instances", help="comma list of K (default 1..cores for pyav, 1..7 for GPU engines)")
    p.add_argument("--workloads", help="comma list of workload names to run (default all)")
    p.add_argument("--from-json", type=Path, help="measure nothing: print the table and redraw the PNG of "
                   "an earlier results.json")
    p.add_argument("--no-resize", action="store_true", help="skip the FlashCodec-with-resize row")
    p.add_argument("--no-baselines", action="store_true",
                   help="time only the FlashCodec rows (and the bound's full decode): a quick A/B of engine "
                   "changes; frames are still checked against one untimed sequential decode")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the FlashCodec row that decodes non-reference frames too (-noskip)")
    p.add_argument("--max-cell-s", type=float, default=120.0,
                   help="a cell stops after this many seconds once it has 3 runs")
    p.add_argument("--max-other-cores", type=float, default=0.25,
                   help="a run during which other processes kept more cores than this busy is disturbed")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run (the quietest is kept)")
    p.add_argument("--patience-s", type=float, default=1200.0,
                   help="total seconds to wait for other processes to go quiet before runs")
    args = p.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 5)
    args.quiet = Quiet(args.max_other_cores, args.retries, args.patience_s)
    return args


def _title(report: dict) -> str:
    m = report["machine"]
    return (f"Sampled-frame decode latency, median of {report['settings']['reps']} runs - {m['cpu']}, "
            f"{m['cores']} cores, PyAV {m['av']}")


def replot(path: Path) -> int:
    """Table and PNG again from a results.json (the PNG next to it)."""
    report = json.loads(path.read_text())
    print_table(report["workloads"])
    print(f"\ntargets: {json.dumps(report['targets'])}")
    plot(report["workloads"], path.with_name("latency.png"), _title(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        return replot(args.from_json)
    machine = machine_info()
    cores = machine["cores"]
    workloads = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    if args.workloads:
        wanted = args.workloads.split(",")
        unknown = set(wanted) - {w.name for w in QUICK_WORKLOADS + FULL_WORKLOADS}
        if unknown:
            print(f"unknown workloads {sorted(unknown)}; known: {[w.name for w in QUICK_WORKLOADS + FULL_WORKLOADS]}")
            return 2
        workloads = tuple(w for w in QUICK_WORKLOADS + FULL_WORKLOADS if w.name in wanted)
    ks = [int(k) for k in args.instances.split(",")] if args.instances else None
    skipped: dict[str, str] = {}
    # A GPU engine gets one CPU reference row next to it: pyav with K = cores.
    pyav_ks = (ks or list(range(1, cores + 1))) if args.engine == "pyav" else [cores]
    flashcodec = [FlashRow("pyav", k) for k in pyav_ks]
    if not args.no_ablation:
        flashcodec.append(FlashRow("pyav", max(pyav_ks), skip=False))
    if args.engine != "pyav":
        try:
            get_engine(args.engine)
            flashcodec += [FlashRow(args.engine, k) for k in ks or range(1, 8)]
        except (EngineUnavailable, ImportError) as exc:  # no GPU, no driver, or not in this build
            skipped[args.engine] = f"{type(exc).__name__}: {exc}"
            print(f"skipping engine {args.engine!r}: {exc}")
    if not args.no_resize:
        best = [r for r in flashcodec if r.skip][-1]
        flashcodec.append(FlashRow(best.engine, best.instances, resize=True))
    load = machine["loadavg_start"][0]
    print(f"{machine['cpu']}, {cores} cores, Python {machine['python']}, PyAV {machine['av']}; load {load:.2f}")
    if load > 1.5:
        print("WARNING: the machine is busy (1-min load > 1.5): runs wait for quiet, disturbed runs are "
              "repeated, and the interference of every kept run is recorded (other_cores_busy)")

    clips = {w.clip for w in workloads}
    missing = [c for c in clips if not (args.video_dir / c.filename).exists()]
    if missing:
        print(f"generating {len(missing)} sample video(s) into {args.video_dir} (once; minutes for the long ones)")
        samples.generate(args.video_dir, tuple(missing))

    clip_info, results = {}, []
    for w in workloads:
        data = (args.video_dir / w.clip.filename).read_bytes()
        first_on_clip = w.clip.filename not in clip_info
        clip_info.setdefault(w.clip.filename, {**w.clip.manifest_entry(), "bytes": len(data)})
        results.append(run_workload(w, data, cores, first_on_clip, flashcodec, args))

    print_table(results)
    targets = check_targets(results, cores)
    print(f"\ntargets: {json.dumps(targets, indent=None)}")
    args.out.mkdir(parents=True, exist_ok=True)
    machine["loadavg_end"] = list(os.getloadavg())
    machine["quiet_wait_s"], machine["discarded_runs"] = round(args.quiet.waited_s, 1), args.quiet.discarded
    report = {"schema": "bench_decode/1", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "machine": machine,
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "quiet"},
              "clips": clip_info, "workloads": results, "targets": targets, "skipped": skipped}
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    wrote_png = plot(results, args.out / "latency.png", _title(report))
    print(f"wrote {args.out / 'results.json'}" + (f" and {args.out / 'latency.png'}" if wrote_png else ""))
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
