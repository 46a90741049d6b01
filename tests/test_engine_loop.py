"""EngineLoop (the server's engine thread) with the real tiny-model Engine: callbacks, exactly one final
output per request, abort, duplicate ids, admission bound, step failures, shutdown."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest
from engine_helpers import synthetic_frames

from unifiedserve import Engine, EngineConfig, GenerationInput, OverloadedError, SamplingParams, VideoInput
from unifiedserve.engine_loop import EngineLoop
from unifiedserve.outputs import RequestOutput

WAIT_S = 60.0
LONG = SamplingParams(max_tokens=4000, ignore_eos=True)  # runs until aborted / shut down


class Collector:
    """Records outputs per request id; `done(id)` is set when the final output arrives."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[RequestOutput]] = defaultdict(list)
        self.finished: dict[str, threading.Event] = defaultdict(threading.Event)
        self.first: dict[str, threading.Event] = defaultdict(threading.Event)
        self.after_final: list[RequestOutput] = []
        self.lock = threading.Lock()

    def callback(self, key: str | None = None):
        def on_output(out: RequestOutput) -> None:
            name = key or out.request_id
            with self.lock:
                if self.finished[name].is_set():
                    self.after_final.append(out)
                self.outputs[name].append(out)
            self.first[name].set()
            if out.finished:
                self.finished[name].set()
        return on_output

    def wait(self, name: str) -> list[RequestOutput]:
        assert self.finished[name].wait(WAIT_S), f"{name} never finished"
        return self.outputs[name]

    def final(self, name: str) -> RequestOutput:
        outs = self.wait(name)
        assert [o.finished for o in outs].count(True) == 1 and outs[-1].finished, f"{name}: {outs}"
        return outs[-1]


@pytest.fixture(scope="module")
def engine(tiny_model_path) -> Engine:
    return Engine(EngineConfig(model_path=tiny_model_path, dtype="float32", device="cpu", max_waiting_requests=4))


@pytest.fixture
def loop(engine) -> Iterator[EngineLoop]:
    loop = EngineLoop(engine, idle_wait_s=0.01)
    yield loop
    loop.shutdown()
    assert not loop._thread.is_alive()
    assert not engine.has_unfinished() and not engine.requests
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # nothing leaked, whatever happened


def _inputs() -> list[GenerationInput]:
    return [
        GenerationInput(text="What happens in this video?", videos=(VideoInput(synthetic_frames(4, 56, 56, 1)),)),
        GenerationInput(text="Tell me a story."),
        # 30x45 is not a multiple of 28: the engine resizes it (smart_resize) before patchifying.
        GenerationInput(text="Count to ten.", videos=(VideoInput(synthetic_frames(3, 30, 45, 2), sample_fps=1.0),)),
    ]


def test_every_request_gets_exactly_one_final_output(engine, loop) -> None:
    got = Collector()
    params = [SamplingParams(max_tokens=n) for n in (12, 5, 20)]
    reqs = [engine.make_request(f"r{i}", x, p) for i, (x, p) in enumerate(zip(_inputs(), params, strict=True))]
    for req in reqs:
        loop.submit(req, got.callback())
    eos = engine.processor.eos_token_ids
    for req, p in zip(reqs, params, strict=True):
        final = got.final(req.request_id)
        outs = got.outputs[req.request_id]
        assert final.finish_reason in ("stop", "length") and final.error is None
        tokens = [t for o in outs for t in o.token_ids_delta]
        assert tokens == req.output_token_ids and len(tokens) <= p.max_tokens
        text = "".join(o.text_delta for o in outs)
        assert text == engine.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        assert final.num_prompt_tokens == req.num_prompt_tokens and final.num_output_tokens == len(tokens)
    time.sleep(0.05)
    assert not got.after_final and loop.num_in_flight == 0


def test_abort_mid_stream(engine, loop) -> None:
    got = Collector()
    req = engine.make_request("long", _inputs()[1], LONG)
    other = engine.make_request("short", _inputs()[0], SamplingParams(max_tokens=8))
    loop.submit(req, got.callback())
    loop.submit(other, got.callback())
    assert got.first["long"].wait(WAIT_S)
    loop.abort("long")
    final = got.final("long")
    assert final.finish_reason == "abort" and final.error is None
    assert 0 < final.num_output_tokens < LONG.max_tokens
    assert got.final("short").finish_reason in ("stop", "length")  # the other request is unaffected
    loop.abort("long")  # aborting again (or an unknown id) is a no-op
    loop.abort("never-existed")
    time.sleep(0.05)
    assert not got.after_final


