"""Sampled non-reference B-frames, decoded with "skip non-reference frames where safe" active, are
bit-identical to a sequential full decode.

The pyav engine lets FFmpeg drop non-reference pictures nobody asked for (skip_frame=NONREF, switched
per packet), so a sampled non-reference picture must be decoded in a run whose mode flips right
before it. The test proves it hits that case: the pictures are classified from the bitstream itself
(H.264 nal_ref_idc and slice_type; HEVC NAL unit type and slice_type), the sampled ones are
non-reference B pictures that close their runs (the unsampled non-reference pictures before them in
the GOP are skipped), and the decoder's own frame count shows exactly those were dropped with no
retry (a retry decodes without skipping).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from flashcodec_fixtures import reference_frames, sample_script, video_dir  # noqa: F401

from flashcodec import DecoderConfig, get_index
from flashcodec.decode_pyav import SKIP_NONREF_CODECS, PyAVEngine, runs_for
from flashcodec.frame_sink import FrameSink
from flashcodec.nvdec_stream import annexb_parameter_sets

VIDEOS = ["h264_bf_640x360_10s_gop30.mp4", "h264_bf_320x240_2s_gop12.mp4", "hevc_bf_640x360_4s_gop30.mp4"]
HEVC_NONREF = frozenset(range(0, 16, 2))  # sub-layer non-reference VCL NAL types (TRAIL_N, RASL_N, ...)


@dataclass(frozen=True)
class Picture:
    pts: int
    is_reference: bool
    is_b: bool


class _Bits:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes removed)."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data.replace(b"\x00\x00\x03", b"\x00\x00"), 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self._data[self._pos // 8] >> (7 - self._pos % 8)) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)


def _nal_units(payload: bytes, length_size: int) -> list[bytes]:
    units, pos = [], 0
    while pos + length_size <= len(payload):
        size = int.from_bytes(payload[pos:pos + length_size], "big")
        units.append(payload[pos + length_size:pos + length_size + size])
        pos += length_size + size
    return units


def _h264_picture(units: list[bytes]) -> tuple[bool, bool]:
    for nal in units:
        if nal[0] & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            bits = _Bits(nal[1:])
            bits.ue()  # first_mb_in_slice
            return (nal[0] >> 5) & 3 != 0, bits.ue() % 5 == 1  # nal_ref_idc, slice_type B
    raise AssertionError("packet without a coded slice")


def _hevc_picture(units: list[bytes], extra_slice_header_bits: int) -> tuple[bool, bool]:
    for nal in units:
        nal_type = (nal[0] >> 1) & 0x3F
        if nal_type < 32:  # VCL
            bits = _Bits(nal[2:])
            assert bits.u(1) == 1, "the picture's first slice segment comes first"
            if 16 <= nal_type <= 23:
                bits.u(1)  # no_output_of_prior_pics_flag
            bits.ue()  # slice_pic_parameter_set_id
            bits.u(extra_slice_header_bits)
            return nal_type not in HEVC_NONREF, bits.ue() == 0  # slice_type 0 = B
    raise AssertionError("packet without a VCL NAL unit")


def pictures(path: Path) -> list[Picture]:
    """Every picture of the video's first stream, in decode order, classified from its own NAL units."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec, extradata = stream.codec_context.name, bytes(stream.codec_context.extradata)
        if codec == "h264":  # avcC
            length_size, extra_bits = (extradata[4] & 3) + 1, 0
        else:  # hvcC; num_extra_slice_header_bits from the PPS
            length_size = (extradata[21] & 3) + 1
            pps = next(u for u in annexb_parameter_sets(codec, extradata).split(b"\x00\x00\x00\x01")
                       if u and (u[0] >> 1) & 0x3F == 34)
            bits = _Bits(pps[2:])
            bits.ue(), bits.ue(), bits.u(2)  # pps id, sps id, dependent slices / output flag present
            extra_bits = bits.u(3)
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            units = _nal_units(bytes(packet), length_size)
            ref, is_b = _h264_picture(units) if codec == "h264" else _hevc_picture(units, extra_bits)
            out.append(Picture(int(packet.pts), ref, is_b))
    return out


def last_nonref_b_per_gop(index, pics: list[Picture], max_gops: int = 4) -> list[int]:
    """Presentation indices of the last non-reference B picture (decode order) of some GOPs: the first
    ones and the last one, so runs start at the stream's start, mid-stream after a seek, and at the end."""
    bounds = [*index.keyframes.tolist(), index.num_frames]
    picked = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        nonref_b = [d for d in range(start, end) if not pics[d].is_reference and pics[d].is_b]
        if nonref_b:
            picked.append(int(index.presentation_index[nonref_b[-1]]))
    return sorted(set(picked[:max_gops - 1] + picked[-1:]))


@pytest.mark.parametrize("instances", [1, 2])
@pytest.mark.parametrize("name", VIDEOS)
def test_sampled_nonref_b_frames_match_full_decode(video_dir: Path, name: str, instances: int) -> None:  # noqa: F811
    path = video_dir / name
    data = path.read_bytes()
    index = get_index(data, DecoderConfig())
    pics = pictures(path)
    assert len(pics) == index.num_frames
    assert [p.pts for p in pics] == index.pts[index.presentation_index].tolist()  # same decode order
    assert index.codec in SKIP_NONREF_CODECS  # the skipping path applies to this stream

    frames = last_nonref_b_per_gop(index, pics)
    assert len(frames) >= 2
    for f in frames:  # provably non-reference B pictures
        pic = pics[int(index.decode_index[f])]
        assert pic.is_b and not pic.is_reference
    runs = runs_for(index, frames, instances)
    # Non-reference pictures in the runs nobody sampled: what skipping must drop, and all it may drop.
    skippable = sum(1 for run in runs for d in range(run.start, run.end + 1)
                    if not pics[d].is_reference and int(index.presentation_index[d]) not in frames)
    assert skippable > 0

    out = FrameSink(frames, None)
    result = PyAVEngine(skip_nonref=True).decode(data, index, frames, instances, out)
    assert result.num_segments == len(runs)  # no retry: every frame came from a skipping decode
    assert result.num_decoded_frames == sum(run.cost for run in runs) - skippable
    reference = reference_frames(path, frames)
    read_barcode = sample_script().read_barcode
    for frame, got in zip(frames, out.result(), strict=True):
        np.testing.assert_array_equal(got, reference[frame], err_msg=f"{name} frame {frame}")
        assert read_barcode(got) == frame
