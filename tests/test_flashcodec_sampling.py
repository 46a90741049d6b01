"""Sampling math: smart_resize, frame counts, indices, windows — against hand-computed values and a
transcription of qwen-vl-utils' vision_process.py."""

from __future__ import annotations

import math
from fractions import Fraction

import flashcodec_fixtures  # noqa: F401  (puts backends/ on sys.path)
import numpy as np
import pytest
import torch

from flashcodec import SamplingSpec, VideoDecodeError, sample_frames, smart_resize
from flashcodec.index import PacketInfo, build_index
from flashcodec.sampling import video_max_pixels

MIN_PIXELS, MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28


def cfr_index(num_frames: int, fps: int = 30, ticks_per_frame: int = 512):
    """Synthetic constant-rate index (all keyframes: sampling does not look at GOPs)."""
    packets = [PacketInfo(i * ticks_per_frame, i * ticks_per_frame, True, i * 100, ticks_per_frame)
               for i in range(num_frames)]
    return build_index(packets, codec="h264", width=320, height=240,
                       time_base=Fraction(1, fps * ticks_per_frame))


def vfr_index(times_ms: list[int], last_ms: int = 40):
    packets = [PacketInfo(t, t, True, i, None) for i, t in enumerate(times_ms)]
    packets[-1] = PacketInfo(times_ms[-1], times_ms[-1], True, len(times_ms) - 1, last_ms)
    return build_index(packets, codec="h264", width=320, height=240, time_base=Fraction(1, 1000))


# ------------------------------------------------------------------------------------- smart_resize


def test_smart_resize_hand_computed() -> None:
    # 240x320: rounds to 252x308 = 77616 px < min 100352 -> beta = sqrt(100352 / 76800) = 1.1431;
    # ceil(240 * 1.1431 / 28) = 10 -> 280, ceil(320 * 1.1431 / 28) = 14 -> 392.
    assert smart_resize(240, 320, 28, MIN_PIXELS, MAX_PIXELS) == (280, 392)
    # 720x1280: rounds to 728x1288 = 937664 > max 602112 -> beta = sqrt(921600 / 602112) = 1.2372;
    # floor(720 / 1.2372 / 28) = 20 -> 560, floor(1280 / 1.2372 / 28) = 36 -> 1008.
    assert smart_resize(720, 1280, 28, MIN_PIXELS, MAX_PIXELS) == (560, 1008)
    # 362x642 with the image defaults: round(12.93) = 13 -> 364, round(22.93) = 23 -> 644, in range.
    assert smart_resize(362, 642) == (364, 644)
    # Already a multiple, within range: unchanged.
    assert smart_resize(448, 448, 28, MIN_PIXELS, MAX_PIXELS) == (448, 448)


def test_smart_resize_limits() -> None:
    for h, w in [(240, 320), (1080, 1920), (362, 642), (50, 9000), (2160, 3840)]:
        rh, rw = smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert rh * rw <= MAX_PIXELS
    assert smart_resize(1, 200, 28) == (28, 196)  # 200:1 is the widest allowed; sides at least 28
    with pytest.raises(VideoDecodeError, match="aspect ratio"):
        smart_resize(1, 201, 28)
    with pytest.raises(VideoDecodeError):
        smart_resize(0, 100)


def test_video_max_pixels_follows_total_budget() -> None:
    spec = SamplingSpec()
    # 4 frames: total budget 24576*784/4*2 is far above max_pixels -> max_pixels.
    assert video_max_pixels(spec, 4) == MAX_PIXELS
    # 768 frames: 24576*784/768*2 = 50176 < int(min_pixels * 1.05) = 105369 -> the floor wins.
    assert video_max_pixels(spec, 768) == 105369
    # 200 frames: 24576*784/200*2 = 192675.84, between the two.
    assert video_max_pixels(spec, 200) == 192675
    # An explicit small max_pixels wins over the min_pixels floor (as in qwen-vl-utils).
    assert video_max_pixels(SamplingSpec(max_pixels=50000), 4) == 50000


# ------------------------------------------------------------------ qwen-vl-utils parity (CFR videos)


