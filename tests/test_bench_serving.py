"""scripts/bench_serving.py: its SLO / goodput arithmetic on hand-made results, its traces, and a smoke run through
the real tritonserver of the test session (``--url``). Numbers are never asserted (DESIGN.md 7)."""

from __future__ import annotations

import json
from dataclasses import asdict

import bench_serving  # scripts/ is on sys.path (conftest)
import pytest
from bench_serving_client import RequestResult
from bench_serving_drift import loosens, rejudge, slower
from bench_serving_metrics import (
    Slos,
    common_sustained_rate,
    goodput,
    slos_from,
    summarize,
    sustained_rate,
    tpot_p99_comparisons,
)
from bench_serving_plan import SweepPlan, next_rate, next_round
from bench_serving_rounds import is_slow, reference_speed
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


def _sweep(plan: SweepPlan, attainment_at) -> list[float]:
    """The rates a sweep runs, in order, against a system whose attainment at a rate is attainment_at(rate)."""
    done: dict[float, float] = {}
    while (rate := next_rate(plan, done)) is not None:
        assert rate not in done and len(done) < 30
        done[rate] = attainment_at(rate)
    return list(done)


def test_slos_follow_the_slower_calibration_and_every_run_is_judged_again():
    start = Slos({"text": 100.0, "video": 1000.0}, tpot_ms=15.0)
    later = Slos({"text": 150.0, "video": 900.0}, tpot_ms=21.0)  # the host got slower, except for the video class
    assert slower(start, later) == Slos({"text": 150.0, "video": 1000.0}, tpot_ms=21.0)
    assert loosens(start, later) and not loosens(slower(start, later), start)
    assert not loosens(start, Slos({"text": 101.0, "video": 1000.0}, tpot_ms=15.1))  # within 2 %: noise
    # A run judged by the start's SLOs: 2 of 3 miss TPOT 15 ms; the slower SLOs pass them.
    reqs = [_result(ttft_s=0.05, tpot_s=t) for t in (0.012, 0.018, 0.02)]
    summary = summarize(reqs, start, 0.5) | {"started": "12:00:00", "host_batch_tpot_ms": 9.5}
    results = {"systems": {"ours": {"runs": [summary], "raw": {"0.5": [asdict(r) for r in reqs]}}}}
    assert summary["attainment"] == pytest.approx(1 / 3, abs=1e-3)
    rejudge(results, slower(start, later))
    run = results["systems"]["ours"]["runs"][0]
    assert run["attainment"] == 1.0 and run["num_requests"] == 3
    assert run["started"] == "12:00:00" and run["host_batch_tpot_ms"] == 9.5  # kept as they ran


def test_a_round_is_slow_against_the_probe_of_the_slowest_calibration():
    results = {"systems": {"ours": {"calibration": {"batch_tpot_ms": 8.0}}},
               "recalibrations": [{"calibration": {"ours": {"batch_tpot_ms": 10.0}}, "loosened": True},
                                  {"calibration": {"ours": {"batch_tpot_ms": 12.0}}, "loosened": False}]}
    reference = reference_speed(results, "ours")
    assert reference == 10.0  # the SLOs in force follow the slower calibration; one that set nothing does not count
    assert is_slow(13.5, reference, 1.3) and not is_slow(12.9, reference, 1.3)
    assert not is_slow(100.0, reference, 0.0)  # factor 0: never


def test_sweep_stops_below_half_probes_lower_and_bisects_to_the_resolution():
    grid = (1.0, 2.0, 4.0, 8.0)
    # Passes up to 2.6: the grid stops after 4 (below half), bisection 3 -> 2.5 -> (2.5, 3] is within 25 %.
    assert _sweep(SweepPlan(grid), lambda r: 1.0 if r <= 2.6 else 0.3) == [1.0, 2.0, 4.0, 3.0, 2.5]
    # Without bisection the grid alone; a system failing the lowest rate is tried at 1/2 and 1/4 of it.
    assert _sweep(SweepPlan(grid, bisect_resolution=0), lambda r: 1.0 if r <= 2.6 else 0.3) == [1.0, 2.0, 4.0]
    assert _sweep(SweepPlan(grid, bisect_resolution=0), lambda r: 1.0 if r < 0.3 else 0.2) == [1.0, 0.5, 0.25]
    # Attainment between stop_below and the target keeps the sweep going; extra rates run at the end, once.
    rates = _sweep(SweepPlan(grid, bisect_resolution=0, extra=(0.1, 2.0)), lambda r: 0.7)
    assert rates == [1.0, 2.0, 4.0, 8.0, 0.5, 0.25, 0.1]


