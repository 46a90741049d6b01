"""bench_engine: the inputs (clips, a seeded Poisson trace) and their wall-clock replay against one Engine."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from bench_common import TEXT_PROMPTS, VIDEO_PROMPTS

from flashcodec import SamplingSpec, decode_video
from unifiedserve import Engine, GenerationInput, SamplingParams, VideoInput
from unifiedserve.vision import load_vision_spec

# Clips from make_sample_videos' quick set (also in its default set): three codecs, 16-32 frames each.
CLIP_POOL = (
    ("hevc_bf_640x360_4s_gop30.mp4", 32),
    ("h264_bf_642x362_3s_gop30.mp4", 24),
    ("vp9_640x360_4s_gop30.webm", 16),
    ("h264_bf_vfr_320x240_8s_gop30.mp4", 32),
)






WARMUP_S = 0.3  # offset of the first trace arrival from the loop's start (after the warm-up)


STALL_S = 120.0  # a policy run that makes no token for this long is aborted (reported, not hung)


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
               "token_budget", "encoder_budget", "attention_work", "num_encoder_pieces_started",
               "encoder_attention_work")


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
