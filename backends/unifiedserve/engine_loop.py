"""Drives an Engine from one background thread for servers (the Triton adapter), with callbacks per request.

Other threads call `submit` / `abort`; commands go through a queue and are applied between steps, so the
Engine itself stays single-threaded. Callbacks run on the loop thread: keep them cheap (enqueue, return).
If a step raises, every in-flight request gets a final error output and the loop keeps serving.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from unifiedserve.engine import Engine
from unifiedserve.errors import EngineError, OverloadedError
from unifiedserve.outputs import RequestOutput
from unifiedserve.request import Request

OutputCallback = Callable[[RequestOutput], None]
log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, engine: Engine, idle_wait_s: float = 0.05) -> None:
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._callbacks: dict[str, OutputCallback] = {}
        self._idle_wait_s = idle_wait_s
        self._stop = threading.Event()
        self._submit_lock = threading.Lock()  # makes "not stopped -> enqueue" atomic w.r.t. shutdown
        self._thread = threading.Thread(target=self._run, name="unifiedserve-engine", daemon=True)
        self._thread.start()

    # ---- called from any thread ---------------------------------------------------------------
    def submit(self, request: Request, on_output: OutputCallback) -> None:
        with self._submit_lock:
            if self._stop.is_set():
                raise OverloadedError("the engine is shutting down")
            if self._commands.qsize() + len(self._callbacks) >= self.engine.config.max_waiting_requests:
                raise OverloadedError(
                    f"the engine already holds {len(self._callbacks)} requests (max_waiting_requests); retry later"
                )
            self._commands.put(("add", request, on_output))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        with self._submit_lock:
            self._stop.set()
            self._commands.put(("wake", None, None))
        self._thread.join(timeout_s)

    @property
    def num_in_flight(self) -> int:
        return len(self._callbacks)

    # ---- the loop thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._apply_commands(block=not self.engine.has_unfinished())
            if not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001 — a bug or device failure: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(EngineError(f"engine step failed: {type(exc).__name__}: {exc}"))
                continue
            for out in outputs:
                self._deliver(out)
        error = OverloadedError("the server is shutting down")
        self._fail_all(error)
        # Fix: requests accepted by submit() but not yet applied (submitted while a step ran) used to get no
        # output at all, so their clients waited forever. The submit lock guarantees none arrive after this.
        while True:
            try:
                kind, payload, callback = self._commands.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                self._callbacks[payload.request_id] = callback
                self._deliver(RequestOutput(payload.request_id, finished=True, finish_reason="error", error=error))

    def _apply_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=self._idle_wait_s) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload, callback = cmd
            if kind == "add":
                self._add(payload, callback)
            elif kind == "abort":
                out = self.engine.abort(payload)
                if out is not None:
                    self._deliver(out)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, request: Request, callback: OutputCallback) -> None:
        if request.request_id in self._callbacks:
            error = EngineError(f"request id {request.request_id!r} is already in flight")
            callback(RequestOutput(request.request_id, finished=True, finish_reason="error", error=error))
            return
        self._callbacks[request.request_id] = callback
        try:
            self.engine.add_request(request)
        except Exception as exc:  # noqa: BLE001 — any failure becomes this request's error
            self._deliver(RequestOutput(request.request_id, finished=True, finish_reason="error", error=exc))

    def _deliver(self, out: RequestOutput) -> None:
        callback = self._callbacks.pop(out.request_id, None) if out.finished else self._callbacks.get(out.request_id)
        if callback is None:
            return
        try:
            callback(out)
        except Exception:  # noqa: BLE001 — a broken callback must not stop the loop
            log.exception("output callback for %s failed", out.request_id)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self._callbacks):
            self.engine.abort(request_id)
            self._deliver(RequestOutput(request_id, finished=True, finish_reason="error", error=error))
