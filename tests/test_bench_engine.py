"""Smoke test of scripts/bench_engine.py: it runs end to end on the tiny model and a tiny trace and writes its
outputs with the expected fields. Numbers are never asserted (DESIGN.md 7: benchmarks report, tests do not time)."""

from __future__ import annotations

import importlib.util
import json

import bench_engine  # scripts/ is on sys.path (conftest)
import pytest

POLICIES = ("unified", "blocking", "fcfs")


@pytest.fixture(scope="module")
def bench_out(tiny_model_path, sample_video_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_engine")
    argv = ["--quick", "--model", tiny_model_path, "--video-dir", str(sample_video_dir), "--out", str(out),
            "--num-clips", "2", "--num-requests", "5", "--rate", "25", "--video-fraction", "0.5",
            "--text-tokens", "4,8", "--video-tokens", "3,5", "--calib-batches", "1,2", "--typical-batch", "2",
            "--calib-reps", "1", "--burst", "3"]
    assert bench_engine.main(argv) == 0
    return out


def test_results_json_has_the_metrics(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    for key in ("machine", "command", "config", "calibration", "slos", "rate", "trace", "policies", "burst", "targets"):
        assert key in results, key
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    calib = results["calibration"]
    assert calib["decode_period_ms_vs_batch_text"] and len(calib["clips"]) == 2
    assert set(calib["unloaded_ttft_ms"]) == {"text", "clip0", "clip1"}
    assert results["slos"]["tpot_slo_ms"] > 0 and results["slos"]["rule"]
    assert results["trace"]["num_requests"] == 5
    assert set(results["policies"]) == set(POLICIES) and set(results["burst"]) == set(POLICIES)
    for name, m in results["policies"].items():
        assert m["error"] is None, (name, m["error"])
        assert m["num_finished"] == 5
        for metric in ("ttft_ms", "tpot_ms", "token_gap_ms"):
            assert {"p50", "p90", "p99"} <= set(m[metric]), (name, metric)
        assert m["ttft_ms"]["n"] == 5 and m["ttft_ms"]["p50"] > 0
        assert m["output_tokens"] > 0 and m["tokens_per_s"] > 0 and m["requests_per_s"] > 0
        assert 0.0 <= m["slo"]["attainment"] <= 1.0
        assert {"token_gap_ms_encoder", "token_gap_ms_decode_only", "encoder_vs_decode_only_p99"} <= set(m)
        assert m["steps"]["num_steps"] > 0 and m["steps"]["num_encoder_steps"] >= 1
        assert len(m["rounds"]) == 1 and "cost_model_end" in m["rounds"][0]
    assert "unified_slo_attainment_vs_baselines" in results["targets"]


def test_raw_timeline_and_plot(bench_out):
    raw = json.loads((bench_out / "raw.json").read_text())
    assert set(raw["trace"]) == set(POLICIES) and set(raw["burst"]) == set(POLICIES)
    for rounds in raw["trace"].values():
        assert len(rounds) == 1
        run = rounds[0]
        assert len(run["requests"]) == 5
        for req in run["requests"]:
            times = req["token_times_s"]
            assert len(times) == req["max_tokens"] and times == sorted(times) and times[0] >= req["arrival_s"]
        assert run["steps"] and len(run["steps"][0]) == len(run["step_fields"])
    if importlib.util.find_spec("matplotlib") is not None:
        png = bench_out / "timeline.png"
        assert png.stat().st_size > 0
        png.unlink()
        assert bench_engine.main(["--replot", str(bench_out)]) == 0  # redrawn from the JSON files alone
        assert png.stat().st_size > 0
