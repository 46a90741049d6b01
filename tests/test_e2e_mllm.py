"""End to end through a real tritonserver: ensemble mllm (flashcodec -> unifiedserve), gRPC and HTTP."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import re
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from e2e_client import grpc_inputs, grpc_stream, http_generate_stream

pytestmark = pytest.mark.e2e

CLIP = "h264_bf_320x240_2s_gop12.mp4"
QUESTION = "What happens in this video?"


@pytest.fixture(scope="module")
def clip(sample_video_dir) -> bytes:
    return (sample_video_dir / CLIP).read_bytes()


def _ok(result) -> None:
    assert result.error is None, f"unexpected error: {result.error}"


def test_grpc_streaming_video(mllm_server, clip):
    r = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 16,
                                           "stream": True})
    _ok(r)
    assert r.num_responses >= 2  # deltas arrive one by one
    assert r.finish_reason in ("stop", "length")
    assert r.num_output_tokens <= 16 and r.num_input_tokens > 60  # video tokens are in the prompt
    assert r.text


def test_served_answer_equals_offline_engine(mllm_server, clip, tiny_model_path):
    """The served path (FlashCodec decode + unifiedserve) gives the same greedy text as the offline API."""
    from flashcodec import SamplingSpec, decode_video
    from unifiedserve import Engine, EngineConfig, GenerationInput, SamplingParams, VideoInput
    from unifiedserve.vision import load_vision_spec

    v = load_vision_spec(tiny_model_path)
    spec = SamplingSpec(min_pixels=v.min_pixels, max_pixels=v.max_pixels, size_factor=v.size_factor,
                        frame_factor=v.temporal_patch_size)
    decoded = decode_video(clip, spec)
    engine = Engine(EngineConfig(model_path=tiny_model_path))
    [expected] = engine.generate([GenerationInput(text=QUESTION, videos=(VideoInput(decoded.frames,
                                                                                    decoded.sample_fps),))],
                                 SamplingParams(max_tokens=20))
    served = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 20,
                                                "stream": True})
    _ok(served)
    assert served.text == expected.text
    assert served.num_input_tokens == len(expected.prompt_token_ids)


def test_http_generate_stream_with_data_url(mllm_server, clip):
    body = {"text_input": QUESTION, "video_url": "data:video/mp4;base64," + base64.b64encode(clip).decode(),
            "max_tokens": 12, "stream": True}
    events = http_generate_stream(mllm_server.http_url, body)
    assert events and "error" not in events[0], events
    assert len(events) >= 2
    grpc = grpc_stream(mllm_server.grpc_url, {**body, "video_url": body["video_url"]})
    _ok(grpc)
    assert "".join(e["text_output"] for e in events) == grpc.text  # same request, same greedy answer


def test_file_url_under_media_root(mllm_server, sample_video_dir):
    r = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_url": f"file://{sample_video_dir / CLIP}",
                                           "max_tokens": 8, "num_frames": 4})
    _ok(r)
    assert r.text


def test_non_streaming_gives_one_final_response(mllm_server, clip):
    streamed = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 12,
                                                  "stream": True})
    single = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 12,
                                                "stream": False})
    _ok(single)
    assert single.num_responses == 1
    assert single.text == streamed.text
    resp = requests.post(f"{mllm_server.http_url}/v2/models/mllm/generate",
                         json={"text_input": "Hello there", "max_tokens": 8}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["text_output"]


def test_text_only_through_ensemble_and_unifiedserve(mllm_server):
    via_ensemble = grpc_stream(mllm_server.grpc_url, {"text_input": "Tell me about the sea.", "max_tokens": 10})
    direct = grpc_stream(mllm_server.grpc_url, {"text_input": "Tell me about the sea.", "max_tokens": 10},
                         model="unifiedserve")
    _ok(via_ensemble)
    _ok(direct)
    assert via_ensemble.text == direct.text and via_ensemble.text


def test_concurrent_requests_match_sequential(mllm_server, sample_video_dir):
    names = ["h264_bf_320x240_2s_gop12.mp4", "hevc_bf_640x360_4s_gop30.mp4", "vp9_640x360_4s_gop30.webm", None,
             "h264_bf_642x362_3s_gop30.mp4", None]
    jobs = []
    for i, name in enumerate(names):
        fields = {"text_input": f"Question {i}: what do you see?", "max_tokens": 10 + i, "stream": True}
        if name:
            fields["video_bytes"] = (sample_video_dir / name).read_bytes()
        jobs.append(fields)
    sequential = [grpc_stream(mllm_server.grpc_url, f).text for f in jobs]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(lambda f: grpc_stream(mllm_server.grpc_url, f), jobs))
    for r in concurrent:
        _ok(r)
        assert r.text
    # Batched rows are computed by different CPU matmul shapes than single ones (M=6 vs M=1), which can
    # flip a greedy near-tie in the last float bits; the offline oracle tests pin exact equality for fixed
    # batches. Cross-talk between requests would change most answers, not at most one.
    same = sum(r.text == t for r, t in zip(concurrent, sequential, strict=True))
    assert same >= len(jobs) - 1, (same, [r.text for r in concurrent], sequential)


def test_identical_concurrent_requests_get_identical_answers(mllm_server, clip):
    fields = {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 16, "stream": True}
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: grpc_stream(mllm_server.grpc_url, fields), range(4)))
    for r in results:
        _ok(r)
    assert len({r.text for r in results}) == 1


def _metric(server, name: str) -> float:
    text = requests.get(server.metrics_url, timeout=10).text
    m = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not exported"
    return float(m.group(1))


def _wait_metric(server, name: str, value: float, timeout_s: float = 30) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _metric(server, name) == value:
            return True
        time.sleep(0.05)
    return False


def _start_and_cancel(server, model: str, max_tokens: int) -> None:
    """Start a long stream, wait for its first response, then cancel it from the client (gRPC)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    got = []
    client.start_stream(callback=lambda result, error: got.append((result, error)))
    fields = {"text_input": "Count slowly to one million.", "max_tokens": max_tokens, "stream": True,
              "ignore_eos": True}
    client.async_stream_infer(model, grpc_inputs(fields), request_id="to-cancel", enable_empty_final_response=True)
    deadline = time.time() + 60
    while not got and time.time() < deadline:
        time.sleep(0.01)
    assert got and got[0][1] is None, f"no first response: {got}"
    client.stop_stream(cancel_requests=True)
    client.close()


