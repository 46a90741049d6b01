"""CPU decode engine: FFmpeg through PyAV, one container per decoder instance, instances on threads.

A request's sampled frames become runs (GOP segments, plan.py); K instances take runs largest first,
each the next one whenever it is free. For a run an instance positions the demuxer at the run's
keyframe, decodes packets through the run's last sampled frame, drains the decoder (it holds frames
back for B-frame reordering) and keeps only the sampled frames — identified by pts. PyAV releases the
GIL while FFmpeg works, so K threads decode K GOPs at once.

Each sampled frame is converted to RGB once and written (resized, when the request resizes) straight
into its slot of the request's output (frame_sink.py), by the instance that decoded it.

Correctness first: if a seek lands after the keyframe we need, the instance re-reads from the start
of the stream (demux only, no decoding) to it; if a wanted frame still does not come out (a decoder
that drops frames it cannot reconstruct after a jump), the instance decodes it again from the previous
keyframe, then from the start of the stream, then gives up with a VideoDecodeError (retry.py). Frames
are therefore bit-identical to a sequential full decode. Packets FFmpeg rejects as invalid data are
skipped (as the ffmpeg CLI does), so one damaged packet does not fail a whole request unless a
sampled frame cannot be produced.

Speed: only sampled frames are converted to RGB; packets of frames nobody asked for are decoded with
``skip_frame=NONREF`` on codecs whose decoder drops non-reference pictures packet by packet (H.264:
nal_ref_idc 0; HEVC: sub-layer non-reference NAL types) — no other picture can reference them, so the
kept frames are the same bytes, and a sampled non-reference frame is decoded because the mode is set per
packet. A retry after a missed frame decodes without skipping.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import av
import numpy as np

from .engines import DecodeResult
from .errors import VideoDecodeError
from .frame_sink import FrameSink
from .index import OPEN_OPTIONS, VideoIndex
from .plan import Segment, segments_for
from .retry import RunOutcome, decode_runs

# Codecs whose FFmpeg decoder honours skip_frame=NONREF per packet (checked when the packet's pictures
# are parsed, in the worker thread's context under frame threading too). VP9/AV1 are left out: libdav1d
# reads skip_frame once at open, and VP9's non-reference frames only occur with temporal layers.
SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})


def _reformat_takes_threads() -> bool:
    """Recent PyAV lets a conversion choose its thread count (older releases take no such argument)."""
    try:
        av.VideoFrame(16, 16, "yuv420p").to_ndarray(format="rgb24", threads=1)
    except TypeError:
        return False
    return True


_REFORMAT_THREADS = _reformat_takes_threads()

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(num_instances: int) -> ThreadPoolExecutor:
    """One shared pool per instance count: K instances serve all requests, so concurrent requests
    queue for decoders instead of oversubscribing the cores."""
    with _pools_lock:
        pool = _pools.get(num_instances)
        if pool is None:
            pool = _pools[num_instances] = ThreadPoolExecutor(num_instances,
                                                              thread_name_prefix="flashcodec-pyav")
        return pool


class _Misaligned(Exception):
    """Packets after a seek do not match the index (should not happen; handled by re-reading)."""


class _Reader:
    """One instance's container on the bytes, able to hand out packets from any decode index."""

    def __init__(self, data: bytes, index: VideoIndex, codec_threads: int) -> None:
        self._data, self._index, self._codec_threads = data, index, codec_threads
        # RGB conversion (swscale) on as many threads as the decoder: K busy instances already fill the
        # cores, and swscale's own per-call threads then only cost synchronisation (same bytes out).
        self.to_rgb: dict[str, object] = {"format": "rgb24"}
        if _REFORMAT_THREADS:
            self.to_rgb["threads"] = codec_threads
        self._container: av.container.InputContainer | None = None
        self.reopen()

    def reopen(self) -> None:
        self.close()
        self._container = av.open(io.BytesIO(self._data), mode="r", options=OPEN_OPTIONS)
        self.stream = self._container.streams[self._index.stream_index]
        ctx = self.stream.codec_context
        ctx.thread_count = self._codec_threads
        ctx.thread_type = "AUTO" if self._codec_threads > 1 else "SLICE"
        self._fresh = True  # demuxer at the start, decoder unused

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def packets(self, start: int, linear: bool = False) -> Iterator[tuple[int, av.Packet]]:
        """(decode index, packet) from decode index ``start`` on; ``linear``: never seek."""
        source = None
        if not linear and (start > 0 or not self._fresh):
            source = self._seek(start)
        if source is None:  # no usable seek: read from the beginning (demux only up to start)
            if not self._fresh:
                self.reopen()
            source = self._numbered(self._demux(), 0)
        self._fresh = False
        for decode_idx, packet in source:
            if decode_idx >= start:
                yield decode_idx, packet

    def _demux(self) -> Iterator[av.Packet]:
        return (p for p in self._container.demux(self.stream) if p.size > 0)

    def _decode_index_of(self, pts: int | None) -> int | None:
        pos = int(np.searchsorted(self._index.pts, pts)) if pts is not None else -1
        if 0 <= pos < self._index.num_frames and self._index.pts[pos] == pts:
            return int(self._index.decode_index[pos])
        return None

    def _seek(self, start: int) -> Iterator[tuple[int, av.Packet]] | None:
        """Seek to the keyframe at ``start`` (or before); None unless the demuxer landed at or before."""
        frame = int(self._index.presentation_index[start])
        pts, dts = int(self._index.pts[frame]), int(self._index.dts[frame])
        # The keyframe's pts lands exactly on it with mov and matroska here; a demuxer that compares dts
        # could land after it, and then the smaller stamp (dts) cannot. Landing early only costs demuxing
        # (a whole GOP of packets with mov: why pts is tried first).
        for target in dict.fromkeys((pts, min(pts, dts))):
            try:
                self._container.seek(target, stream=self.stream, backward=True, any_frame=False)
            except av.FFmpegError:
                return None
            packets = self._demux()
            first = next(packets, None)
            landed = self._decode_index_of(first.pts) if first is not None else None
            if landed is not None and landed <= start:
                return self._numbered(itertools.chain([first], packets), landed)
        return None

    def _numbered(self, packets: Iterator[av.Packet], first: int) -> Iterator[tuple[int, av.Packet]]:
        index = self._index
        for decode_idx, packet in enumerate(packets, first):
            if decode_idx >= index.num_frames or packet.pts != index.pts[index.presentation_index[decode_idx]]:
                raise _Misaligned(f"packet {decode_idx} has pts {packet.pts}")
            yield decode_idx, packet


