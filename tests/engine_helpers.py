"""Helpers for engine tests: deterministic frames and the HF `generate()` reference."""

from __future__ import annotations

import numpy as np
import torch


def synthetic_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3] with content that differs per frame and per seed (smooth + noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        base = np.stack([(xx * (t + 1) + seed * 37) % 256, (yy * 3 + t * 20) % 256, (xx + yy + t * 50) % 256], -1)
        noise = rng.integers(0, 40, (height, width, 3))
        frames.append(((base + noise) % 256).astype(np.uint8))
    return np.stack(frames)


def use_reference_mrope(model) -> None:
    """Make HF's generate() use the Qwen reference M-RoPE rule the engine follows (unifiedserve/mrope.py
    explains why transformers 5.23's own get_rope_index differs); everything else stays HF's."""
    from unifiedserve.mrope import hf_compatible_rope_index

    model.model.get_rope_index = hf_compatible_rope_index(model.config)


def hf_greedy(model, request, max_new_tokens: int, eos_ids) -> list[int]:
    """Greedy tokens from transformers' own generate() for an engine Request's prompt and video inputs."""
    ids = torch.tensor([request.prompt_token_ids])
    kwargs = {}
    if request.videos:
        kwargs["pixel_values_videos"] = torch.cat([v.pixel_values for v in request.videos])
        kwargs["video_grid_thw"] = torch.tensor([v.grid_thw for v in request.videos])
        kwargs["mm_token_type_ids"] = (ids == model.config.video_token_id).int() * 2
        if model.config.model_type == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor([v.second_per_grid_t for v in request.videos])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=sorted(eos_ids), pad_token_id=sorted(eos_ids)[0], **kwargs)
    tokens = out[0, ids.shape[1]:].tolist()
    for i, t in enumerate(tokens):  # generate pads after eos; the engine stops at eos
        if t in eos_ids:
            return tokens[: i + 1]
    return tokens
