"""Which checkpoint the naive stack's models load, and in which dtype (the same rule for `vision_encoder` and `llm`)."""

from __future__ import annotations

import os

from unifiedserve.config import default_model_path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def checkpoint_path(params: dict[str, str]) -> str:
    return os.environ.get("MLLM_MODEL_PATH") or params.get("model_path") or default_model_path()


def checkpoint_dtype(params: dict[str, str]) -> str:
    """"auto" (the default): the checkpoint's own dtype, what a user's `from_pretrained(dtype="auto")` loads (bf16
    for real Qwen2.5-VL checkpoints). MLLM_NAIVE_DTYPE or the `dtype` parameter picks another: on a CPU, HF's bf16
    attention is slower than its float32 one, so float32 is this stack's faster choice there (the benchmark runs
    both)."""
    value = os.environ.get("MLLM_NAIVE_DTYPE") or params.get("dtype") or "auto"
    if value not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {value!r}")
    return value