def test_an_extended_sweep_runs_only_what_the_finer_plan_adds():
    coarse = SweepPlan((1.0, 2.0, 4.0), bisect_resolution=0.6)
    done: dict[float, float] = {}
    while (rate := next_rate(coarse, done)) is not None:
        done[rate] = 1.0 if rate <= 1.3 else 0.2
    assert list(done) == [1.0, 2.0, 1.5]
    fine = SweepPlan((1.0, 2.0, 4.0), bisect_resolution=0.25, extra=(0.5,))
    assert next_rate(fine, done) == 1.25
    done[1.25] = 1.0
    assert next_rate(fine, done) == 0.5  # (1.25, 1.5] is within 25 %: the extra rate, then done
    done[0.5] = 1.0
    assert next_rate(fine, done) is None


def _rounds(plans: dict[str, SweepPlan], attainment_at: dict, first: str = "ours") -> list[list[tuple[str, float]]]:
    done: dict[str, dict[float, float]] = {name: {} for name in plans}
    rounds = []
    while todo := next_round(plans, done, first):
        assert len(rounds) < 20
        rounds.append(todo)
        for name, rate in todo:
            done[name][rate] = attainment_at[name](rate)
    return rounds


def test_rounds_interleave_the_systems_and_ours_runs_the_others_sustained_rates_once_they_are_final():
    naive = {"naive": lambda r: 1.0 if r <= 0.6 else 0.3}  # fails 1.0, passes its probe at 0.5
    plans = {"ours": SweepPlan((1.0, 2.0), bisect_resolution=0), "naive": SweepPlan((1.0, 2.0), bisect_resolution=0)}
    assert _rounds(plans, {"ours": lambda r: 1.0, **naive}) == [
        [("naive", 1.0), ("ours", 1.0)], [("naive", 0.5), ("ours", 2.0)], [("ours", 0.5)]]
    # Ours done with its grid before naive's sweep is: it sits a round out, then runs naive's final sustained rate.
    plans["ours"] = SweepPlan((1.0,), bisect_resolution=0)
    assert _rounds(plans, {"ours": lambda r: 1.0, **naive}) == [
        [("naive", 1.0), ("ours", 1.0)], [("naive", 0.5)], [("ours", 0.5)]]
    # A system that sustains no rate adds its best rate (the lowest of equals); one system alone is just its sweep.
    assert _rounds(plans, {"ours": lambda r: 1.0, "naive": lambda r: 0.0}) == [
        [("naive", 1.0), ("ours", 1.0)], [("naive", 0.5)], [("naive", 0.25)], [("ours", 0.25)]]
    assert _rounds(plans, {"ours": lambda r: 1.0, "naive": lambda r: 0.8 if r == 0.5 else 0.3})[-1] == [("ours", 0.5)]
    assert _rounds({"external": SweepPlan((1.0, 2.0), bisect_resolution=0)}, {"external": lambda r: 1.0},
                   first="external") == [[("external", 1.0)], [("external", 2.0)]]