def _decode_run(reader: _Reader, index: VideoIndex, run: Segment, out: FrameSink, linear: bool = False,
                skip_nonref: bool = False) -> RunOutcome:
    """Decode one run, putting its sampled frames into ``out``; ``skip_nonref``: let the decoder drop
    non-reference pictures that are not wanted (see the module doc)."""
    wanted = {int(index.pts[f]): f for f in run.frames if f not in out}
    ctx = reader.stream.codec_context
    outcome = RunOutcome()
    ctx.skip_frame = mode = "DEFAULT"

    def feed(packet: av.Packet | None) -> None:  # None drains the frames held back for reordering
        nonlocal mode
        if skip_nonref and packet is not None:
            want = "DEFAULT" if packet.pts in wanted else "NONREF"  # its frame comes out later
            if want != mode:
                ctx.skip_frame = mode = want
        try:
            frames = ctx.decode(packet)
        except av.InvalidDataError:
            outcome.bad_packets += 1
            return
        for frame in frames:
            outcome.produced += 1
            target = wanted.pop(frame.pts, None)
            if target is not None:
                # A view of swscale's output; put() copies (or resizes) it into the output slot.
                out.put(target, frame.to_ndarray(**reader.to_rgb))

    for decode_idx, packet in reader.packets(run.start, linear):
        feed(packet)
        if decode_idx >= run.end:
            outcome.reached_end = True
            break
    feed(None)
    return outcome


class _WorkQueue:
    """One request's runs, largest first; each instance takes the next one whenever it is free.

    This is longest-processing-time-first as list scheduling on real progress rather than on the
    packet-count estimate alone (plan.balance): a run's real cost also depends on its keyframe, on the
    non-reference frames skipped and on what else the cores are doing, and a late instance simply ends
    up taking fewer runs. A failed instance stops the others from starting new runs.
    """

    def __init__(self, runs: Sequence[Segment]) -> None:
        self._todo = deque(sorted(runs, key=lambda r: (-r.cost, r.start)))
        self._lock = threading.Lock()
        self._failed = False

    def take(self) -> Segment | None:
        with self._lock:
            return None if self._failed or not self._todo else self._todo.popleft()

    def fail(self) -> None:
        with self._lock:
            self._failed = True


