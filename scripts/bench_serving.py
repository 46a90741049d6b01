#!/usr/bin/env python
"""Serving benchmark through tritonserver: goodput under TTFT/TPOT SLOs, ours vs the stacks users run today.

    .venv/bin/python scripts/bench_serving.py [--quick] [--out bench_out/serving]
        [--systems ours,ours-blocking,ours-fulldecode,naive,naive-fp32] [--model-preset small|tiny | --model PATH]
        [--model-dtype bfloat16|float32]
        [--rates auto | 0.5,1,2] [--duration S] [--ttft-slo-scale 5] [--tpot-slo-scale 1.5] [--seed 0]
        [--replot DIR | --extend DIR]                            (all flags: --help; report: docs/benchmarks.md)

Systems (each served by its own tritonserver, all started at once on this machine, same model and videos):
  ours             model_repository/: FlashCodec (GOP-parallel decode of the sampled frames) -> UnifiedServe (unified
                   policy: encoder work time-sliced around decode steps, SLO-aware)
  ours-blocking    the same with policy=blocking: a video's whole encoder pass runs inside one step (vLLM-like)
  ours-fulldecode  the same with FlashCodec swapped for a sequential full decode (engine pyav_full, vLLM's loaders)
  naive            baselines/model_repository_naive/: full decode -> vision encoder with Triton dynamic_batching ->
                   HF generate() per batch with a streamer (the stock Triton stack), in the checkpoint's dtype
  naive-fp32       the same stack loading the checkpoint in float32 (its faster choice for bf16 on a CPU)
The encoder output cache and the decoder's index cache are off everywhere: every request pays its own work.

Phase 1, interleaved (each repetition on every system in turn): warm up, measure unloaded latencies per request class
(text; each video at its sampling) one request at a time, and TPOT with `typical_batch` text streams at once.
SLOs, one set for everyone (stated in the output): TTFT per class = ttft_slo_scale x the fastest system's unloaded
TTFT of that class; TPOT = tpot_slo_scale x the fastest unloaded TPOT at the typical batch. Every request carries
them as the ttft_slo_ms / tpot_slo_ms hints (only ours plans with them) and every system is judged by them.
Phase 2, in rounds (each round runs the next rate of every system not done, ours last: a shared host's speed drifts,
and interleaving makes the drift hit every system alike): replay seeded Poisson traces (the same requests at the same
times for every system: videos of 2-60 s, 240p-720p, H.264/HEVC/VP9, and text questions; ignore_eos with fixed output
lengths) at rising rates over gRPC streaming, one stream per request, recording TTFT, TPOT, end-to-end latency and
errors at the client. A sweep stops at the first rate where fewer than half the requests meet the SLOs; a system
failing its lowest rate is tried at lower rates; then bisection between the last pass and the first fail until they
are within --bisect-resolution of each other. Goodput = the highest rate at which >= 90 % of requests meet both
SLOs (every lower rate passing), interpolated to the next rate as DistServe does. The first system (ours) also runs
at every other system's highest sustained rate, so p99 TPOT is compared at a rate both sustain. The first system's
unloaded TPOT at the typical batch is probed before and after each round: a round that ran more than
--slow-host-factor x slower than the calibration first has the calibration run again (a lasting spell loosens the
SLOs by phase 3's rule and the round counts) or, the spell over, is set aside and runs again, --slow-retries times at
most (bench_serving_rounds).
Phase 3 (--recalibrations, default 1, quick 0): the calibration again, after the sweeps. Where the host got slower,
the SLOs become the slower calibration's (per class; a fast moment's SLOs are unmeetable unloaded in a slow one), every
run is judged again from its raw times, and the sweeps go on where the new judgement moves them (bench_serving_drift).
--extend DIR runs only what the current method adds to an old results folder (same traces, SLOs and grid), or
what a stopped run had left to do (results.json / raw.json are written after every round).

Outputs in --out: results.json (machine, SLOs, calibration, every run's summary, goodput and ratios), raw.json
(per-request times), attainment.png (attainment vs rate), cdf.png (TTFT and TPOT CDFs at a rate all sustain), and a
printed table. Numbers, never pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "backends", REPO / "scripts"):  # works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_common import host_info  # noqa: E402
from bench_serving_calibration import calibrate, mean_service_s, warm_up  # noqa: E402
from bench_serving_drift import calibrate_again  # noqa: E402
from bench_serving_metrics import Slos, slos_from  # noqa: E402
from bench_serving_report import print_table, write_outputs  # noqa: E402
from bench_serving_rounds import finish, load_rounds  # noqa: E402
from bench_serving_systems import NO_CACHES, SYSTEMS, System  # noqa: E402
from bench_serving_trace import TraceShape, ensure_videos, mean_service_weights, request_classes  # noqa: E402

from triton_adapters.launcher import TritonServerProcess  # noqa: E402

MODEL_DIRS = {"tiny": "tiny-qwen2.5-vl", "small": "small-qwen2.5-vl", "7b": "7b-qwen2.5-vl"}
DEFAULT_OUT = REPO / "bench_out" / "serving"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="10 s traces at 3 rates, no probing below them, 1 calibration rep (< 10 min)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--systems", default="ours,ours-blocking,ours-fulldecode,naive,naive-fp32",
                    help=f"comma-separated, first one sets the rate grid; known: {', '.join(SYSTEMS)}")
    ap.add_argument("--url", help="benchmark a tritonserver already running at this gRPC host:port instead of "
                    "starting --systems (one system named 'external'; its caches stay as configured)")
    ap.add_argument("--model-preset", choices=sorted(MODEL_DIRS), default="small")
    ap.add_argument("--model", type=Path, help="checkpoint folder (overrides --model-preset)")
    ap.add_argument("--model-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="dtype of the generated --model-preset checkpoint (real Qwen2.5-VL ones ship in bf16); each "
                    "system loads it as it would any checkpoint (ours: bf16 where the CPU has native bf16)")
    ap.add_argument("--video-dir", type=Path, default=REPO / "artifacts" / "videos")
    ap.add_argument("--long-video", action=argparse.BooleanOptionalAction, default=None,
                    help="include the 60 s 720p class (encoded on first use; default: on, off with --quick)")
    ap.add_argument("--rates", default="auto", help="req/s list, or auto: multiples of 1 / the first system's "
                    "mix-weighted unloaded service time")
    ap.add_argument("--rate-multipliers", default=None, help="for --rates auto (default 0.25,0.5,1,1.5,2,3,4; "
                    "quick 0.3,0.6,1.2)")
    ap.add_argument("--duration", type=float, default=None, help="trace length per rate in s (default 60; quick 10)")
    ap.add_argument("--min-requests", type=int, default=None, help="per rate (default 24; quick 6)")
    ap.add_argument("--bisect-resolution", type=float, default=None, help="bisect until first fail - last pass <= "
                    "this x last pass (default 0.25; quick 0 = no bisection)")
    ap.add_argument("--video-fraction", type=float, default=0.4)
    ap.add_argument("--text-tokens", default="32,96", help="min,max output tokens of text requests")
    ap.add_argument("--video-tokens", default="16,64", help="min,max output tokens of video requests")
    ap.add_argument("--ttft-slo-scale", type=float, default=5.0)
    ap.add_argument("--tpot-slo-scale", type=float, default=1.5)
    ap.add_argument("--typical-batch", type=int, default=4)
    ap.add_argument("--calib-reps", type=int, default=None, help="default 3; quick 1")
    ap.add_argument("--calib-tokens", type=int, default=32)
    ap.add_argument("--recalibrations", type=int, default=None,
                    help="calibrate again after the sweeps, up to this many times: the SLOs become the slower of the "
                    "calibrations, every run is judged again and the sweeps go on (bench_serving_drift; 0: never; "
                    "default 1; quick 0, where a slow round still re-calibrates)")
    ap.add_argument("--slow-host-factor", type=float, default=1.3,
                    help="a round whose host probe (the first system's unloaded TPOT at the typical batch, before and "
                    "after it) read more than this x the same probe at the calibration runs again (0: never)")
    ap.add_argument("--slow-retries", type=int, default=None,
                    help="at most this many reruns per round run in a slow spell (default 2; quick 0)")
    ap.add_argument("--stop-below", type=float, default=0.5, help="stop a sweep below this attainment")
    ap.add_argument("--request-timeout", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slos-from", type=Path, help="hint and judge by the SLOs of DIR/results.json instead of this "
                    "run's calibration (an engine change A/B against an earlier run, same SLOs)")
    ap.add_argument("--replot", type=Path, help="only redraw table and plots from DIR/results.json + raw.json")
    ap.add_argument("--extend", type=Path, help="add to DIR/results.json + raw.json the runs the current method adds "
                    "(finer bisection, sustained-rate comparisons), with the folder's own trace settings and SLOs")
    args = ap.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (10.0 if q else 60.0)
    args.min_requests = args.min_requests or (6 if q else 24)
    if args.bisect_resolution is None:
        args.bisect_resolution = 0.0 if q else 0.25
    args.calib_reps = args.calib_reps or (1 if q else 3)
    args.slow_retries = (0 if q else 2) if args.slow_retries is None else args.slow_retries
    # Quick: no calibration after the sweeps (~1 min of its < 10; measured 10m54s with it on a slow spell of the VM).
    args.recalibrations = (0 if q else 1) if args.recalibrations is None else args.recalibrations
    args.long_video = (not q) if args.long_video is None else args.long_video
    args.rate_multipliers = [float(x) for x in (args.rate_multipliers or ("0.3,0.6,1.2" if q else
                                                                          "0.25,0.5,1,1.5,2,3,4")).split(",")]
    return args


def model_path(args: argparse.Namespace) -> Path:
    if args.model:
        return args.model.resolve()
    dtype = getattr(args, "model_dtype", "float32")
    path = REPO / "artifacts" / "models" / (MODEL_DIRS[args.model_preset] + ("-bf16" if dtype == "bfloat16" else ""))
    import make_tiny_model  # idempotent: cheap when the folder is complete and current

    make_tiny_model.main(["--out", str(path), "--preset", args.model_preset, "--dtype", dtype])
    return path


def _pair(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split(","))
    return lo, hi


@contextlib.contextmanager
def _serve(system: System, env: dict[str, str], log_dir: Path, url: str | None) -> Iterator[str]:
    """The gRPC URL of the system: a tritonserver started here (stopped on exit), or the given one."""
    if url:
        yield url
        return
    log = log_dir / f"tritonserver-{system.name}.log"
    with TritonServerProcess(system.repository, env=env, log_path=log, ready_timeout_s=600) as server:
        yield server.grpc_url


@contextlib.contextmanager
def _serve_all(systems: list[System], args, model: Path, classes, videos) -> Iterator[dict[str, str]]:
    """Every system's server at once, each on its own ports and warmed up: name -> gRPC URL. The ones not measured sit
    idle (memory, ~1.5 GB each with the small model; no CPU), so the measurements can be interleaved (see
    load_rounds)."""
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for system in systems:
            started = time.perf_counter()
            urls[system.name] = stack.enter_context(_serve(system, _env(system, args, model), args.out, args.url))
            print(f"  {system.name}: {system.description}; ready in {time.perf_counter() - started:.0f} s "
                  f"({urls[system.name]})", flush=True)
        for url in urls.values():
            warm_up(url, classes, videos)
        yield urls


def _env(system: System, args, model: Path) -> dict[str, str]:
    return {"MLLM_MODEL_PATH": str(model), "MLLM_MEDIA_ROOTS": str(args.video_dir.resolve()), **NO_CACHES,
            **system.env}


def recalibrate(urls: dict[str, str], systems: list[System], args, classes, videos, shape, slos: Slos,
                results: dict) -> Slos:
    """Calibrate again after the sweeps; where the host got slower, the SLOs follow the slower calibration, every run
    is judged again and the sweeps go on from the new judgement (bench_serving_drift). Returns the final SLOs."""
    again = _calibrate_again(urls, args, classes, videos)
    for i in range(args.recalibrations):
        looser = again(slos, results, f"after the sweeps, {i + 1} of at most {args.recalibrations}")
        if looser is slos:
            break
        rounds, slos = load_rounds(urls, systems, args, classes, videos, shape, looser, results, again)
        if not rounds:
            break
    return slos


def _calibrate_again(urls: dict[str, str], args, classes, videos) -> Callable[[Slos, dict, str], Slos]:
    """The calibration once more (bench_serving_drift.calibrate_again): after the sweeps, and when a round ran in a
    slow spell (bench_serving_rounds)."""
    return lambda slos, results, why: calibrate_again(urls, args, classes, videos, slos, results, why)


def rate_grid(calibration: dict, args, classes, shape) -> list[float]:
    """Multiples of 1 / the mix-weighted unloaded service time of one request (the first system's)."""
    mean_tokens = {c.name: sum(shape.video_tokens if c.video else shape.text_tokens) / 2 for c in classes}
    base = 1.0 / mean_service_s(calibration, mean_service_weights(classes, shape), mean_tokens)
    grid = [round(base * m, 3) for m in args.rate_multipliers]
    print(f"\nrate grid: {grid} req/s (1 / unloaded mix service time = {base:.3f} req/s)", flush=True)
    return grid


# What makes a results folder's traces and judging what they are: --extend takes these from the folder.
_STORED_ARGS = {"seed": int, "duration": float, "min_requests": int, "video_fraction": float, "text_tokens": str,
                "video_tokens": str, "long_video": lambda v: v == "True", "quick": lambda v: v == "True",
                "stop_below": float, "request_timeout": float, "video_dir": Path, "model": Path}


def _load(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    raw = json.loads((folder / "raw.json").read_text())
    for name, entry in results["systems"].items():
        entry["raw"] = raw[name]
    return results


def _load_slos(folder: Path) -> Slos:
    stored = json.loads((folder / "results.json").read_text())["slos"]
    return Slos(stored["ttft_ms"], stored["tpot_ms"])


def _extend_settings(args: argparse.Namespace, results: dict) -> None:
    stored = dict(results["args"], model=results["model"])
    for key, convert in _STORED_ARGS.items():
        setattr(args, key, convert(stored[key]))
    args.out = args.extend
    backup = args.extend / "results.before-extend.json"
    if not backup.exists():
        backup.write_text((args.extend / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        results = _load(args.replot)
        print_table(results)
        write_outputs(results, args.replot)
        return 0
    prior = _load(args.extend) if args.extend else None
    if prior:
        _extend_settings(args, prior)
    names = list(prior["systems"]) if prior else ["external"] if args.url else args.systems.split(",")
    systems = [System("external", Path(), {}, f"the server at {args.url}") if n == "external" else SYSTEMS[n]
               for n in names]
    classes = request_classes(args.long_video)
    ensure_videos(args.video_dir, classes)
    videos = {c.video: (args.video_dir / c.video).read_bytes() for c in classes if c.video}
    shape = TraceShape(args.video_fraction, _pair(args.text_tokens), _pair(args.video_tokens))
    model = model_path(args)  # --extend set args.model to the folder's model
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print("\n=== servers (all at once, idle while another one is measured)", flush=True)
    with _serve_all(systems, args, model, classes, videos) as urls:
        if prior:
            results = prior
            slos = _load_slos(args.extend)
            results.setdefault("extended", []).append({"date": time.strftime("%Y-%m-%d %H:%M"),
                                                       "bisect_resolution": args.bisect_resolution})
        else:
            results = {"machine": host_info(), "model": str(model), "args": {k: str(v) for k, v in vars(args).items()},
                       "classes": [asdict(c) for c in classes], "systems": {}}
            # Phase 1: every system's unloaded latencies -> one set of SLOs for all. Phase 2: the load sweeps.
            print("\n=== calibration (unloaded, every system in turn per measurement)", flush=True)
            calibrations = calibrate(urls, classes, videos, reps=args.calib_reps, typical_batch=args.typical_batch,
                                     tokens=args.calib_tokens)
            slos = (_load_slos(args.slos_from) if args.slos_from
                    else slos_from(calibrations.values(), args.ttft_slo_scale, args.tpot_slo_scale))
            results["slos_at_start"] = slos.as_dict()
            print(f"\nSLOs for every system: {slos.describe()}", flush=True)
            grid = ([float(x) for x in args.rates.split(",")] if args.rates != "auto"
                    else rate_grid(calibrations[systems[0].name], args, classes, shape))
            for system in systems:
                results["systems"][system.name] = {
                    "system": asdict(system) | {"repository": str(system.repository)},
                    "calibration": calibrations[system.name], "grid": grid, "runs": [], "raw": {}}
        fixed = bool(prior or args.slos_from)  # their SLOs are given: no calibration may loosen them
        _, slos = load_rounds(urls, systems, args, classes, videos, shape, slos, results,
                              None if fixed else _calibrate_again(urls, args, classes, videos))
        if not fixed:
            slos = recalibrate(urls, systems, args, classes, videos, shape, slos, results)
    results["wall_s"] = round(time.perf_counter() - started + (prior or {}).get("wall_s", 0.0), 1)
    finish(results, slos)
    print_table(results)
    write_outputs(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
