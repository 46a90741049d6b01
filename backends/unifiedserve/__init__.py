"""UnifiedServe: one engine that runs a video MLLM's vision encoder and LLM under its own scheduler.

The package never imports Triton; `triton_adapters` translates Triton requests into calls on `Engine`.
"""

from unifiedserve.config import EngineConfig
from unifiedserve.engine import Engine
from unifiedserve.errors import EngineError, InvalidRequestError, OverloadedError
from unifiedserve.inputs import GenerationInput, VideoInput
from unifiedserve.outputs import CompletionOutput, RequestOutput
from unifiedserve.sampling_params import SamplingParams

__all__ = [
    "CompletionOutput",
    "Engine",
    "EngineConfig",
    "EngineError",
    "GenerationInput",
    "InvalidRequestError",
    "OverloadedError",
    "RequestOutput",
    "SamplingParams",
    "VideoInput",
]