def qwen_reference(total_frames: int, video_fps: float, ele: dict) -> list[int]:
    """qwen-vl-utils smart_nframes + calculate_video_frame_range + linspace, transcribed."""
    def round_f(x, f):
        return round(x / f) * f

    def ceil_f(x, f):
        return math.ceil(x / f) * f

    def floor_f(x, f):
        return math.floor(x / f) * f

    start, end = ele.get("video_start"), ele.get("video_end")
    if start is None and end is None:
        first, last, total = 0, total_frames - 1, total_frames
    else:
        max_duration = total_frames / video_fps
        first = math.ceil(max(0.0, min(start, max_duration)) * video_fps) if start is not None else 0
        last = (min(math.floor(max(0.0, min(end, max_duration)) * video_fps), total_frames - 1)
                if end is not None else total_frames - 1)
        total = last - first + 1
    if "nframes" in ele:
        nframes = round_f(ele["nframes"], 2)
    else:
        fps = ele.get("fps", 2.0)
        min_frames = ceil_f(ele.get("min_frames", 4), 2)
        max_frames = floor_f(ele.get("max_frames", min(768, total)), 2)
        nframes = total / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total)
        nframes = floor_f(nframes, 2)
    assert 2 <= nframes <= total
    return torch.linspace(first, last, nframes).round().long().tolist()


@pytest.mark.parametrize("total_frames", [8, 30, 61, 299, 300, 1000, 1801])
@pytest.mark.parametrize("ele", [{}, {"fps": 1.0}, {"fps": 4.5}, {"nframes": 8}, {"nframes": 7},
                                 {"video_start": 0.5, "video_end": 7.3}, {"fps": 3.0, "video_start": 1.0}])
def test_matches_qwen_vl_utils(total_frames: int, ele: dict) -> None:
    index = cfr_index(total_frames)
    spec = SamplingSpec(num_frames=ele.get("nframes"), fps=ele.get("fps"), start_time=ele.get("video_start"),
                        end_time=ele.get("video_end"))
    try:
        expected = qwen_reference(total_frames, 30.0, ele)
    except AssertionError:
        pytest.skip("qwen-vl-utils raises here; covered by the edge-case tests")
    plan = sample_frames(index, spec, 768)
    assert plan.frame_indices.tolist() == expected
    window = expected[-1] - expected[0] + 1 if "video_start" in ele else total_frames
    if "video_start" not in ele:
        assert plan.sample_fps == len(expected) / max(window, 1e-6) * 30.0  # bit for bit


# ---------------------------------------------------------------------------------- frame count rules


def test_default_two_fps() -> None:
    plan = sample_frames(cfr_index(300), SamplingSpec(), 768)  # 10 s at 30 fps
    assert len(plan.frame_indices) == 20
    assert plan.sample_fps == pytest.approx(2.0)
    assert plan.frame_indices[0] == 0 and plan.frame_indices[-1] == 299


def test_min_and_max_frames() -> None:
    assert len(sample_frames(cfr_index(30), SamplingSpec(), 768).frame_indices) == 4  # 1 s -> min 4
    # fps=30 on 60 s wants 1800 frames: capped by max_frames, then by the deployment's limit.
    assert len(sample_frames(cfr_index(1800), SamplingSpec(fps=30.0), 768).frame_indices) == 768
    assert len(sample_frames(cfr_index(1800), SamplingSpec(fps=30.0, max_frames=100), 768).frame_indices) == 100
    assert len(sample_frames(cfr_index(1800), SamplingSpec(fps=30.0), 101).frame_indices) == 100


def test_num_frames_rounds_to_frame_factor() -> None:
    for asked, got in [(1, 2), (2, 2), (3, 4), (5, 4), (7, 8), (8, 8), (9, 8), (11, 12)]:  # round half to even
        assert len(sample_frames(cfr_index(300), SamplingSpec(num_frames=asked), 768).frame_indices) == got
    plan = sample_frames(cfr_index(300), SamplingSpec(num_frames=9, frame_factor=3), 768)
    assert len(plan.frame_indices) == 9


def test_fewer_frames_than_asked_gives_what_there_is() -> None:
    plan = sample_frames(cfr_index(11), SamplingSpec(num_frames=32), 768)
    assert len(plan.frame_indices) == len(set(plan.frame_indices.tolist())) == 10  # 11 frames -> 10
    plan = sample_frames(cfr_index(3), SamplingSpec(), 768)  # 0.1 s at 2 fps: 2 frames, not 4
    assert plan.frame_indices.tolist() == [0, 2]