def test_cancelled_stream_frees_the_request(mllm_server):
    """Cancelling a unifiedserve stream aborts the generation at once and frees its KV blocks."""
    cancelled_before = _metric(mllm_server, "unifiedserve_requests_cancelled_total")
    _start_and_cancel(mllm_server, "unifiedserve", max_tokens=4000)  # would run ~10 s if not cancelled
    # Gauges are refreshed every 100 ms by the adapter's watcher thread: poll until they settle.
    assert _wait_metric(mllm_server, "unifiedserve_requests_cancelled_total", cancelled_before + 1, timeout_s=5)
    assert _wait_metric(mllm_server, "unifiedserve_requests_in_flight", 0, timeout_s=5)
    assert _wait_metric(mllm_server, "unifiedserve_kv_cache_usage_ratio", 0, timeout_s=5)
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": "Still there?", "max_tokens": 4}))


def test_cancelled_ensemble_stream_keeps_server_healthy(mllm_server):
    """Triton 2.51 checks ensemble cancellation only between steps (core PR #263), so a cancelled mllm
    stream is not seen by the in-flight unifiedserve step: it runs to max_tokens, then everything is freed."""
    _start_and_cancel(mllm_server, "mllm", max_tokens=300)
    assert _wait_metric(mllm_server, "unifiedserve_requests_in_flight", 0, timeout_s=60)
    assert _wait_metric(mllm_server, "unifiedserve_kv_cache_usage_ratio", 0, timeout_s=5)
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": "Still there?", "max_tokens": 4}))


def _audio_only_wav() -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 10) * 3000).astype(np.int16).tobytes())
    return buf.getvalue()


BAD_INPUTS = {
    "corrupt video": ({"video_bytes": b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40}, "INVALID_ARG", "video"),
    "empty video": ({"video_bytes": b""}, "INVALID_ARG", "empty"),
    "not a video": ({"video_bytes": b"hello, I am a text file, not a video" * 20}, "INVALID_ARG", "video"),
    "audio only": ({"video_bytes": _audio_only_wav()}, "INVALID_ARG", "video stream"),
    "negative max_tokens": ({"max_tokens": -5}, "INVALID_ARG", "max_tokens"),
    "huge max_tokens": ({"max_tokens": 10_000_000}, "INVALID_ARG", "max_tokens"),
    "bad top_p": ({"top_p": 0.0}, "INVALID_ARG", "top_p"),
    "prompt too long": ({"text_input": "many words " * 20000}, "INVALID_ARG", "context"),
    "bad url scheme": ({"video_url": "ftp://example.com/a.mp4"}, "INVALID_ARG", "scheme"),
    "file outside media roots": ({"video_url": "file:///etc/passwd"}, "INVALID_ARG", "media roots"),
    "bad base64": ({"video_url": "data:video/mp4;base64,@@@@"}, "INVALID_ARG", "base64"),
    "too many frames": ({"num_frames": 100000}, "INVALID_ARG", "frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_clear_error_and_server_keeps_serving(mllm_server, clip, case):
    extra, code, words = BAD_INPUTS[case]
    http_status = {"INVALID_ARG": 400, "UNAVAILABLE": 503}[code]
    fields = {"text_input": QUESTION, "max_tokens": 8, **extra}
    if case in ("too many frames",):
        fields["video_bytes"] = clip
    r = grpc_stream(mllm_server.grpc_url, fields)
    assert r.error is not None, f"{case}: expected an error, got text {r.text!r}"
    assert words.lower() in str(r.error).lower(), r.error
    # The gRPC stream does not expose the status code in tritonclient 2.51; HTTP /generate maps it.
    body = dict(fields)
    if "video_bytes" in body:
        body["video_url"] = "data:video/mp4;base64," + base64.b64encode(body.pop("video_bytes")).decode()
    resp = requests.post(f"{mllm_server.http_url}/v2/models/mllm/generate", json=body, timeout=60)
    assert resp.status_code == http_status, (resp.status_code, resp.text)
    assert words.lower() in resp.json()["error"].lower()
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 4}))


