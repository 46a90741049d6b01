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
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "backends", REPO / "scripts"):  # works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import make_sample_videos as samples  # noqa: E402
from bench_decode_baselines import decode_seek_each, decode_sequential, full_decode_one_core  # noqa: E402
from bench_decode_report import (  # noqa: E402
    add_ratios,
    check_targets,
    json_default,
    machine_info,
    plot,
    print_table,
    report_title,
    row_text,
)
from bench_decode_timing import FlashOut, Quiet, as_numpy, compare, measure_interleaved, sync_output  # noqa: E402

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


# ------------------------------------------------------------------------------------------- timing


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
                video = sync_output(decode_video(data, w.spec, config, resize=resize))
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
        frames = out if isinstance(out, np.ndarray) else as_numpy(out.frames)
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
    add_ratios(result)
    print(f"   1-thread full decode {fps:.0f} frames/s -> bound {bound_ms:.0f} ms on {cores} cores; "
          f"cold index {index_stats['median_ms']:.1f} ms")
    for row in result["methods"]:
        print("   " + row_text(row), flush=True)
    return result


def _spec_dict(spec: SamplingSpec) -> dict:
    return {"num_frames": spec.num_frames, "fps": spec.effective_fps if spec.num_frames is None else None}


# ------------------------------------------------------------------------------------------- output


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


def replot(path: Path) -> int:
    """Table and PNG again from a results.json (the PNG next to it)."""
    report = json.loads(path.read_text())
    print_table(report["workloads"])
    print(f"\ntargets: {json.dumps(report['targets'])}")
    plot(report["workloads"], path.with_name("latency.png"), report_title(report))
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
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    wrote_png = plot(results, args.out / "latency.png", report_title(report))
    print(f"wrote {args.out / 'results.json'}" + (f" and {args.out / 'latency.png'}" if wrote_png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
