"""Bad requests to the real tiny-model Engine: each is an InvalidRequestError with a message a person can act
on, raised before the engine holds any state for it, and a good request still works on the same Engine."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from engine_helpers import synthetic_frames

from unifiedserve import Engine, EngineConfig, GenerationInput, InvalidRequestError, SamplingParams, VideoInput

MAX_MODEL_LEN = 128  # room for one small video (upscaled to the tiny model's min_pixels) + text
GOOD_FRAMES = synthetic_frames(4, 28, 56, seed=0)


@pytest.fixture(scope="module")
def engine(tiny_model_path) -> Engine:
    return Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu",
                               max_model_len=MAX_MODEL_LEN, max_tokens_limit=1000))


def assert_still_works(engine: Engine) -> None:
    good = [GenerationInput(text="hi", videos=(VideoInput(GOOD_FRAMES),)), GenerationInput(text="hello")]
    outs = engine.generate(good, SamplingParams(max_tokens=5))
    for out in outs:
        assert out.finish_reason in ("stop", "length") and 1 <= len(out.token_ids) <= 5
    assert not engine.requests and not engine.has_unfinished()
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


def _video(frames, **kw) -> GenerationInput:
    return GenerationInput(text="what is this?", videos=(VideoInput(frames, **kw),))


OK = SamplingParams(max_tokens=4)
BAD_REQUESTS = {
    # name: (input, params, make_request kwargs, message)
    "prompt longer than max_model_len": (GenerationInput(text="word " * 160), OK, {},
                                         rf"\(video tokens included\) but the model's context is {MAX_MODEL_LEN}"),
    "video makes the prompt too long": (_video(synthetic_frames(40, 56, 56, 1)), OK, {}, "ask for fewer frames"),
    "max_tokens 0": (GenerationInput(text="hi"), SamplingParams(max_tokens=0), {}, "max_tokens must be between 1"),
    "max_tokens negative": (GenerationInput(text="hi"), SamplingParams(max_tokens=-3), {}, "max_tokens must be"),
    "max_tokens huge": (GenerationInput(text="hi"), SamplingParams(max_tokens=10**9), {}, "between 1 and 1000"),
    "temperature negative": (GenerationInput(text="hi"), SamplingParams(temperature=-0.1), {}, "temperature"),
    "temperature nan": (GenerationInput(text="hi"), SamplingParams(temperature=math.nan), {}, "temperature"),
    "top_p 0": (GenerationInput(text="hi"), SamplingParams(top_p=0.0), {}, "top_p"),
    "top_k negative": (GenerationInput(text="hi"), SamplingParams(top_k=-1), {}, "top_k"),
    "seed negative": (GenerationInput(text="hi"), SamplingParams(seed=-1), {}, "seed"),
    "empty stop string": (GenerationInput(text="hi"), SamplingParams(stop=("",)), {}, "stop strings"),
    "empty text without video": (GenerationInput(text=""), OK, {}, "text_input is empty"),
    "blank text without video": (GenerationInput(text=" \n\t"), OK, {}, "text_input is empty"),
    "no text at all": (GenerationInput(), OK, {}, "text_input is empty"),
    "frames float": (_video(GOOD_FRAMES.astype(np.float32)), OK, {}, r"bad video frames: .*uint8 \[T, H, W, 3\]"),
    "frames int64 torch": (_video(torch.from_numpy(GOOD_FRAMES).long()), OK, {}, "bad video frames"),
    "frames 4 channels": (_video(np.zeros((2, 28, 28, 4), np.uint8)), OK, {}, "bad video frames"),
    "frames channels first": (_video(np.zeros((2, 3, 28, 28), np.uint8)), OK, {}, "bad video frames"),
    "frames 5-d": (_video(np.zeros((1, 2, 28, 28, 3), np.uint8)), OK, {}, "bad video frames"),
    "frames a list": (_video([[[[0, 0, 0]]]]), OK, {}, "bad video frames: frames must be a numpy array"),
    "frames no frames": (_video(np.zeros((0, 28, 28, 3), np.uint8)), OK, {}, "bad video frames: frames are empty"),
    "frames zero size": (_video(np.zeros((2, 0, 0, 3), np.uint8)), OK, {}, "bad video frames: frames are empty"),
    "sample_fps 0": (_video(GOOD_FRAMES, sample_fps=0.0), OK, {}, "sample_fps must be > 0"),
    "sample_fps negative": (_video(GOOD_FRAMES, sample_fps=-2.0), OK, {}, "sample_fps must be > 0"),
    "sample_fps nan": (_video(GOOD_FRAMES, sample_fps=math.nan), OK, {}, "sample_fps must be > 0"),
    "text and token ids": (GenerationInput(text="hi", prompt_token_ids=(1, 2)), OK, {}, "not both"),
    "token ids empty": (GenerationInput(prompt_token_ids=()), OK, {}, "prompt_token_ids is empty"),
    "token ids out of vocab": (GenerationInput(prompt_token_ids=(1, 10**6)), OK, {}, "outside the vocabulary"),
    "token ids negative": (GenerationInput(prompt_token_ids=(-1, 2)), OK, {}, "outside the vocabulary"),
    "placeholder without video": (GenerationInput(prompt_token_ids=(1, 3013, 2)), OK, {},
                                  r"1 video placeholder\(s\) but 0 video\(s\)"),
    "video without placeholder": (GenerationInput(prompt_token_ids=(1, 2), videos=(VideoInput(GOOD_FRAMES),)), OK,
                                  {}, r"0 video placeholder\(s\) but 1 video\(s\)"),
    "priority negative": (GenerationInput(text="hi"), OK, {"priority": -1}, "priority must be >= 0"),
    "ttft_slo_ms 0": (GenerationInput(text="hi"), OK, {"ttft_slo_ms": 0.0}, "ttft_slo_ms must be a positive"),
    "tpot_slo_ms inf": (GenerationInput(text="hi"), OK, {"tpot_slo_ms": math.inf}, "tpot_slo_ms must be a positive"),
    "ttft_slo_ms nan": (GenerationInput(text="hi"), OK, {"ttft_slo_ms": math.nan}, "ttft_slo_ms must be a positive"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_is_invalid_and_engine_still_works(engine, name) -> None:
    gen_input, params, kwargs, message = BAD_REQUESTS[name]
    with pytest.raises(InvalidRequestError, match=message):
        engine.make_request(f"bad-{name}", gen_input, params, **kwargs)
    if not kwargs:  # generate() has no scheduling hints; it checks every input before it adds any
        with pytest.raises(InvalidRequestError, match=message):
            engine.generate([GenerationInput(text="fine"), gen_input], params)
    assert_still_works(engine)


def test_good_edge_requests(engine) -> None:
    """Valid edges stay valid: max_tokens at the limit, a video with empty text, a single image-like frame,
    and a prompt one token short of max_model_len."""
    cases = [
        (GenerationInput(text="hi"), SamplingParams(max_tokens=1000)),
        (GenerationInput(text="", videos=(VideoInput(GOOD_FRAMES),)), OK),
        (GenerationInput(text="one frame", videos=(VideoInput(GOOD_FRAMES[0]),)), OK),
    ]
    for gen_input, params in cases:
        req = engine.make_request("edge", gen_input, params)
        assert req.num_prompt_tokens < MAX_MODEL_LEN
    base = engine.make_request("len", GenerationInput(prompt_token_ids=(1,)), OK)
    assert base.num_prompt_tokens == 1
    longest = engine.make_request("len", GenerationInput(prompt_token_ids=(1,) * (MAX_MODEL_LEN - 1)), OK)
    [out] = engine.generate([GenerationInput(prompt_token_ids=tuple(longest.prompt_token_ids))],
                            SamplingParams(max_tokens=100, ignore_eos=True))
    assert out.finish_reason == "length" and len(out.token_ids) == 1  # max_model_len reached
    assert_still_works(engine)


def test_duplicate_request_id_is_refused_and_original_unaffected(engine) -> None:
    original = engine.make_request("same", GenerationInput(text="hi"), SamplingParams(max_tokens=6, ignore_eos=True))
    engine.add_request(original)
    engine.step()
    with pytest.raises(InvalidRequestError, match="already running"):
        engine.add_request(engine.make_request("same", GenerationInput(text="other"), OK))
    while not original.status.finished:
        engine.step()
    assert original.finish_reason == "length" and original.num_output_tokens == 6
    assert_still_works(engine)


def test_prompt_that_can_never_fit_the_kv_cache(tiny_model_path) -> None:
    engine = Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu", num_kv_blocks=2,
                                 block_size=16))
    with pytest.raises(InvalidRequestError, match=r"can never fit the KV cache \(32 tokens\)"):
        engine.make_request("big", GenerationInput(text="a question that is long enough " * 3), OK)
    [out] = engine.generate([GenerationInput(prompt_token_ids=(1, 2, 3))], SamplingParams(max_tokens=4))
    assert out.finish_reason in ("stop", "length")


def test_request_that_outgrows_the_kv_pool_stops_with_length(tiny_model_path) -> None:
    """Prompt + max_tokens larger than the whole KV pool: the request used to preempt itself and recompute
    forever (a livelock); now it ends with "length" when it fills the pool, and the engine stays usable."""
    engine = Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu", num_kv_blocks=4,
                                 block_size=16))
    req = engine.make_request("grow", GenerationInput(text="hello there"), SamplingParams(max_tokens=500,
                                                                                          ignore_eos=True))
    engine.add_request(req)
    for _ in range(200):
        if req.status.finished:
            break
        engine.step()
    assert req.status.finished, f"stuck: {req.num_tokens} tokens, {req.num_preemptions} preemptions"
    assert req.finish_reason == "length" and req.num_tokens == 64
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    [out] = engine.generate([GenerationInput(text="hi")], SamplingParams(max_tokens=3))
    assert out.finish_reason in ("stop", "length")


def test_a_pipeline_arrival_sets_the_ttft_clock_and_a_bad_one_is_ignored(engine) -> None:
    """make_request(arrival_time=) is when the request entered the serving pipeline (flashcodec in the ensemble):
    the TTFT deadline counts from it. A clock that cannot be this host's (future, ancient, NaN) is ignored."""
    from unifiedserve.policy import ttft_deadline

    params = SamplingParams(max_tokens=2)
    before = time.monotonic()
    req = engine.make_request("arrived-earlier", GenerationInput(text="hi"), params, ttft_slo_ms=100.0,
                              arrival_time=before - 2.0)
    assert req.arrival_time == before - 2.0
    assert ttft_deadline(req) == pytest.approx(before - 1.9)
    for bad in (before + 60.0, before - 10_000.0, math.nan, math.inf, None):
        req = engine.make_request("bad-clock", GenerationInput(text="hi"), params, arrival_time=bad)
        assert before <= req.arrival_time <= time.monotonic()
    out = engine.generate([GenerationInput(text="hi")], params)[0]
    assert out.finish_reason in ("stop", "length")
