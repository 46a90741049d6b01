"""The nvdec engine (PyNvVideoCodec) against the CPU reference decode.

Two tiers:
- CPU (run everywhere): the engine's host side — packet reading from any keyframe, Annex-B parameter
  sets, end-of-stream flush between runs, the K-session plan and session pool, NV12 -> RGB — with an
  FFmpeg decoder standing in for NVDEC. A conformant decoder's YUV is exact, so these frames must equal
  nv12_to_rgb of the reference decode's NV12 bit for bit.
- GPU (``@pytest.mark.gpu``, skipped without one): real NVDEC sessions. Frames are compared with the
  CPU reference by PSNR (required > 30 dB; the numbers are printed: run with ``-s``), and with
  nv12_to_rgb of the reference NV12 (YUV-level agreement, printed), for K = 1..N sessions, resize on
  the GPU, concurrent requests, session reuse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from flashcodec_fixtures import default_specs, sample_script, video_dir  # noqa: F401

from flashcodec import (
    DecoderConfig,
    SamplingSpec,
    VideoDecodeError,
    decode_video,
    get_engine,
    get_index,
    register_engine,
    resize_frames,
)
from flashcodec import engines as engines_module
from flashcodec.decode_nvdec import NvdecEngine
from flashcodec.engines import UnsupportedByEngine, gpu_settings
from flashcodec.nvdec_sessions import Session, SessionPool
from flashcodec.nvdec_stream import annexb_parameter_sets, nv12_to_rgb

VIDEOS = [spec.filename for spec in default_specs()]
SIM_VIDEOS = ["h264_bf_320x240_2s_gop12.mp4", "h264_bf_opengop_320x240_4s_gop24.mp4",
              "h264_bf_vfr_320x240_8s_gop30.mp4", "h264_320x240_2s_gop1.mp4", "h264_320x240_1frame_gop12.mp4",
              "h264_bf_642x362_3s_gop30.mp4", "hevc_bf_640x360_4s_gop30.mp4", "vp9_640x360_4s_gop30.webm"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@functools.lru_cache(maxsize=2)
def reference(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Sequential full PyAV decode: presentation index -> (rgb24, nv12)."""
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            out[i] = (frame.to_ndarray(format="rgb24"), frame.to_ndarray(format="nv12"))
    return out


def specs_for(path: Path) -> list[SamplingSpec]:
    index = get_index(path.read_bytes(), DecoderConfig(engine="pyav"))
    n = min(64, index.num_frames)
    specs = [SamplingSpec(), SamplingSpec(num_frames=max(2, n - n % 2))]
    if index.num_frames > 1:
        specs.append(SamplingSpec(fps=3.0, start_time=0.2 * index.duration_s, end_time=0.7 * index.duration_s))
    return specs


@contextlib.contextmanager
def engine_as_nvdec(engine):
    """Serve ``engine`` as "nvdec" for the block (decode_video goes through the real registry)."""
    register_engine("nvdec", lambda config: engine, gpu_settings)
    try:
        yield engine
    finally:
        register_engine("nvdec", engines_module._nvdec_factory, gpu_settings)


# ------------------------------------------------------------------------------------------- CPU tier
class FfmpegSession(Session):
    """Stands in for an NVDEC session: FFmpeg decodes the same Annex-B payloads, NV12 out, and an
    end-of-stream flush resets it for the next run, as the NVDEC parser does."""

    created = 0
    lock = threading.Lock()

    def __init__(self, gpu_id, codec, max_size, fail: bool = False) -> None:
        super().__init__(gpu_id, codec, max_size)
        self._ctx = av.CodecContext.create(codec, "r")
        self.fail = fail
        with FfmpegSession.lock:
            FfmpegSession.created += 1

    def decode(self, payload, pts):
        if self.fail:
            raise RuntimeError("simulated decoder failure")
        if payload is None:
            frames = self._ctx.decode(None)
            self._ctx.flush_buffers()
        else:
            packet = av.Packet(payload)
            packet.pts = pts
            frames = self._ctx.decode(packet)
        return [(f.pts, f) for f in frames]

    def to_nv12(self, frame):
        return torch.from_numpy(frame.to_ndarray(format="nv12"))


