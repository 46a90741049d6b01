"""GPU paths of the engine: CUDA streams (encoder beside the LLM step) and bf16. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
import transformers
from engine_helpers import hf_greedy, synthetic_frames, use_reference_mrope

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput

pytestmark = pytest.mark.gpu

INPUTS = [
    GenerationInput(text="What happens?", videos=(VideoInput(synthetic_frames(8, 112, 140, seed=1), 2.0),)),
    GenerationInput(text="Tell me about the sea."),
    GenerationInput(text="Which frame is brightest?", videos=(VideoInput(synthetic_frames(12, 56, 196, seed=3), 4.0),)),
]


def test_overlapped_streams_float32_match_hf(tiny_model_path):
    torch.backends.cudnn.allow_tf32 = False  # the vision tower's Conv3d would otherwise run in TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    engine = Engine(EngineConfig(model_path=tiny_model_path, device="cuda", dtype="float32",
                                 max_num_batched_tokens=40, encoder_budget_tokens=8))
    assert engine.runner.overlap is not None and not engine.scheduler.same_step_encoder
    outs = engine.generate(INPUTS, SamplingParams(max_tokens=16))
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    use_reference_mrope(hf)
    for x, out in zip(INPUTS, outs, strict=True):
        req = engine.make_request("ref", x, SamplingParams(max_tokens=16))
        assert out.token_ids == hf_greedy(hf, req, 16, engine.processor.eos_token_ids)


def test_bf16_engine_serves_mixed_requests(tiny_model_path):
    engine = Engine(EngineConfig(model_path=tiny_model_path, device="cuda", dtype="bfloat16"))
    outs = engine.generate(INPUTS, SamplingParams(max_tokens=16, ignore_eos=True))
    assert all(len(o.token_ids) == 16 for o in outs)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