def test_missing_text_input_is_rejected(mllm_server, clip):
    # With a video, the ensemble's first step rejects the request with a clear message.
    r = grpc_stream(mllm_server.grpc_url, {"video_bytes": clip, "max_tokens": 4})
    assert r.error is not None and "text_input is required" in str(r.error)
    # unifiedserve called directly says the same.
    r = grpc_stream(mllm_server.grpc_url, {"max_tokens": 4}, model="unifiedserve")
    assert r.error is not None and "text_input is required" in str(r.error)
    # Without a video too (text_input is optional in the ensemble config only so that this reaches flashcodec).
    r = grpc_stream(mllm_server.grpc_url, {"max_tokens": 4})
    assert r.error is not None and "text_input is required" in str(r.error)
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 4}))


def test_scheduling_hints_reach_the_engine_through_the_ensemble(mllm_server, clip):
    """SLO hints travel as request parameters (gRPC: `parameters=`), priority as an input (tritonclient
    reserves the parameter name `priority` for Triton's own queue). A bad value is rejected by the engine,
    which proves the hint arrived; good values serve normally."""
    r = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "max_tokens": 4}, parameters={"ttft_slo_ms": -5})
    assert r.error is not None and "ttft_slo_ms" in str(r.error)
    r = grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "max_tokens": 4, "priority": -1})
    assert r.error is not None and "priority" in str(r.error)
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 4,
                                           "priority": 1}, parameters={"ttft_slo_ms": 2000.0, "tpot_slo_ms": 100.0}))


def test_ttft_counts_from_when_the_request_entered_the_pipeline(mllm_server):
    """unifiedserve's TTFT clock starts at `arrival_monotonic_s` (in the ensemble: when flashcodec received the
    request, so decoding counts against the TTFT SLO as the client sees it). A request that entered 5 s ago
    shows a TTFT of at least 5 s in the engine's metric."""
    name = "unifiedserve_time_to_first_token_seconds_sum"
    before = _metric(mllm_server, name)
    fields = {"text_input": QUESTION, "max_tokens": 2, "arrival_monotonic_s": time.monotonic() - 5.0}
    _ok(grpc_stream(mllm_server.grpc_url, fields, model="unifiedserve"))
    deadline = time.time() + 30
    while _metric(mllm_server, name) - before < 5.0 and time.time() < deadline:
        time.sleep(0.05)  # observed after the final response is sent
    assert _metric(mllm_server, name) - before >= 5.0


def _stub_thread_nices(server_pid: int) -> dict[str, list[int]]:
    """Nice value of every thread of each Python-backend stub under the server, by model name."""
    import os
    from pathlib import Path

    by_model: dict[str, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if int(stat.rsplit(")", 1)[1].split()[1]) != server_pid or b"python_backend_stub" not in argv[0]:
                continue
            model = Path(argv[1].decode()).parent.parent.name  # <repo>/<model>/1/model.py
            by_model.setdefault(model, []).extend(
                os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in (proc / "task").iterdir())
        except (OSError, IndexError, ValueError):
            continue  # a process or thread that ended while we looked
    return by_model


def test_cpu_decoders_run_niced_below_the_engine(mllm_server, clip):
    """flashcodec's CPU decode threads yield the cores to unifiedserve's steps (flashcodec/cpu_priority.py)."""
    import os

    import torch

    from flashcodec.cpu_priority import AUTO_CPU_NICE

    if torch.cuda.is_available():
        pytest.skip("auto picks a GPU decode engine here, which keeps normal priority")
    _ok(grpc_stream(mllm_server.grpc_url, {"text_input": QUESTION, "video_bytes": clip, "max_tokens": 2}))
    server_nice = os.getpriority(os.PRIO_PROCESS, mllm_server.pid)
    nices = _stub_thread_nices(mllm_server.pid)
    assert nices.get("flashcodec") and nices.get("unifiedserve"), nices
    assert set(nices["flashcodec"]) == {max(server_nice, AUTO_CPU_NICE)}  # decoder pools made after load too
    assert set(nices["unifiedserve"]) == {server_nice}
