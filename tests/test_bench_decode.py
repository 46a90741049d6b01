"""scripts/bench_decode.py runs end to end on a tiny workload and writes the report it promises.

A smoke test of the benchmark's plumbing (methods, checks, bound, JSON, plot): no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import bench_decode
import pytest
from flashcodec_fixtures import video_dir  # noqa: F401

QUICK = ["--quick", "--workloads", "360p-gop30-8f", "--reps", "1", "--warmup", "0",
         "--retries", "0", "--patience-s", "0"]  # one run per method, no waiting for a quiet machine


def _run(video_dir: Path, out: Path, *extra: str) -> dict:  # noqa: F811
    assert bench_decode.main([*QUICK, "--video-dir", str(video_dir), "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def test_quick_run_writes_the_report(video_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    report = _run(video_dir, tmp_path / "bench")
    assert report["schema"] == "bench_decode/1"
    machine = report["machine"]
    for key in ("cpu", "cores", "python", "av", "libavcodec", "loadavg_start", "loadavg_end"):
        assert key in machine
    cores = machine["cores"]

    (workload,) = report["workloads"]
    assert workload["name"] == "360p-gop30-8f"
    assert workload["num_sampled"] == 8
    assert 0 < workload["plan_frames"] < workload["clip_frames"]  # only the sampled GOPs
    assert workload["single_core_fps"] > 0 and workload["bound_ms"] > 0 and workload["index_ms"] > 0
    rows = {row["method"]: row for row in workload["methods"]}
    expected = {"seq", "seq-all", "seq-ft", "seek", *(f"flashcodec-pyav-k{k}" for k in range(1, cores + 1)),
                f"flashcodec-pyav-k{cores}-noskip", f"flashcodec-pyav-k{cores}-resize"}
    assert set(rows) == expected
    for name, row in rows.items():
        latency = row["latency"]
        assert latency["reps"] == 1 and len(latency["runs_ms"]) == 1
        assert latency["median_ms"] > 0 and latency["p90_ms"] >= latency["min_ms"]
        assert row["speedup_vs_seq"] > 0 and row["speedup_vs_seq-ft"] > 0
        assert row["frames_decoded"] > 0
        if not name.endswith("-resize"):  # every method returns the same frames as (a), bit for bit
            assert row["check"]["exact"], name
    assert rows["seq"]["speedup_vs_seq"] == pytest.approx(1.0)
    flash = rows[f"flashcodec-pyav-k{cores}"]
    assert flash["efficiency"] == pytest.approx(workload["bound_ms"] / flash["latency"]["median_ms"])
    assert 0 < flash["engine_ms"] <= flash["latency"]["median_ms"]  # the engine's share of one run
    assert flash["engine_efficiency"] == pytest.approx(workload["bound_ms"] / flash["engine_ms"])
    assert flash["frames_decoded"] <= workload["plan_frames"]  # non-reference frames may be skipped
    assert report["targets"]["method"] == f"flashcodec-pyav-k{cores}"
    assert set(report["targets"]["efficiency"]) == {"360p-gop30-8f"}
    png = tmp_path / "bench" / "latency.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.stat().st_size > 0
        png.unlink()
        assert bench_decode.main(["--from-json", str(tmp_path / "bench" / "results.json")]) == 0  # redraw
        assert png.stat().st_size > 0


def test_unavailable_gpu_engine_is_skipped_or_measured(video_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    report = _run(video_dir, tmp_path / "bench", "--engine", "nvdec", "--instances", "1", "--no-resize",
                  "--no-ablation")
    methods = {row["method"] for row in report["workloads"][0]["methods"]}
    cores = report["machine"]["cores"]
    assert f"flashcodec-pyav-k{cores}" in methods  # the CPU reference row is always there
    assert "nvdec" in report["skipped"] or "flashcodec-nvdec-k1" in methods


def test_no_baselines_times_flashcodec_only(video_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    report = _run(video_dir, tmp_path / "bench", "--no-baselines", "--instances", "1", "--no-resize")
    (workload,) = report["workloads"]
    rows = {row["method"]: row for row in workload["methods"]}
    assert set(rows) == {"flashcodec-pyav-k1", "flashcodec-pyav-k1-noskip"}
    for row in rows.values():
        assert row["check"]["exact"]  # against an untimed sequential decode
        assert row["efficiency"] > 0 and "speedup_vs_seq" not in row
    assert "speedup_met" not in report["targets"]


def test_unknown_workload_is_refused(tmp_path: Path) -> None:
    assert bench_decode.main(["--workloads", "no-such-workload", "--out", str(tmp_path)]) == 2
