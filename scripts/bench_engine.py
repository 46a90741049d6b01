#!/usr/bin/env python
"""Offline engine benchmark (no Triton): `unified` vs `blocking` vs `fcfs` on one Poisson trace of video + text.

    .venv/bin/python scripts/bench_engine.py [--quick] [--out bench_out/engine]
        [--model-preset small|tiny|7b | --model PATH] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--policies unified,blocking,fcfs] [--duration S | --num-requests N] [--rate auto|REQ_PER_S] [--load 0.5]
        [--rounds R] [--video-fraction 0.35] [--tpot-slo-scale 1.5 | --tpot-slo-ms MS] [--ttft-slo-scale 5]
        [--burst N] [--seed 0] [--replot DIR]      (all flags: --help; results: docs/benchmarks_engine.md)

What it does, in order (DESIGN.md 7: one run, same inputs, side by side, the machine stated):

1. Model and clips. The generated `small` Qwen2.5-VL (encoding one video ~ 10-20 decode steps on a 2-core CPU) is
   made if missing; real videos from ``--video-dir`` are decoded ONCE with FlashCodec at the model's pixel limits
   (16-32 frames each); decoding is not part of this benchmark. Every video request is encoded (no content key, so
   the encoder output cache never hits).
2. Calibration on an unloaded engine: the decode step period vs batch size (text contexts) and at the typical batch
   with a video/text mix (25th percentile of step periods), the TTFT of one text request alone and of each clip
   alone, the encoder time per clip and its smallest unit, one temporal group through one vision block (minimum of
   repetitions: on a shared machine other processes only add time). SLOs derive from it:
   TPOT SLO = tpot_slo_scale x decode step at the typical mixed batch; TTFT SLO per request = ttft_slo_scale x the
   unloaded TTFT of its kind (text, or that clip). The engine's `tpot_slo_ms` is the same TPOT SLO (what `unified`
   plans against). With ``--rate auto`` the arrival rate is chosen from the same numbers for a target load.
3. A seeded trace: Poisson arrivals, ~35 % video requests, fixed output lengths (ignore_eos), each request
   carrying its TTFT and TPOT SLO. Replayed in wall-clock time against each policy in turn: a fresh Engine per policy
   (same weights and seed), an untimed warm-up of a few requests first (so `unified`'s online cost model has
   samples), then `engine.step()` in a loop, adding the requests whose arrival time has passed, sleeping only when
   idle. Arrival, first-token and every token time are recorded per request, and every step's StepStats. The
   default mode replays the trace twice per policy (order rotated each round, waiting for a quiet machine first) and
   pools the rounds; the CPU other processes used during each run is recorded (shared machines are noisy).
4. Optional ``--burst N``: the first N trace requests all at t=0 (the machine saturated): token throughput capacity.

Metrics per policy: TTFT and TPOT (per-request mean gap) p50/p90/p99, per-token gap percentiles, tokens/s and
requests/s over the run, SLO attainment (TTFT <= its SLO and mean TPOT <= the TPOT SLO) and goodput, attainment at
other TTFT scales (post hoc), and the key one: p99 of per-token gaps whose interval overlapped a step that ran
encoder work vs p99 of gaps of pure decode steps. Outputs in ``--out``: ``results.json`` (machine, config,
calibration, per-policy metrics, step-stats summaries), ``raw.json`` (per-request token times, per-step stats),
``timeline.png`` (per-token gaps over time with encoder steps shaded; TTFT/TPOT CDFs) and a printed table.
Numbers, never pass/fail: tests only check that this runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO / "backends", REPO / "scripts"):  # works before `pip install -e .` too
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_common import host_info  # noqa: E402

from flashcodec import SamplingSpec, decode_video  # noqa: E402
from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput  # noqa: E402
from unifiedserve.vision import load_vision_spec  # noqa: E402

DEFAULT_OUT = Path("bench_out/engine")
MODEL_DIRS = {"tiny": "tiny-qwen2.5-vl", "small": "small-qwen2.5-vl", "7b": "7b-qwen2.5-vl"}
# Clips from make_sample_videos' quick set (also in its default set): three codecs, 16-32 frames each.
CLIP_POOL = (
    ("hevc_bf_640x360_4s_gop30.mp4", 32),
    ("h264_bf_642x362_3s_gop30.mp4", 24),
    ("vp9_640x360_4s_gop30.webm", 16),
    ("h264_bf_vfr_320x240_8s_gop30.mp4", 32),
)
TEXT_PROMPTS = (
    "Tell me a story about a red cat and a blue car.",
    "Explain how a train moves along the river, step by step.",
    "Summarize what happens when the green ball rolls down the road.",
    "Describe a city street at night: the lights, the cars, the people walking home.",
    "Write a short poem about mountains, birds and a yellow kite.",
    "Why does the robot stop at the door? Give three reasons.",
)
VIDEO_PROMPTS = ("Describe this video.", "What happens in this video?", "How many objects move in this video?",
                 "Summarize the video in two sentences.")
WARMUP_S = 0.3  # offset of the first trace arrival from the loop's start (after the warm-up)
STALL_S = 120.0  # a policy run that makes no token for this long is aborted (reported, not hung)


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Clip:
    name: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    sample_fps: float


@dataclass(frozen=True)
class TraceItem:
    request_id: str
    arrival_s: float  # from the trace start
    kind: str  # "text" | "video"
    prompt: str
    max_tokens: int
    clip: int | None = None  # index into the clip list


def ensure_model(args: argparse.Namespace) -> str:
    if args.model:
        return str(args.model)
    path = REPO / "artifacts" / "models" / MODEL_DIRS[args.model_preset]
    import make_tiny_model  # idempotent: cheap when the folder is complete and current

    argv = ["--out", str(path), "--preset", args.model_preset]
    if make_tiny_model.main(argv) != 0:
        raise SystemExit(f"could not generate the {args.model_preset} model in {path}")
    return str(path)


def load_clips(video_dir: Path, model_path: str, max_clips: int) -> list[Clip]:
    """Decode each pool clip once (FlashCodec, CPU, the model's pixel limits); generate the videos if missing.

    Decoding runs in a separate process, as in serving (flashcodec and unifiedserve are separate Triton models,
    so separate processes). Measured on the 2-core VM: after FlashCodec decoded in the engine's own process,
    its decode steps stayed 1.3-2x slower for the rest of the process (batch 2: 10 -> 16-20 ms; not threads,
    page faults or the output pool), which would distort every policy's numbers.
    """
    if not all((video_dir / name).exists() for name, _ in CLIP_POOL):
        import make_sample_videos

        make_sample_videos.generate(video_dir, make_sample_videos.QUICK_SET)
    import multiprocessing

    jobs = [(str(video_dir / name), num_frames, model_path) for name, num_frames in CLIP_POOL[:max_clips]]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        decoded = pool.starmap(_decode_clip, jobs)
    return [Clip(name, frames, fps) for (name, _), (frames, fps) in zip(CLIP_POOL, decoded, strict=False)]


def _decode_clip(path: str, num_frames: int, model_path: str) -> tuple[np.ndarray, float]:
    spec = load_vision_spec(model_path)
    decoded = decode_video(Path(path).read_bytes(), SamplingSpec(
        num_frames=num_frames, min_pixels=spec.min_pixels, max_pixels=spec.max_pixels,
        size_factor=spec.size_factor, frame_factor=spec.temporal_patch_size))
    frames = decoded.frames  # numpy on the CPU path; a torch tensor if a GPU decoder kept them on the device
    frames = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.array(frames)  # own the memory
    return frames, float(decoded.sample_fps)


def make_trace(rng: np.random.Generator, rate: float, duration_s: float, num_requests: int | None,
               video_fraction: float, num_clips: int, text_tokens: tuple[int, int], video_tokens: tuple[int, int],
               prefix: str = "r") -> list[TraceItem]:
    items, t = [], 0.0
    while True:
        t += float(rng.exponential(1.0 / rate))
        if (num_requests is not None and len(items) >= num_requests) or (num_requests is None and t > duration_s):
            return items
        rid = f"{prefix}{len(items):04d}"
        if rng.random() < video_fraction:
            items.append(TraceItem(rid, t, "video", VIDEO_PROMPTS[rng.integers(len(VIDEO_PROMPTS))],
                                   int(rng.integers(video_tokens[0], video_tokens[1] + 1)),
                                   int(rng.integers(num_clips))))
        else:
            prompt = " ".join(TEXT_PROMPTS[i] for i in rng.choice(len(TEXT_PROMPTS), int(rng.integers(1, 4)), False))
            items.append(TraceItem(rid, t, "text", prompt, int(rng.integers(text_tokens[0], text_tokens[1] + 1))))


# --------------------------------------------------------------------------------------------- replay
@dataclass
class ReqRecord:
    request_id: str
    kind: str
    clip: int | None
    arrival: float  # absolute, time.monotonic()
    max_tokens: int
    num_prompt_tokens: int
    ttft_slo_ms: float | None
    token_times: list[float] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RunRecord:
    t0: float  # trace start, time.monotonic()
    requests: list[ReqRecord]
    steps: np.ndarray  # [num_steps, len(STEP_FIELDS)]
    wall_s: float
    other_cpu_cores: float | None
    error: str | None = None


STEP_FIELDS = ("start_s", "end_s", "num_decode_tokens", "num_prefill_tokens", "encoder_tokens", "llm_s", "encoder_s",
               "token_budget", "encoder_budget", "attention_work", "num_encoder_pieces_started")


class OtherCpu:
    """Cores used by *other* processes meanwhile (Linux /proc): how noisy the machine was during a run."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            cpu = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            tick = os.sysconf("SC_CLK_TCK")
            busy = (sum(cpu[:8]) - cpu[3] - cpu[4]) / tick  # all but idle and iowait
            return busy, (float(mine[11]) + float(mine[12])) / tick, time.monotonic()
        except (OSError, ValueError, IndexError):
            return None

    def cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        return max(0.0, ((end[0] - self.start[0]) - (end[1] - self.start[1])) / (end[2] - self.start[2]))


def wait_quiet(max_cores: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until other processes use fewer than max_cores; returns the seconds waited."""
    t = time.monotonic()
    while time.monotonic() - t < max_wait_s:
        probe = OtherCpu()
        time.sleep(2.0)
        cores = probe.cores()
        if cores is None or cores < max_cores:
            break
    return time.monotonic() - t


def make_engine(args: argparse.Namespace, model_path: str, policy: str, tpot_slo_ms: float) -> Engine:
    kwargs: dict = {"kv_cache_memory_bytes": int(args.kv_cache_gib * 2**30)} if args.kv_cache_gib else {}
    if args.no_overlap_encoder:  # CUDA only: run encoder slices and the LLM step one after the other
        kwargs["overlap_encoder"] = False
    return Engine(EngineConfig(model_path=model_path, policy=policy, tpot_slo_ms=tpot_slo_ms, seed=args.seed,
                               max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                               encoder_budget_tokens=args.encoder_budget_tokens, dtype=args.dtype, device=args.device,
                               **kwargs))


def replay(engine: Engine, items: list[TraceItem], clips: list[Clip], slos: dict | None, max_wall_s: float,
           start_delay_s: float = WARMUP_S) -> RunRecord:
    """Replay `items` in wall-clock time; requests are built (preprocessed) before the clock starts."""
    prepared = []
    for it in items:
        videos = () if it.clip is None else (VideoInput(clips[it.clip].frames, clips[it.clip].sample_fps),)
        ttft = tpot = None
        if slos:
            ttft = slos["ttft_slo_ms"]["text" if it.clip is None else clips[it.clip].name]
            tpot = slos["tpot_slo_ms"]
        req = engine.make_request(it.request_id, GenerationInput(text=it.prompt, videos=videos),
                                  SamplingParams(max_tokens=it.max_tokens, ignore_eos=True),
                                  ttft_slo_ms=ttft, tpot_slo_ms=tpot)
        prepared.append((it, req))
    other = OtherCpu()
    t0 = time.monotonic() + start_delay_s
    records = {it.request_id: ReqRecord(it.request_id, it.kind, it.clip, t0 + it.arrival_s, it.max_tokens,
                                        req.num_prompt_tokens, req.ttft_slo_ms) for it, req in prepared}
    steps: list[tuple] = []
    error, nxt, last_progress = None, 0, time.monotonic()
    try:
        while nxt < len(prepared) or engine.has_unfinished():
            now = time.monotonic()
            while nxt < len(prepared) and t0 + prepared[nxt][0].arrival_s <= now:
                it, req = prepared[nxt]
                req.arrival_time = t0 + it.arrival_s  # TTFT counts from the trace's arrival instant
                engine.add_request(req)
                nxt += 1
            if not engine.has_unfinished():
                time.sleep(max(0.0, t0 + prepared[nxt][0].arrival_s - time.monotonic()))
                continue
            outs = engine.step()
            done = time.monotonic()
            s = engine.step_stats[-1]  # one StepStats per step; read it now (the deque is bounded)
            steps.append(tuple(float(getattr(s, f)) for f in STEP_FIELDS))
            for out in outs:
                rec = records.get(out.request_id)
                if rec is None:
                    continue
                rec.token_times.extend([done] * max(1, len(out.token_ids_delta)))
                if out.finished:
                    rec.finish_reason = out.finish_reason
            if outs:
                last_progress = done
            if done - last_progress > STALL_S or done - t0 > max_wall_s:
                raise TimeoutError(f"no progress for {done - last_progress:.0f} s or over {max_wall_s:.0f} s: aborted")
    except Exception as exc:  # noqa: BLE001 - an engine failure is a result to report, not a crash of the bench
        error = f"{type(exc).__name__}: {exc}"
        for rid in list(engine.requests):
            engine.abort(rid)
    wall = time.monotonic() - t0
    return RunRecord(t0, list(records.values()), np.asarray(steps, dtype=np.float64).reshape(-1, len(STEP_FIELDS)),
                     wall, other.cores(), error)


# --------------------------------------------------------------------------------------------- metrics
def pct(values, qs=(50, 90, 99)) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q}": None for q in qs} | {"n": 0}
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {"mean": round(float(arr.mean()), 3),
                                                                          "n": int(arr.size)}


def step_col(steps: np.ndarray, name: str) -> np.ndarray:
    return steps[:, STEP_FIELDS.index(name)]


def classify_gaps(run: RunRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All per-token gaps (ms), their end times (s from t0) and class: 2 = a step in the gap ran encoder work,
    1 = no encoder but a prefill chunk, 0 = decode-only. A gap (t_prev, t] holds the steps that started in it."""
    starts = step_col(run.steps, "start_s")
    enc = np.sort(starts[step_col(run.steps, "encoder_tokens") > 0])
    pre = np.sort(starts[step_col(run.steps, "num_prefill_tokens") > 0])
    gaps, ends, cls = [], [], []
    for rec in run.requests:
        t = np.asarray(rec.token_times)
        if t.size < 2:
            continue
        a, b = t[:-1], t[1:]
        has_enc = np.searchsorted(enc, b, "left") > np.searchsorted(enc, a, "left")
        has_pre = np.searchsorted(pre, b, "left") > np.searchsorted(pre, a, "left")
        gaps.append((b - a) * 1000.0)
        ends.append(b - run.t0)
        cls.append(np.where(has_enc, 2, np.where(has_pre, 1, 0)))
    if not gaps:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=int)
    return np.concatenate(gaps), np.concatenate(ends), np.concatenate(cls)


def summarize(runs: list[RunRecord], slos: dict | None, unloaded_ttft_ms: dict | None) -> dict:
    """Metrics over one or more runs of the same policy (rounds are pooled: per-request and per-token values)."""
    reqs = [r for run in runs for r in run.requests]
    kinds = np.asarray([r.kind for r in reqs])
    ttft = np.asarray([(r.token_times[0] - r.arrival) * 1000.0 if r.token_times else math.inf for r in reqs])
    tpot = np.asarray([(r.token_times[-1] - r.token_times[0]) * 1000.0 / (len(r.token_times) - 1)
                       if len(r.token_times) > 1 else (0.0 if r.token_times else math.inf) for r in reqs])
    multi = np.asarray([len(r.token_times) > 1 for r in reqs], dtype=bool)
    finished = np.asarray([r.finish_reason is not None for r in reqs], dtype=bool)
    parts = [classify_gaps(run) for run in runs]
    gaps = np.concatenate([g for g, _, _ in parts]) if parts else np.zeros(0)
    cls = np.concatenate([c for _, _, c in parts]) if parts else np.zeros(0, dtype=int)
    span = sum(max(max((r.token_times[-1] for r in run.requests if r.token_times), default=0.0)
                   - min((r.arrival for r in run.requests), default=0.0), 0.0) for run in runs) or 1e-9
    num_tokens = sum(len(r.token_times) for r in reqs)
    has_ttft = np.isfinite(ttft)
    out = {
        "num_requests": len(reqs), "num_finished": int(finished.sum()), "num_rounds": len(runs),
        "error": "; ".join(run.error for run in runs if run.error) or None,
        "span_s": round(span, 3), "output_tokens": num_tokens,
        "tokens_per_s": round(num_tokens / span, 3), "requests_per_s": round(int(finished.sum()) / span, 4),
        "ttft_ms": pct(ttft[has_ttft]),
        "ttft_ms_by_kind": {k: pct(ttft[has_ttft & (kinds == k)]) for k in ("text", "video")},
        "tpot_ms": pct(tpot[multi]),
        "tpot_ms_by_kind": {k: pct(tpot[multi & (kinds == k)]) for k in ("text", "video")},
        "token_gap_ms": pct(gaps, (50, 90, 99, 99.9)) | {"max": round(float(gaps.max()), 3) if gaps.size else None},
        "token_gap_ms_encoder": pct(gaps[cls == 2], (50, 90, 99)),
        "token_gap_ms_decode_only": pct(gaps[cls == 0], (50, 90, 99)),
        "token_gap_ms_no_encoder": pct(gaps[cls < 2], (50, 90, 99)),
        "other_cpu_cores": _mean_or_none([run.other_cpu_cores for run in runs]),
        "steps": summarize_steps(runs, slos["tpot_slo_ms"] if slos else None),
    }
    enc99, dec99 = out["token_gap_ms_encoder"]["p99"], out["token_gap_ms_decode_only"]["p99"]
    out["encoder_vs_decode_only_p99"] = round(enc99 / dec99, 3) if enc99 and dec99 else None
    if slos:
        ttft_slo = np.asarray([r.ttft_slo_ms or math.inf for r in reqs])
        ok_ttft, ok_tpot = ttft <= ttft_slo, tpot <= slos["tpot_slo_ms"]
        both = ok_ttft & ok_tpot & finished
        n = max(1, len(reqs))
        out["slo"] = {
            "attainment": round(float(both.sum()) / n, 4),
            "ttft_attainment": round(float(ok_ttft.sum()) / n, 4),
            "tpot_attainment": round(float(ok_tpot.sum()) / n, 4),
            "attainment_by_kind": {k: round(float(both[kinds == k].mean()), 4)
                                   for k in ("text", "video") if (kinds == k).any()},
            "goodput_requests_per_s": round(float(both.sum()) / span, 4),
        }
        if unloaded_ttft_ms:  # post hoc: the same runs judged at other TTFT SLO scales (TPOT SLO fixed)
            base = np.asarray([unloaded_ttft_ms[_slo_key(r)] for r in reqs])
            out["slo"]["attainment_vs_ttft_scale"] = {
                str(sc): round(float((ok_tpot & finished & (ttft <= sc * base)).sum()) / n, 4)
                for sc in (1.5, 2, 3, 5, 8, 12, 20)}
    return out


def _mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return round(float(np.mean(vals)), 3) if vals else None


def _slo_key(rec: ReqRecord) -> str:
    return "text" if rec.clip is None else f"clip{rec.clip}"


def summarize_steps(runs: list[RunRecord], tpot_slo_ms: float | None) -> dict:
    s = np.concatenate([run.steps for run in runs]) if runs else np.zeros((0, len(STEP_FIELDS)))
    if not len(s):
        return {"num_steps": 0}
    dur = (step_col(s, "end_s") - step_col(s, "start_s")) * 1000.0
    enc = step_col(s, "encoder_tokens") > 0
    dec = step_col(s, "num_decode_tokens")
    pre = step_col(s, "num_prefill_tokens") > 0
    busy = float(dur.sum()) / 1000.0
    over = {}
    if tpot_slo_ms:  # steps that stalled running streams past the TPOT SLO on their own, by what they carried
        for name, sel in (("decode_only", (dec > 0) & ~pre & ~enc), ("with_prefill", (dec > 0) & pre & ~enc),
                          ("with_encoder", (dec > 0) & enc)):
            over[name] = {"steps": int(sel.sum()),
                          "over_slo": round(float((dur[sel] > tpot_slo_ms).mean()), 4) if sel.any() else None}
    return {
        "steps_with_decodes_over_tpot_slo": over,
        "num_steps": len(s), "num_encoder_steps": int(enc.sum()),
        "step_ms": pct(dur), "encoder_step_ms": pct(dur[enc]), "no_encoder_step_ms": pct(dur[~enc]),
        "encoder_steps_with_decodes": {  # the steps that stall running streams: what they carried
            "step_ms": pct(dur[enc & (dec > 0)]), "encoder_ms": pct(step_col(s, "encoder_s")[enc & (dec > 0)] * 1e3),
            "llm_ms": pct(step_col(s, "llm_s")[enc & (dec > 0)] * 1e3),
            "prefill_tokens": pct(step_col(s, "num_prefill_tokens")[enc & (dec > 0)]),
            "encoder_tokens": pct(step_col(s, "encoder_tokens")[enc & (dec > 0)]),
            "decodes": pct(dec[enc & (dec > 0)])},
        "encoder_s_total": round(float(step_col(s, "encoder_s").sum()), 3),
        "llm_s_total": round(float(step_col(s, "llm_s").sum()), 3),
        "busy_fraction": round(busy / max(sum(run.wall_s for run in runs), 1e-9), 3),
        "mean_decode_batch": round(float(dec[dec > 0].mean()), 2) if (dec > 0).any() else 0.0,
        "decode_batch": pct(dec[dec > 0]),
        "max_decode_batch": int(dec.max()),
        "encoder_tokens_per_encoder_step": pct(step_col(s, "encoder_tokens")[enc]),
        "encoder_budget_when_encoding": pct(step_col(s, "encoder_budget")[enc]),
        "token_budget": pct(step_col(s, "token_budget")),
    }


def cost_model_check(engine: Engine, run: RunRecord) -> dict:
    """How well the engine's final cost-model fit predicts the measured steps of the run (actual / predicted)."""
    s = run.steps
    try:
        cost = engine.cost
        decodes, prefills = step_col(s, "num_decode_tokens"), step_col(s, "num_prefill_tokens")
        tokens = decodes + prefills
        pred = np.asarray([cost.llm_s(int(d), int(p), float(a)) for d, p, a in zip(
            decodes, prefills, step_col(s, "attention_work"), strict=True)])
        enc = step_col(s, "encoder_tokens") > 0
        pred_enc = np.asarray([cost.encoder.predict([p, e]) for p, e in zip(
            step_col(s, "num_encoder_pieces_started")[enc], step_col(s, "encoder_tokens")[enc], strict=True)])
    except (AttributeError, TypeError) as exc:
        return {"unavailable": str(exc)}
    llm = step_col(s, "llm_s")
    pre = step_col(s, "num_prefill_tokens") > 0
    dec = step_col(s, "num_decode_tokens") > 0
    ok = (tokens > 0) & (pred > 0)
    return {
        "llm_actual_over_predicted_decode_only": pct((llm / np.where(ok, pred, 1))[ok & dec & ~pre], (10, 50, 90)),
        "llm_actual_over_predicted_with_prefill": pct((llm / np.where(ok, pred, 1))[ok & pre], (10, 50, 90)),
        "encoder_actual_over_predicted": pct(step_col(s, "encoder_s")[enc] / np.maximum(pred_enc, 1e-9),
                                             (10, 50, 90)),
    }


def cost_model_state(engine: Engine) -> dict:
    """The online cost model's coefficients (best effort: reads engine internals for reporting only)."""
    try:
        llm, enc = engine.cost.llm, engine.cost.encoder
        return {"llm_w_[1,decode_rows,prefill_tokens,attention_kwork]": [float(x) for x in llm.w],
                "encoder_w_[pieces_started,encoder_tokens]": [float(x) for x in enc.w],
                "llm_samples": len(llm._xs), "encoder_samples": len(enc._xs)}
    except AttributeError as exc:
        return {"unavailable": str(exc)}


# --------------------------------------------------------------------------------------------- calibration
def decode_period_ms(run: RunRecord, batch: int) -> float | None:
    """Start-to-start period of pure decode steps at exactly `batch` (what a stream sees per token): the 25th
    percentile, not the median, because on a shared machine other processes only ever add time."""
    s = run.steps
    if len(s) < 2:
        return None
    start = step_col(s, "start_s")
    pure = ((step_col(s, "num_decode_tokens") == batch) & (step_col(s, "num_prefill_tokens") == 0)
            & (step_col(s, "encoder_tokens") == 0))[:-1]
    periods = np.diff(start)[pure] * 1000.0
    return round(float(np.percentile(periods, 25)), 3) if periods.size else None


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


# --------------------------------------------------------------------------------------------- output
def machine_info(device: str) -> dict:
    info = {**host_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def machine_line(m: dict) -> str:
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores, torch {m['torch_threads']} threads"
    return f"{where}; {m['platform']}; torch {m['torch']}; load avg at start {m['loadavg_start'][0]}"


def _f(x, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: dict) -> None:
    pols = results["policies"]
    print(f"\nmachine: {machine_line(results['machine'])}")
    print(f"SLOs: {results['slos']['rule']}")
    print(f"trace: {results['trace']['num_requests']} requests ({results['trace']['num_video']} video) at "
          f"{results['trace']['rate']} req/s over {results['trace']['duration_s']:.0f} s\n")
    print("| policy | TTFT p50 / p90 / p99 ms | TPOT p50 / p90 / p99 ms | gap p99 encoder / decode-only ms (ratio) "
          "| tok/s | req/s | SLO attain. | goodput req/s | other CPU |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for name, m in pols.items():
        t, p = m["ttft_ms"], m["tpot_ms"]
        slo = m.get("slo", {})
        print(f"| {name}{' (ERROR)' if m['error'] else ''} | {_f(t['p50'])} / {_f(t['p90'])} / {_f(t['p99'])} "
              f"| {_f(p['p50'], '.1f')} / {_f(p['p90'], '.1f')} / {_f(p['p99'], '.1f')} "
              f"| {_f(m['token_gap_ms_encoder']['p99'], '.1f')} / {_f(m['token_gap_ms_decode_only']['p99'], '.1f')} "
              f"({_f(m['encoder_vs_decode_only_p99'], '.2f')}x) | {m['tokens_per_s']:.1f} | {m['requests_per_s']:.3f} "
              f"| {_f(slo.get('attainment'), '.1%')} | {_f(slo.get('goodput_requests_per_s'), '.3f')} "
              f"| {_f(m['other_cpu_cores'], '.2f')} |")
    print("\n| policy | TTFT text p50 / p99 ms | TTFT video p50 / p99 ms | SLO attain. text / video | TTFT ok "
          "| TPOT ok | mean decode batch | encoder steps |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, m in pols.items():
        tt, tv = m["ttft_ms_by_kind"]["text"], m["ttft_ms_by_kind"]["video"]
        slo = m.get("slo", {})
        by = slo.get("attainment_by_kind", {})
        print(f"| {name} | {_f(tt['p50'])} / {_f(tt['p99'])} | {_f(tv['p50'])} / {_f(tv['p99'])} "
              f"| {_f(by.get('text'), '.0%')} / {_f(by.get('video'), '.0%')} | {_f(slo.get('ttft_attainment'), '.0%')} "
              f"| {_f(slo.get('tpot_attainment'), '.0%')} | {m['steps'].get('mean_decode_batch')} "
              f"| {m['steps'].get('num_encoder_steps')} |")
    print("\n| policy | round | other CPU (cores) | SLO attain. | gap p99 ratio | tok/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in pols.items():
        for r in m.get("rounds", []):
            print(f"| {name} | {r['round']} | {_f(r['other_cpu_cores'], '.2f')} | {_f(r['slo_attainment'], '.1%')} "
                  f"| {_f(r['encoder_vs_decode_only_p99'], '.2f')}x | {r['tokens_per_s']:.1f} |")
    if results.get("burst"):
        print("\nburst (all at t=0): " + ", ".join(
            f"{k}: {v['tokens_per_s']:.1f} tok/s in {v['span_s']:.1f} s" for k, v in results["burst"].items()))
    print(f"\ntargets: {json.dumps(results['targets'], indent=1)}")


def targets(results: dict) -> dict:
    pols, out = results["policies"], {}
    u = pols.get("unified")
    if not u:
        return out
    ratio = u["encoder_vs_decode_only_p99"]
    out["unified_encoder_gap_p99_vs_decode_only_p99"] = {"value": ratio, "target": "<= 1.5",
                                                         "met": ratio is not None and ratio <= 1.5}
    for name in ("blocking", "fcfs"):
        if name in pols:
            out[f"{name}_encoder_gap_p99_vs_decode_only_p99"] = pols[name]["encoder_vs_decode_only_p99"]
    if "blocking" in pols:
        r = u["tokens_per_s"] / max(pols["blocking"]["tokens_per_s"], 1e-9)
        out["unified_tokens_per_s_vs_blocking"] = {"value": round(r, 3), "target": ">= 0.9", "met": r >= 0.9}
        burst = results.get("burst") or {}
        if "unified" in burst and "blocking" in burst:
            rb = burst["unified"]["tokens_per_s"] / max(burst["blocking"]["tokens_per_s"], 1e-9)
            out["unified_burst_tokens_per_s_vs_blocking"] = {"value": round(rb, 3), "target": ">= 0.9",
                                                             "met": rb >= 0.9}
            if "fcfs" in burst:
                out["unified_burst_tokens_per_s_vs_fcfs"] = round(
                    burst["unified"]["tokens_per_s"] / max(burst["fcfs"]["tokens_per_s"], 1e-9), 3)
    att = {k: v.get("slo", {}).get("attainment") for k, v in pols.items()}
    others = [att[k] for k in ("blocking", "fcfs") if att.get(k) is not None]
    if att.get("unified") is not None and others:
        out["unified_slo_attainment_vs_baselines"] = {"value": att, "target": "unified > both",
                                                      "met": all(att["unified"] > o for o in others)}
    return out


def plot(results: dict, all_runs: dict[str, list[RunRecord]], path: Path) -> bool:
    """Per policy: per-token gaps over time of its round with the least background load (other processes' CPU),
    encoder steps shaded; TTFT/TPOT CDFs over all rounds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return False
    runs = {name: min(r, key=lambda run: run.other_cpu_cores or 0.0) for name, r in all_runs.items() if r}
    names = list(runs)
    fig = plt.figure(figsize=(13, 3.0 * len(names) + 4))
    grid = fig.add_gridspec(len(names) + 1, 2, height_ratios=[3] * len(names) + [3.5])
    tpot_slo = results["slos"]["tpot_slo_ms"]
    colors = {0: "tab:blue", 1: "tab:green", 2: "tab:red"}
    labels = {0: "decode-only gap", 1: "gap with prefill", 2: "gap with encoder work"}
    ax0 = None
    for i, name in enumerate(names):
        run = runs[name]
        ax = fig.add_subplot(grid[i, :], sharex=ax0)
        ax0 = ax0 or ax
        s = run.steps
        if len(s):
            enc = step_col(s, "encoder_tokens") > 0
            spans = _merge_spans(step_col(s, "start_s")[enc] - run.t0, step_col(s, "end_s")[enc] - run.t0)
            ax.broken_barh([(a, b - a) for a, b in spans], (0, 1), transform=ax.get_xaxis_transform(),
                           color="orange", alpha=0.25, label="step ran encoder work")
        gaps, ends, cls = classify_gaps(run)
        for c in (0, 1, 2):
            sel = cls == c
            ax.scatter(ends[sel], gaps[sel], s=3, color=colors[c], label=labels[c], alpha=0.6, linewidths=0)
        ax.axhline(tpot_slo, color="black", ls="--", lw=1, label=f"TPOT SLO {tpot_slo:.0f} ms")
        ax.set_yscale("log")
        ax.set_ylabel("per-token gap (ms)")
        m = summarize([run], results["slos"], None)
        rnd = next(i for i, r in enumerate(all_runs[name]) if r is run)
        ax.set_title(f"{name} (round {rnd}, other CPU {_f(run.other_cpu_cores, '.2f')}): "
                     f"gap p99 encoder {_f(m['token_gap_ms_encoder']['p99'], '.0f')} ms vs decode-only "
                     f"{_f(m['token_gap_ms_decode_only']['p99'], '.0f')} ms; SLO attainment "
                     f"{_f(m.get('slo', {}).get('attainment'), '.0%')}", fontsize=10)
        if i == 0:
            ax.legend(loc="upper right", fontsize=7, ncol=5, markerscale=3)
    ax0.set_xlabel("time since trace start (s)")
    for j, (key, title) in enumerate((("ttft", "TTFT"), ("tpot", "TPOT (per-request mean)"))):
        ax = fig.add_subplot(grid[-1, j])
        for name in names:
            vals = np.concatenate([_per_request(r, key) for r in all_runs[name]])
            if vals.size:
                ax.plot(np.sort(vals), np.arange(1, vals.size + 1) / vals.size, label=name)
        if key == "tpot":
            ax.axvline(tpot_slo, color="black", ls="--", lw=1, label="TPOT SLO")
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"UnifiedServe engine, Poisson trace ({results['trace']['rate']} req/s, "
                 f"{results['trace']['num_video']}/{results['trace']['num_requests']} video) — "
                 f"{machine_line(results['machine'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _merge_spans(starts: np.ndarray, ends: np.ndarray, slack_s: float = 0.005) -> list[tuple[float, float]]:
    spans: list[list[float]] = []
    for a, b in zip(starts, ends, strict=True):
        if spans and a - spans[-1][1] <= slack_s:
            spans[-1][1] = b
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans]


def _per_request(run: RunRecord, key: str) -> np.ndarray:
    if key == "ttft":
        return np.asarray([(r.token_times[0] - r.arrival) * 1000.0 for r in run.requests if r.token_times])
    return np.asarray([(r.token_times[-1] - r.token_times[0]) * 1000.0 / (len(r.token_times) - 1)
                       for r in run.requests if len(r.token_times) > 1])


def raw_dump(runs: dict[str, list[RunRecord]]) -> dict:
    return {name: [{
        "t0": run.t0,
        "requests": [{**{k: v for k, v in asdict(r).items() if k != "token_times"},
                      "arrival_s": round(r.arrival - run.t0, 6),
                      "token_times_s": [round(t - run.t0, 6) for t in r.token_times]} for r in run.requests],
        "step_fields": [f if not f.endswith("_s") or f in ("llm_s", "encoder_s") else f + "_from_t0"
                        for f in STEP_FIELDS],
        "steps": [[round(v - (run.t0 if j < 2 else 0.0), 6) for j, v in enumerate(row)] for row in run.steps.tolist()],
        "wall_s": run.wall_s, "other_cpu_cores": run.other_cpu_cores, "error": run.error,
    } for run in rounds] for name, rounds in runs.items()}


def load_raw(runs: dict) -> dict[str, list[RunRecord]]:
    """raw_dump's output back into RunRecords (times from each run's t0 = 0): for --replot."""
    out = {}
    for name, rounds in runs.items():
        out[name] = []
        for run in rounds:
            reqs = [ReqRecord(r["request_id"], r["kind"], r["clip"], r["arrival_s"], r["max_tokens"],
                              r["num_prompt_tokens"], r["ttft_slo_ms"], r["token_times_s"], r["finish_reason"])
                    for r in run["requests"]]
            steps = np.asarray(run["steps"], dtype=np.float64).reshape(-1, len(STEP_FIELDS))
            out[name].append(RunRecord(0.0, reqs, steps, run.get("wall_s", 0.0), run.get("other_cpu_cores"),
                                       run.get("error")))
    return out


def replot(folder: Path) -> int:
    results = json.loads((folder / "results.json").read_text())
    runs = load_raw(json.loads((folder / "raw.json").read_text())["trace"])
    for name, rounds in runs.items():  # older raw.json files lack the per-run background load: take it from results
        for run, info in zip(rounds, results["policies"][name].get("rounds", []), strict=False):
            run.other_cpu_cores = info.get("other_cpu_cores") if run.other_cpu_cores is None else run.other_cpu_cores
    return 0 if plot(results, runs, folder / "timeline.png") else 1


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short trace and calibration (~2-3 min on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model-preset", choices=sorted(MODEL_DIRS), default="small")
    ap.add_argument("--model", type=Path, help="checkpoint folder (overrides --model-preset)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on cuda")
    ap.add_argument("--video-dir", type=Path, default=REPO / "artifacts" / "videos")
    ap.add_argument("--num-clips", type=int, default=len(CLIP_POOL))
    ap.add_argument("--policies", default="unified,blocking,fcfs")
    ap.add_argument("--duration", type=float, default=None, help="trace length in s (default 70; --quick 35)")
    ap.add_argument("--rounds", type=int, default=None, help="replays of the trace per policy, order rotated, pooled "
                    "(default 2; --quick 1)")
    ap.add_argument("--wait-quiet", type=float, default=None, help="before each run, wait up to this many s for "
                    "other processes to use < --quiet-cores (default 30; --quick 0)")
    ap.add_argument("--quiet-cores", type=float, default=0.3)
    ap.add_argument("--num-requests", type=int, default=None, help="fixed request count instead of --duration")
    ap.add_argument("--rate", default="auto", help="req/s, or auto: --load x the machine's estimated capacity")
    ap.add_argument("--load", type=float, default=0.5, help="target load for --rate auto (an estimate: the measured "
                    "busy fraction comes out higher, ~0.65 at 0.5 on 2 CPU cores)")
    ap.add_argument("--video-fraction", type=float, default=0.35)
    ap.add_argument("--text-tokens", default="48,160", help="min,max output tokens of text requests")
    ap.add_argument("--video-tokens", default="32,96", help="min,max output tokens of video requests")
    ap.add_argument("--tpot-slo-scale", type=float, default=1.5)
    ap.add_argument("--tpot-slo-ms", type=float, default=None, help="fixed TPOT SLO instead of the scale rule")
    ap.add_argument("--ttft-slo-scale", type=float, default=5.0)
    ap.add_argument("--typical-batch", type=int, default=4)
    ap.add_argument("--calib-batches", default=None, help="decode batches to time (default 1,2,4,8,16; quick 1,4,8)")
    ap.add_argument("--calib-reps", type=int, default=None)
    ap.add_argument("--burst", type=int, default=None, help="also run N requests at t=0 (default 16; quick 0)")
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--encoder-budget-tokens", type=int, default=4096)
    ap.add_argument("--kv-cache-gib", type=float, default=None, help="KV pool size (default: engine's; cuda: 8)")
    ap.add_argument("--no-overlap-encoder", action="store_true",
                    help="CUDA: no low-priority encoder stream beside the LLM step (EngineConfig.overlap_encoder)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", type=Path, metavar="DIR", help="only redraw DIR/timeline.png from its JSON files")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.kv_cache_gib is None and args.device.startswith("cuda"):
        args.kv_cache_gib = 8.0
    args.duration = args.duration or (35.0 if args.quick else 70.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.wait_quiet = (0.0 if args.quick else 30.0) if args.wait_quiet is None else args.wait_quiet
    batches = args.calib_batches or ("1,4,8" if args.quick else "1,2,4,8,16")
    args.calib_batches = sorted({int(x) for x in batches.split(",")} | {args.typical_batch})
    args.calib_reps = args.calib_reps or (2 if args.quick else 3)
    args.burst = (0 if args.quick else 16) if args.burst is None else args.burst
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    machine = machine_info(args.device)
    print(f"machine: {machine_line(machine)}")
    if machine["loadavg_start"][0] > 0.5 * machine["cores"] and not args.device.startswith("cuda"):
        print(f"WARNING: load average {machine['loadavg_start'][0]} on {machine['cores']} cores: other work is "
              "running; timings will be noisy (see other_cpu_cores per policy)")
    model_path = ensure_model(args)
    clips = load_clips(args.video_dir, model_path, args.num_clips)
    print(f"model {model_path}; clips: " + ", ".join(f"{c.name} {tuple(c.frames.shape)}" for c in clips))

    waited = wait_quiet(args.quiet_cores, args.wait_quiet)
    t, other = time.monotonic(), OtherCpu()
    calib = calibrate(args, model_path, clips)
    calib["other_cpu_cores"], calib["waited_for_quiet_s"] = other.cores(), round(waited, 1)  # the SLOs depend on it
    print(f"calibration ({time.monotonic() - t:.0f} s): decode period vs batch "
          f"{calib['decode_period_ms_vs_batch_text']} ms, typical mixed batch "
          f"{calib['decode_period_ms_typical_mixed']} ms, unloaded TTFT "
          f"{calib['unloaded_ttft_ms']} ms; encode ms / smallest unit ms per clip: "
          + ", ".join(f"{c['encode_ms']:.0f}/{_f(c['smallest_unit_ms'], '.1f')} ({c['encode_in_decode_steps']} steps)"
                      for c in calib["clips"]))
    slos = choose_slos(args, calib, clips)
    text_tokens = tuple(int(x) for x in args.text_tokens.split(","))
    video_tokens = tuple(int(x) for x in args.video_tokens.split(","))
    rate_info = auto_rate(args, calib, text_tokens, video_tokens) if args.rate == "auto" else {"rate": float(args.rate)}
    rate = rate_info["rate"]
    trace = make_trace(np.random.default_rng(args.seed), rate, args.duration, args.num_requests,
                       args.video_fraction, len(clips), text_tokens, video_tokens)
    if not trace:
        raise SystemExit("empty trace: raise --duration or --rate")
    unloaded = calib["unloaded_ttft_ms"]
    command = " ".join(["scripts/bench_engine.py", *(argv if argv is not None else sys.argv[1:])])
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"model_path": model_path}
    results: dict = {
        "machine": machine, "command": command, "config": config,
        "calibration": calib, "slos": slos, "rate": rate_info,
        "trace": {"rate": rate, "duration_s": trace[-1].arrival_s, "num_requests": len(trace),
                  "num_video": sum(it.kind == "video" for it in trace),
                  "output_tokens": sum(it.max_tokens for it in trace), "seed": args.seed},
        "policies": {}, "burst": {},
    }
    print(f"SLOs: {slos['rule']}\ntrace: {len(trace)} requests, {results['trace']['num_video']} video, "
          f"{rate} req/s ({rate_info})")
    runs: dict[str, list[RunRecord]] = {p: [] for p in args.policies}
    bursts: dict[str, list[RunRecord]] = {p: [] for p in args.policies}
    per_round: dict[str, list[dict]] = {p: [] for p in args.policies}
    for rnd in range(args.rounds):
        # Rotate the order each round so slow drifts of the machine's background load hit every policy alike.
        for policy in args.policies[rnd % len(args.policies):] + args.policies[: rnd % len(args.policies)]:
            waited = wait_quiet(args.quiet_cores, args.wait_quiet)
            engine = make_engine(args, model_path, policy, slos["tpot_slo_ms"])
            warm = replay(engine, warmup_items(len(clips)), clips, slos, max_wall_s=300.0, start_delay_s=0.0)
            t = time.monotonic()
            run = replay(engine, trace, clips, slos, max_wall_s=args.duration * 4 + 300.0)
            runs[policy].append(run)
            m = summarize([run], slos, unloaded)
            per_round[policy].append({
                "round": rnd, "waited_for_quiet_s": round(waited, 1), "other_cpu_cores": m["other_cpu_cores"],
                "warmup_error": warm.error, "slo_attainment": m["slo"]["attainment"],
                "tokens_per_s": m["tokens_per_s"], "encoder_vs_decode_only_p99": m["encoder_vs_decode_only_p99"],
                "cost_model_end": cost_model_state(engine), "cost_model_check": cost_model_check(engine, run)})
            print(f"[{policy} round {rnd}] {time.monotonic() - t:.0f} s: TTFT p50 {_f(m['ttft_ms']['p50'])} ms, "
                  f"TPOT p99 {_f(m['tpot_ms']['p99'], '.1f')} ms, gap p99 enc/dec "
                  f"{_f(m['token_gap_ms_encoder']['p99'], '.1f')}/{_f(m['token_gap_ms_decode_only']['p99'], '.1f')} "
                  f"ms, SLO {_f(m['slo']['attainment'], '.1%')}, {m['tokens_per_s']:.1f} tok/s, other CPU "
                  f"{_f(m['other_cpu_cores'], '.2f')} cores" + (f", ERROR {m['error']}" if m["error"] else ""))
            if args.burst:
                burst = [TraceItem(f"b{i:04d}", 0.0, it.kind, it.prompt, it.max_tokens, it.clip)
                         for i, it in enumerate(trace[: args.burst])]
                bursts[policy].append(replay(engine, burst, clips, slos, max_wall_s=600.0))
            del engine
    for policy in args.policies:
        results["policies"][policy] = summarize(runs[policy], slos, unloaded) | {"rounds": per_round[policy]}
        if bursts[policy]:
            b = summarize(bursts[policy], slos, None)
            results["burst"][policy] = {k: b[k] for k in ("num_requests", "span_s", "output_tokens", "tokens_per_s",
                                                         "requests_per_s", "ttft_ms", "tpot_ms", "error",
                                                         "other_cpu_cores")}
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = targets(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    raw = {"trace": raw_dump(runs), "burst": raw_dump({p: b for p, b in bursts.items() if b})}
    (args.out / "raw.json").write_text(json.dumps(raw) + "\n")
    if not args.no_plot and plot(results, runs, args.out / "timeline.png"):
        print(f"plot: {args.out / 'timeline.png'}")
    print_table(results)
    print(f"\nresults: {args.out / 'results.json'} (raw: raw.json)")
    return 1 if any(m["error"] for m in results["policies"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
