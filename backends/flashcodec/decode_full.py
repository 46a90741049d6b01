"""Baseline engine ``pyav_full``: the decode a video server runs today, kept for side-by-side benchmarks.

One decoder reads the video from its first frame, in order, through the last sampled frame — every frame
is decoded, sampled or not, no GOP is skipped and nothing runs in parallel — and the sampled frames are
converted to RGB and kept. That is what vLLM's PyAV/OpenCV video loaders do (decode all, then pick the
sampled indices); scripts/bench_decode.py's "seq" column times the same loop. Served through the same
flashcodec model (engine "pyav_full"), it lets a benchmark separate FlashCodec's gain from the scheduler's.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import av

from .engines import DecodeResult
from .errors import VideoDecodeError
from .frame_sink import FrameSink
from .index import OPEN_OPTIONS, VideoIndex


class FullDecodeEngine:
    name = "pyav_full"

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               out: FrameSink) -> DecodeResult:
        # Frames are matched by pts (the index's presentation order), so B-frame reordering and VFR
        # timestamps cannot shift a sampled frame onto its neighbour.
        wanted = {int(index.pts[f]): int(f) for f in frames}
        last_pts = max(wanted)
        decoded = 0
        with av.open(io.BytesIO(data), mode="r", options=OPEN_OPTIONS) as container:
            stream = container.streams[index.stream_index]
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    f = wanted.get(frame.pts)
                    if f is not None and f not in out:
                        out.put(f, frame.to_ndarray(format="rgb24"))
                    if frame.pts is not None and frame.pts >= last_pts:
                        break
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(f"the video could not be decoded: {exc}") from exc
        missing = [f for f in wanted.values() if f not in out]
        if missing:
            raise VideoDecodeError(f"the video is truncated or corrupt: frame {missing[0]} could not be decoded "
                                   f"({len(missing)} sampled frames missing)")
        return DecodeResult(num_decoded_frames=decoded, num_segments=1)