def runs_for(index: VideoIndex, frames: Sequence[int], num_instances: int) -> list[Segment]:
    """The GOP segments of ``frames``; neighbours that touch or overlap are joined into one run (decoded
    straight through: no seek, no drain, no frame decoded twice) while the run stays under an eighth of
    an instance's share, so dense sampling does not cost a seek per frame and every instance still gets
    several runs to balance with."""
    segments = segments_for(index, frames)
    total = sum(seg.cost for seg in segments)
    cap = total if num_instances <= 1 else max(1, total // (8 * num_instances))
    runs: list[Segment] = []
    for seg in segments:  # sorted by start
        prev = runs[-1] if runs else None
        if prev is not None and seg.start <= prev.end + 1 and max(prev.end, seg.end) - prev.start < cap:
            runs[-1] = Segment(start=prev.start, end=max(prev.end, seg.end),
                               frames=tuple(sorted(set(prev.frames) | set(seg.frames))))
        else:
            runs.append(seg)
    return runs


def _decode_instance(data: bytes, index: VideoIndex, work: _WorkQueue, codec_threads: int, out: FrameSink,
                     skip_nonref: bool = False) -> tuple[int, int]:
    """One decoder instance: runs from ``work`` until none is left, with the fallbacks described in the
    module doc (its own retries first). Returns (frames the decoder produced, runs decoded)."""
    reader = _Reader(data, index, codec_threads)

    def decode(run: Segment, level: int) -> RunOutcome:
        skip = skip_nonref and level == 0  # a retry takes no chances
        try:
            return _decode_run(reader, index, run, out, skip_nonref=skip)
        except _Misaligned:
            # A demuxer reading from the start sees exactly what the index was built from.
            try:
                return _decode_run(reader, index, run, out, linear=True, skip_nonref=skip)
            except _Misaligned as exc:
                raise RuntimeError(f"demuxer disagrees with its own index: {exc}") from exc

    try:
        return decode_runs(index, work.take, decode, out, functools.partial(_undecodable, index))
    except av.FFmpegError as exc:
        work.fail()
        raise VideoDecodeError(f"could not decode the video: {exc} (corrupt or truncated?)") from exc
    except BaseException:
        work.fail()
        raise
    finally:
        reader.close()


def _undecodable(index: VideoIndex, frame: int, outcome: RunOutcome) -> VideoDecodeError:
    where = f"frame {frame} (t={index.times_s[frame]:.3f} s)"
    if not outcome.reached_end:
        return VideoDecodeError(f"the video is truncated or corrupt: the data for {where} is missing")
    bad = f"; {outcome.bad_packets} packets were invalid" if outcome.bad_packets else ""
    return VideoDecodeError(f"could not decode {where}, even from the start of the stream{bad} "
                            "(corrupt or truncated?)")


class PyAVEngine:
    name = "pyav"

    def __init__(self, skip_nonref: bool = True) -> None:
        self.skip_nonref = skip_nonref  # False: decode every packet of a run (benchmark ablation)

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               out: FrameSink) -> DecodeResult:
        runs = runs_for(index, frames, num_instances)
        busy = min(num_instances, len(runs))
        work = _WorkQueue(runs)
        # Cores the busy instances leave idle go to FFmpeg's own threads (same output either way): a lone
        # instance decodes with frame threads, K >= cores instances with one thread each.
        codec_threads = max(1, (os.cpu_count() or 1) // max(1, busy))
        skip = self.skip_nonref and index.codec in SKIP_NONREF_CODECS
        if busy <= 1:
            results = [_decode_instance(data, index, work, codec_threads, out, skip)] if runs else []
        else:
            pool = _pool(num_instances)
            futures: list[Future] = [pool.submit(_decode_instance, data, index, work, codec_threads, out, skip)
                                     for _ in range(busy)]
            try:
                results = [f.result() for f in futures]
            finally:
                work.fail()  # after a failure, start no new run nobody will read
                for f in futures:
                    f.cancel()
        return DecodeResult(num_decoded_frames=sum(r[0] for r in results),
                            num_segments=sum(r[1] for r in results))
