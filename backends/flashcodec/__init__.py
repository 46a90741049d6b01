"""FlashCodec: latency-oriented video decoding for video LLMs (no Triton imports).

One video's sampled frames are decoded by several decoder instances at once, cut at keyframe (GOP)
boundaries, decoding only GOPs that hold sampled frames; frames come back in sampled order, resized
with the one reference resize. See DESIGN.md section 4.
"""

from .api import clear_index_cache, decode_video, get_index
from .config import DecodedVideo, DecoderConfig, SamplingSpec
from .engines import DecodeEngine, DecodeResult, EngineUnavailable, get_engine, register_engine
from .errors import VideoDecodeError
from .index import VideoIndex
from .resize import resize_frames
from .sampling import SamplePlan, sample_frames, smart_resize

__all__ = [
    "DecodeEngine",
    "DecodeResult",
    "DecodedVideo",
    "DecoderConfig",
    "EngineUnavailable",
    "SamplePlan",
    "SamplingSpec",
    "VideoDecodeError",
    "VideoIndex",
    "clear_index_cache",
    "decode_video",
    "get_engine",
    "get_index",
    "register_engine",
    "resize_frames",
    "sample_frames",
    "smart_resize",
]
