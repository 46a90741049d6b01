"""What NVDEC is fed and what comes out of it, host side (no GPU imports): which streams it takes,
Annex-B packets from PyAV's demuxer starting at any keyframe, and FFmpeg's NV12 -> RGB math in torch.

Pure CPU code, so it is tested here against PyAV/FFmpeg (tests/test_flashcodec_gpu.py runs the whole
nvdec engine on CPU with an FFmpeg decoder standing in for NVDEC).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from .engines import UnsupportedByEngine
from .index import OPEN_OPTIONS, VideoIndex

NV_CODECS = {"h264": "H264", "hevc": "HEVC", "vp9": "VP9", "vp8": "VP8", "av1": "AV1"}  # PyAV -> cudaVideoCodec
ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
PIX_FMTS = {"yuv420p": False, "yuvj420p": True}  # 8-bit 4:2:0 (NVDEC's NV12) -> full range
# (Kr, Kb) per AVColorSpace as swscale picks them (sws_getCoefficients); anything else is BT.601.
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)


def nv12_to_rgb(nv12: Any, colorspace: int = 2, full_range: bool = False) -> Any:
    """uint8 NV12 [H * 3 / 2, W] (torch, any device) -> uint8 RGB [H, W, 3], FFmpeg's math.

    The matrix and range follow swscale (untagged = BT.601, limited range); chroma is replicated over
    its 2x2 pixels as swscale's unscaled yuv420p->rgb24 path does. Measured against PyAV's
    ``to_ndarray("rgb24")`` on the sample videos: about 46.8 dB PSNR, max difference 3 (rounding).
    """
    import torch

    rows, width = int(nv12.shape[0]), int(nv12.shape[1])
    height = rows * 2 // 3
    if height % 2 or width % 2 or height + height // 2 != rows:
        raise ValueError(f"NV12 needs an even frame size, got {width}x{height}")
    y = nv12[:height].float()
    uv = nv12[height:].reshape(height // 2, width // 2, 2).float()
    uv = uv.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1) - 128.0
    kr, kb = _KR_KB.get(colorspace, _BT601)
    if full_range:
        luma, cb, cr = y, uv[..., 0], uv[..., 1]
    else:
        luma, cb, cr = (y - 16.0) * (255.0 / 219.0), uv[..., 0] * (255.0 / 224.0), uv[..., 1] * (255.0 / 224.0)
    kg = 1.0 - kr - kb
    r = luma + (2.0 * (1.0 - kr)) * cr
    g = luma - (2.0 * kb * (1.0 - kb) / kg) * cb - (2.0 * kr * (1.0 - kr) / kg) * cr
    b = luma + (2.0 * (1.0 - kb)) * cb
    return torch.stack((r, g, b), dim=-1).round_().clamp_(0, 255).to(torch.uint8)


def annexb_parameter_sets(codec: str, extradata: bytes | None) -> bytes:
    """The SPS/PPS (HEVC: VPS/SPS/PPS) of an avcC/hvcC extradata as Annex-B NAL units, b"" if none.

    mp4toannexb adds them only before IDR pictures; an open-GOP keyframe (a recovery-point I picture)
    has none, and a decoder starting there after a flush would have no parameter sets.
    """
    data = bytes(extradata or b"")
    if codec not in ANNEXB_FILTERS or not data:
        return b""
    if data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")):
        return data
    units: list[bytes] = []
    try:
        if codec == "h264":  # avcC, ISO/IEC 14496-15 5.3.3.1: 5-byte header, SPS count & 0x1f, PPS count
            pos = 5
            for mask in (0x1F, 0xFF):
                count, pos = data[pos] & mask, pos + 1
                for _ in range(count):
                    size = int.from_bytes(data[pos:pos + 2], "big")
                    units.append(data[pos + 2:pos + 2 + size])
                    pos += 2 + size
        else:  # hvcC, ISO/IEC 14496-15 8.3.3.1: 22-byte header, then arrays of NAL units
            num_arrays, pos = data[22], 23
            for _ in range(num_arrays):
                count = int.from_bytes(data[pos + 1:pos + 3], "big")
                pos += 3
                for _ in range(count):
                    size = int.from_bytes(data[pos:pos + 2], "big")
                    units.append(data[pos + 2:pos + 2 + size])
                    pos += 2 + size
    except IndexError:
        return b""
    if any(not unit for unit in units):
        return b""
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in units)


@dataclass(frozen=True)
class StreamFormat:
    codec: str
    colorspace: int  # AVColorSpace
    full_range: bool
    parameter_sets: bytes  # Annex-B, fed before each run's first packet (H.264/HEVC)


def stream_format(data: bytes, index: VideoIndex) -> StreamFormat:
    """What NVDEC needs to know about the stream; UnsupportedByEngine when it cannot decode it."""
    with av.open(io.BytesIO(data), mode="r", options=OPEN_OPTIONS) as container:
        ctx = container.streams[index.stream_index].codec_context
        codec, pix_fmt = ctx.name, ctx.pix_fmt
        fmt = StreamFormat(codec, int(ctx.colorspace or 2), PIX_FMTS.get(pix_fmt, False) or ctx.color_range == 2,
                           annexb_parameter_sets(codec, ctx.extradata))
    if codec not in NV_CODECS:
        raise UnsupportedByEngine(f"the GPU decoder (nvdec) handles {', '.join(sorted(NV_CODECS))}, "
                                  f"not {codec!r}; use engine pyav")
    if pix_fmt not in PIX_FMTS:
        raise UnsupportedByEngine(f"the GPU decoder (nvdec) here handles 8-bit 4:2:0 video, not {pix_fmt!r}; "
                                  "use engine pyav")
    if index.width % 2 or index.height % 2:
        raise UnsupportedByEngine(f"the GPU decoder (nvdec) here needs an even frame size, got "
                                  f"{index.width}x{index.height}; use engine pyav")
    return fmt


class Misaligned(Exception):
    """Packets after a seek do not match the index (handled by reading from the start)."""


class PacketReader:
    """One session's PyAV demuxer over the request's bytes: Annex-B payloads from any decode index."""

    def __init__(self, data: bytes, index: VideoIndex, fmt: StreamFormat) -> None:
        self._data, self._index, self._fmt = data, index, fmt
        self._container: av.container.InputContainer | None = None
        self._reopen()

    def _reopen(self) -> None:
        self.close()
        self._container = av.open(io.BytesIO(self._data), mode="r", options=OPEN_OPTIONS)
        self._stream = self._container.streams[self._index.stream_index]
        self._fresh = True

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def packets(self, start: int, linear: bool = False) -> Iterator[tuple[int, bytes, int]]:
        """(decode index, payload, pts) from decode index ``start`` on; ``linear``: never seek."""
        source = self._seek(start) if not linear and (start > 0 or not self._fresh) else None
        if source is None:
            if not self._fresh:
                self._reopen()
            source = self._numbered(self._demux(), 0)
        self._fresh = False
        name = ANNEXB_FILTERS.get(self._fmt.codec)
        bsf = av.bitstream.BitStreamFilterContext(name, self._stream) if name else None
        prefix = self._fmt.parameter_sets
        for decode_idx, packet in source:
            if decode_idx < start:
                continue
            pts = int(packet.pts)  # read first: the filter takes the packet's data and fields
            for out in (bsf.filter(packet) if bsf is not None else (packet,)):
                yield decode_idx, prefix + bytes(out), pts
                prefix = b""

    def _demux(self) -> Iterator[av.Packet]:
        return (p for p in self._container.demux(self._stream) if p.size > 0)

    def _seek(self, start: int) -> Iterator[tuple[int, av.Packet]] | None:
        index = self._index
        frame = int(index.presentation_index[start])
        # mov seeks by dts, matroska by pts: the smaller one never lands after the keyframe.
        try:
            self._container.seek(int(min(index.pts[frame], index.dts[frame])), stream=self._stream,
                                 backward=True, any_frame=False)
        except av.FFmpegError:
            return None
        packets = self._demux()
        first = next(packets, None)
        landed = None
        if first is not None and first.pts is not None:
            pos = int(np.searchsorted(index.pts, first.pts))
            if pos < index.num_frames and index.pts[pos] == first.pts:
                landed = int(index.decode_index[pos])
        if landed is None or landed > start:
            return None
        return self._numbered(_chain(first, packets), landed)

    def _numbered(self, packets: Iterator[av.Packet], first: int) -> Iterator[tuple[int, av.Packet]]:
        index = self._index
        for decode_idx, packet in enumerate(packets, first):
            if decode_idx >= index.num_frames or packet.pts != index.pts[index.presentation_index[decode_idx]]:
                raise Misaligned(f"packet {decode_idx} has pts {packet.pts}")
            yield decode_idx, packet


def _chain(first: av.Packet, rest: Iterator[av.Packet]) -> Iterator[av.Packet]:
    yield first
    yield from rest
