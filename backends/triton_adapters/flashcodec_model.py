"""Triton adapter for the `flashcodec` model: video bytes/URL + sampling -> frames at the model's size.

Text-only requests (no video) get zero frames so the ensemble's next step sees "no video".
Frames a GPU engine (nvdec, dali) made stay on the GPU: they leave as a DLPack tensor, which needs the
server's CUDA memory pool (tritonserver --cuda-memory-pool-byte-size=<gpu>:<bytes>).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from flashcodec import DecoderConfig, SamplingSpec, decode_video, get_engine
from flashcodec.cpu_priority import lower_process_priority, resolve_cpu_nice
from flashcodec.decode_slots import DecodeSlots
from flashcodec.source import SourcePolicy, load_video_source
from triton_adapters.engine_params import triton_parameters
from triton_adapters.errors import to_triton_error
from triton_adapters.request_fields import scalar
from unifiedserve.config import default_model_path
from unifiedserve.errors import InvalidRequestError
from unifiedserve.gc_heap import freeze_startup_heap
from unifiedserve.vision import load_vision_spec

INPUTS = ("text_input", "video_bytes", "video_url", "num_frames", "fps", "max_frames", "start_time", "end_time",
          "max_pixels")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = triton_parameters(json.loads(args["model_config"]))
        model_path = os.environ.get("MLLM_MODEL_PATH") or params.get("model_path") or default_model_path()
        self.vision = load_vision_spec(model_path)
        max_bytes = int(params.get("max_input_bytes") or 512 * 2**20)
        self.decoder = decoder_config(params, max_bytes, args)
        # Fail the model load, not every request, when the configured engine cannot run here.
        engine = get_engine(self.decoder.engine, self.decoder)
        # CPU decoding yields the cores to the engine's steps (cpu_priority.py says why).
        nice = resolve_cpu_nice(_param(params, "cpu_nice", "auto"), engine.name)
        nice = lower_process_priority(nice)
        pb_utils.Logger.log_info(f"flashcodec: engine {engine.name}, nice {nice} ({self.decoder})")
        roots = os.environ.get("MLLM_MEDIA_ROOTS") or params.get("media_roots") or ""
        self.source = SourcePolicy(
            media_roots=tuple(r for r in roots.split(":") if r),
            allow_http=(params.get("allow_http") or "false").lower() == "true",
            max_bytes=max_bytes,
        )
        self.require_text_input = (params.get("require_text_input") or "false").lower() == "true"
        # Videos decoded at once across this model's instances (decode_slots.py: text passes a free instance).
        self.slots = DecodeSlots.for_server(args["model_name"], int(_param(params, "max_concurrent_decodes", "0")))
        freeze_startup_heap()  # unifiedserve/gc_heap.py: full GC passes over the imported libraries add latency

    def execute(self, requests: list) -> list:
        return [self._one(request) for request in requests]

    def _one(self, request):
        # When the request entered the pipeline: unifiedserve counts its TTFT SLO from here, decoding included.
        arrival = time.monotonic()
        try:
            t = {n: x.as_numpy() for n in INPUTS if (x := pb_utils.get_input_tensor_by_name(request, n)) is not None}
            if self.require_text_input and scalar(t, "text_input", str) is None:
                raise InvalidRequestError("text_input is required: the question to ask about the video")
            raw = t.get("video_bytes")
            data = load_video_source(raw.reshape(-1)[0] if raw is not None and raw.size else None,
                                     scalar(t, "video_url", str), self.source)
            if data is None:
                return _outputs(np.zeros((0, 0, 0, 3), np.uint8), 0.0, "", np.zeros(0, np.float32), arrival)
            spec = self._spec(t)
            with self.slots.hold():
                decoded = decode_video(data, spec, self.decoder)
            key = f"{decoded.content_hash}:{decoded.frame_indices.tolist()}:{decoded.frames.shape[1:3]}"
            return _outputs(decoded.frames, decoded.sample_fps, key, decoded.timestamps_s.astype(np.float32), arrival)
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
            return pb_utils.InferenceResponse(error=to_triton_error(exc))

    def _spec(self, t: dict) -> SamplingSpec:
        v = self.vision
        max_pixels = scalar(t, "max_pixels", int, v.max_pixels)
        return SamplingSpec(
            num_frames=scalar(t, "num_frames", int),
            fps=scalar(t, "fps", float),
            max_frames=scalar(t, "max_frames", int, SamplingSpec.max_frames),
            start_time=scalar(t, "start_time", float),
            end_time=scalar(t, "end_time", float),
            min_pixels=min(v.min_pixels, max_pixels),
            max_pixels=min(max_pixels, v.max_pixels) if max_pixels > 0 else v.max_pixels,
            size_factor=v.size_factor,
            frame_factor=v.temporal_patch_size,
        )


def _param(params: dict[str, str], key: str, default: str = "") -> str:
    """A model parameter; env MLLM_FLASHCODEC_<KEY> overrides it."""
    return os.environ.get(f"MLLM_FLASHCODEC_{key.upper()}") or params.get(key) or default


def decoder_config(params: dict[str, str], max_bytes: int, args: dict) -> DecoderConfig:
    """DecoderConfig from the model's parameters; env MLLM_FLASHCODEC_<KEY> overrides a parameter.

    gpu_ids: "0,1" (empty: the instance's GPU for KIND_GPU instances, else every visible GPU).
    """
    gpu_ids = tuple(int(g) for g in _param(params, "gpu_ids").replace(" ", "").split(",") if g)
    if not gpu_ids and args.get("model_instance_kind") == "GPU":
        gpu_ids = (int(args.get("model_instance_device_id") or 0),)
    return DecoderConfig(
        engine=_param(params, "engine", "auto"),
        num_instances=int(_param(params, "num_instances", "0")),
        max_input_bytes=max_bytes,
        gpu_ids=gpu_ids,
        sessions_per_gpu=int(_param(params, "sessions_per_gpu", "4")),
        fallback_to_cpu=_param(params, "fallback_to_cpu", "true").lower() == "true",
        output_device=_param(params, "output_device", "auto"),
        # 0 re-indexes every request (benchmarks replaying the same files, so no request gets a free index)
        index_cache_entries=int(_param(params, "index_cache_entries", "64")),
    )


def _frames_tensor(frames):
    if isinstance(frames, np.ndarray):
        return pb_utils.Tensor("frames", np.ascontiguousarray(frames, dtype=np.uint8))
    from torch.utils.dlpack import to_dlpack  # a CUDA tensor from a GPU engine: hand it over without a copy

    return pb_utils.Tensor.from_dlpack("frames", to_dlpack(frames.contiguous()))


def _outputs(frames, sample_fps: float, key: str, timestamps: np.ndarray, arrival_s: float):
    return pb_utils.InferenceResponse(output_tensors=[
        _frames_tensor(frames),
        pb_utils.Tensor("sample_fps", np.array([sample_fps], dtype=np.float32)),
        pb_utils.Tensor("video_key", np.array([key.encode()], dtype=np.object_)),
        pb_utils.Tensor("frame_timestamps", timestamps),
        pb_utils.Tensor("arrival_monotonic_s", np.array([arrival_s], dtype=np.float64)),
    ])
