"""Demux-only pass over a video: where every frame and keyframe is, without decoding anything.

The index is what lets FlashCodec decode only the GOPs that hold sampled frames: for each frame (in
presentation order) its pts, its packet's position in decode order, and the keyframes. Demuxing reads
packet headers only, so it costs a small fraction of a decode; the result is cached per content hash.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import av
import numpy as np

from .config import DecoderConfig
from .errors import VideoDecodeError

# Frame times within this fraction of a frame of a constant-rate grid count as constant frame rate
# (containers with a millisecond time base, like WebM, round 30 fps to 33/34 ms steps).
_REGULAR_TOLERANCE = 0.25

# Options for every container FlashCodec opens on client bytes. A playlist or concat "video" would
# otherwise make FFmpeg open other files or URLs named inside it: no protocol may be opened.
OPEN_OPTIONS = {"protocol_whitelist": "none"}


@dataclass(frozen=True)
class PacketInfo:
    """One video packet, in decode (demux) order."""

    pts: int | None
    dts: int | None
    is_keyframe: bool
    pos: int | None  # byte offset in the file
    duration: int | None  # in time_base ticks


@dataclass(frozen=True, eq=False)
class VideoIndex:
    """Frames of one video stream. Per-frame arrays are in presentation order (sorted by pts)."""

    codec: str
    width: int
    height: int
    time_base: Fraction
    fps: float  # average frame rate: frames / duration (never assumed constant)
    duration_s: float
    pts: np.ndarray  # int64 [N]
    dts: np.ndarray  # int64 [N]; the pts where the container gives none
    is_keyframe: np.ndarray  # bool [N]
    packet_pos: np.ndarray  # int64 [N] byte offset of the frame's packet, -1 when unknown
    decode_index: np.ndarray  # int64 [N] position of the frame's packet in decode order
    times_s: np.ndarray  # float64 [N] seconds from the first frame
    keyframes: np.ndarray  # int64 decode indices of the keyframes, ascending
    regular: bool  # frame times lie on a constant-rate grid (so index math equals time math)
    stream_index: int = 0  # the container's stream this index describes (decoders open the same one)

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])

    @cached_property
    def presentation_index(self) -> np.ndarray:
        """Decode index -> presentation index (inverse of decode_index)."""
        inverse = np.empty_like(self.decode_index)
        inverse[self.decode_index] = np.arange(self.num_frames, dtype=np.int64)
        return inverse


def build_index(packets: Sequence[PacketInfo], *, codec: str, width: int, height: int,
                time_base: Fraction, nominal_fps: float | None = None, stream_index: int = 0) -> VideoIndex:
    """VideoIndex from packets in decode order (pure; tests build synthetic indexes with it)."""
    if not packets:
        raise VideoDecodeError("the video stream contains no frames")
    if any(p.pts is None for p in packets):
        raise VideoDecodeError("the video stream has no frame timestamps (a raw elementary stream?); "
                               "send it in a container such as MP4, MKV or WebM")
    pts_dec = np.array([p.pts for p in packets], dtype=np.int64)
    order = np.argsort(pts_dec, kind="stable")  # presentation order = sorted by pts (B-frames)
    pts = pts_dec[order]
    if pts.shape[0] > 1 and np.any(np.diff(pts) == 0):
        raise VideoDecodeError("the video stream has frames with duplicate timestamps; re-encode it")
    dts_dec = np.array([p.pts if p.dts is None else p.dts for p in packets], dtype=np.int64)
    key_dec = np.array([p.is_keyframe for p in packets], dtype=bool)
    pos_dec = np.array([-1 if p.pos is None else p.pos for p in packets], dtype=np.int64)

    tb = float(time_base)
    times_s = (pts - pts[0]).astype(np.float64) * tb
    # Duration in exact ticks (a Fraction of seconds), so a constant-rate video's average fps comes
    # out exactly as its nominal rate (30, 30000/1001...) and frame-count math matches qwen-vl-utils.
    last = packets[int(order[-1])]
    if last.duration:
        last_ticks = int(last.duration)
    elif len(packets) > 1:
        last_ticks = int(round(float(np.median(np.diff(pts)))))
    else:
        last_ticks = round(1 / (nominal_fps * time_base)) if nominal_fps else 0
    duration = (int(pts[-1] - pts[0]) + last_ticks) * Fraction(time_base)
    num = len(packets)
    fps = float(num / duration) if duration > 0 else float(nominal_fps or 1.0)
    duration_s = float(duration)
    return VideoIndex(
        codec=codec, width=width, height=height, time_base=time_base, fps=fps, duration_s=duration_s,
        pts=pts, dts=dts_dec[order], is_keyframe=key_dec[order], packet_pos=pos_dec[order],
        decode_index=order.astype(np.int64), times_s=times_s,
        keyframes=np.flatnonzero(key_dec).astype(np.int64), regular=_is_regular(times_s),
        stream_index=stream_index,
    )


def _is_regular(times_s: np.ndarray) -> bool:
    if times_s.shape[0] <= 2:
        return True
    step = (times_s[-1] - times_s[0]) / (times_s.shape[0] - 1)
    grid = times_s[0] + step * np.arange(times_s.shape[0])
    return bool(np.max(np.abs(times_s - grid)) <= _REGULAR_TOLERANCE * step)


def read_index(data: bytes, config: DecoderConfig) -> VideoIndex:
    """Demux ``data`` (no decoding) into a VideoIndex, enforcing the deployment's limits."""
    try:
        with av.open(io.BytesIO(data), mode="r", options=OPEN_OPTIONS) as container:
            stream = video_stream(container)
            codec = stream.codec_context.name
            _check_decodable(codec)
            width, height = stream.codec_context.width, stream.codec_context.height
            _check_size(width, height, config)
            if container.duration is not None and container.duration / 1e6 > config.max_duration_s:
                raise _too_long(container.duration / 1e6, config)
            if stream.time_base is None:
                raise VideoDecodeError("the video stream has no time base (corrupt?)")
            # Bounded by the byte limit checked before (every packet takes bytes).
            packets = [PacketInfo(p.pts, p.dts, bool(p.is_keyframe), p.pos, p.duration)
                       for p in container.demux(stream) if p.size > 0]
            rate = stream.average_rate or stream.guessed_rate
            index = build_index(packets, codec=codec, width=width, height=height, time_base=stream.time_base,
                                nominal_fps=float(rate) if rate else None, stream_index=stream.index)
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"could not read the input as a video: {exc} (not a video file, or corrupt or truncated?)"
        ) from exc
    check_limits(index, config)
    return index


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream; cover art in audio files (attached pictures) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = sorted({s.type for s in container.streams})
    found = f" (found only {', '.join(kinds)} streams)" if kinds else ""
    if container.streams.video:
        found = " (only cover art: an audio file?)"
    raise VideoDecodeError(f"the input has no video stream{found}; send a video file")


