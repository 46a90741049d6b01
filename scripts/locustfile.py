"""Locust load test for the streaming ensemble `mllm` over HTTP /generate_stream (server-sent events).

Headless, 4 users for 60 s, CSVs in bench_out/ (server started with MLLM_MEDIA_ROOTS=<repo>/artifacts/videos):

    .venv/bin/locust -f scripts/locustfile.py --headless -u 4 -r 2 -t 60s --host http://127.0.0.1:8000 \
        --csv bench_out/locust --only-summary [--video-dir artifacts/videos] [--max-tokens 32] \
        [--text-ratio 0.25] [--video-mode file|data] [--num-frames N] [--seed 0]

Each user loops without think time (a closed loop, like perf_analyzer's --concurrency-range): it picks, with
its own seeded RNG, either a text-only question (probability --text-ratio) or a sample video (files of at
most 1 MiB in --video-dir, sent as a file:// URL, or inline as a data: URL with --video-mode data) and posts
{text_input, video_url, max_tokens, ignore_eos: true, stream: true}. Rows in the stats:
  POST  generate_stream:<video|text>  the whole request, first byte sent to the final event (success only
                                      when the stream ends with a finish_reason and carries no error event)
  TTFT  <video|text>                  request start to the first text delta
  TPOT  <video|text>                  mean time per output token after the first
Every option also reads an environment variable (MLLM_LOCUST_VIDEO_DIR, MLLM_LOCUST_MAX_TOKENS, ...).
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from locust import HttpUser, constant, events, task
from requests import RequestException

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "perf_analyzer_configs"))
from make_inputs import QUESTIONS, TEXT_QUESTIONS, pick_videos  # noqa: E402  (one question list for both tools)

PATH = "/v2/models/mllm/generate_stream"
MIME = {".mp4": "video/mp4", ".mkv": "video/x-matroska", ".webm": "video/webm", ".mov": "video/quicktime"}


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("mllm", "requests sent to the mllm ensemble")
    group.add_argument("--video-dir", env_var="MLLM_LOCUST_VIDEO_DIR", default=str(REPO / "artifacts" / "videos"),
                       help="sample videos (the server's MLLM_MEDIA_ROOTS must include it for --video-mode file)")
    group.add_argument("--max-tokens", env_var="MLLM_LOCUST_MAX_TOKENS", type=int, default=32)
    group.add_argument("--text-ratio", env_var="MLLM_LOCUST_TEXT_RATIO", type=float, default=0.25,
                       help="share of text-only questions")
    group.add_argument("--video-mode", env_var="MLLM_LOCUST_VIDEO_MODE", choices=["file", "data"], default="file",
                       help="file: file:// URL; data: the file inline as a base64 data: URL")
    group.add_argument("--num-frames", env_var="MLLM_LOCUST_NUM_FRAMES", type=int, default=0,
                       help="fixed frame count (0: the server's sampling rule)")
    group.add_argument("--seed", env_var="MLLM_LOCUST_SEED", type=int, default=0, help="user i uses seed + i")


def sse_events(lines: Iterator[bytes]) -> Iterator[dict]:
    """JSON payloads of a server-sent-event stream (events end at a blank line; data may span lines)."""
    data: list[str] = []
    for raw in itertools.chain(lines, [b""]):
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield json.loads("\n".join(data))
            data = []


def video_url(path: Path, mode: str) -> str:
    if mode == "file":
        return path.resolve().as_uri()
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"data:{MIME.get(path.suffix.lower(), 'video/mp4')};base64,{payload}"


class MllmUser(HttpUser):
    wait_time = constant(0)
    _ids = itertools.count()

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.opts = opts
        self.rng = random.Random(opts.seed + next(self._ids))
        self.videos = pick_videos(Path(opts.video_dir), 1 << 20)

    def make_request(self) -> tuple[str, dict]:
        body: dict = {"max_tokens": self.opts.max_tokens, "ignore_eos": True, "stream": True}
        if self.rng.random() < self.opts.text_ratio:
            return "text", {"text_input": self.rng.choice(TEXT_QUESTIONS), **body}
        body["video_url"] = video_url(self.rng.choice(self.videos), self.opts.video_mode)
        if self.opts.num_frames:
            body["num_frames"] = self.opts.num_frames
        return "video", {"text_input": self.rng.choice(QUESTIONS), **body}

    def fire(self, request_type: str, kind: str, ms: float) -> None:
        events.request.fire(request_type=request_type, name=kind, response_time=ms, response_length=0,
                            exception=None, context={})

    @task
    def generate_stream(self) -> None:
        kind, body = self.make_request()
        start = time.perf_counter()
        first = last = None
        tokens = length = 0
        finish_reason = ""
        with self.client.post(PATH, json=body, stream=True, catch_response=True,
                              name=f"generate_stream:{kind}") as resp:
            try:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:300]}")
                    return
                for event in sse_events(resp.iter_lines()):
                    if "error" in event:
                        resp.failure(f"error event: {event['error']}")
                        return
                    last = time.perf_counter()
                    text = event.get("text_output", "")
                    length += len(text.encode())
                    if first is None and text:
                        first = last
                        self.fire("TTFT", kind, (first - start) * 1000)
                    tokens = int(event.get("num_output_tokens", tokens))
                    finish_reason = event.get("finish_reason") or finish_reason
                if not finish_reason:
                    resp.failure(f"stream ended without a finish_reason after {tokens} tokens")
                elif first is None:
                    resp.failure("stream carried no text")
                else:
                    resp.success()
                    if tokens > 1:
                        self.fire("TPOT", kind, (last - first) * 1000 / (tokens - 1))
            except (RequestException, ValueError) as exc:  # a broken stream or bad JSON fails the request
                resp.failure(f"{type(exc).__name__}: {exc}")
            finally:
                # With stream=True locust timed only the headers: report the whole streamed answer instead.
                resp.request_meta["response_time"] = (time.perf_counter() - start) * 1000
                resp.request_meta["response_length"] = length