def test_tpot_is_compared_at_the_highest_rate_both_sustain():
    def run(rate, att, p99):
        return {"rate": rate, "attainment": att, "tpot_ms": {"p99": p99}}

    ours = [run(0.1, 1.0, 10.0), run(0.2, 0.95, 12.0), run(0.4, 0.9, 15.0), run(0.8, 0.4, 40.0)]
    naive = [run(0.1, 0.92, 30.0), run(0.2, 0.95, 20.0), run(0.4, 0.6, 60.0)]
    assert common_sustained_rate(ours, naive) == 0.2 and sustained_rate(ours) == 0.4 and sustained_rate(naive) == 0.2
    assert tpot_p99_comparisons({"ours": ours, "naive": naive}) == {
        "ours / naive": {"rate": 0.2, "p99_tpot_ms": [12.0, 20.0], "ratio": 0.6, "both_sustain": True}}
    assert sustained_rate([run(0.1, 0.5, 9.0)]) is None
    # One that sustains no rate: compared at its best rate, if ours ran it; a sustained one never falls back.
    none = [run(0.1, 0.5, 9.0), run(0.2, 0.8, 18.0), run(0.4, 0.8, 30.0)]
    assert tpot_p99_comparisons({"ours": ours, "x": none}) == {
        "ours / x": {"rate": 0.2, "p99_tpot_ms": [12.0, 18.0], "ratio": 0.667, "both_sustain": False}}
    assert tpot_p99_comparisons({"ours": ours[2:], "x": none}) == {"ours / x": None}
    assert tpot_p99_comparisons({"ours": ours[3:], "naive": naive}) == {"ours / naive": None}


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
            "--bisect-resolution", "0", "--slow-host-factor", "0", "--out", str(tmp_path)]
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
    # The calibration ran again after the sweep; the SLOs are never tighter than at the start; host speed per round.
    assert len(results["recalibrations"]) == 1 and results["recalibrations"][0]["calibration"]["external"]["ttft_ms"]
    assert results["slos"]["tpot_ms"] >= results["slos_at_start"]["tpot_ms"]
    assert all(results["slos"]["ttft_ms"][k] >= v for k, v in results["slos_at_start"]["ttft_ms"].items())
    assert results["host_speed"] and all(h["batch_tpot_ms"] > 0 for h in results["host_speed"])
    assert all(run["host_batch_tpot_ms"] > 0 for run in runs)  # each run carries its round's host speed
    # --extend with the same method: nothing new to run, every run kept, the extension recorded.
    assert bench_serving.main(["--url", mllm_server.grpc_url, "--bisect-resolution", "0", "--extend",
                               str(tmp_path)]) == 0
    extended = json.loads((tmp_path / "results.json").read_text())
    assert extended["systems"]["external"]["runs"] == runs and len(extended["extended"]) == 1
    assert (tmp_path / "results.before-extend.json").exists()
    # --slos-from: another run hinted and judged by this folder's SLOs instead of its own calibration's.
    # And with every round taken for a slow spell (factor 0.01): each runs twice, the first attempt set aside.
    again = tmp_path / "again"
    assert bench_serving.main(argv[:-1] + [str(again), "--slos-from", str(tmp_path), "--slow-host-factor", "0.01",
                                           "--slow-retries", "1"]) == 0
    redone = json.loads((again / "results.json").read_text())
    assert redone["slos"] == results["slos"]
    assert len(redone["discarded_rounds"]) * 2 == redone["num_rounds"] == len(redone["host_speed"]) - 1
    assert all(len(d["host_batch_tpot_ms"]) == 2 for d in redone["discarded_rounds"])  # the probes before and after
    assert all(run["host_slow"] for run in redone["systems"]["external"]["runs"])  # out of retries: counted, marked
    assert "recalibrations" not in redone  # --slos-from: the SLOs are given
    # Without given SLOs, a slow round first has the calibration run again (a lasting spell loosens the SLOs).
    spell = tmp_path / "spell"
    assert bench_serving.main(argv[:-3] + ["0.01", "--slow-retries", "1", "--out", str(spell)]) == 0
    spelled = json.loads((spell / "results.json").read_text())
    whys = [r["why"] for r in spelled["recalibrations"]]
    assert whys[0].startswith("round 1 ran at") and spelled["discarded_rounds"][0]["round"] == 1
    # 0.01 x any calibration is still slow: every slow round re-calibrated first, then ran again (how many rounds
    # there are depends on the attainment the tiny server reaches, so only the pairing is checked).
    assert all(any(w.startswith(f"round {d['round']} ran at") for w in whys) for d in spelled["discarded_rounds"])


def test_the_cross_run_summary_reads_every_folder(tmp_path):
    import bench_serving_markdown

    def run(rate, att, p99):
        return {"rate": rate, "attainment": att, "num_requests": 24, "num_errors": 0, "output_tok_per_s": 5.0,
                "tpot_ms": {"p50": 9.0, "p99": p99}, "ttft_ms": {"p50": 50.0, "p99": 90.0}}

    folders = []
    for seed, naive_goodput in ((0, 0.2), (1, 0.1)):
        ours = [run(0.1, 1.0, 12.0), run(0.2, 0.95, 15.0), run(0.6, 0.9, 16.0), run(0.9, 0.3, 30.0)]
        naive = [run(0.1, 0.95, 30.0), run(0.2, 0.92 if seed == 0 else 0.5, 40.0)]
        results = {"args": {"seed": str(seed)}, "systems": {
            "ours": {"runs": ours, "goodput": {"interpolated": 0.6}},
            "naive": {"runs": naive, "goodput": {"interpolated": naive_goodput}}}}
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(folder)
    table = bench_serving_markdown.summary_table(folders)
    assert "| naive | 0.200 / 0.100 | 3.00x / 6.00x | **4.50x** |" in table
    assert "0.2 req/s: 15.0 vs 40.0 ms (0.38x) / 0.1 req/s: 12.0 vs 30.0 ms (0.40x) | **0.39x** |" in table
    assert "| ours | 0 of 96 | 0 of 96 |" in table
    runs = bench_serving_markdown.runs_table(json.loads((folders[0] / "results.json").read_text()))
    assert "| naive | 0.2 | 24 | 0 | 92.0% | 50.0 / 90.0 | 9.0 / 40.0 | 5.0 |" in runs
