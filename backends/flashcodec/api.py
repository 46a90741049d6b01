"""decode_video: compressed bytes in, sampled and resized frames out.

validate limits -> index (cached by content hash) -> sample -> plan + decode on K instances ->
merge in sampled order -> DecodedVideo. Every client-side problem surfaces as VideoDecodeError.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .config import DecodedVideo, DecoderConfig, SamplingSpec
from .engines import get_engine
from .errors import VideoDecodeError
from .index import IndexCache, VideoIndex, check_limits, read_index
from .sampling import sample_frames

_index_cache = IndexCache()
DEFAULT_DECODER_CONFIG = DecoderConfig()  # frozen: safe to share as a default


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
    unique = np.unique(sample.frame_indices)
    target = (sample.height, sample.width) if resize else None
    result = get_engine(config.engine).decode(data, index, unique.tolist(), num_instances(config), target)
    frames = np.stack([result.frames[int(i)] for i in sample.frame_indices])
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
