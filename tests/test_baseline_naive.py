"""The naive Triton stack baseline (baselines/model_repository_naive) served by a real tritonserver.

Same public contract as our `mllm`, so the same client drives both: a text-only greedy answer must equal
ours token for token (same model, same prompt, both greedy), and video requests honour max_tokens/ignore_eos.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_client import grpc_stream

REPO = Path(__file__).resolve().parent.parent
NAIVE_REPO = REPO / "baselines" / "model_repository_naive"
VIDEO = REPO / "artifacts" / "videos" / "h264_bf_320x240_2s_gop12.mp4"
QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def naive_server(tiny_model_path, sample_video_dir):
    from tritonserver_fixture import start_tritonserver

    env = {"MLLM_MODEL_PATH": tiny_model_path, "MLLM_MEDIA_ROOTS": str(sample_video_dir)}
    with start_tritonserver(NAIVE_REPO, env=env, ready_timeout_s=300) as server:
        yield server


def _video_fields(max_tokens: int = 8, **extra) -> dict:
    return {"text_input": QUESTION, "video_bytes": VIDEO.read_bytes(), "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, **extra}


def test_text_only_greedy_streams_and_matches_unifiedserve(naive_server, mllm_server):
    fields = {"text_input": QUESTION, "max_tokens": 16, "temperature": 0.0, "stream": True}
    naive = grpc_stream(naive_server.grpc_url, fields)
    ours = grpc_stream(mllm_server.grpc_url, fields)
    assert naive.error is None and ours.error is None, (naive.error, ours.error)
    assert naive.num_responses >= 3, naive.texts  # one response per text delta
    assert naive.text == ours.text
    assert naive.num_input_tokens == ours.num_input_tokens
    assert naive.finish_reason in ("length", "stop")


def test_video_request_streams_exactly_max_tokens(naive_server):
    text_only = grpc_stream(naive_server.grpc_url, {"text_input": QUESTION, "max_tokens": 4, "ignore_eos": True})
    video = grpc_stream(naive_server.grpc_url, _video_fields(max_tokens=8))
    assert text_only.error is None and video.error is None, (text_only.error, video.error)
    assert video.num_output_tokens == 8 and video.finish_reason == "length"
    assert video.num_input_tokens > text_only.num_input_tokens  # the video's placeholder tokens are in the prompt
    assert video.num_responses >= 2


def test_three_concurrent_requests_complete(naive_server):
    requests = [_video_fields(max_tokens=6), _video_fields(max_tokens=10, stream=False),
                {"text_input": "Hello", "max_tokens": 5, "ignore_eos": True, "stream": True}]
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(lambda f: grpc_stream(naive_server.grpc_url, f), requests))
    for fields, result in zip(requests, results, strict=True):
        assert result.error is None, result.error
        assert result.num_output_tokens == fields["max_tokens"]  # each stops at its own max_tokens
    assert results[1].num_responses == 1  # stream=false: one final response with the whole text


def test_corrupt_video_is_an_error_and_the_server_keeps_serving(naive_server):
    corrupt = bytearray(VIDEO.read_bytes())
    corrupt[64:] = bytes(len(corrupt) - 64)  # the container header survives, every packet is zeros
    bad = grpc_stream(naive_server.grpc_url, _video_fields(video_bytes=bytes(corrupt)))
    assert bad.error is not None
    junk = grpc_stream(naive_server.grpc_url, _video_fields(video_bytes=b"not a video at all"))
    assert junk.error is not None
    good = grpc_stream(naive_server.grpc_url, _video_fields(max_tokens=3))
    assert good.error is None and good.num_output_tokens == 3


def test_bad_sampling_value_is_an_error(naive_server):
    result = grpc_stream(naive_server.grpc_url, {"text_input": "Hi", "max_tokens": 4, "top_p": 0.0})
    assert result.error is not None and "top_p" in str(result.error)


def test_the_checkpoint_dtype_is_auto_unless_a_parameter_or_the_environment_names_one(monkeypatch):
    import sys

    sys.path.insert(0, str(REPO / "baselines"))
    from naive_stack.checkpoint import checkpoint_dtype

    monkeypatch.delenv("MLLM_NAIVE_DTYPE", raising=False)
    assert checkpoint_dtype({}) == "auto"
    assert checkpoint_dtype({"dtype": ""}) == "auto"  # an empty Triton parameter is the default
    assert checkpoint_dtype({"dtype": "bfloat16"}) == "bfloat16"
    monkeypatch.setenv("MLLM_NAIVE_DTYPE", "float32")
    assert checkpoint_dtype({"dtype": "bfloat16"}) == "float32"
    monkeypatch.setenv("MLLM_NAIVE_DTYPE", "fp8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        checkpoint_dtype({})