def test_one_frame_video_repeats_the_frame() -> None:
    for spec in (SamplingSpec(), SamplingSpec(num_frames=8), SamplingSpec(fps=30.0)):
        plan = sample_frames(cfr_index(1), spec, 768)
        assert plan.frame_indices.tolist() == [0, 0]
    plan = sample_frames(cfr_index(1), SamplingSpec(frame_factor=1), 768)
    assert plan.frame_indices.tolist() == [0]


def test_num_frames_over_the_server_limit() -> None:
    with pytest.raises(VideoDecodeError, match="limit of 64"):
        sample_frames(cfr_index(300), SamplingSpec(num_frames=100), 64)


# ------------------------------------------------------------------------------------------- windows


def test_window_hand_computed() -> None:
    # 2.0 s .. 4.0 s at 30 fps: frames 60..120 (61 frames, 2.03 s -> 4 frames at 2 fps).
    plan = sample_frames(cfr_index(300), SamplingSpec(start_time=2.0, end_time=4.0), 768)
    assert plan.frame_indices.tolist() == [60, 80, 100, 120]


def test_window_is_clamped_to_the_video() -> None:
    full = sample_frames(cfr_index(300), SamplingSpec(), 768).frame_indices.tolist()
    clamped = sample_frames(cfr_index(300), SamplingSpec(start_time=-5.0, end_time=1000.0), 768)
    assert clamped.frame_indices.tolist() == full
    tail = sample_frames(cfr_index(300), SamplingSpec(start_time=9.0, end_time=50.0), 768)
    assert tail.frame_indices.tolist() == [270, 280, 289, 299]


def test_empty_window_is_an_error() -> None:
    with pytest.raises(VideoDecodeError, match="contains no frame"):
        sample_frames(cfr_index(300), SamplingSpec(start_time=12.0), 768)
    with pytest.raises(VideoDecodeError, match="contains no frame"):  # between two frames
        sample_frames(cfr_index(30), SamplingSpec(start_time=0.01, end_time=0.02), 768)
    with pytest.raises(VideoDecodeError, match="before end_time"):
        SamplingSpec(start_time=3.0, end_time=1.0)


def test_bad_sampling_parameters() -> None:
    for kwargs in ({"fps": 0.0}, {"fps": -2.0}, {"fps": float("nan")}, {"num_frames": 0},
                   {"num_frames": -3}, {"max_pixels": 0}, {"start_time": float("inf")}, {"num_frames": 2.5}):
        with pytest.raises(VideoDecodeError):
            SamplingSpec(**kwargs)


# ----------------------------------------------------------------------------- variable frame rate


def test_vfr_samples_uniformly_in_time() -> None:
    # Dense frames in the first second, then sparse: uniform-in-index sampling would be wrong.
    times = list(range(0, 1000, 10)) + [1000, 1500, 2000, 2500, 3000, 3500]  # 100 + 6 frames
    index = vfr_index(times, last_ms=500)
    assert not index.regular
    assert index.duration_s == pytest.approx(4.0)
    plan = sample_frames(index, SamplingSpec(num_frames=8), 768)
    picked_ms = [times[i] for i in plan.frame_indices]
    targets = np.linspace(0, 3500, 8)  # every pick is the frame nearest its target time
    for target, picked in zip(targets, picked_ms, strict=True):
        assert abs(picked - target) == min(abs(t - target) for t in times)
    assert picked_ms[-1] == 3500 and picked_ms[0] == 0
    # fps mode counts from duration, not frame count: 4 s at 2 fps = 8 frames.
    assert len(sample_frames(index, SamplingSpec(), 768).frame_indices) == 8


def test_vfr_window_uses_timestamps() -> None:
    times = [0, 33, 83, 100, 167, 200, 225, 325, 400, 433]
    index = vfr_index(times)
    first_last = sample_frames(index, SamplingSpec(start_time=0.09, end_time=0.33, num_frames=2), 768)
    assert first_last.frame_indices.tolist() == [3, 7]  # 100 ms is the first frame >= 90 ms; 325 ms last
