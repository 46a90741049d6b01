"""perf_analyzer (tritonclient 2.51 binary) drives the real `mllm` ensemble through scripts/perf_analyzer.sh.

Each scenario runs a few seconds over gRPC streaming (concurrency 1 then 2, count windows of 4 requests,
4 tokens per request) and must exit 0, report a throughput > 0 per concurrency level, and export per-request
response timestamps (what TTFT and inter-token latency are computed from).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "perf_analyzer_configs"))
from profile_stats import experiment_stats, load_profile  # noqa: E402

SCRIPT = REPO / "scripts" / "perf_analyzer.sh"
MAX_TOKENS = 4
THROUGHPUT = re.compile(r"^Concurrency: (\d+), throughput: ([0-9.]+) infer/sec", re.MULTILINE)


def run_scenario(scenario: str, server, video_dir: Path, tmp: Path) -> tuple[str, dict]:
    """Run the script for `scenario`; returns perf_analyzer's stdout and the parsed profile export."""
    profile = tmp / f"{scenario}-profile.json"
    cmd = ["bash", str(SCRIPT), scenario, "--url", server.grpc_url, "--video-dir", str(video_dir),
           "--inputs-dir", str(tmp / "inputs"), "--max-tokens", str(MAX_TOKENS),
           "--concurrency-range", "1:2", "--measurement-mode", "count_windows",
           "--measurement-request-count", "4", "--stability-percentage", "999", "--max-trials", "5",
           "--profile-export-file", str(profile)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "+ LD_LIBRARY_PATH=" in proc.stderr and "--streaming" in proc.stderr  # the command is printed
    return proc.stdout, load_profile(profile)


def check_run(stdout: str, profile: dict) -> list[dict]:
    """Throughput > 0 at concurrency 1 and 2; every exported request streamed MAX_TOKENS tokens."""
    levels = {int(c): float(t) for c, t in THROUGHPUT.findall(stdout)}
    assert set(levels) == {1, 2}, stdout[-2000:]
    assert all(t > 0 for t in levels.values()), levels
    experiments = profile["experiments"]
    assert [e["experiment"] for e in experiments] == [{"mode": "concurrency", "value": 1},
                                                      {"mode": "concurrency", "value": 2}]
    requests = [r for e in experiments for r in e["requests"]]
    assert len(requests) >= 8
    for req in requests:
        stamps = req["response_timestamps"]
        assert stamps and stamps == sorted(stamps) and stamps[0] > req["timestamp"], req.keys()
        outputs = [o for o in req["response_outputs"] if "num_output_tokens" in o]
        # ignore_eos + max_tokens reached the engine: the last delta reports exactly MAX_TOKENS tokens.
        assert outputs[-1]["num_output_tokens"] == MAX_TOKENS, outputs
    for experiment in experiments:  # what the README's TTFT/ITL summary prints
        stats = experiment_stats(experiment)
        assert stats["requests"] == len(experiment["requests"]) and 0 < stats["itl_p50_ms"] < stats["ttft_p99_ms"]
    return requests


def input_tokens(requests: list[dict]) -> list[int]:
    return [o["num_input_tokens"] for r in requests for o in r["response_outputs"] if "num_input_tokens" in o]


@pytest.fixture(scope="module")
def text_only_tokens(mllm_server, sample_video_dir, tmp_path_factory) -> int:
    stdout, profile = run_scenario("text_only", mllm_server, sample_video_dir, tmp_path_factory.mktemp("pa"))
    return max(input_tokens(check_run(stdout, profile)))


@pytest.mark.parametrize("scenario", ["video_url", "video_b64"])
def test_perf_analyzer_video_scenario(scenario, mllm_server, sample_video_dir, tmp_path, text_only_tokens):
    stdout, profile = run_scenario(scenario, mllm_server, sample_video_dir, tmp_path)
    requests = check_run(stdout, profile)
    video_input = {"video_url": "video_url", "video_b64": "video_bytes"}[scenario]
    assert all(r["request_inputs"].get(video_input) for r in requests), f"a request without {video_input}"
    # The video reached the model: every prompt holds visual tokens, so it is longer than any text-only one.
    assert min(input_tokens(requests)) > text_only_tokens
