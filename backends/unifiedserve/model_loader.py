"""Load an HF Qwen2-VL / Qwen2.5-VL checkpoint folder (the generated tiny model or a real one)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer

from unifiedserve.errors import EngineError
from unifiedserve.paged_attention import ATTN_IMPLEMENTATION
from unifiedserve.vision import VisionSpec, load_vision_spec

SUPPORTED = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    vision: VisionSpec
    eos_token_ids: frozenset[int]
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: torch.dtype | None = None) -> torch.dtype:
    """"auto": bfloat16 on a GPU (as vLLM serves a float32 checkpoint in half precision); on CPU the checkpoint's
    own bfloat16 where the CPU computes bf16 natively (AVX512-BF16 / AMX: half the bytes a decode step reads), else
    float32 (a float16 checkpoint, or bf16 that would be emulated)."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16
    if checkpoint_dtype == torch.bfloat16 and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype the checkpoint's config.json names (`dtype`, or `torch_dtype` before transformers 4.56)."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def load_model(model_path: str, device_name: str = "auto", dtype_name: str = "auto") -> LoadedModel:
    if not os.path.isdir(model_path):
        raise EngineError(
            f"model folder {model_path!r} does not exist (set MLLM_MODEL_PATH or run scripts/bootstrap.sh)"
        )
    config = AutoConfig.from_pretrained(model_path)
    if config.model_type not in SUPPORTED:
        raise EngineError(f"model type {config.model_type!r} is not supported; supported: {sorted(SUPPORTED)}")
    import transformers

    cls = getattr(transformers, SUPPORTED[config.model_type])
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype_name, device, checkpoint_dtype(config))
    # The vision patch embedding is a Conv3d whose stride equals its kernel: a plain matmul over flattened patches.
    # transformers' fusion runs it as one (same weights, outputs equal up to rounding order). Measured on the
    # 2-core VM, small model, bf16: the Conv3d took 98 ms for one 720p frame pair, the matmul 1.6 ms; a whole
    # 4-group 360p tower pass went from 208 to 78 ms. On GPUs the Conv3d path has its own cuDNN slow cases
    # (transformers #45750); vLLM and SGLang patchify with a matmul too.
    model = cls.from_pretrained(model_path, dtype=dtype, fusion_config={"patch_embeddings": True})
    # The LLM's attention reads/writes our paged cache; the vision tower keeps plain SDPA.
    model.set_attn_implementation({"text_config": ATTN_IMPLEMENTATION, "vision_config": "sdpa"})
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    vision = load_vision_spec(model_path)
    return LoadedModel(model, tokenizer, vision, _eos_ids(model_path, tokenizer), device, dtype)


def _eos_ids(model_path: str, tokenizer) -> frozenset[int]:
    ids: set[int] = set()
    path = os.path.join(model_path, "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            eos = json.load(f).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