def check_limits(index: VideoIndex, config: DecoderConfig) -> None:
    """VideoDecodeError when the video is over the deployment's size or duration limits."""
    _check_size(index.width, index.height, config)
    if index.duration_s > config.max_duration_s:
        raise _too_long(index.duration_s, config)


def _check_decodable(codec: str) -> None:
    try:
        av.codec.Codec(codec, "r")
    except ValueError as exc:  # av.codec.codec.UnknownCodecError
        raise VideoDecodeError(f"unsupported video codec {codec!r}; use H.264, HEVC, VP9 or AV1") from exc


def _check_size(width: int, height: int, config: DecoderConfig) -> None:
    if width <= 0 or height <= 0:
        raise VideoDecodeError(f"the video stream has no valid frame size ({width}x{height}); "
                               "corrupt or truncated?")
    if width > config.max_width or height > config.max_height:
        raise VideoDecodeError(f"video is {width}x{height}, the limit is "
                               f"{config.max_width}x{config.max_height}; downscale it first")


def _too_long(duration_s: float, config: DecoderConfig) -> VideoDecodeError:
    return VideoDecodeError(f"video is {duration_s:.1f} s long, the limit is {config.max_duration_s:g} s; "
                            "trim it first")


class IndexCache:
    """Thread-safe LRU of VideoIndex by content hash (a repeated video skips the demux pass)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, VideoIndex] = OrderedDict()

    def get(self, key: str) -> VideoIndex | None:
        with self._lock:
            index = self._entries.get(key)
            if index is not None:
                self._entries.move_to_end(key)
            return index

    def put(self, key: str, index: VideoIndex, capacity: int) -> None:
        with self._lock:
            self._entries[key] = index
            self._entries.move_to_end(key)
            while len(self._entries) > capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
