"""DALI decode engine: ``fn.decoders.video`` on one request's plan, one batch sample per instance.

Pipeline (built once per device and reused): ``fn.external_source`` "encoded" (the file's bytes) and
"frames" (the presentation indices a sample decodes) -> ``fn.decoders.video(encoded, device=...,
frames=...)`` -> RGB uint8 [F, H, W, 3] per sample. The plan (plan.py) is the same as the other engines':
instance i's frames become sample i, and DALI decodes the samples of the batch in parallel (CPU: its
thread pool; ``mixed``: NVDEC). Each frame is then copied from DALI's output buffer into the request's
output (FrameSink), resized there with the reference resize_frames (on the GPU for ``mixed``), not
``fn.resize``, so every engine resizes with the same math.

Codecs (DALI 2.4 operator docs): ``mixed`` decodes H.264/HEVC/AV1/MPEG-4/VP8/VP9/MJPEG, the CPU variant
VP8/VP9/MJPEG only (checked here: "Codec 27 (h264) is not supported by the CPU variant of this
operator"). A pipeline that failed once is unusable ("Current pipeline object is no longer valid"), so
the CPU variant refuses other codecs before running, and a pipeline that raised is rebuilt.

DALI converts YUV to RGB itself (bilinear chroma): not bit-identical to FFmpeg's swscale output;
tests/test_flashcodec_dali.py reports the PSNR against the PyAV reference.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import DecoderConfig
from .engines import DecodeResult, EngineUnavailable, UnsupportedByEngine
from .errors import VideoDecodeError
from .frame_sink import FrameSink
from .index import VideoIndex
from .plan import plan_cost, plan_decode

CPU_CODECS = ("mjpeg", "vp8", "vp9")  # what DALI's CPU video decoder takes


@dataclass
class _Slot:
    """One pipeline (one device) and the lock that serializes its feed + run."""

    device: str
    device_id: int | None
    pipe: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class DaliEngine:
    name = "dali"

    def __init__(self, device: str, device_ids: Sequence[int | None], max_batch: int, num_threads: int) -> None:
        self.device, self.max_batch, self.num_threads = device, max_batch, num_threads
        self._slots = [_Slot(device, d) for d in device_ids]
        self._next = itertools.count()

    def decode(self, data: bytes, index: VideoIndex, frames: Sequence[int], num_instances: int,
               out: FrameSink) -> DecodeResult:
        if self.device == "cpu" and index.codec not in CPU_CODECS:
            raise UnsupportedByEngine(
                f"{index.codec!r} video is unsupported on the CPU DALI decoder (it decodes {', '.join(CPU_CODECS)}); "
                "use engine pyav, or a GPU (DALI's mixed decoder)")
        plan = plan_decode(index, frames, max(1, min(num_instances, self.max_batch)))
        samples = [np.array(sorted({f for run in runs for f in run.frames}), dtype=np.int32) for runs in plan]
        encoded = np.frombuffer(data, dtype=np.uint8)
        slot = self._slots[next(self._next) % len(self._slots)]
        with slot.lock:
            try:
                if slot.pipe is None:
                    slot.pipe = _build_pipeline(slot.device, slot.device_id, self.max_batch, self.num_threads)
                slot.pipe.feed_input("encoded", [encoded] * len(samples))
                slot.pipe.feed_input("frames", samples)
                (decoded,) = slot.pipe.run()
                self._collect(decoded, samples, out)
            except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError for bad data and for its own faults
                slot.pipe = None  # a pipeline that raised is no longer valid
                raise VideoDecodeError(f"DALI could not decode the video ({index.codec}): {_first_line(exc)}") from exc
        # DALI seeks and decodes internally; the plan's cost is what a GOP-wise decode of these frames takes.
        return DecodeResult(num_decoded_frames=plan_cost(plan)[0],
                            num_segments=sum(len(runs) for runs in plan))

    def _collect(self, decoded: Any, samples: list[np.ndarray], out: FrameSink) -> None:
        """Copy (and resize) every sample's frames from DALI's output buffers into ``out``: while the
        slot's lock is held, before the pipeline runs again and reuses those buffers."""
        video = None
        for i, wanted in enumerate(samples):
            if self.device == "cpu":
                video = np.asarray(decoded[i])  # a view of DALI's buffer (__array_interface__)
            else:
                import torch

                video = torch.from_dlpack(decoded[i])
            if video.shape[0] != wanted.shape[0]:
                raise RuntimeError(f"DALI returned {video.shape[0]} frames for {wanted.shape[0]} requested")
            for k, frame_index in enumerate(wanted.tolist()):
                out.put(frame_index, video[k])
        if self.device != "cpu" and video is not None:
            import torch

            torch.cuda.current_stream(video.device).synchronize()  # copies done before DALI reuses its buffers


def _build_pipeline(device: str, device_id: int | None, batch_size: int, num_threads: int) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    decoders = getattr(fn, "decoders", None)
    video_decoder = getattr(decoders, "video", None) or fn.experimental.decoders.video  # DALI < 2: experimental

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1,
                  exec_dynamic=True)
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return video_decoder(encoded, device=device, frames=frames)

    pipe = pipeline()
    pipe.build()
    return pipe


def _first_line(exc: BaseException) -> str:
    """DALI's messages carry the pipeline traceback; keep the line that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "not supported" in line or line.startswith(("Assert", "Error")):
            return line
    return lines[0] if lines else type(exc).__name__


def create_engine(config: DecoderConfig) -> DaliEngine:
    """DALI's mixed (NVDEC) decoder on ``config.gpu_ids`` when a GPU is usable, else its CPU variant."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        raise EngineUnavailable(f"DALI is not installed here ({type(exc).__name__}: {exc}); "
                                "install it with: pip install -e '.[gpu]'") from exc
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        gpu_ids = config.gpu_ids or tuple(range(count))
        if any(g >= count for g in gpu_ids):
            raise EngineUnavailable(f"gpu_ids {gpu_ids} name GPUs that are not visible here ({count} visible)")
        return DaliEngine("mixed", gpu_ids, config.sessions_per_gpu, max(1, cores // len(gpu_ids)))
    return DaliEngine("cpu", (None,), max(4, cores), cores)
