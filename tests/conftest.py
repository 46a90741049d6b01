"""Shared fixtures: the generated tiny checkpoints (reused from artifacts/ when bootstrap made them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "backends"))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MODEL = REPO / "artifacts" / "models" / "tiny-qwen2.5-vl"


def _make_model(out: Path, arch: str) -> Path:
    import make_tiny_model

    assert make_tiny_model.main(["--out", str(out), "--arch", arch]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """The default served model (Qwen2.5-VL architecture, float32)."""
    # The script is idempotent and cheap when the folder is complete and current (its marker file records
    # the recipe), and it rebuilds a stale one, so the suite always runs on the model the script makes now.
    return str(_make_model(DEFAULT_MODEL, "qwen2.5-vl"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl_path(tmp_path_factory) -> str:
    return str(_make_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", "qwen2-vl"))


@pytest.fixture(scope="session")
def sample_video_dir(tmp_path_factory) -> Path:
    from flashcodec_fixtures import default_video_dir

    return default_video_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def mllm_server(tiny_model_path, sample_video_dir):
    """The real model_repository/ served by a real tritonserver on free ports (tiny model, CPU)."""
    from tritonserver_fixture import start_tritonserver

    env = {"MLLM_MODEL_PATH": tiny_model_path, "MLLM_MEDIA_ROOTS": str(sample_video_dir)}
    with start_tritonserver(REPO / "model_repository", env=env, ready_timeout_s=300) as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need an NVIDIA GPU: skipped (with the reason) where torch sees none."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)
