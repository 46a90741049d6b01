"""Which frames to take and at what size: qwen-vl-utils' ``vision_process.py`` math, made total.

qwen-vl-utils raises on short videos; here the edge cases get a defined answer instead:

- The frame count T is always a multiple of ``frame_factor`` and at least ``frame_factor``.
- A window with fewer frames than asked gives as many distinct frames as it has (rounded down to
  ``frame_factor``); only a window holding fewer than ``frame_factor`` frames repeats frames, so a
  1-frame video yields ``frame_factor`` copies of its frame (Qwen2.5-VL's temporal patch needs 2).
- ``start_time``/``end_time`` are clamped to the video; a window that contains no frame is an error.
- Frames are found by their timestamps. On a constant-frame-rate video the indices equal
  qwen-vl-utils' ``linspace(start, end, n).round()`` exactly; on a variable-frame-rate video the
  sample times are uniform in time and each picks the frame whose timestamp is nearest (ties: the
  earlier frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import SamplingSpec
from .errors import VideoDecodeError
from .index import VideoIndex

MAX_RATIO = 200  # qwen-vl-utils: widest aspect ratio a frame may have
_TIME_EPS_S = 1e-6  # timestamps are rationals turned to floats: compare with a little slack


def round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 4 * 28 * 28,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """(height, width) with both multiples of ``factor``, pixels within [min, max], aspect kept.

    qwen-vl-utils' smart_resize, plus a floor of ``factor`` on the shrink branch (as in its later
    versions) so an extreme aspect ratio never yields a zero side.
    """
    if height <= 0 or width <= 0:
        raise VideoDecodeError(f"frame size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise VideoDecodeError(f"video aspect ratio must be at most {MAX_RATIO}:1, "
                               f"got {width}x{height}")
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, floor_by_factor(height / beta, factor))
        w_bar = max(factor, floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def video_max_pixels(spec: SamplingSpec, num_frames: int) -> int:
    """Per-frame pixel cap for a video of ``num_frames`` frames (qwen-vl-utils fetch_video)."""
    budget = max(min(spec.max_pixels, spec.total_pixels / num_frames * spec.frame_factor),
                 int(spec.min_pixels * 1.05))
    # qwen-vl-utils lets an explicit max_pixels win over the min_pixels floor.
    return int(min(spec.max_pixels, budget))


@dataclass(frozen=True)
class SamplePlan:
    frame_indices: np.ndarray  # int64 [T] presentation-order indices (may repeat, see module doc)
    sample_fps: float
    height: int  # target size
    width: int


def frame_window(index: VideoIndex, spec: SamplingSpec) -> tuple[int, int]:
    """First and last frame (inclusive) inside [start_time, end_time], clamped to the video."""
    times = index.times_s
    start_s = 0.0 if spec.start_time is None else max(0.0, spec.start_time)
    end_s = math.inf if spec.end_time is None else spec.end_time
    first = int(np.searchsorted(times, start_s - _TIME_EPS_S, side="left"))
    last = int(np.searchsorted(times, end_s + _TIME_EPS_S, side="right")) - 1
    if first > last:
        raise VideoDecodeError(
            f"the window start_time={spec.start_time} s, end_time={spec.end_time} s contains no frame; "
            f"the video has {index.num_frames} frames spanning {index.duration_s:.3f} s")
    return first, last


def num_sampled_frames(spec: SamplingSpec, window_frames: int, window_duration_s: float,
                       max_output_frames: int) -> int:
    """T: qwen-vl-utils smart_nframes, clamped instead of raising (see module doc)."""
    ff = spec.frame_factor
    if spec.num_frames is not None:
        if spec.num_frames > max_output_frames:
            raise VideoDecodeError(f"num_frames={spec.num_frames} is over this server's limit of "
                                   f"{max_output_frames} frames per video")
        nframes = round_by_factor(spec.num_frames, ff)
        nframes = min(nframes, floor_by_factor(window_frames, ff))
    else:
        min_frames = ceil_by_factor(spec.min_frames, ff)
        max_frames = floor_by_factor(min(spec.max_frames, max_output_frames, window_frames), ff)
        nframes = window_duration_s * spec.effective_fps
        nframes = min(min(max(nframes, min_frames), max_frames), window_frames)
        nframes = floor_by_factor(nframes, ff)
    return max(ff, nframes)


def sample_frames(index: VideoIndex, spec: SamplingSpec, max_output_frames: int) -> SamplePlan:
    """Frame indices, sample fps and target size for one request."""
    first, last = frame_window(index, spec)
    window_frames = last - first + 1
    if index.regular:
        window_duration_s = window_frames / index.fps  # qwen-vl-utils: frames / average fps
    else:  # from this frame's start to the next frame's start (or the video's end)
        stop_s = index.times_s[last + 1] if last + 1 < index.num_frames else index.duration_s
        window_duration_s = float(stop_s - index.times_s[first])
    nframes = num_sampled_frames(spec, window_frames, window_duration_s, max_output_frames)
    if index.regular:
        indices = _linspace_round(first, last, nframes)
        sample_fps = nframes / window_frames * index.fps  # qwen-vl-utils' formula, same float
    else:
        indices = _nearest_in_time(index.times_s, first, last, nframes)
        sample_fps = nframes / window_duration_s if window_duration_s > 0 else float(nframes)
    height, width = smart_resize(index.height, index.width, factor=spec.size_factor,
                                 min_pixels=spec.min_pixels, max_pixels=video_max_pixels(spec, nframes))
    return SamplePlan(frame_indices=indices, sample_fps=sample_fps, height=height, width=width)


def _linspace_round(first: int, last: int, nframes: int) -> np.ndarray:
    # torch's float32 linspace, as qwen-vl-utils uses, so tie-breaking matches it bit for bit.
    import torch

    return torch.linspace(first, last, nframes).round().long().numpy().astype(np.int64)


def _nearest_in_time(times_s: np.ndarray, first: int, last: int, nframes: int) -> np.ndarray:
    targets = np.linspace(times_s[first], times_s[last], nframes)
    window = times_s[first:last + 1]
    right = np.clip(np.searchsorted(window, targets, side="left"), 0, window.shape[0] - 1)
    left = np.clip(right - 1, 0, window.shape[0] - 1)
    pick_left = np.abs(targets - window[left]) <= np.abs(window[right] - targets)
    return (first + np.where(pick_left, left, right)).astype(np.int64)
