"""scripts/bench_serving.py: its SLO / goodput arithmetic on hand-made results, its traces, and a smoke run through
the real tritonserver of the test session (``--url``). Numbers are never asserted (DESIGN.md 7)."""

from __future__ import annotations

import json

import bench_serving  # scripts/ is on sys.path (conftest)
import pytest
from bench_serving_client import RequestResult
from bench_serving_metrics import Slos, goodput, slos_from, summarize
from bench_serving_trace import TEXT, TraceShape, make_trace, request_classes


def _result(cls: str = "text", ttft_s: float = 0.1, tokens: int = 11, tpot_s: float = 0.01,
            error: str | None = None) -> RequestResult:
    r = RequestResult("r", cls, arrival_s=1.0, sent_s=1.0, num_output_tokens=tokens, error=error)
    if error is None:
        r.response_s = [1.0 + ttft_s + i * tpot_s for i in range(tokens)]
        r.end_s = r.response_s[-1]
    return r


def test_slo_met_needs_both_ttft_and_tpot_and_no_error():
    slos = Slos({"text": 200.0, "video": 1000.0}, tpot_ms=20.0)
    assert slos.met(_result(ttft_s=0.15, tpot_s=0.015))
    assert not slos.met(_result(ttft_s=0.25))  # TTFT over its class's SLO
    assert slos.met(_result("video", ttft_s=0.25))  # the video class allows it
    assert not slos.met(_result(tpot_s=0.03))  # TPOT over
    assert not slos.met(_result(error="boom"))
    assert not slos.met(_result("unknown-class"))
    assert slos.met(_result(tokens=1))  # one token: no TPOT to judge
    assert _result(ttft_s=0.15, tpot_s=0.015).tpot_ms == pytest.approx(15.0)


def test_slos_come_from_the_fastest_system_per_class():
    a = {"ttft_ms": {"text": 50.0, "video": 900.0}, "batch_tpot_ms": 10.0}
    b = {"ttft_ms": {"text": 80.0, "video": 300.0}, "batch_tpot_ms": 8.0}
    slos = slos_from([a, b], ttft_scale=5, tpot_scale=1.5)
    assert slos.ttft_ms == {"text": 250.0, "video": 1500.0} and slos.tpot_ms == pytest.approx(12.0)


def test_goodput_is_the_highest_rate_with_every_lower_rate_passing():
    assert goodput([(1, 1.0), (2, 0.95), (4, 0.5), (8, 0.95)]) == {"rate": 2, "interpolated": 2.2222, "bounded": True}
    assert goodput([(1, 0.95), (2, 0.92)])["bounded"] is False  # never failed: a lower bound
    assert goodput([(1, 0.5), (2, 0.95)])["rate"] == 0.0  # the lowest rate already fails
    assert goodput([])["rate"] == 0.0


def test_summary_counts_errors_as_misses():
    slos = Slos({"text": 200.0}, tpot_ms=20.0)
    summary = summarize([_result(), _result(error="boom"), _result(ttft_s=0.5)], slos, rate=1.0)
    assert summary["num_errors"] == 1 and summary["errors"] == ["boom"]
    assert summary["attainment"] == pytest.approx(1 / 3, abs=1e-3)
    assert summary["ttft_ms"]["p50"] == pytest.approx(300.0)


def test_traces_are_seeded_and_mixed():
    classes, shape = request_classes(long_video=False), TraceShape(video_fraction=0.5)
    trace = make_trace(0, 2.0, 30.0, 10, classes, shape)
    assert trace == make_trace(0, 2.0, 30.0, 10, classes, shape)
    assert trace != make_trace(1, 2.0, 30.0, 10, classes, shape)
    assert [r.arrival_s for r in trace] == sorted(r.arrival_s for r in trace)
    assert {r.request_class for r in trace} > {TEXT}  # text and several video classes
    assert len({r.request_class for r in trace}) >= 4
    lo, hi = shape.text_tokens
    assert all(lo <= r.max_tokens <= hi for r in trace if r.request_class is TEXT)
    assert len(make_trace(0, 0.01, 1.0, 3, classes, shape)) == 3  # at least min_requests


def test_bench_serving_runs_against_a_live_server(mllm_server, sample_video_dir, tiny_model_path, tmp_path):
    argv = ["--url", mllm_server.grpc_url, "--model", tiny_model_path, "--video-dir", str(sample_video_dir),
            "--no-long-video", "--rates", "3", "--duration", "2", "--min-requests", "5", "--calib-reps", "1",
            "--typical-batch", "2", "--calib-tokens", "6", "--text-tokens", "4,8", "--video-tokens", "4,8",
            "--bisect", "0", "--out", str(tmp_path)]
    assert bench_serving.main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["systems"]["external"]
    assert set(entry["calibration"]["ttft_ms"]) == {c.name for c in request_classes(False)}
    assert set(results["slos"]["ttft_ms"]) == set(entry["calibration"]["ttft_ms"])
    runs = entry["runs"]
    assert 3.0 in {run["rate"] for run in runs} and all(run["num_requests"] >= 5 for run in runs)
    assert all(run["num_errors"] == 0 for run in runs), [run["errors"] for run in runs]
    raw = json.loads((tmp_path / "raw.json").read_text())["external"]["3.0"]
    assert all(r["num_output_tokens"] >= 4 and r["end_s"] > r["arrival_s"] for r in raw)
    assert (tmp_path / "attainment.png").stat().st_size > 0 and (tmp_path / "cdf.png").stat().st_size > 0
