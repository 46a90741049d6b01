"""Bad input gets a VideoDecodeError that says what is wrong — never a raw PyAV exception."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from flashcodec_fixtures import sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, SamplingSpec, VideoDecodeError, clear_index_cache, decode_video

SMALL = "h264_bf_320x240_2s_gop12.mp4"


def audio_only(fmt: str, codec: str) -> bytes:
    """One second of a 440 Hz tone in a ``fmt`` container (no video stream)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=16000)
        t = np.arange(16000) / 16000
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def faststart_video(tmp_path: Path, num_frames: int = 30) -> bytes:
    """A short H.264 MP4 with its index (moov) before the data, as streaming-friendly files have it:
    cutting such a file leaves a readable index that points past the end."""
    script = sample_script()
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        stream.options = {"preset": "ultrafast", "bf": "2", "g": "10"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(script.make_frame(i, 160, 128), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path.read_bytes()


def decode_error(data, spec: SamplingSpec | None = None, config: DecoderConfig | None = None) -> str:
    clear_index_cache()
    with pytest.raises(VideoDecodeError) as info:
        decode_video(data, spec or SamplingSpec(), config or DecoderConfig())
    return str(info.value)


def test_empty_input() -> None:
    assert "empty" in decode_error(b"")


def test_not_bytes() -> None:
    assert "must be bytes" in decode_error("a file name, not the file")


def test_random_bytes() -> None:
    message = decode_error(np.random.default_rng(0).bytes(20000))
    assert "not a video file" in message or "no video stream" in message


def test_text_file() -> None:
    message = decode_error(b"hello, this is not a video\n" * 100)
    assert "not a video file" in message or "no video stream" in message


@pytest.mark.parametrize(("fmt", "codec"), [("wav", "pcm_s16le"), ("ipod", "aac"), ("mp3", "libmp3lame")])
def test_audio_only(fmt: str, codec: str) -> None:
    message = decode_error(audio_only(fmt, codec))
    assert "no video stream" in message and "audio" in message


def test_audio_with_cover_art_is_not_a_video() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as container:
        audio = container.add_stream("libmp3lame", rate=16000)
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        for packet in [*cover.encode(picture), *cover.encode(None)]:
            container.mux(packet)
        samples = (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*audio.encode(frame), *audio.encode(None)]:
            container.mux(packet)
    assert "cover art" in decode_error(buf.getvalue())


def test_truncated_mp4(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / SMALL).read_bytes()
    # The muxer writes the index (moov) last, so a cut file has none.
    message = decode_error(data[: len(data) // 2])
    assert "corrupt or truncated" in message


def test_truncated_faststart_mp4_never_escapes_raw(tmp_path: Path) -> None:
    data = faststart_video(tmp_path)
    for cut in (0.2, 0.5, 0.9):
        clear_index_cache()
        try:
            video = decode_video(data[: int(len(data) * cut)], SamplingSpec(num_frames=4))
        except VideoDecodeError as exc:
            assert str(exc)
        else:  # the frames that are there may decode; what comes back must be well-formed
            assert video.frames.shape[0] == 4 and video.frames.dtype == np.uint8


def test_corrupted_payload_never_escapes_raw(tmp_path: Path) -> None:
    data = bytearray(faststart_video(tmp_path))
    rng = np.random.default_rng(1)
    for pos in rng.integers(len(data) // 3, len(data), 200):
        data[pos] ^= 0xFF
    clear_index_cache()
    try:
        decode_video(bytes(data), SamplingSpec(num_frames=8))
    except VideoDecodeError as exc:
        assert str(exc)


def test_over_size_limit(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / SMALL).read_bytes()
    message = decode_error(data, config=DecoderConfig(max_input_bytes=1000))
    assert f"{len(data)} bytes" in message and "limit is 1000 bytes" in message


def test_over_resolution_limit(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / SMALL).read_bytes()
    message = decode_error(data, config=DecoderConfig(max_width=256))
    assert "320x240" in message and "limit" in message


def test_over_duration_limit(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / SMALL).read_bytes()
    message = decode_error(data, config=DecoderConfig(max_duration_s=1.0))
    assert "2.0 s long" in message and "limit is 1 s" in message


def test_limits_apply_to_cached_indexes_too(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / SMALL).read_bytes()
    decode_video(data, SamplingSpec(num_frames=2))  # cached under the default limits
    with pytest.raises(VideoDecodeError, match="limit"):
        decode_video(data, SamplingSpec(num_frames=2), DecoderConfig(max_height=100))


def test_unsupported_codec(video_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    def no_decoder(name, mode="r"):
        raise av.codec.codec.UnknownCodecError(name)

    monkeypatch.setattr(av.codec, "Codec", no_decoder)
    message = decode_error((video_dir / SMALL).read_bytes())
    assert "unsupported video codec 'h264'" in message


def test_bad_sampling_window(video_dir: Path) -> None:  # noqa: F811
    message = decode_error((video_dir / SMALL).read_bytes(), spec=SamplingSpec(start_time=5.0))
    assert "contains no frame" in message and "2.000 s" in message


def test_num_frames_over_limit(video_dir: Path) -> None:  # noqa: F811
    message = decode_error((video_dir / SMALL).read_bytes(), spec=SamplingSpec(num_frames=1000))
    assert "num_frames=1000" in message and "768" in message


def test_bad_deployment_config_is_not_a_client_error() -> None:
    with pytest.raises(ValueError) as info:
        DecoderConfig(engine="quantum")
    assert not isinstance(info.value, VideoDecodeError)
