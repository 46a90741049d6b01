"""The full-decode baseline engine (``pyav_full``) returns the same frames as FlashCodec's pyav engine: a
benchmark that swaps one for the other compares decode speed only, never different pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flashcodec_fixtures import default_specs, sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, SamplingSpec, VideoDecodeError, decode_video

VIDEOS = [spec.filename for spec in default_specs()]


@pytest.mark.parametrize("name", VIDEOS)
def test_full_decode_matches_flashcodec(video_dir: Path, name: str) -> None:  # noqa: F811
    data = (video_dir / name).read_bytes()
    read_barcode = sample_script().read_barcode
    for spec in (SamplingSpec(), SamplingSpec(num_frames=6)):
        full = decode_video(data, spec, DecoderConfig(engine="pyav_full"), resize=False)
        fast = decode_video(data, spec, DecoderConfig(engine="pyav", num_instances=2), resize=False)
        np.testing.assert_array_equal(full.frame_indices, fast.frame_indices)
        np.testing.assert_array_equal(full.frames, fast.frames, err_msg=name)
        assert [read_barcode(f) for f in full.frames] == full.frame_indices.tolist()


def test_full_decode_of_truncated_video_is_a_client_error(video_dir: Path) -> None:  # noqa: F811
    data = (video_dir / "h264_bf_320x240_2s_gop12.mp4").read_bytes()
    with pytest.raises(VideoDecodeError):
        decode_video(data[: len(data) // 3], SamplingSpec(), DecoderConfig(engine="pyav_full"))
