"""GPU decode engine: NVDEC through PyNvVideoCodec's low-level Decoder, one request over K sessions.

Same plan as the CPU engine (plan.py): a *session* (one NVDEC decoder + its CUDA stream, cached across
requests in a per-GPU pool) decodes its runs in decode order. PyAV demuxes (the index is PyAV's, so
sampled frames are found by pts exactly as on the CPU); H.264/HEVC packets go through the
``*_mp4toannexb`` filters and each run starts with the stream's parameter sets, so a session can start
at any keyframe, also after the end-of-stream flush that ends the previous run. The decoder returns
NV12 surfaces in display order; only sampled ones are kept, converted to RGB and resized on the GPU
(on the session's stream), then copied into the request's output tensor once every session is done.
Retries after a missed frame are decode_pyav's (retry.py).

PyNvVideoCodec facts this relies on (2.x sources: PyNvDecoder.cpp, NvDecoder.cpp, DecoderCommon.cpp):
- ``Decoder.Decode`` releases the GIL, so sessions on threads decode concurrently.
- A frame returned by ``Decode`` lives in a buffer the next ``Decode`` call reuses: it is converted at
  once, on the stream the decoder writes on (stream order, not a sync, keeps the read in time).
- An empty ``PacketData`` is end-of-stream: it flushes the frames held for reordering, and the parser
  takes new data afterwards (SimpleDecoder reuses decoders the same way).
- NATIVE output of 8-bit 4:2:0 is NV12, exported by DLPack as uint8 [H * 3 / 2, W].
- Its own RGB output uses BT.709 for untagged video where FFmpeg uses BT.601 (~29.5 dB against the CPU
  reference) through a process-wide constant, so the conversion is done here (nv12_to_rgb).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import av
import numpy as np

from .config import DecoderConfig
from .engines import DecodeResult, EngineUnavailable, UnsupportedByEngine
from .errors import VideoDecodeError
from .frame_sink import FrameSink
from .index import VideoIndex
from .nvdec_sessions import Session, SessionPool
from .nvdec_stream import NV_CODECS, Misaligned, PacketReader, StreamFormat, nv12_to_rgb, stream_format
from .plan import Segment, plan_decode
from .resize import resize_frames
from .retry import RunOutcome, decode_runs


def _decode_run(session: Session, reader: PacketReader, index: VideoIndex, run: Segment, got: dict,
                target_size: tuple[int, int] | None, fmt: StreamFormat, linear: bool = False) -> RunOutcome:
    wanted = {int(index.pts[f]): f for f in run.frames if f not in got}
    outcome = RunOutcome()

    def take(decoded: list) -> None:  # at once: the next Decode call reuses these buffers
        for pts, frame in decoded:
            outcome.produced += 1
            target = wanted.pop(int(pts), None)
            if target is not None:
                rgb = nv12_to_rgb(session.to_nv12(frame), fmt.colorspace, fmt.full_range)
                got[target] = resize_frames(rgb[None], *target_size)[0] if target_size else rgb

    for decode_idx, payload, pts in reader.packets(run.start, linear):
        take(session.decode(payload, pts))
        if decode_idx >= run.end:
            outcome.reached_end = True
            break
    take(session.decode(None, 0))  # end of stream: out with the frames held back for reordering
    return outcome


def decode_instance(session: Session, data: bytes, index: VideoIndex, runs: list[Segment],
                    target_size: tuple[int, int] | None, fmt: StreamFormat) -> tuple[dict, int, int]:
    """One session's runs, with decode_pyav's fallbacks (previous keyframe, then the stream's start).

    Returns (presentation index -> RGB frame, frames the decoder produced, runs decoded).
    """
    got: dict = {}
    with session.device():
        reader = PacketReader(data, index, fmt)

        def decode(run: Segment, level: int) -> RunOutcome:
            try:
                return _decode_run(session, reader, index, run, got, target_size, fmt)
            except Misaligned:  # drop what the decoder holds, then read from the stream's start
                session.decode(None, 0)
                return _decode_run(session, reader, index, run, got, target_size, fmt, linear=True)

        try:
            produced, num_runs = decode_runs(index, functools.partial(next, iter(runs), None), decode, got,
                                             functools.partial(_undecodable, index))
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"could not read the video's packets: {exc} (corrupt or truncated?)") from exc
        finally:
            reader.close()
            session.synchronize()  # frames are complete before another thread (or stream) reads them
    return got, produced, num_runs


def _undecodable(index: VideoIndex, frame: int, outcome: RunOutcome) -> VideoDecodeError:
    where = f"frame {frame} (t={index.times_s[frame]:.3f} s)"
    return VideoDecodeError(f"the GPU decoder could not produce {where}: the video is truncated or corrupt")


class NvdecEngine:
    name = "nvdec"

    def __init__(self, pool: SessionPool, errors: tuple[type[BaseException], ...] = (),
                 caps: Callable[[str], dict | None] | None = None, output_device: str | None = None) -> None:
        """``output_device``: where frames decoded on other GPUs are gathered ("cuda:N"; None: left as made)."""
        self.pool, self._errors, self._caps = pool, errors, caps or (lambda codec: None)
        self._output_device = output_device
        self._executor = ThreadPoolExecutor(pool.capacity, thread_name_prefix="flashcodec-nvdec")

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               out: FrameSink) -> DecodeResult:
        target_size = out.target_size  # resized on the session's GPU, as it decodes
        fmt = stream_format(data, index)
        self._check_caps(index)
        sessions = self.pool.acquire(index.codec, index.width, index.height, min(num_instances, self.pool.capacity))
        broken: set[int] = set()
        try:
            plan = plan_decode(index, frames, len(sessions))
            jobs = list(zip(sessions, plan, strict=False))
            if len(jobs) == 1:
                results = [self._instance(broken, s, data, index, runs, target_size, fmt) for s, runs in jobs]
            else:
                futures: list[Future] = [self._executor.submit(self._instance, broken, s, data, index, runs,
                                                               target_size, fmt) for s, runs in jobs]
                wait(futures)  # every session is idle again before it goes back to the pool
                results = [f.result() for f in futures]
        finally:
            self.pool.release(sessions, broken)
        merged: dict = {}
        for got, _, _ in results:
            merged.update(got)
        if self._output_device is not None:  # sessions on several GPUs: one request's frames on one device
            merged = {i: f if str(f.device) == self._output_device else f.to(self._output_device)
                      for i, f in merged.items()}
        # On this thread's current stream, after every session synchronized: the frames were made on the
        # decoders' streams and are freed when this returns, so the copies finish first (out.synchronize),
        # or the caching allocator could hand their memory to a decoder while it is read.
        for i, frame in merged.items():
            out.put(i, frame)
        out.synchronize()
        return DecodeResult(num_decoded_frames=sum(r[1] for r in results),
                            num_segments=sum(r[2] for r in results))

    def _instance(self, broken: set[int], session: Session, *args) -> tuple[dict, int, int]:
        try:
            return decode_instance(session, *args)
        except self._errors as exc:  # PyNvVideoCodec's own exceptions: bad data or an unsupported profile
            broken.add(id(session))
            raise VideoDecodeError(f"the GPU decoder (NVDEC) failed on this video: {exc} (corrupt, or a "
                                   "profile this GPU cannot decode)") from exc
        except BaseException:
            broken.add(id(session))  # its decoder state is unknown: never reuse it
            raise

    def _check_caps(self, index: VideoIndex) -> None:
        caps = self._caps(index.codec)
        if not caps:
            return
        mbs = ((index.width + 15) // 16) * ((index.height + 15) // 16)
        big = 1 << 30
        if (not caps.get("supported", 1) or mbs > caps.get("mb_num_max", big)
                or not caps.get("width_min", 0) <= index.width <= caps.get("width_max", big)
                or not caps.get("height_min", 0) <= index.height <= caps.get("height_max", big)):
            raise UnsupportedByEngine(f"this GPU's NVDEC cannot decode {index.codec} at {index.width}x{index.height} "
                                      f"(caps: {caps}); use engine pyav")


def create_engine(config: DecoderConfig) -> NvdecEngine:
    """The nvdec engine on ``config.gpu_ids``; EngineUnavailable when no GPU or PyNvVideoCodec is usable."""
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable("nvdec needs an NVIDIA GPU and driver (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    gpu_ids = config.gpu_ids or tuple(range(count))
    if any(g >= count for g in gpu_ids):
        raise EngineUnavailable(f"gpu_ids {gpu_ids} name GPUs that are not visible here ({count} visible)")
    try:
        import PyNvVideoCodec as nvc
    except Exception as exc:  # noqa: BLE001 - ImportError, or its RuntimeError about the driver / NVENC library
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EngineUnavailable(f"PyNvVideoCodec is not usable here ({type(exc).__name__}: {first_line}); "
                                "install it with: pip install -e '.[gpu]'") from exc
    errors = tuple(getattr(nvc, n) for n in dir(nvc)
                   if n.startswith("PyNvVCException") and isinstance(getattr(nvc, n), type))
    caps_cache: dict[str, dict | None] = {}
    caps_lock = threading.Lock()

    def caps(codec: str) -> dict | None:
        with caps_lock:
            if codec not in caps_cache:
                try:  # defaults: 4:2:0, 8 bit (all the engine accepts); queried on GPU 0's model
                    caps_cache[codec] = dict(nvc.GetDecoderCaps(gpuid=gpu_ids[0],
                                                                codec=getattr(nvc.cudaVideoCodec, NV_CODECS[codec])))
                except Exception:  # noqa: BLE001 - no caps: let the decoder itself say no
                    caps_cache[codec] = None
            return caps_cache[codec]

    def make_session(gpu_id: int, codec: str, max_size: tuple[int, int]) -> Session:
        return NvdecSession(nvc, gpu_id, codec, max_size)

    return NvdecEngine(SessionPool(make_session, gpu_ids, config.sessions_per_gpu), errors, caps,
                       output_device=f"cuda:{gpu_ids[0]}")


class NvdecSession(Session):
    """One PyNvVideoCodec decoder on one GPU, with its own CUDA stream (the decoder writes on it, frames
    are converted on it)."""

    def __init__(self, nvc: Any, gpu_id: int, codec: str, max_size: tuple[int, int]) -> None:
        import torch

        super().__init__(gpu_id, codec, max_size)
        self._nvc = nvc
        self.stream = torch.cuda.Stream(device=gpu_id)
        self._decoder = nvc.CreateDecoder(
            gpuid=gpu_id, codec=getattr(nvc.cudaVideoCodec, NV_CODECS[codec]), cudacontext=0,
            cudastream=self.stream.cuda_stream, usedevicememory=True, maxwidth=max_size[0],
            maxheight=max_size[1], outputColorType=nvc.OutputColorType.NATIVE)

    @contextlib.contextmanager
    def device(self) -> Iterator[None]:
        import torch

        with torch.cuda.device(self.gpu_id), torch.cuda.stream(self.stream):
            yield

    def decode(self, payload: bytes | None, pts: int) -> list:
        packet = self._nvc.PacketData()  # empty = end of stream
        if payload:
            buf = np.frombuffer(payload, np.uint8)  # alive until Decode returns (the parser copies it)
            packet.bsl_data, packet.bsl, packet.pts = buf.ctypes.data, buf.size, int(pts)
        return [(frame.getPTS(), frame) for frame in self._decoder.Decode(packet)]

    def to_nv12(self, frame: Any) -> Any:
        import torch

        return torch.from_dlpack(frame)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.synchronize()
        self._decoder = None
