"""Plain data: per-request SamplingSpec, per-deployment DecoderConfig, the DecodedVideo result.

SamplingSpec and DecoderConfig check themselves at construction, so an invalid one never exists:
a bad SamplingSpec is the client's fault (VideoDecodeError), a bad DecoderConfig is the deployment's
(plain ValueError, raised once at model load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import VideoDecodeError

if TYPE_CHECKING:
    import torch

# Engine names a DecoderConfig may name; the registry (engines.py) decides which are usable here.
KNOWN_ENGINES = ("auto", "pyav", "nvdec", "dali", "pyav_full")  # pyav_full: the full-decode baseline
OUTPUT_DEVICES = ("auto", "cpu")  # auto: GPU engines return CUDA tensors; cpu: always numpy


def _finite_positive(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise VideoDecodeError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one request's video (Qwen2.5-VL / qwen-vl-utils defaults)."""

    num_frames: int | None = None  # uniform sampling when set (takes precedence over fps)
    fps: float | None = None  # default 2.0 when num_frames is None
    min_frames: int = 4
    max_frames: int = 768
    start_time: float | None = None  # seconds from the first frame
    end_time: float | None = None
    min_pixels: int = 128 * 28 * 28  # per frame
    max_pixels: int = 768 * 28 * 28  # per frame
    total_pixels: int = 24576 * 28 * 28  # across all frames (qwen-vl-utils VIDEO_TOTAL_PIXELS)
    size_factor: int = 28  # patch_size * spatial_merge_size
    frame_factor: int = 2  # temporal_patch_size: frame count rounded to a multiple of this

    def __post_init__(self) -> None:
        _finite_positive("fps", self.fps)
        for name in ("num_frames", "min_frames", "max_frames", "min_pixels", "max_pixels",
                     "total_pixels", "size_factor", "frame_factor"):
            value = getattr(self, name)
            if value is None and name == "num_frames":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise VideoDecodeError(f"{name} must be a positive integer, got {value!r}")
        for name in ("start_time", "end_time"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise VideoDecodeError(f"{name} must be a finite number of seconds, got {value!r}")
        if self.start_time is not None and self.end_time is not None and self.start_time >= self.end_time:
            raise VideoDecodeError(
                f"start_time ({self.start_time} s) must be before end_time ({self.end_time} s)")

    @property
    def effective_fps(self) -> float:
        return 2.0 if self.fps is None else float(self.fps)


@dataclass(frozen=True)
class DecoderConfig:
    """Per deployment (built once from Triton parameters)."""

    engine: str = "auto"  # "auto" (nvdec if usable, else pyav) | "pyav" | "nvdec" | "dali" | "pyav_full" (baseline)
    num_instances: int = 0  # K decoder instances per request (threads on CPU, sessions on GPU); 0 = os.cpu_count()
    max_input_bytes: int = 512 * 2**20
    max_duration_s: float = 4 * 3600
    max_width: int = 8192
    max_height: int = 8192
    max_output_frames: int = 768
    index_cache_entries: int = 64
    # GPU engines (nvdec, dali). Each process keeps its own sessions: a Triton model with instance_group
    # count C holds up to C * sessions_per_gpu * len(gpu_ids) NVDEC sessions.
    gpu_ids: tuple[int, ...] = ()  # GPUs to decode on; () = every visible GPU
    sessions_per_gpu: int = 4  # decoder sessions kept per GPU (one request uses up to num_instances of them)
    fallback_to_cpu: bool = True  # a GPU engine failing on a request re-decodes it with pyav (logged)
    output_device: str = "auto"  # see OUTPUT_DEVICES
    # Idle host memory kept to recycle for output arrays (output_pool.py: fresh memory page-faults on first
    # write); 0 turns recycling off. Resized outputs are at most ~58 MB (the total-pixel cap).
    output_pool_bytes: int = 2**30

    def __post_init__(self) -> None:
        if self.engine not in KNOWN_ENGINES:
            raise ValueError(f"DecoderConfig.engine must be one of {KNOWN_ENGINES}, got {self.engine!r}")
        if self.output_device not in OUTPUT_DEVICES:
            raise ValueError(f"DecoderConfig.output_device must be one of {OUTPUT_DEVICES}, "
                             f"got {self.output_device!r}")
        if not isinstance(self.gpu_ids, tuple) or any(
                isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in self.gpu_ids):
            raise ValueError(f"DecoderConfig.gpu_ids must be a tuple of GPU ordinals >= 0, got {self.gpu_ids!r}")
        if len(set(self.gpu_ids)) != len(self.gpu_ids):
            raise ValueError(f"DecoderConfig.gpu_ids lists a GPU twice: {self.gpu_ids!r}")
        if self.sessions_per_gpu < 1:
            raise ValueError(f"DecoderConfig.sessions_per_gpu must be >= 1, got {self.sessions_per_gpu!r}")
        if self.num_instances < 0 or self.index_cache_entries < 0 or self.output_pool_bytes < 0:
            raise ValueError("DecoderConfig.num_instances, index_cache_entries and output_pool_bytes must be >= 0")
        for name in ("max_input_bytes", "max_width", "max_height", "max_output_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"DecoderConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.max_duration_s > 0:
            raise ValueError(f"DecoderConfig.max_duration_s must be > 0, got {self.max_duration_s!r}")


@dataclass(frozen=True)
class DecodedVideo:
    # uint8 [T, H, W, 3], RGB, at the target size (H, W multiples of size_factor): numpy from pyav (and
    # whenever output_device="cpu"), a CUDA torch tensor from the GPU engines.
    frames: np.ndarray | torch.Tensor
    frame_indices: np.ndarray  # int64 [T] indices into the presentation-order frame list
    timestamps_s: np.ndarray  # float64 [T], seconds from the first frame
    sample_fps: float  # sampled frames per second of video (second_per_grid_ts = frame_factor / sample_fps)
    source_fps: float  # average frame rate of the whole video
    source_width: int
    source_height: int
    codec: str
    content_hash: str  # sha256 hex of the input bytes
    num_decoded_frames: int = 0  # frames the decoders produced (work done, incl. frames thrown away)
    num_segments: int = 0  # GOP segments decoded (after merging adjacent ones per instance)
