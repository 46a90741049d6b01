"""A bfloat16 checkpoint on CPU: "auto" serves it in bf16 where the CPU computes bf16 natively, and the engine's
bf16 paths (oneDNN-packed projections, decode attention read into float32) compute what transformers computes.

Real Qwen2.5-VL checkpoints ship in bf16; the serving benchmark's model is generated in bf16 too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from engine_helpers import synthetic_frames, use_reference_mrope

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput
from unifiedserve.fused_decoder import _Linear
from unifiedserve.model_loader import checkpoint_dtype, cpu_has_native_bf16, resolve_dtype
from unifiedserve.paged_attention import _decode_attention

native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
MAX_NEW = 16


@pytest.fixture(scope="module")
def bf16_model_path(tmp_path_factory) -> str:
    import make_tiny_model

    out = tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl-bf16"
    assert make_tiny_model.main(["--out", str(out), "--dtype", "bfloat16"]) == 0
    return str(out)


def test_auto_dtype_follows_the_checkpoint_on_cpu_and_is_bf16_on_gpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu, torch.bfloat16) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("auto", cpu, torch.float32) == torch.float32
    assert resolve_dtype("auto", cpu, torch.float16) == torch.float32  # CPU half precision is emulated: slower
    assert resolve_dtype("auto", cpu, None) == torch.float32
    assert resolve_dtype("auto", cuda, torch.float32) == torch.bfloat16
    assert resolve_dtype("float32", cpu, torch.bfloat16) == torch.float32
    assert resolve_dtype("bfloat16", cpu, torch.float32) == torch.bfloat16


def test_checkpoint_dtype_reads_either_config_field():
    class Config:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    assert checkpoint_dtype(Config(dtype=torch.bfloat16)) == torch.bfloat16
    assert checkpoint_dtype(Config(dtype=None, torch_dtype="bfloat16")) == torch.bfloat16
    assert checkpoint_dtype(Config(dtype="float32")) == torch.float32
    assert checkpoint_dtype(Config()) is None
    assert checkpoint_dtype(Config(dtype="not-a-dtype")) is None


@native_bf16
@pytest.mark.parametrize("rows", [1, 2, 5, 64])
def test_packed_bf16_projection_matches_f_linear(rows):
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64).bfloat16(), torch.randn(96).bfloat16()
    x = torch.randn(rows, 64).bfloat16()
    for transposed in (False, True):
        linear = _Linear(weight.t().contiguous() if transposed else weight, bias, transposed)
        linear.pack_for_cpu()
        assert linear.packed is not None and linear.packed.dtype == torch.bfloat16
        got, want = linear(x).float(), F.linear(x.float(), weight.float(), bias.float())
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)


def test_bf16_decode_attention_matches_float32():
    torch.manual_seed(0)
    q, k, v = torch.randn(8, 64), torch.randn(2, 300, 64), torch.randn(2, 300, 64)
    want = _decode_attention(q, k, v, 0.125)
    got = _decode_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.125)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def _inputs() -> list[GenerationInput]:
    return [
        GenerationInput(text="What happens in this video?",
                        videos=(VideoInput(synthetic_frames(8, 112, 140, seed=1), sample_fps=2.0),)),
        GenerationInput(text="Hello! Tell me a story about a red ball."),
    ]


@native_bf16
def test_engine_serves_a_bf16_checkpoint_in_bf16_and_its_tokens_are_hf_argmaxes(bf16_model_path):
    """Greedy tokens of the engine (auto dtype) scored by transformers' own bf16 forward over the same sequence:
    each must be HF's argmax up to bf16 rounding (a logit of 8-16 is rounded to 1/16 in bf16, so near-ties can
    flip: within 2 % of the top logit, not token-for-token equality), and the answers must differ between inputs
    (a live model)."""
    engine = Engine(EngineConfig(model_path=bf16_model_path, device="cpu"))
    assert engine.runner.dtype == torch.bfloat16
    outs = engine.generate(_inputs(), SamplingParams(max_tokens=MAX_NEW))
    assert len({tuple(o.token_ids) for o in outs}) == 2
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16_model_path, dtype=torch.bfloat16)
    use_reference_mrope(hf.eval())
    for i, (x, out) in enumerate(zip(_inputs(), outs, strict=True)):
        req = engine.make_request(f"ref-{i}", x, SamplingParams(max_tokens=MAX_NEW))
        ids = torch.tensor([req.prompt_token_ids + out.token_ids[:-1]])
        kwargs = {}
        if req.videos:
            kwargs = {"pixel_values_videos": torch.cat([v.pixel_values for v in req.videos]).bfloat16(),
                      "video_grid_thw": torch.tensor([v.grid_thw for v in req.videos]),
                      "second_per_grid_ts": torch.tensor([v.second_per_grid_t for v in req.videos]),
                      "mm_token_type_ids": (ids == hf.config.video_token_id).int() * 2}
        with torch.inference_mode():
            logits = hf(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits[0].float()
        scored = logits[len(req.prompt_token_ids) - 1:]
        chosen = scored[torch.arange(len(out.token_ids)), torch.tensor(out.token_ids)]
        top = scored.max(dim=-1).values
        assert ((top - chosen) <= 0.02 * top.abs().clamp(min=1.0)).all(), (out.token_ids, top - chosen)
        assert out.token_ids[0] == scored[0].argmax().item()
