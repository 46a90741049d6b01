"""Small tritonclient helpers for the end-to-end tests: typed inputs, gRPC streams, HTTP SSE."""

from __future__ import annotations

import json
import queue
import uuid
from dataclasses import dataclass, field

import numpy as np
import requests
import tritonclient.grpc as grpcclient

TYPES = {
    "text_input": "BYTES", "video_bytes": "BYTES", "video_url": "BYTES", "stop": "BYTES",
    "max_tokens": "INT32", "num_frames": "INT32", "max_frames": "INT32", "max_pixels": "INT32", "top_k": "INT32",
    "priority": "INT32", "seed": "INT64",
    "fps": "FP32", "start_time": "FP32", "end_time": "FP32",
    "temperature": "FP32", "top_p": "FP32", "ttft_slo_ms": "FP32", "tpot_slo_ms": "FP32",
    "stream": "BOOL", "ignore_eos": "BOOL", "arrival_monotonic_s": "FP64",
}
NP = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64,
      "BOOL": np.bool_}


def grpc_inputs(fields: dict) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in fields.items():
        dtype = TYPES[name]
        values = value if isinstance(value, list) else [value]
        if dtype == "BYTES":
            values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        arr = np.array(values, dtype=NP[dtype])
        inp = grpcclient.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


@dataclass
class StreamResult:
    texts: list[str] = field(default_factory=list)
    error: Exception | None = None
    finish_reason: str = ""
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    num_responses: int = 0

    @property
    def text(self) -> str:
        return "".join(self.texts)


def grpc_stream(url: str, fields: dict, model: str = "mllm", timeout_s: float = 120.0,
                parameters: dict | None = None) -> StreamResult:
    """One request over a gRPC stream; collects every response until the FINAL flag (or an error)."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    out = StreamResult()
    try:
        client.async_stream_infer(model, grpc_inputs(fields), request_id=uuid.uuid4().hex,
                                  enable_empty_final_response=True, parameters=parameters)
        while True:
            result, error = results.get(timeout=timeout_s)
            if error is not None:
                out.error = error
                return out
            response = result.get_response()
            text = result.as_numpy("text_output")
            if text is not None:
                out.num_responses += 1
                out.texts.append(text.reshape(-1)[0].decode("utf-8"))
                out.finish_reason = result.as_numpy("finish_reason").reshape(-1)[0].decode()
                out.num_input_tokens = int(result.as_numpy("num_input_tokens").reshape(-1)[0])
                out.num_output_tokens = int(result.as_numpy("num_output_tokens").reshape(-1)[0])
            if response.parameters["triton_final_response"].bool_param:
                return out
    finally:
        client.stop_stream()
        client.close()


def http_generate_stream(base_url: str, body: dict, model: str = "mllm", timeout_s: float = 120.0) -> list[dict]:
    """POST /generate_stream and return the parsed SSE events (errors arrive as {"error": ...})."""
    url = f"{base_url}/v2/models/{model}/generate_stream"
    events = []
    with requests.post(url, json=body, stream=True, timeout=timeout_s) as resp:
        if resp.status_code != 200:
            return [{"error": resp.text, "status": resp.status_code}]
        for line in resp.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events
