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


def _complete(path: Path) -> bool:
    return (path / "config.json").exists() and (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def _make_model(out: Path, arch: str) -> Path:
    import make_tiny_model

    assert make_tiny_model.main(["--out", str(out), "--arch", arch]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """The default served model (Qwen2.5-VL architecture, float32)."""
    if _complete(DEFAULT_MODEL):
        return str(DEFAULT_MODEL)
    return str(_make_model(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl", "qwen2.5-vl"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl_path(tmp_path_factory) -> str:
    return str(_make_model(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", "qwen2-vl"))
