"""The dali engine's CPU variant (runs without a GPU): VP9 at sampled indices against the PyAV reference,
and H.264, which DALI's CPU decoder cannot decode, refused with a clear message (or handed to pyav).

DALI converts YUV to RGB itself, so frames are compared by PSNR (printed: run with ``-s``), not bit for
bit; the bar code every sample frame carries must still read as its own index.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from flashcodec_fixtures import reference_frames, sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, SamplingSpec, VideoDecodeError, decode_video, register_engine, resize_frames
from flashcodec import engines as engines_module
from flashcodec.engines import UnsupportedByEngine, gpu_settings

pytest.importorskip("nvidia.dali", reason="DALI is not installed (pip install -e '.[gpu]')")

from flashcodec.decode_dali import DaliEngine  # noqa: E402

VP9 = "vp9_640x360_4s_gop30.webm"
H264 = "h264_bf_320x240_2s_gop12.mp4"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def cpu_dali():
    """The CPU variant served as "dali" (on a GPU machine the registry would build the mixed one)."""
    engine = DaliEngine("cpu", (None,), max_batch=4, num_threads=os.cpu_count() or 1)
    register_engine("dali", lambda config: engine, gpu_settings)
    yield engine
    register_engine("dali", engines_module._dali_factory, gpu_settings)


def specs() -> list[SamplingSpec]:
    return [SamplingSpec(), SamplingSpec(num_frames=40), SamplingSpec(fps=3.0, start_time=0.8, end_time=2.9)]


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_vp9_frames_match_pyav(video_dir, cpu_dali, instances: int) -> None:  # noqa: F811
    path = video_dir / VP9
    data = path.read_bytes()
    read_barcode = sample_script().read_barcode
    config = DecoderConfig(engine="dali", num_instances=instances, fallback_to_cpu=False)
    for spec in specs():
        video = decode_video(data, spec, config, resize=False)
        assert isinstance(video.frames, np.ndarray) and video.frames.dtype == np.uint8
        reference = reference_frames(path, video.frame_indices.tolist())
        values, exact = [], 0
        for frame, index in zip(video.frames, video.frame_indices, strict=True):
            expected = reference[int(index)]
            assert frame.shape == expected.shape
            assert read_barcode(frame) == index, f"frame {index}: DALI returned another picture"
            values.append(psnr(frame, expected))
            exact += int(np.array_equal(frame, expected))
        print(f"dali cpu K={instances} {len(values)} frames: PSNR vs PyAV min {min(values):.1f} dB, "
              f"median {np.median(values):.1f} dB; bit-identical frames: {exact}/{len(values)}")
        assert min(values) > 30


def test_vp9_resized(video_dir, cpu_dali) -> None:  # noqa: F811
    path = video_dir / VP9
    config = DecoderConfig(engine="dali", num_instances=2, fallback_to_cpu=False)
    video = decode_video(path.read_bytes(), SamplingSpec(num_frames=8, max_pixels=224 * 224), config)
    height, width = video.frames.shape[1:3]
    assert height % 28 == 0 and width % 28 == 0 and (height, width) != (360, 640)
    reference = reference_frames(path, video.frame_indices.tolist())
    expected = resize_frames(np.stack([reference[int(i)] for i in video.frame_indices]), height, width)
    assert min(psnr(a, b) for a, b in zip(video.frames, expected, strict=True)) > 30


def test_h264_is_refused_on_cpu_then_handed_to_pyav(video_dir, cpu_dali) -> None:  # noqa: F811
    data = (video_dir / H264).read_bytes()
    spec = SamplingSpec(num_frames=8)
    with pytest.raises(UnsupportedByEngine, match="unsupported on the CPU DALI decoder") as info:
        decode_video(data, spec, DecoderConfig(engine="dali", fallback_to_cpu=False))
    assert isinstance(info.value, VideoDecodeError) and "pyav" in str(info.value) and "GPU" in str(info.value)
    fell_back = decode_video(data, spec, DecoderConfig(engine="dali"), resize=False)  # fallback_to_cpu default
    reference = reference_frames(video_dir / H264, fell_back.frame_indices.tolist())
    for frame, index in zip(fell_back.frames, fell_back.frame_indices, strict=True):
        np.testing.assert_array_equal(frame, reference[int(index)])  # pyav: bit-exact
    # The refusal happened before DALI ran: the pipeline still decodes.
    vp9 = decode_video((video_dir / VP9).read_bytes(), spec, DecoderConfig(engine="dali", fallback_to_cpu=False))
    assert vp9.frames.shape[0] == 8


def test_damaged_input_is_a_client_error(video_dir, cpu_dali) -> None:  # noqa: F811
    data = bytearray((video_dir / VP9).read_bytes())
    cut = len(data) // 2
    data[cut:] = bytes(len(data) - cut)  # second half zeroed: the index still lists those frames
    with contextlib.suppress(VideoDecodeError):  # either a clear error, or frames (DALI may conceal)
        video = decode_video(bytes(data), SamplingSpec(num_frames=16),
                             DecoderConfig(engine="dali", fallback_to_cpu=False))
        assert video.frames.shape[0] == 16
    vp9 = decode_video((video_dir / VP9).read_bytes(), SamplingSpec(num_frames=4),
                       DecoderConfig(engine="dali", fallback_to_cpu=False))
    assert vp9.frames.shape[0] == 4  # a failed run never leaves the engine unusable


@pytest.mark.gpu
@pytest.mark.parametrize("name", [H264, "hevc_bf_640x360_4s_gop30.mp4", VP9, "h264_bf_opengop_320x240_4s_gop24.mp4",
                                  "h264_bf_vfr_320x240_8s_gop30.mp4"])
def test_mixed_decoder_matches_pyav(video_dir, name: str) -> None:  # noqa: F811
    """DALI's NVDEC ("mixed") variant, built by the registry on a GPU machine."""
    from flashcodec import get_engine

    config = DecoderConfig(engine="dali", num_instances=3, fallback_to_cpu=False)
    engine = get_engine("dali", config)
    assert engine.device == "mixed"
    path = video_dir / name
    read_barcode = sample_script().read_barcode
    for spec in specs():
        video = decode_video(path.read_bytes(), spec, config, resize=False)
        assert video.frames.is_cuda
        frames = video.frames.cpu().numpy()
        reference = reference_frames(path, video.frame_indices.tolist())
        values = [psnr(f, reference[int(i)]) for f, i in zip(frames, video.frame_indices, strict=True)]
        wrong = [int(i) for f, i in zip(frames, video.frame_indices, strict=True) if read_barcode(f) != i]
        print(f"dali mixed {name}: {len(values)} frames, PSNR vs PyAV min {min(values):.1f} dB, "
              f"median {np.median(values):.1f} dB; wrong pictures: {wrong}")
        assert not wrong and min(values) > 30
