"""bench_serving: replay a trace against a running tritonserver over gRPC streaming; client-side timestamps.

One asyncio event loop and one gRPC channel; every request gets its own bidirectional stream (what a chat
front end does), so an error response is attributed to its request (on a shared stream Triton's error
responses carry no request id). Request tensors are built before the clock starts, so serialising a 12 MB
video does not delay the next arrival; times are ``time.perf_counter()`` when a response reaches the client.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from bench_serving_trace import TraceRequest

MODEL = "mllm"


@dataclass(frozen=True)
class Hints:
    """Scheduling hints a request carries (our stack plans with them; the naive stack ignores them)."""

    ttft_slo_ms: float | None = None
    tpot_slo_ms: float | None = None


@dataclass
class RequestResult:
    request_id: str
    class_name: str
    arrival_s: float  # when it was due, from the trace start
    sent_s: float | None = None  # when it was handed to gRPC
    response_s: list[float] = field(default_factory=list)  # each response (a text delta, or the final one)
    end_s: float | None = None  # the final response (it carries the last delta)
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        """Arrival to the first response: the first visible text (servers send no empty deltas)."""
        return None if self.error or not self.response_s else (self.response_s[0] - self.arrival_s) * 1e3

    @property
    def tpot_ms(self) -> float | None:
        """Mean time per output token after the first (vLLM's TPOT: (e2e - TTFT) / (tokens - 1))."""
        if self.error or not self.response_s or self.end_s is None or self.num_output_tokens < 2:
            return None
        return (self.end_s - self.response_s[0]) * 1e3 / (self.num_output_tokens - 1)

    @property
    def e2e_ms(self) -> float | None:
        return None if self.error or self.end_s is None else (self.end_s - self.arrival_s) * 1e3

    @property
    def gaps_ms(self) -> list[float]:
        return np.diff(np.asarray(self.response_s)).tolist() if len(self.response_s) > 1 else []


def _tensor(name: str, value, dtype: str) -> grpcclient.InferInput:
    arr = np.array([value], dtype={"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32,
                                   "BOOL": np.bool_}[dtype])
    tensor = grpcclient.InferInput(name, [1], dtype)
    tensor.set_data_from_numpy(arr)
    return tensor


def build_inputs(req: TraceRequest, video_bytes: bytes | None, hints: Hints) -> list[grpcclient.InferInput]:
    # Sampled, not greedy: greedy decoding of a random-weight model repeats one token, often a special one
    # that streams as empty text until the end, which would hide every token time. The seed is the request's.
    inputs = [_tensor("text_input", req.prompt.encode(), "BYTES"), _tensor("max_tokens", req.max_tokens, "INT32"),
              _tensor("ignore_eos", True, "BOOL"), _tensor("stream", True, "BOOL"),
              _tensor("temperature", 1.0, "FP32"), _tensor("seed", zlib.crc32(req.request_id.encode()), "INT64")]
    if video_bytes is not None:
        inputs += [_tensor("video_bytes", video_bytes, "BYTES"),
                   _tensor("num_frames", req.request_class.num_frames, "INT32")]
    if hints.ttft_slo_ms is not None:
        inputs.append(_tensor("ttft_slo_ms", hints.ttft_slo_ms, "FP32"))
    if hints.tpot_slo_ms is not None:
        inputs.append(_tensor("tpot_slo_ms", hints.tpot_slo_ms, "FP32"))
    return inputs


def _first(result: grpcclient.InferResult, name: str):
    arr = result.as_numpy(name)
    return None if arr is None or arr.size == 0 else arr.reshape(-1)[0]


async def _send_one(client: grpcaio.InferenceServerClient, req: TraceRequest, inputs: list, t0: float,
                    timeout_s: float, on_done: Callable[[], None]) -> RequestResult:
    out = RequestResult(req.request_id, req.request_class.name, req.arrival_s)
    await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.perf_counter()))
    done = asyncio.Event()

    async def requests():
        yield {"model_name": MODEL, "inputs": inputs, "request_id": req.request_id,
               "parameters": {"triton_enable_empty_final_response": True}}
        await done.wait()  # keep our side of the stream open until the last response is in

    out.sent_s = time.perf_counter() - t0
    stream = client.stream_infer(requests())
    try:
        async with asyncio.timeout(timeout_s):
            async for result, error in stream:
                now = time.perf_counter() - t0
                if error is not None:
                    out.error = str(error)
                    break
                if result.get_response().outputs:  # not the empty final-flag response some servers add
                    out.response_s.append(now)
                reason = _first(result, "finish_reason")
                if reason:
                    out.finish_reason = reason.decode() if isinstance(reason, bytes) else str(reason)
                    out.num_input_tokens = int(_first(result, "num_input_tokens") or 0)
                    out.num_output_tokens = int(_first(result, "num_output_tokens") or 0)
                if result.get_response().parameters["triton_final_response"].bool_param:
                    out.end_s = now
                    break
            else:
                out.error = out.error or "the stream ended without a final response"
    except TimeoutError:
        out.error = f"no final response within {timeout_s:.0f} s"
    except Exception as exc:  # noqa: BLE001 — a broken connection is this request's error, not the end of the run
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        done.set()
        stream.cancel()
        on_done()
    if out.error is None and out.end_s is None:
        out.error = "no final response"
    return out


async def _replay(url: str, trace: list[TraceRequest], videos: dict[str, bytes], hints: dict[str, Hints],
                  timeout_s: float, on_done: Callable[[], None]) -> list[RequestResult]:
    payloads = [build_inputs(r, videos.get(r.request_class.video) if r.request_class.video else None,
                             hints.get(r.request_class.name, Hints())) for r in trace]
    async with grpcaio.InferenceServerClient(url) as client:
        t0 = time.perf_counter() + 0.2
        return list(await asyncio.gather(*(_send_one(client, r, p, t0, timeout_s, on_done)
                                           for r, p in zip(trace, payloads, strict=True))))


def replay(url: str, trace: list[TraceRequest], videos: dict[str, bytes], hints: dict[str, Hints],
           timeout_s: float = 600.0, on_done: Callable[[], None] = lambda: None) -> list[RequestResult]:
    """Send every trace request at its arrival time; returns one result per request, in trace order."""
    return asyncio.run(_replay(url, trace, videos, hints, timeout_s, on_done))
