"""decode_video: compressed bytes in, sampled and resized frames out.

validate limits -> index (cached by content hash) -> sample -> plan + decode on K instances, each
writing its frames straight into their slots of the one output array (FrameSink, sampled order) ->
DecodedVideo. Every client-side problem surfaces as VideoDecodeError.

GPU engines return CUDA tensors (uint8 [T, H, W, 3], resized on the GPU with the same resize_frames
math) unless ``output_device="cpu"``. A GPU engine that fails on a request, or cannot decode this video
(UnsupportedByEngine, e.g. 10-bit or an odd size), hands it to pyav when ``fallback_to_cpu`` is set (or
the engine was picked by ``auto``); the fallback is logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from .config import DecodedVideo, DecoderConfig, SamplingSpec
from .engines import DecodeResult, UnsupportedByEngine, get_engine
from .errors import VideoDecodeError
from .frame_sink import FrameSink
from .index import IndexCache, VideoIndex, check_limits, read_index
from .output_pool import output_pool
from .sampling import sample_frames

if TYPE_CHECKING:
    import torch

_index_cache = IndexCache()
DEFAULT_DECODER_CONFIG = DecoderConfig()  # frozen: safe to share as a default
logger = logging.getLogger("flashcodec")


def decode_video(data: bytes, spec: SamplingSpec, config: DecoderConfig = DEFAULT_DECODER_CONFIG, *,
                 resize: bool = True) -> DecodedVideo:
    """Decode the frames ``spec`` samples from the video in ``data``.

    ``resize=False`` returns frames at the source size (exactness tests; engines that resize later);
    the target size is still computed and validated.
    """
    data = _as_bytes(data, config)
    content_hash = hashlib.sha256(data).hexdigest()
    index = get_index(data, config, content_hash)
    sample = sample_frames(index, spec, config.max_output_frames)
    target = (sample.height, sample.width) if resize else None
    frames, result = _decode(data, index, sample.frame_indices, config, target)
    if config.output_device == "cpu" and not isinstance(frames, np.ndarray):
        frames = frames.cpu().numpy()
    return DecodedVideo(
        frames=frames,
        frame_indices=sample.frame_indices.astype(np.int64),
        timestamps_s=index.times_s[sample.frame_indices].astype(np.float64),
        sample_fps=float(sample.sample_fps),
        source_fps=float(index.fps),
        source_width=index.width,
        source_height=index.height,
        codec=index.codec,
        content_hash=content_hash,
        num_decoded_frames=result.num_decoded_frames,
        num_segments=result.num_segments,
    )


def _decode(data: bytes, index: VideoIndex, order: np.ndarray, config: DecoderConfig,
            target: tuple[int, int] | None) -> tuple[np.ndarray | torch.Tensor, DecodeResult]:
    """The frames ``order`` names, in that order, as one uint8 [T, H, W, 3] array (numpy, or a torch
    tensor on the GPU engine's device), and what decoding them cost."""
    frames = np.unique(order).tolist()
    host_pool = output_pool(config.output_pool_bytes)
    engine = get_engine(config.engine, config)  # EngineUnavailable (deployment problem) is never masked
    try:
        out = FrameSink(order, target, host_pool)
        result = engine.decode(data, index, frames, num_instances(config), out)
        return out.result(), result
    except Exception as exc:  # noqa: BLE001 - any GPU-engine failure may go to the CPU engine instead
        unsupported = isinstance(exc, UnsupportedByEngine)
        if engine.name == "pyav" or not (config.fallback_to_cpu or (unsupported and config.engine == "auto")):
            raise
        logger.warning("flashcodec: %s engine failed on a %s %dx%d video (%s: %s); decoding it with pyav",
                       engine.name, index.codec, index.width, index.height, type(exc).__name__, exc)
    out = FrameSink(order, target, host_pool)  # a fresh one: the failed engine may have filled part of the first
    result = get_engine("pyav", config).decode(data, index, frames, num_instances(config), out)
    return out.result(), result


def get_index(data: bytes, config: DecoderConfig, content_hash: str | None = None) -> VideoIndex:
    """The demux index of ``data``, from the LRU cache when this content was seen before."""
    key = content_hash or hashlib.sha256(data).hexdigest()
    index = _index_cache.get(key) if config.index_cache_entries else None
    if index is None:
        index = read_index(data, config)
        if config.index_cache_entries:
            _index_cache.put(key, index, config.index_cache_entries)
    else:
        check_limits(index, config)  # it may have been cached under another config's limits
    return index


def num_instances(config: DecoderConfig) -> int:
    return config.num_instances or os.cpu_count() or 1


def clear_index_cache() -> None:
    _index_cache.clear()


def _as_bytes(data: object, config: DecoderConfig) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8:
        data = data.tobytes()
    if not isinstance(data, bytes):
        raise VideoDecodeError(f"video must be bytes (the file's contents), got {type(data).__name__}")
    if not data:
        raise VideoDecodeError("the video input is empty (0 bytes)")
    if len(data) > config.max_input_bytes:
        raise VideoDecodeError(f"the video input is {len(data)} bytes, the limit is "
                               f"{config.max_input_bytes} bytes")
    return data
