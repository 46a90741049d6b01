"""CPU thread bursts: decode-sized forwards on cpu_threads, encoder slices and big prefills on cpu_burst_threads."""

from __future__ import annotations

import os

import pytest
import torch

from triton_adapters.engine_params import engine_config_from_parameters
from unifiedserve import EngineConfig
from unifiedserve.cpu_threads import CpuThreads


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # process-wide: later tests must not run on one thread


def test_burst_switches_and_restores_the_thread_count(restore_torch_threads):
    threads = CpuThreads(base=1, burst=2, burst_min_tokens=32, on_cpu=True)
    assert threads.enabled and torch.get_num_threads() == 1
    with threads.bursting():
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), threads.bursting():
        raise RuntimeError("a failed slice")
    assert torch.get_num_threads() == 1  # restored on errors too
    with threads.bursting(active=False):
        assert torch.get_num_threads() == 1
    assert threads.llm_bursts(32) and not threads.llm_bursts(31) and not threads.llm_bursts(0)


@pytest.mark.parametrize(("base", "burst", "on_cpu"), [(1, 0, True), (2, 2, True), (2, 1, True), (0, 2, True),
                                                       (1, 2, False)])
def test_no_burst_where_it_would_change_nothing(restore_torch_threads, base, burst, on_cpu):
    """Off: no burst asked, a burst no larger than the base, torch's own default, or not on a CPU."""
    threads = CpuThreads(base=base, burst=burst, burst_min_tokens=1, on_cpu=on_cpu)
    before = torch.get_num_threads()
    assert not threads.enabled and not threads.llm_bursts(10_000)
    with threads.bursting():
        assert torch.get_num_threads() == before


def test_auto_burst_is_every_usable_core(monkeypatch, tiny_model_path):
    monkeypatch.delenv("MLLM_ENGINE_CPU_BURST_THREADS", raising=False)
    monkeypatch.setenv("MLLM_MODEL_PATH", tiny_model_path)
    config = engine_config_from_parameters({"cpu_threads": "auto", "cpu_burst_threads": "auto"})
    assert config.cpu_burst_threads == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="cpu_burst_threads"):
        EngineConfig(model_path=tiny_model_path, cpu_burst_threads=-1)
