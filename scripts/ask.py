#!/usr/bin/env python
"""Ask the served model a question about a video and stream the answer.

    python scripts/ask.py --video artifacts/videos/h264_bf_320x240_2s_gop12.mp4 "What happens in this video?"
    python scripts/ask.py --http --video clip.mp4 "Describe it"          # HTTP /generate_stream instead of gRPC
    python scripts/ask.py "Hello"                                         # text only

Prints the answer as it streams, then time to first token and tokens/s (client-side timestamps).
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import sys
import time
import uuid

import numpy as np


def _request_fields(args: argparse.Namespace) -> dict:
    fields: dict = {"text_input": args.question, "max_tokens": args.max_tokens, "stream": True}
    for name in ("num_frames", "fps", "temperature", "top_p", "top_k", "seed"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields


def ask_grpc(args: argparse.Namespace, video: bytes | None, on_text) -> dict:
    import tritonclient.grpc as grpcclient

    types = {"max_tokens": ("INT32", np.int32), "num_frames": ("INT32", np.int32), "top_k": ("INT32", np.int32),
             "seed": ("INT64", np.int64), "fps": ("FP32", np.float32), "temperature": ("FP32", np.float32),
             "top_p": ("FP32", np.float32), "stream": ("BOOL", np.bool_)}
    inputs = []
    for name, value in _request_fields(args).items():
        if name == "text_input":
            arr, dtype = np.array([value.encode()], dtype=np.object_), "BYTES"
        else:
            dtype, np_type = types[name]
            arr = np.array([value], dtype=np_type)
        inputs.append(grpcclient.InferInput(name, list(arr.shape), dtype))
        inputs[-1].set_data_from_numpy(arr)
    if video is not None:
        inputs.append(grpcclient.InferInput("video_bytes", [1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([video], dtype=np.object_))
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(args.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    stats: dict = {}
    try:
        client.async_stream_infer(args.model, inputs, request_id=uuid.uuid4().hex,
                                  enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=args.timeout)
            if error is not None:
                raise RuntimeError(f"server error: {error}")
            text = result.as_numpy("text_output")
            if text is not None and text.size:
                on_text(text.reshape(-1)[0].decode("utf-8", errors="replace"))
                stats["num_output_tokens"] = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
                stats["num_input_tokens"] = int(result.as_numpy("num_input_tokens").reshape(-1)[0])
                stats["finish_reason"] = result.as_numpy("finish_reason").reshape(-1)[0].decode()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return stats
    finally:
        client.stop_stream()
        client.close()


def ask_http(args: argparse.Namespace, video: bytes | None, on_text) -> dict:
    import requests

    body = _request_fields(args)
    if video is not None:
        body["video_url"] = "data:video/mp4;base64," + base64.b64encode(video).decode()
    url = f"{args.http_url.rstrip('/')}/v2/models/{args.model}/generate_stream"
    stats: dict = {}
    with requests.post(url, json=body, stream=True, timeout=args.timeout) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(f"server error: {event['error']}")
            on_text(event.get("text_output", ""))
            for key in ("num_output_tokens", "num_input_tokens", "finish_reason"):
                if key in event:
                    stats[key] = event[key]
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("question")
    ap.add_argument("--video", help="video file to send (bytes over gRPC, a data: URL over HTTP)")
    ap.add_argument("--http", action="store_true", help="use HTTP /generate_stream instead of gRPC streaming")
    ap.add_argument("--grpc-url", default="localhost:8001")
    ap.add_argument("--http-url", default="http://localhost:8000")
    ap.add_argument("--model", default="mllm")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-frames", type=int)
    ap.add_argument("--fps", type=float)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    video = None
    if args.video:
        with open(args.video, "rb") as f:
            video = f.read()

    start = time.perf_counter()
    marks: list[float] = []

    def on_text(text: str) -> None:
        if text:
            marks.append(time.perf_counter())
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        stats = (ask_http if args.http else ask_grpc)(args, video, on_text)
    except Exception as exc:  # noqa: BLE001 - a CLI: show the message, exit non-zero
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    end = time.perf_counter()
    print()
    n_out = stats.get("num_output_tokens", 0)
    ttft = (marks[0] - start) if marks else float("nan")
    decode_s = end - marks[0] if marks else float("nan")
    rate = (n_out - 1) / decode_s if n_out > 1 and decode_s > 0 else float("nan")
    print(f"[{'http' if args.http else 'grpc'}] time to first token {ttft * 1000:.0f} ms, {n_out} tokens, "
          f"{rate:.1f} tokens/s after the first, prompt {stats.get('num_input_tokens', '?')} tokens, "
          f"finish_reason={stats.get('finish_reason', '?')}, total {(end - start) * 1000:.0f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
