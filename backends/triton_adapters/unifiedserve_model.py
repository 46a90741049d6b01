"""Triton adapter for the decoupled `unifiedserve` model (the vllm_backend pattern).

execute() parses and preprocesses each request, hands it to the EngineLoop thread and returns None.
A response thread sends deltas (or one final response), a watcher polls cancellation. Every request
gets exactly one FINAL response: text, an error, or CANCELLED.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_adapters.engine_params import engine_config_from_parameters, triton_parameters
from triton_adapters.errors import cancelled_error, to_triton_error
from triton_adapters.metrics import UnifiedServeMetrics
from triton_adapters.request_fields import parse_generate_request, scalar
from unifiedserve import Engine, GenerationInput, VideoInput
from unifiedserve.engine_loop import EngineLoop
from unifiedserve.gc_heap import freeze_startup_heap
from unifiedserve.outputs import RequestOutput

# Read by the python backend itself, not the engine (config.pbtxt sets FORCE_CPU_ONLY_INPUT_TENSORS "no").
PYTHON_BACKEND_KEYS = ("FORCE_CPU_ONLY_INPUT_TENSORS", "EXECUTION_ENV_PATH")
TENSOR_INPUTS = ("text_input", "frames", "sample_fps", "video_key", "max_tokens", "temperature", "top_p", "top_k",
                 "seed", "stop", "stream", "ignore_eos", "priority", "ttft_slo_ms", "tpot_slo_ms",
                 "arrival_monotonic_s")
CANCEL_POLL_S = 0.1


@dataclass
class InFlight:
    request_id: str
    triton_request: object
    sender: object
    stream: bool
    texts: list[str] = field(default_factory=list)
    cancelled: bool = False
    # The final response releases the backend's response factory: asking is_cancelled() after it crashed
    # tritonserver 2.51 (SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled, seen in a fresh-clone CI run).
    # `lock` orders the final send against the watcher's poll; `final_sent` tells the watcher to stop asking.
    lock: threading.Lock = field(default_factory=threading.Lock)
    final_sent: bool = False


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("unifiedserve must be decoupled (model_transaction_policy)")
        params = {k: v for k, v in triton_parameters(model_config).items() if k not in PYTHON_BACKEND_KEYS}
        self.default_max_tokens = int(params.get("default_max_tokens") or 256)
        self.logger = pb_utils.Logger
        self.engine = Engine(engine_config_from_parameters(params))
        self.loop = EngineLoop(self.engine)
        self.metrics = UnifiedServeMetrics({"model": args["model_name"], "version": args["model_version"]})
        self.logger.log_info(f"unifiedserve ready: {self.engine.config}")
        self._ids = itertools.count()
        self._in_flight: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._responses: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._response_loop, daemon=True, name="responses"),
                         threading.Thread(target=self._cancel_watch, daemon=True, name="cancel-watch")]
        for t in self._threads:
            t.start()
        frozen = freeze_startup_heap()  # full GC passes over the loaded model paused steps by ~100-180 ms
        self.logger.log_info(f"unifiedserve: {frozen} start-up objects exempt from garbage collection")

    def execute(self, requests: list) -> None:
        for request in requests:
            self._submit(request)
        return None

    def finalize(self) -> None:
        self.loop.shutdown()  # fails what is still in flight with UNAVAILABLE
        self._responses.put(None)
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.metrics.close()

    # ------------------------------------------------------------------------------------------
    def _submit(self, request) -> None:
        received = time.monotonic()
        sender = request.get_response_sender()
        request_id = f"{request.request_id() or 'req'}-{next(self._ids)}"
        try:
            tensors = _tensors(request)
            parameters = json.loads(request.parameters() or "{}")
            parsed = parse_generate_request(tensors, parameters, self.default_max_tokens)
            frames = tensors.get("frames")
            videos = ()
            if frames is not None and _num_elements(frames) > 0:
                videos = (VideoInput(frames, scalar(tensors, "sample_fps", float, 2.0),
                                     scalar(tensors, "video_key", str)),)
            engine_request = self.engine.make_request(
                request_id, GenerationInput(text=parsed.text, videos=videos), parsed.sampling,
                parsed.priority, parsed.ttft_slo_ms, parsed.tpot_slo_ms,
                arrival_time=scalar(tensors, "arrival_monotonic_s", float, received))  # the engine checks it
            state = InFlight(request_id, request, sender, parsed.stream)
            with self._lock:
                self._in_flight[request_id] = state
            self.loop.submit(engine_request, lambda out, s=state: self._responses.put((s, out)))
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
            with self._lock:
                self._in_flight.pop(request_id, None)
            sender.send(pb_utils.InferenceResponse(error=to_triton_error(exc)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response_loop(self) -> None:
        while True:
            item = self._responses.get()
            if item is None:
                return
            state, out = item
            try:
                with state.lock:
                    self._send(state, out)
                    state.final_sent = state.final_sent or out.finished or out.error is not None
            except Exception as exc:  # noqa: BLE001 - a client that went away must not stop the loop
                self.logger.log_warn(f"sending a response for {state.request_id} failed: {exc}")
            if out.finished:
                with self._lock:
                    self._in_flight.pop(state.request_id, None)
                self.metrics.observe_finished(out.ttft_s, out.tpot_s, state.cancelled)
                if state.cancelled:
                    self.logger.log_info(f"request {state.request_id} cancelled after {out.num_output_tokens} "
                                         "tokens; its KV blocks are free")

    def _send(self, state: InFlight, out: RequestOutput) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if out.error is not None or (out.finish_reason == "abort" and state.cancelled):
            error = cancelled_error() if state.cancelled else to_triton_error(out.error)
            state.sender.send(pb_utils.InferenceResponse(error=error), flags=final)
            return
        if state.stream:
            if out.text_delta or out.finished:
                state.sender.send(_response(out.text_delta, out), flags=final if out.finished else 0)
            return
        state.texts.append(out.text_delta)
        if out.finished:
            state.sender.send(_response("".join(state.texts), out), flags=final)

    def _cancel_watch(self) -> None:
        """Poll cancellation (python_backend has no callback for it) and refresh the engine gauges."""
        while not self._stop.wait(CANCEL_POLL_S):
            try:
                self.metrics.update_engine_state(self.engine.stats())
                with self._lock:
                    states = list(self._in_flight.values())
                for state in states:
                    with state.lock:
                        if state.final_sent or state.cancelled or not state.sender.is_cancelled():
                            continue
                        state.cancelled = True
                    self.loop.abort(state.request_id)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one failure
                self.logger.log_error(f"cancellation watcher: {type(exc).__name__}: {exc}")


def _tensors(request) -> dict:
    """Inputs as numpy; with FORCE_CPU_ONLY_INPUT_TENSORS "no", frames a GPU decoder made arrive on the GPU
    and stay there (a torch CUDA tensor; the engine preprocesses them during execute(), while the request
    still owns the memory)."""
    out = {}
    for name in TENSOR_INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        if tensor.is_cpu():
            out[name] = tensor.as_numpy()
        else:
            from torch.utils.dlpack import from_dlpack

            value = from_dlpack(tensor.to_dlpack())
            out[name] = value if name == "frames" else value.cpu().numpy()
    return out


def _num_elements(value) -> int:
    return int(value.numel()) if hasattr(value, "numel") else int(value.size)


def _response(text: str, out: RequestOutput):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
        pb_utils.Tensor("finish_reason", np.array([(out.finish_reason or "").encode()], dtype=np.object_)),
        pb_utils.Tensor("num_input_tokens", np.array([out.num_prompt_tokens], dtype=np.uint32)),
        pb_utils.Tensor("num_output_tokens", np.array([out.num_output_tokens], dtype=np.uint32)),
    ])


