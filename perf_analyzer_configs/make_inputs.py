"""Write perf_analyzer --input-data JSON files for the `mllm` ensemble, one per scenario.

    .venv/bin/python perf_analyzer_configs/make_inputs.py [--video-dir artifacts/videos]
        [--out perf_analyzer_configs/generated] [--max-tokens 32] [--num-frames N] [--max-video-bytes N]

Scenarios (file <out>/<scenario>.json):
  text_only  - a question, no video
  video_url  - a question + `video_url` = file:// path of a sample video (the server must list the video
               folder in MLLM_MEDIA_ROOTS)
  video_b64  - a question + `video_bytes` = the file's contents, given to perf_analyzer as {"b64": ...}
  mixed      - video_url entries and text_only entries interleaved

Every entry also carries max_tokens, ignore_eos=true (every request generates exactly max_tokens, so runs are
comparable) and stream=true (one response per token: perf_analyzer's response timestamps give TTFT and
inter-token latency). The files hold absolute paths / file contents of this checkout, hence generated, not
committed. perf_analyzer cycles through a file's entries, one per request.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov"}
QUESTIONS = [
    "What happens in this video?",
    "Describe the scene in one sentence.",
    "What colors do you see?",
    "Is anything moving? Answer briefly.",
]
TEXT_QUESTIONS = [
    "Hello! Who are you?",
    "Write one sentence about the sea.",
    "What is two plus two?",
]
SCENARIOS = ("text_only", "video_url", "video_b64", "mixed")


def pick_videos(video_dir: Path, max_bytes: int) -> list[Path]:
    """Sample videos small enough to send per request (the long 60 s / 600 s clips would swamp a CPU run)."""
    videos = sorted(p for p in video_dir.iterdir()
                    if p.suffix.lower() in VIDEO_SUFFIXES and 0 < p.stat().st_size <= max_bytes)
    if not videos:
        raise SystemExit(f"no video files <= {max_bytes} bytes in {video_dir}")
    return videos


def bytes_tensor_b64(data: bytes) -> dict:
    """perf_analyzer sends a "b64" value as the raw tensor: for a BYTES tensor that is each element
    prefixed by its little-endian uint32 length (Triton's serialized string tensor), not the bare bytes."""
    return {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode("ascii")}


def common(max_tokens: int, num_frames: int | None) -> dict:
    fields: dict = {"max_tokens": [max_tokens], "ignore_eos": [True], "stream": [True]}
    if num_frames:
        fields["num_frames"] = [num_frames]
    return fields


def text_entries(max_tokens: int) -> list[dict]:
    return [{"text_input": [q], **common(max_tokens, None)} for q in TEXT_QUESTIONS]


def url_entries(videos: list[Path], max_tokens: int, num_frames: int | None) -> list[dict]:
    return [{"text_input": [QUESTIONS[i % len(QUESTIONS)]], "video_url": [v.resolve().as_uri()],
             **common(max_tokens, num_frames)} for i, v in enumerate(videos)]


def b64_entries(videos: list[Path], max_tokens: int, num_frames: int | None) -> list[dict]:
    return [{"text_input": [QUESTIONS[i % len(QUESTIONS)]], "video_bytes": bytes_tensor_b64(v.read_bytes()),
             **common(max_tokens, num_frames)} for i, v in enumerate(videos)]


def interleave(a: list[dict], b: list[dict]) -> list[dict]:
    out = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


def build(video_dir: Path, max_tokens: int, num_frames: int | None, max_bytes: int) -> dict[str, list[dict]]:
    videos = pick_videos(video_dir, max_bytes)
    urls = url_entries(videos, max_tokens, num_frames)
    texts = text_entries(max_tokens)
    return {"text_only": texts, "video_url": urls,
            "video_b64": b64_entries(videos, max_tokens, num_frames), "mixed": interleave(urls, texts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video-dir", type=Path, default=REPO / "artifacts" / "videos")
    ap.add_argument("--out", type=Path, default=HERE / "generated")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--num-frames", type=int, default=None, help="fixed frame count (default: server's rule)")
    ap.add_argument("--max-video-bytes", type=int, default=1 << 20, help="skip larger videos (default 1 MiB)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, entries in build(args.video_dir, args.max_tokens, args.num_frames, args.max_video_bytes).items():
        path = args.out / f"{name}.json"
        path.write_text(json.dumps({"data": entries}, indent=1) + "\n")
        print(f"wrote {path} ({len(entries)} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
