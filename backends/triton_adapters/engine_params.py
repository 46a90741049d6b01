"""Triton model `parameters` (+ env overrides) -> EngineConfig, built once at initialize()."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from unifiedserve.config import EngineConfig, default_model_path

ADAPTER_KEYS = ("default_max_tokens",)  # read by the adapter itself, not the engine


def triton_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    params = model_config.get("parameters", {}) or {}
    return {k: v.get("string_value", "") for k, v in params.items()}


def engine_config_from_parameters(params: Mapping[str, str]) -> EngineConfig:
    """Empty values fall back to defaults; MLLM_MODEL_PATH and MLLM_ENGINE_<KEY> env vars override."""
    values: dict[str, str] = {k: v for k, v in params.items() if v != "" and k not in ADAPTER_KEYS}
    for f in dataclasses.fields(EngineConfig):
        env = os.environ.get(f"MLLM_ENGINE_{f.name.upper()}")
        if env:
            values[f.name] = env
    if os.environ.get("MLLM_MODEL_PATH"):
        values["model_path"] = os.environ["MLLM_MODEL_PATH"]
    values.setdefault("model_path", default_model_path())
    if values.get("cpu_threads") == "auto":
        values["cpu_threads"] = str(auto_cpu_threads())
    if values.get("cpu_burst_threads") == "auto":
        values["cpu_burst_threads"] = str(usable_cores())
    return EngineConfig.from_mapping(values)


def auto_cpu_threads() -> int:
    """Served on CPU, torch gets every usable core but one: that one runs the response thread, tritonserver's
    gRPC/HTTP threads and the other models' processes (2 cores: torch 1; measured, see EngineConfig)."""
    return max(1, usable_cores() - 1)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
