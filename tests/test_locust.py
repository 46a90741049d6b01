"""scripts/locustfile.py runs headless against the real `mllm` ensemble and reports clean POST and TTFT rows."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCUST = Path(sys.executable).parent / "locust"


def test_locust_headless(mllm_server, sample_video_dir, tmp_path):
    cmd = [str(LOCUST), "-f", str(REPO / "scripts" / "locustfile.py"), "--headless", "-u", "2", "-r", "2",
           "-t", "8s", "--host", mllm_server.http_url, "--csv", str(tmp_path / "x"), "--only-summary",
           "--video-dir", str(sample_video_dir), "--max-tokens", "4", "--seed", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # locust exits 1 when any request failed: show its summary and failures table then.
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    with open(tmp_path / "x_stats.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Type"]]  # the Aggregated row has no Type
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(row["Type"], []).append(row)
    assert set(by_type) >= {"POST", "TTFT"}, rows

    posts = {r["Name"]: r for r in by_type["POST"]}
    # The seeded mix holds both kinds, and every request streamed text to its final event.
    assert set(posts) == {"generate_stream:video", "generate_stream:text"}, posts.keys()
    for row in by_type["POST"] + by_type["TTFT"]:
        assert int(row["Request Count"]) > 0 and int(row["Failure Count"]) == 0, row
    for row in posts.values():
        # response_length is the streamed text (locust's stream=True default would be the absent
        # content-length, 0), so > 0 shows the whole stream was read before the request was reported.
        assert float(row["Average Content Size"]) > 0, row
    assert {r["Name"] for r in by_type["TTFT"]} == {"video", "text"}