def sim_engine(gpus=("gpu0", "gpu1"), per_gpu=2, fail=False) -> NvdecEngine:
    return NvdecEngine(SessionPool(lambda g, c, s: FfmpegSession(g, c, s, fail), gpus, per_gpu))


@pytest.mark.parametrize("colorspace", [2, 1, 5, 6, 9, 4, 7])
@pytest.mark.parametrize("color_range", [1, 2])
def test_nv12_to_rgb_matches_ffmpeg(colorspace: int, color_range: int) -> None:
    # Random chroma: a wrong matrix, range or chroma siting shows as large differences.
    rng = np.random.default_rng(colorspace * 10 + color_range)
    yuv = rng.integers(0, 256, (96, 64), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.colorspace, frame.color_range = colorspace, color_range
    out = nv12_to_rgb(torch.from_numpy(frame.to_ndarray(format="nv12")), colorspace, color_range == 2).numpy()
    expected = frame.to_ndarray(format="rgb24")
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 3  # rounding only
    assert psnr(out, expected) > 45


def test_nv12_to_rgb_on_sample_videos(video_dir: Path) -> None:  # noqa: F811
    for name in SIM_VIDEOS:
        rgb, nv12 = reference(video_dir / name)[0]
        if nv12.shape[1] % 2 or (nv12.shape[0] * 2 // 3) % 2:
            continue
        value = psnr(nv12_to_rgb(torch.from_numpy(nv12)).numpy(), rgb)
        print(f"nv12_to_rgb vs PyAV rgb24, {name}: {value:.1f} dB")
        assert value > 45


def test_annexb_parameter_sets(video_dir: Path) -> None:  # noqa: F811
    for name, first_nal in (("h264_bf_320x240_2s_gop12.mp4", 7), ("hevc_bf_640x360_4s_gop30.mp4", 32)):
        with av.open(str(video_dir / name)) as container:
            ctx = container.streams.video[0].codec_context
            units = annexb_parameter_sets(ctx.name, ctx.extradata)
        assert units.startswith(b"\x00\x00\x00\x01")
        nal_type = units[4] & 0x1F if first_nal == 7 else (units[4] >> 1) & 0x3F
        assert nal_type == first_nal  # SPS (H.264) / VPS (HEVC) first
    assert annexb_parameter_sets("vp9", b"\x01\x02") == b""
    assert annexb_parameter_sets("h264", b"\x01\x64") == b""  # truncated avcC: none, not garbage


@pytest.mark.parametrize("name", SIM_VIDEOS)
@pytest.mark.parametrize("instances", [1, 2, 4])
def test_simulated_sessions_give_exact_yuv(video_dir: Path, name: str, instances: int) -> None:  # noqa: F811
    path = video_dir / name
    ref = reference(path)
    read_barcode = sample_script().read_barcode
    config = DecoderConfig(engine="nvdec", num_instances=instances, fallback_to_cpu=False)
    with engine_as_nvdec(sim_engine()):
        for spec in specs_for(path):
            video = decode_video(path.read_bytes(), spec, config, resize=False)
            assert isinstance(video.frames, torch.Tensor)
            for frame, index in zip(video.frames.numpy(), video.frame_indices, strict=True):
                expected = nv12_to_rgb(torch.from_numpy(ref[int(index)][1])).numpy()
                np.testing.assert_array_equal(frame, expected, err_msg=f"{name} frame {index}")
                assert read_barcode(frame) == index


def test_simulated_sessions_resize_and_reuse(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / "h264_bf_640x360_10s_gop30.mp4").read_bytes()
    engine = sim_engine(per_gpu=2)
    before = FfmpegSession.created
    with engine_as_nvdec(engine):
        config = DecoderConfig(engine="nvdec", num_instances=4, fallback_to_cpu=False)
        first = decode_video(data, SamplingSpec(num_frames=16), config)
        again = decode_video(data, SamplingSpec(num_frames=16), config)
        full = decode_video(data, SamplingSpec(num_frames=16), config, resize=False)
        with ThreadPoolExecutor(4) as pool:  # 4 requests on 4 sessions: waits, never deadlocks
            together = list(pool.map(lambda _: decode_video(data, SamplingSpec(num_frames=16), config).frames,
                                     range(4)))
    assert FfmpegSession.created - before == 4  # 2 GPUs x 2 sessions, reused by every later request
    assert torch.equal(first.frames, again.frames)
    assert all(torch.equal(first.frames, t) for t in together)
    assert first.frames.shape[1] % 28 == 0 and first.frames.shape[2] % 28 == 0
    assert torch.equal(first.frames, resize_frames(full.frames, *first.frames.shape[1:3]))


def test_failures_fall_back_to_pyav_or_raise(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / "h264_bf_320x240_2s_gop12.mp4").read_bytes()
    spec = SamplingSpec(num_frames=8)
    cpu = decode_video(data, spec, DecoderConfig(engine="pyav"), resize=False)
    engine = sim_engine(fail=True)
    with engine_as_nvdec(engine):
        fell_back = decode_video(data, spec, DecoderConfig(engine="nvdec"), resize=False)
        np.testing.assert_array_equal(fell_back.frames, cpu.frames)  # pyav's bit-exact frames
        with pytest.raises(RuntimeError, match="simulated"):
            decode_video(data, spec, DecoderConfig(engine="nvdec", fallback_to_cpu=False))
    assert sum(engine.pool._live.values()) == 0  # failed sessions are closed, not reused


def test_unsupported_video_is_refused_or_handed_to_pyav(tmp_path: Path) -> None:
    path = tmp_path / "yuv444.mp4"
    script = sample_script()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(script.make_frame(i, 64, 48), format="rgb24")
            container.mux(stream.encode(frame.reformat(format="yuv444p")))
        container.mux(stream.encode(None))
    data = path.read_bytes()
    with engine_as_nvdec(sim_engine()):
        with pytest.raises(UnsupportedByEngine, match="4:2:0"):
            decode_video(data, SamplingSpec(num_frames=4), DecoderConfig(engine="nvdec", fallback_to_cpu=False))
        video = decode_video(data, SamplingSpec(num_frames=4), DecoderConfig(engine="auto", fallback_to_cpu=False))
    assert isinstance(video.frames, np.ndarray)  # pyav's


def test_importing_flashcodec_imports_no_gpu_library() -> None:
    import subprocess
    import sys

    code = ("import sys; import flashcodec, flashcodec.decode_nvdec, flashcodec.decode_dali; "
            "flashcodec.get_engine('pyav'); "
            "print([m for m in sys.modules if m.startswith(('PyNvVideoCodec', 'nvidia.dali'))])")
    backends = str(Path(__file__).resolve().parents[1] / "backends")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": backends, "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_nvdec_without_a_gpu_is_unavailable() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(engines_module.EngineUnavailable, match="GPU"):
        get_engine("nvdec")
    assert get_engine("auto").name == "pyav"


# ------------------------------------------------------------------------------------------- GPU tier
@pytest.fixture(scope="module")
def nvdec_config():
    config = DecoderConfig(engine="nvdec", fallback_to_cpu=False, sessions_per_gpu=4)
    try:
        get_engine("nvdec", config)
    except engines_module.EngineUnavailable as exc:
        pytest.skip(f"nvdec engine unavailable: {exc}")
    return config


def _compare(name: str, video, ref, label: str) -> tuple[float, float]:
    read_barcode = sample_script().read_barcode
    frames = video.frames.cpu().numpy()
    worst_rgb, worst_yuv, max_diff = float("inf"), float("inf"), 0
    for frame, index in zip(frames, video.frame_indices, strict=True):
        rgb, nv12 = ref[int(index)]
        worst_rgb = min(worst_rgb, psnr(frame, rgb))
        same_yuv = nv12_to_rgb(torch.from_numpy(nv12)).numpy()
        worst_yuv = min(worst_yuv, psnr(frame, same_yuv))
        max_diff = max(max_diff, int(np.abs(frame.astype(int) - same_yuv.astype(int)).max()))
        assert read_barcode(frame) == index, f"{name} frame {index}: wrong picture"
    print(f"{label} {name}: min PSNR vs PyAV rgb24 {worst_rgb:.1f} dB; vs nv12_to_rgb(PyAV nv12) "
          f"{worst_yuv:.1f} dB, max diff {max_diff}")
    return worst_rgb, worst_yuv


@pytest.mark.gpu
@pytest.mark.parametrize("name", VIDEOS)
def test_nvdec_frames_match_cpu_reference(video_dir: Path, nvdec_config, name: str) -> None:  # noqa: F811
    path = video_dir / name
    ref = reference(path)
    gpus = len(nvdec_config.gpu_ids) or torch.cuda.device_count()
    for instances in sorted({1, 2, 4, nvdec_config.sessions_per_gpu * gpus}):
        config = dataclasses.replace(nvdec_config, num_instances=instances)
        for spec in specs_for(path):
            video = decode_video(path.read_bytes(), spec, config, resize=False)
            assert video.frames.is_cuda and video.frames.dtype == torch.uint8
            worst_rgb, _ = _compare(name, video, ref, f"nvdec K={instances}")
            assert worst_rgb > 30


@pytest.mark.gpu
def test_nvdec_resize_on_gpu(video_dir: Path, nvdec_config) -> None:  # noqa: F811
    path = video_dir / "h264_bf_1280x720_2s_onegop.mp4"
    video = decode_video(path.read_bytes(), SamplingSpec(num_frames=8), nvdec_config)
    assert video.frames.is_cuda and video.frames.shape[1] % 28 == 0 and video.frames.shape[2] % 28 == 0
    ref = reference(path)
    expected = resize_frames(np.stack([ref[int(i)][0] for i in video.frame_indices]), *video.frames.shape[1:3])
    value = min(psnr(a, b) for a, b in zip(video.frames.cpu().numpy(), expected, strict=True))
    print(f"nvdec resized 1280x720 -> {tuple(video.frames.shape[1:3])}: min PSNR {value:.1f} dB vs CPU resize")
    assert value > 30


@pytest.mark.gpu
def test_nvdec_concurrent_requests_and_session_reuse(video_dir: Path, nvdec_config) -> None:  # noqa: F811
    names = ["h264_bf_320x240_2s_gop12.mp4", "hevc_bf_640x360_4s_gop30.mp4", "vp9_640x360_4s_gop30.webm",
             "h264_bf_640x360_10s_gop30.mp4"]
    datas = [(video_dir / n).read_bytes() for n in names] * 3
    config = dataclasses.replace(nvdec_config, num_instances=4)
    alone = [decode_video(d, SamplingSpec(fps=4.0), config).frames for d in datas]
    engine = get_engine("nvdec", config)
    live = sum(engine.pool._live.values())
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda d: decode_video(d, SamplingSpec(fps=4.0), config).frames, datas))
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)
    assert sum(engine.pool._live.values()) <= engine.pool.capacity
    print(f"nvdec sessions live after 24 requests: {engine.pool._live} (before the concurrent ones: {live})")


@pytest.mark.gpu
def test_nvdec_corrupt_input_is_a_client_error(video_dir: Path, nvdec_config) -> None:  # noqa: F811
    data = bytearray((video_dir / "h264_bf_640x360_10s_gop30.mp4").read_bytes())
    data[len(data) // 2:len(data) // 2 + 20000] = bytes(20000)  # zero a stretch of packets
    try:
        video = decode_video(bytes(data), SamplingSpec(num_frames=32), nvdec_config)
    except VideoDecodeError as exc:  # acceptable: a clear client error
        print(f"nvdec on damaged input: {exc}")
    else:
        assert video.frames.shape[0] == 32  # or concealed frames, but never a crash


@pytest.mark.gpu
def test_auto_picks_nvdec_on_a_gpu(nvdec_config) -> None:
    assert get_engine("auto").name == "nvdec"
