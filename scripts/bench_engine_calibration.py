"""bench_engine: the unloaded measurements on this machine that set the SLOs and the arrival rate."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_common import TEXT_PROMPTS, VIDEO_PROMPTS
from bench_engine_metrics import cost_model_state, decode_period_ms, step_col
from bench_engine_trace import Clip, RunRecord, TraceItem, replay

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput


def make_engine(args: argparse.Namespace, model_path: str, policy: str, tpot_slo_ms: float) -> Engine:
    kwargs: dict = {"kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30)} if args.kv_cache_gib else {}
    if args.no_overlap_encoder:  # CUDA only: run encoder slices and the LLM step one after the other
        kwargs["overlap_encoder"] = False
    return Engine(EngineConfig(model_path=model_path, policy=policy, tpot_slo_ms=tpot_slo_ms, seed=args.seed,
                               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                               encoder_budget_tokens=args.encoder_budget_tokens, dtype=args.dtype, device=args.device,
                               **kwargs))


def smallest_encoder_unit_ms(engine: Engine, clip: Clip, reps: int = 5) -> float | None:
    """One temporal group through one vision block (best effort: uses the runner's layered encoder)."""
    try:
        req = engine.make_request("unit", GenerationInput(text="x", videos=(VideoInput(clip.frames, clip.sample_fps),)),
                                  SamplingParams(max_tokens=1))
        video, enc = req.videos[0], engine.runner.encoder
        pixels = video.pixel_values[: video.patches_per_group].to(engine.runner.device)
        grid = torch.tensor([[1, *video.grid_thw[1:]]], device=engine.runner.device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            piece = enc.start(pixels, grid)
            enc.run_blocks(piece, 1)
            _sync(engine)
            times.append(time.perf_counter() - t)
        return round(float(np.min(times)) * 1000.0, 3)
    except (AttributeError, TypeError) as exc:
        print(f"  (smallest encoder unit not measured: {exc})")
        return None


def _sync(engine: Engine) -> None:
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()


def calibrate(args: argparse.Namespace, model_path: str, clips: list[Clip]) -> dict:
    """Unloaded latencies on this machine (blocking policy, no SLO: full budgets, nothing else running)."""
    engine = make_engine(args, model_path, "blocking", 0.0)
    rng = np.random.default_rng(args.seed + 1)
    ids = iter(range(10**6))

    def text(n: int, at: float = 0.0) -> TraceItem:
        return TraceItem(f"c{next(ids)}", at, "text", TEXT_PROMPTS[int(rng.integers(len(TEXT_PROMPTS)))], n)

    def video(c: int, n: int, at: float = 0.0) -> TraceItem:
        return TraceItem(f"c{next(ids)}", at, "video", VIDEO_PROMPTS[0], n, c)

    def run(items: list[TraceItem]) -> RunRecord:
        r = replay(engine, items, clips, None, max_wall_s=600.0, start_delay_s=0.0)
        if r.error:
            raise RuntimeError(f"calibration run failed: {r.error}")
        return r

    run([text(16), text(16), video(0, 8, 0.01), text(16, 0.02)])  # warm-up: allocator, kernels, first-call paths
    out: dict = {"decode_period_ms_vs_batch_text": {}}
    for b in args.calib_batches:
        out["decode_period_ms_vs_batch_text"][b] = decode_period_ms(run([text(24) for _ in range(b)]), b)
    # The typical batch with the trace's mix: some streams hold a video's long context.
    b = args.typical_batch
    n_video = max(1, round(b * args.video_fraction)) if clips else 0
    mixed = [video(i % len(clips), 40) for i in range(n_video)] + [text(40 + 8 * n_video) for _ in range(b - n_video)]
    out["typical_batch"] = b
    out["typical_batch_videos"] = n_video
    out["decode_period_ms_typical_mixed"] = decode_period_ms(run(mixed), b)
    # Minimum over repetitions for the one-request latencies (noise only adds).
    ttfts = [(lambda r: (r.requests[0].token_times[0] - r.requests[0].arrival) * 1000.0)(run([text(2)]))
             for _ in range(max(3, args.calib_reps))]
    out["unloaded_ttft_ms"] = {"text": round(float(np.min(ttfts)), 3)}
    out["clips"] = []
    for c, clip in enumerate(clips):
        runs = [run([video(c, 2)]) for _ in range(args.calib_reps)]
        ttft = float(np.min([(r.requests[0].token_times[0] - r.requests[0].arrival) * 1000.0 for r in runs]))
        encode = float(np.min([step_col(r.steps, "encoder_s").sum() * 1000.0 for r in runs]))
        req = engine.make_request("probe", GenerationInput(text=VIDEO_PROMPTS[0],
                                                           videos=(VideoInput(clip.frames, clip.sample_fps),)),
                                  SamplingParams(max_tokens=1))
        v = req.videos[0]
        out["unloaded_ttft_ms"][f"clip{c}"] = round(ttft, 3)
        out["clips"].append({
            "name": clip.name, "frames": list(clip.frames.shape), "sample_fps": clip.sample_fps,
            "grid_thw": list(v.grid_thw), "visual_tokens": v.num_tokens, "prompt_tokens": req.num_prompt_tokens,
            "encoder_depth": v.encoder_depth, "unloaded_ttft_ms": round(ttft, 3), "encode_ms": round(encode, 3),
            "smallest_unit_ms": smallest_encoder_unit_ms(engine, clip),
        })
    step = out["decode_period_ms_typical_mixed"] or out["decode_period_ms_vs_batch_text"].get(b)
    for c in out["clips"]:
        c["encode_in_decode_steps"] = round(c["encode_ms"] / step, 2) if step else None
    out["cost_model_after_calibration"] = cost_model_state(engine)
    return out


def choose_slos(args: argparse.Namespace, calib: dict, clips: list[Clip]) -> dict:
    step = calib["decode_period_ms_typical_mixed"] or calib["decode_period_ms_vs_batch_text"].get(args.typical_batch)
    tpot = args.tpot_slo_ms or round(args.tpot_slo_scale * step, 3)
    ttft = {"text": round(args.ttft_slo_scale * calib["unloaded_ttft_ms"]["text"], 3)}
    for c, clip in enumerate(clips):
        ttft[clip.name] = round(args.ttft_slo_scale * calib["unloaded_ttft_ms"][f"clip{c}"], 3)
    return {"tpot_slo_ms": tpot, "ttft_slo_ms": ttft,
            "rule": (f"TPOT SLO = {args.tpot_slo_scale} x unloaded decode step period at the typical mixed batch "
                     f"({args.typical_batch}) = {tpot} ms" if not args.tpot_slo_ms else f"TPOT SLO = {tpot} ms (given)")
            + f"; TTFT SLO = {args.ttft_slo_scale} x unloaded TTFT of the request's kind (text, or that clip)"}


def auto_rate(args: argparse.Namespace, calib: dict, text_tokens: tuple, video_tokens: tuple) -> dict:
    """Arrival rate for a target load: machine-seconds per request estimated from the unloaded numbers."""
    b = args.typical_batch
    step_s = (calib["decode_period_ms_typical_mixed"] or calib["decode_period_ms_vs_batch_text"][b]) / 1000.0
    per_token_s = step_s / b  # decode cost of one token, amortized over the typical batch
    text_s = calib["unloaded_ttft_ms"]["text"] / 1000.0 + np.mean(text_tokens) * per_token_s
    clip_ttfts = [c["unloaded_ttft_ms"] / 1000.0 for c in calib["clips"]]
    video_s = (float(np.mean(clip_ttfts)) if clip_ttfts else 0.0) + np.mean(video_tokens) * per_token_s
    mean_s = args.video_fraction * video_s + (1 - args.video_fraction) * text_s
    return {"rate": round(args.load / mean_s, 4), "est_machine_s_per_text": round(float(text_s), 4),
            "est_machine_s_per_video": round(float(video_s), 4), "target_load": args.load}


def warmup_items(num_clips: int) -> list[TraceItem]:
    """Untimed, identical for every policy: streams decoding while videos arrive (cost model samples)."""
    items = [TraceItem(f"w{i}", 0.02 * i, "text", TEXT_PROMPTS[i % len(TEXT_PROMPTS)], 48) for i in range(3)]
    for j in range(min(2, num_clips)):
        items.append(TraceItem(f"wv{j}", 0.1 + 0.4 * j, "video", VIDEO_PROMPTS[0], 16, j))
    items.append(TraceItem("w3", 0.3, "text", TEXT_PROMPTS[3], 32))
    return items
