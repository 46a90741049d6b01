"""FlashCodec CPU frames are bit-identical to a sequential full decode at the same indices, for any
number of decoder instances, on every default sample video (B-frames, open GOP, VFR, HEVC, VP9, odd
size, one GOP, all keyframes, one frame)."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest
from flashcodec_fixtures import default_specs, reference_frames, sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, SamplingSpec, decode_video, get_index, resize_frames, sample_frames

VIDEOS = [spec.filename for spec in default_specs()]
INSTANCES = (1, 2, 3)


def specs_for(path: Path) -> list[SamplingSpec]:
    """Default 2 fps; every frame (up to 240: enough to cover several GOPs everywhere); a window."""
    index = get_index(path.read_bytes(), DecoderConfig())
    n = min(240, index.num_frames)
    specs = [SamplingSpec(), SamplingSpec(num_frames=max(2, n - n % 2))]
    if index.num_frames > 1:
        specs.append(SamplingSpec(fps=3.0, start_time=0.2 * index.duration_s, end_time=0.7 * index.duration_s))
    return specs


@functools.lru_cache(maxsize=1)  # tests run video by video: keep one video's reference in memory
def reference_for(path: Path) -> dict[int, np.ndarray]:
    index = get_index(path.read_bytes(), DecoderConfig())
    wanted = set()
    for spec in specs_for(path):
        wanted.update(sample_frames(index, spec, 768).frame_indices.tolist())
    return reference_frames(path, wanted)


@pytest.mark.parametrize(("name", "instances"), [(v, k) for v in VIDEOS for k in INSTANCES])
def test_frames_match_full_decode(video_dir: Path, name: str, instances: int) -> None:  # noqa: F811
    path = video_dir / name
    data = path.read_bytes()
    reference = reference_for(path)
    read_barcode = sample_script().read_barcode
    config = DecoderConfig(engine="pyav", num_instances=instances)
    for spec in specs_for(path):
        video = decode_video(data, spec, config, resize=False)
        assert video.frames.shape[0] == video.frame_indices.shape[0] == video.timestamps_s.shape[0]
        assert video.frames.shape[0] % spec.frame_factor == 0
        for frame, index in zip(video.frames, video.frame_indices, strict=True):
            np.testing.assert_array_equal(frame, reference[int(index)], err_msg=f"{name} frame {index}")
            assert read_barcode(frame) == index  # the picture itself says which frame it is
    if instances == 2:  # resized output == the reference resize of the reference frames
        video = decode_video(data, SamplingSpec(), config)
        height, width = video.frames.shape[1:3]
        assert height % 28 == 0 and width % 28 == 0
        expected = resize_frames(np.stack([reference[int(i)] for i in video.frame_indices]), height, width)
        np.testing.assert_array_equal(video.frames, expected)


def test_only_sampled_gops_are_decoded(video_dir: Path) -> None:  # noqa: F811
    # 10 s, GOP 30 at 30 fps: 4 frames from the first second's GOP need at most that GOP decoded.
    path = video_dir / "h264_bf_640x360_10s_gop30.mp4"
    video = decode_video(path.read_bytes(), SamplingSpec(num_frames=4, end_time=0.9),
                         DecoderConfig(engine="pyav", num_instances=2), resize=False)
    assert video.frame_indices.max() <= 27
    assert video.num_decoded_frames <= 30


def test_index_cache_reuses_the_index(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / "h264_bf_320x240_2s_gop12.mp4").read_bytes()
    assert get_index(data, DecoderConfig()) is get_index(data, DecoderConfig())


def test_concurrent_requests_share_the_decoders(video_dir: Path) -> None:  # noqa: F811
    # Several requests at once on one 2-instance deployment give the same frames as one at a time.
    names = ["h264_bf_320x240_2s_gop12.mp4", "hevc_bf_640x360_4s_gop30.mp4", "vp9_640x360_4s_gop30.webm",
             "h264_bf_opengop_320x240_4s_gop24.mp4"]
    config, spec = DecoderConfig(engine="pyav", num_instances=2), SamplingSpec(fps=4.0)
    datas = [(video_dir / n).read_bytes() for n in names] * 2
    alone = [decode_video(d, spec, config).frames for d in datas]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda d: decode_video(d, spec, config).frames, datas))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_video_with_an_audio_track(tmp_path: Path) -> None:
    # Real uploads interleave audio packets with video; only the video stream is indexed and decoded.
    script = sample_script()
    path = tmp_path / "with_audio.mp4"
    with av.open(str(path), mode="w") as container:
        audio = container.add_stream("aac", rate=16000)
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 128, "yuv420p"
        video.options = {"preset": "ultrafast", "bf": "2", "g": "10"}
        samples = (np.sin(np.arange(16000 * 3) / 7) * 8000).astype(np.int16)
        for i in range(75):
            frame = av.VideoFrame.from_ndarray(script.make_frame(i, 160, 128), format="rgb24")
            container.mux(video.encode(frame))
            if i % 25 == 0:
                chunk = av.AudioFrame.from_ndarray(samples[None, i * 640:(i + 25) * 640], format="s16", layout="mono")
                chunk.sample_rate = 16000
                container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    decoded = decode_video(path.read_bytes(), SamplingSpec(num_frames=20),
                           DecoderConfig(engine="pyav", num_instances=3), resize=False)
    reference = reference_frames(path, decoded.frame_indices.tolist())
    for frame, index in zip(decoded.frames, decoded.frame_indices, strict=True):
        np.testing.assert_array_equal(frame, reference[int(index)])
        assert script.read_barcode(frame) == index
