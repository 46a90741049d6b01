"""Triton parameters -> EngineConfig: cpu_threads "auto" leaves one core to the server's I/O threads."""

from __future__ import annotations

import os

import pytest

from triton_adapters.engine_params import auto_cpu_threads, engine_config_from_parameters
from unifiedserve import EngineConfig


def test_auto_cpu_threads_leaves_one_core(monkeypatch, tiny_model_path):
    cores = len(os.sched_getaffinity(0))
    assert auto_cpu_threads() == max(1, cores - 1)
    monkeypatch.delenv("MLLM_ENGINE_CPU_THREADS", raising=False)
    monkeypatch.setenv("MLLM_MODEL_PATH", tiny_model_path)
    assert engine_config_from_parameters({"cpu_threads": "auto"}).cpu_threads == max(1, cores - 1)
    assert engine_config_from_parameters({"cpu_threads": "3"}).cpu_threads == 3
    monkeypatch.setenv("MLLM_ENGINE_CPU_THREADS", "0")  # env overrides the parameter; 0 = torch's default
    assert engine_config_from_parameters({"cpu_threads": "auto"}).cpu_threads == 0


def test_negative_cpu_threads_is_rejected(tiny_model_path):
    with pytest.raises(ValueError, match="cpu_threads"):
        EngineConfig(model_path=tiny_model_path, cpu_threads=-1)