def test_duplicate_request_id_is_rejected_without_disturbing_the_original(engine, loop) -> None:
    got = Collector()
    original = engine.make_request("dup", _inputs()[1], SamplingParams(max_tokens=30, ignore_eos=True))
    duplicate = engine.make_request("dup", _inputs()[0], SamplingParams(max_tokens=5))
    loop.submit(original, got.callback("original"))
    assert got.first["original"].wait(WAIT_S)
    loop.submit(duplicate, got.callback("duplicate"))
    err = got.final("duplicate")
    assert err.finish_reason == "error" and "already in flight" in str(err.error)
    final = got.final("original")
    assert final.finish_reason == "length" and final.num_output_tokens == 30
    assert [t for o in got.outputs["original"] for t in o.token_ids_delta] == original.output_token_ids


def test_over_capacity_submit_raises_overloaded(engine, loop) -> None:
    got = Collector()
    cap = engine.config.max_waiting_requests
    reqs = [engine.make_request(f"cap{i}", _inputs()[1], LONG) for i in range(cap + 1)]
    for req in reqs[:cap]:
        loop.submit(req, got.callback())
    with pytest.raises(OverloadedError, match="max_waiting_requests"):
        loop.submit(reqs[cap], got.callback())
    for req in reqs[:cap]:
        loop.abort(req.request_id)
    for req in reqs[:cap]:
        assert got.final(req.request_id).finish_reason == "abort"
    assert "cap4" not in got.outputs  # the refused request got no callback: the caller had the exception
    ok = engine.make_request("after", _inputs()[1], SamplingParams(max_tokens=3))
    loop.submit(ok, got.callback())  # room again
    assert got.final("after").finish_reason in ("stop", "length")


def test_a_failing_step_fails_in_flight_requests_and_the_loop_keeps_serving(engine, loop, monkeypatch) -> None:
    got = Collector()
    real_step = engine.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device fell over")
        return real_step()

    monkeypatch.setattr(engine, "step", flaky_step)
    loop.submit(engine.make_request("victim", _inputs()[1], LONG), got.callback())
    final = got.final("victim")
    assert final.finish_reason == "error" and "device fell over" in str(final.error)
    loop.submit(engine.make_request("next", _inputs()[0], SamplingParams(max_tokens=4)), got.callback())
    assert got.final("next").finish_reason in ("stop", "length")


def test_a_raising_callback_does_not_stop_the_loop(engine, loop) -> None:
    got = Collector()

    def broken(out: RequestOutput) -> None:
        raise ValueError("client went away")

    loop.submit(engine.make_request("broken", _inputs()[1], SamplingParams(max_tokens=4)), broken)
    loop.submit(engine.make_request("fine", _inputs()[1], SamplingParams(max_tokens=4)), got.callback())
    assert got.final("fine").finish_reason in ("stop", "length")


def test_shutdown_fails_in_flight_requests(engine) -> None:
    loop = EngineLoop(engine, idle_wait_s=0.01)
    got = Collector()
    names = ["s0", "s1"]
    for name in names:
        loop.submit(engine.make_request(name, _inputs()[1], LONG), got.callback())
    for name in names:
        assert got.first[name].wait(WAIT_S)
    loop.shutdown()
    for name in names:
        final = got.final(name)
        assert final.finish_reason == "error" and isinstance(final.error, OverloadedError)
    with pytest.raises(OverloadedError, match="shutting down"):
        loop.submit(engine.make_request("late", _inputs()[1], LONG), got.callback())
    assert not engine.has_unfinished() and engine.blocks.num_free_blocks == engine.blocks.num_blocks


def test_shutdown_fails_requests_still_queued(engine, monkeypatch) -> None:
    """A request accepted by submit() while the loop is inside a step must still get its final output when
    shutdown comes before the loop applies it (otherwise its client waits forever)."""
    loop = EngineLoop(engine, idle_wait_s=0.01)
    got = Collector()
    in_step, release = threading.Event(), threading.Event()
    real_step = engine.step

    def slow_step():
        in_step.set()
        assert release.wait(WAIT_S)
        return real_step()

    monkeypatch.setattr(engine, "step", slow_step)
    loop.submit(engine.make_request("running", _inputs()[1], LONG), got.callback())
    assert in_step.wait(WAIT_S)
    loop.submit(engine.make_request("queued", _inputs()[1], LONG), got.callback())  # accepted, not yet applied
    stopper = threading.Thread(target=loop.shutdown)
    stopper.start()
    while not loop._stop.is_set():
        time.sleep(0.001)
    release.set()
    stopper.join(WAIT_S)
    for name in ("running", "queued"):
        final = got.final(name)
        assert final.finish_reason == "error" and isinstance(final.error, OverloadedError), name
    monkeypatch.undo()
    assert not engine.has_unfinished() and engine.blocks.num_free_blocks == engine.blocks.num_blocks
