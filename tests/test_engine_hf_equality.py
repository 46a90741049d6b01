"""Correctness oracle: greedy tokens of Engine.generate == transformers' generate() (float32, CPU, tiny model).

Covers one request, several requests with different videos and lengths batched together, requests joining
mid-flight, chunked prefill + sliced encoding under tight budgets, preemption with recompute, Qwen2-VL.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from engine_helpers import hf_greedy, synthetic_frames, use_reference_mrope

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput

MAX_NEW = 24


def _inputs() -> list[GenerationInput]:
    return [
        GenerationInput(text="What happens in this video?",
                        videos=(VideoInput(synthetic_frames(8, 112, 140, seed=1), sample_fps=2.0),)),
        GenerationInput(text="Describe the colours, then count the objects.",
                        videos=(VideoInput(synthetic_frames(5, 84, 84, seed=2), sample_fps=1.0),)),
        GenerationInput(text="Hello! Tell me a story about a red ball."),
        GenerationInput(text="Which frame is brightest?",
                        videos=(VideoInput(synthetic_frames(12, 56, 196, seed=3), sample_fps=4.0),)),
    ]


@pytest.fixture(scope="module")
def hf_model(tiny_model_path):
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    use_reference_mrope(model)
    return model


def _expected(engine: Engine, hf_model, inputs, max_new=MAX_NEW) -> list[list[int]]:
    params = SamplingParams(max_tokens=max_new)
    reqs = [engine.make_request(f"ref-{i}", x, params) for i, x in enumerate(inputs)]
    return [hf_greedy(hf_model, r, max_new, engine.processor.eos_token_ids) for r in reqs]


def _engine(path: str, **kw) -> Engine:
    return Engine(EngineConfig(model_path=path, dtype="float32", device="cpu", **kw))


def test_outputs_depend_on_inputs(tiny_model_path, hf_model):
    """Guard against a degenerate model: different prompts/videos must give different greedy answers."""
    engine = _engine(tiny_model_path)
    expected = _expected(engine, hf_model, _inputs())
    assert len({tuple(t) for t in expected}) == len(expected)


def test_single_request_matches_hf(tiny_model_path, hf_model):
    engine = _engine(tiny_model_path)
    inputs = _inputs()[:1]
    [out] = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert out.token_ids == _expected(engine, hf_model, inputs)[0]
    assert out.text == engine.tokenizer.decode(
        [t for t in out.token_ids if t not in engine.processor.eos_token_ids], skip_special_tokens=True)


def test_batched_requests_match_hf(tiny_model_path, hf_model):
    engine = _engine(tiny_model_path)
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)


def test_chunked_prefill_and_sliced_encoder_match_hf(tiny_model_path, hf_model):
    # 40 tokens per step and one temporal group per encoder slice: every video prompt is split
    # into several prefill chunks that wait for encoder slices.
    engine = _engine(tiny_model_path, max_num_batched_tokens=40, encoder_budget_tokens=8)
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert max(len(o.prompt_token_ids) for o in outs) > 40  # at 40 tokens per step, prompts went in chunks
    assert max(v.num_groups for x in inputs for v in engine.make_request("g", x, SamplingParams()).videos) > 1
    assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)


def test_cpu_thread_bursts_match_hf(tiny_model_path, hf_model):
    """Encoder slices and big prefill chunks on 2 threads, decode steps on 1: same tokens as HF."""
    before = torch.get_num_threads()
    try:
        engine = _engine(tiny_model_path, max_num_batched_tokens=40, encoder_budget_tokens=8, cpu_threads=1,
                         cpu_burst_threads=2, cpu_burst_min_tokens=16)
        inputs = _inputs()
        outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
        assert {s.llm_burst for s in engine.step_stats} == {True, False}  # both kinds of forward ran
        assert torch.get_num_threads() == 1
        assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)
    finally:
        torch.set_num_threads(before)


def test_requests_joining_and_leaving_match_hf(tiny_model_path, hf_model):
    engine = _engine(tiny_model_path)
    inputs = _inputs()
    expected = _expected(engine, hf_model, inputs)
    lengths = [MAX_NEW, 6, 15, MAX_NEW]
    reqs = [engine.make_request(f"r{i}", x, SamplingParams(max_tokens=n))
            for i, (x, n) in enumerate(zip(inputs, lengths, strict=True))]
    join_at = {0: reqs[1], 3: reqs[2], 7: reqs[3]}  # step -> request that joins before it
    engine.add_request(reqs[0])
    for step in range(500):
        if step in join_at:
            engine.add_request(join_at[step])
        engine.step()
        if all(r.status.finished for r in reqs):
            break
    for req, exp, n in zip(reqs, expected, lengths, strict=True):
        assert req.output_token_ids == exp[:n]


def test_preemption_and_recompute_match_hf(tiny_model_path, hf_model):
    # Few KV blocks: running requests are preempted and recomputed, answers must not change.
    engine = _engine(tiny_model_path, num_kv_blocks=40, block_size=8)
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_qwen2_vl_matches_hf(tiny_qwen2_vl_path):
    hf = transformers.Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2_vl_path, dtype=torch.float32).eval()
    use_reference_mrope(hf)
    engine = _engine(tiny_qwen2_vl_path)
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == _expected(engine, hf, inputs)


def test_plan_shape_of_gpu_overlap_matches_hf(tiny_model_path, hf_model):
    """With CUDA streams the scheduler never lets a prefill read tokens encoded in the same step; the same
    plans run sequentially here must still give HF's tokens (tight budgets force many slices)."""
    engine = _engine(tiny_model_path, max_num_batched_tokens=40, encoder_budget_tokens=8)
    engine.scheduler.same_step_encoder = False
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)


def test_hf_layers_path_matches_hf(tiny_model_path, hf_model):
    """fused_decoder=False (HF's own layers over the paged cache, the A/B path): the same tokens as HF."""
    engine = _engine(tiny_model_path, fused_decoder=False, max_num_batched_tokens=40, encoder_budget_tokens=8)
    assert type(engine.runner.decoder).__name__ == "HFTextDecoder"
    inputs = _inputs()
    outs = engine.generate(inputs, SamplingParams(max_tokens=MAX_NEW))
    assert [o.token_ids for o in outs] == _expected(engine, hf_model, inputs)
