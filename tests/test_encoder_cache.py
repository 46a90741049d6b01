"""Encoder output cache: refcounts, lazy LRU eviction, and reuse inside the engine (same answers)."""

from __future__ import annotations

import torch
from engine_helpers import synthetic_frames

from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput
from unifiedserve.encoder_cache import EncoderCache


def _emb(n: int) -> torch.Tensor:
    return torch.zeros(n, 4)


def test_refcounts_and_lazy_lru_eviction():
    cache = EncoderCache(capacity_tokens=10)
    assert cache.insert("a", _emb(4)) and cache.insert("b", _emb(4))
    assert not cache.insert("c", _emb(4))  # both held: no room, nothing evicted
    cache.release("a")
    assert cache.insert("c", _emb(4))  # "a" (unreferenced, least recent) goes
    assert cache.acquire("a") is None and cache.acquire("b") is not None
    assert not cache.insert("huge", _emb(11))
    cache.release("b")
    cache.release("b")
    cache.release("c")
    assert cache.insert("d", _emb(6)) and cache.num_tokens <= 10


def test_repeated_video_skips_the_encoder_and_gives_the_same_answer(tiny_model_path):
    engine = Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu"))
    frames = synthetic_frames(8, 112, 112, seed=5)
    params = SamplingParams(max_tokens=12)

    def ask(text: str, key: str | None):
        return engine.generate([GenerationInput(text=text, videos=(VideoInput(frames, 2.0, key),))], params)[0]

    first = ask("What is shown?", "video-1")
    encoded_before = sum(s.encoder_tokens for s in engine.step_stats)
    second = ask("What is shown?", "video-1")
    assert sum(s.encoder_tokens for s in engine.step_stats) == encoded_before  # no encoder work the 2nd time
    assert engine.scheduler.encoder_cache.hits == 1
    assert second.token_ids == first.token_ids
    other_question = ask("Which colours?", "video-1")
    uncached = ask("Which colours?", None)
    assert other_question.token_ids == uncached.token_ids
    assert engine.scheduler.encoder_cache.hits == 2
