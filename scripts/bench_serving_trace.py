"""bench_serving: the request mix (request classes) and seeded Poisson traces every system replays.

A *class* is what a request's TTFT SLO is tied to: text-only questions, or one video at one sampling
(its length, resolution and codec decide decode, encoder and prefill cost). Every trace is drawn from a seed
and the rate only, so every system gets exactly the same requests at the same times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_common import TEXT_PROMPTS, VIDEO_PROMPTS


@dataclass(frozen=True)
class RequestClass:
    name: str
    video: str | None  # file name in the video folder; None: a text-only question
    num_frames: int = 0  # frames sampled uniformly over the whole video (the server decodes them)
    weight: float = 1.0  # share of the video requests (text requests have their own fraction)


TEXT = RequestClass("text", None)

# Lengths 2 s to 60 s, 320x240 to 1280x720, H.264 (short and long GOPs), HEVC, VP9. All in make_sample_videos'
# default set (bootstrap makes them) except the 60 s 720p clip, which is in its --bench set.
VIDEO_CLASSES = (
    RequestClass("h264-360p-10s", "h264_bf_640x360_10s_gop30.mp4", 24),
    RequestClass("h264-240p-60s", "h264_bf_320x240_60s_gop250.mp4", 32),
    RequestClass("hevc-360p-4s", "hevc_bf_640x360_4s_gop30.mp4", 16),
    RequestClass("vp9-360p-4s", "vp9_640x360_4s_gop30.webm", 16),
    RequestClass("h264-720p-2s", "h264_bf_1280x720_2s_onegop.mp4", 8),
)
LONG_VIDEO_CLASS = RequestClass("h264-720p-60s", "h264_bf_1280x720_60s_gop30.mp4", 32)


def request_classes(long_video: bool) -> tuple[RequestClass, ...]:
    return (TEXT, *VIDEO_CLASSES, *((LONG_VIDEO_CLASS,) if long_video else ()))


def ensure_videos(video_dir: Path, classes: tuple[RequestClass, ...]) -> None:
    """Encode the sample videos the classes need when they are missing (make_sample_videos, seconds to minutes)."""
    import make_sample_videos as samples

    missing = {c.video for c in classes if c.video and not (video_dir / c.video).exists()}
    if missing:
        specs = tuple(s for s in samples.ALL_SPECS if s.filename in missing)
        samples.generate(video_dir, specs)


@dataclass(frozen=True)
class TraceRequest:
    request_id: str
    arrival_s: float  # from the trace's start
    request_class: RequestClass
    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class TraceShape:
    video_fraction: float = 0.4
    text_tokens: tuple[int, int] = (32, 96)  # min, max output tokens (uniform; ignore_eos makes them exact)
    video_tokens: tuple[int, int] = (16, 64)


def make_trace(seed: int, rate: float, duration_s: float, min_requests: int, classes: tuple[RequestClass, ...],
               shape: TraceShape) -> list[TraceRequest]:
    """Poisson arrivals at ``rate`` req/s for ``duration_s`` (at least ``min_requests`` requests)."""
    rng = np.random.default_rng([seed, int(round(rate * 1000))])
    videos = [c for c in classes if c.video]
    weights = np.array([c.weight for c in videos], dtype=np.float64)
    weights /= weights.sum()
    out: list[TraceRequest] = []
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / rate))
        if t > duration_s and len(out) >= min_requests:
            return out
        rid = f"r{rate:g}-{len(out):04d}"
        if videos and rng.random() < shape.video_fraction:
            cls = videos[int(rng.choice(len(videos), p=weights))]
            prompt = VIDEO_PROMPTS[int(rng.integers(len(VIDEO_PROMPTS)))]
            tokens = shape.video_tokens
        else:
            cls = TEXT
            picks = rng.choice(len(TEXT_PROMPTS), int(rng.integers(1, 4)), replace=False)
            prompt = " ".join(TEXT_PROMPTS[i] for i in picks)
            tokens = shape.text_tokens
        out.append(TraceRequest(rid, t, cls, prompt, int(rng.integers(tokens[0], tokens[1] + 1))))


def mean_service_weights(classes: tuple[RequestClass, ...], shape: TraceShape) -> dict[str, float]:
    """Expected share of each class in a trace (for the mix-weighted unloaded latency)."""
    videos = [c for c in classes if c.video]
    total = sum(c.weight for c in videos) or 1.0
    shares = {c.name: shape.video_fraction * c.weight / total for c in videos}
    shares[TEXT.name] = 1.0 - shape.video_fraction if videos else 1.0
    return shares
