"""What a stream's TPOT SLO lets one step take: the banked slack and the credit of a stream of certain length."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from unifiedserve.block_manager import BlockManager
from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import StepCostModel, step_budgets
from unifiedserve.request import Request
from unifiedserve.sampling_params import SamplingParams
from unifiedserve.scheduler import Scheduler
from unifiedserve.tpot_slack import can_meet_slo, guaranteed_steps_after_this, risk_slack_s, step_target_s


def _stream(outputs: int, max_tokens: int, first_token_time: float = 0.0, certain: bool = True,
            stop: tuple[str, ...] = (), max_total_tokens: int = 0, prompt: int = 100):
    return SimpleNamespace(num_tokens=prompt + outputs, tpot_slo_ms=None, num_output_tokens=outputs,
                           first_token_time=first_token_time, max_total_tokens=max_total_tokens,
                           eos_token_ids=frozenset() if certain else frozenset({2}),
                           sampling_params=SimpleNamespace(max_tokens=max_tokens, stop=stop))


def _cost(decode_s: float) -> StepCostModel:
    cost = StepCostModel()
    cost.llm.w[:] = [decode_s, 0.0, 1e-4, 0.0, 0.0, 0.0]  # a decode-only step: decode_s whatever the batch
    return cost


def test_only_a_stream_that_nothing_but_its_length_can_end_has_certain_steps():
    assert guaranteed_steps_after_this(_stream(10, 50)) == 39  # this step's token is the 11th of 50
    assert guaranteed_steps_after_this(_stream(10, 50, certain=False)) == 0  # an EOS may be next
    assert guaranteed_steps_after_this(_stream(10, 50, stop=("\n",))) == 0  # so may a stop string
    assert guaranteed_steps_after_this(_stream(10, 50, max_total_tokens=115)) == 4  # the length cap comes first
    assert guaranteed_steps_after_this(_stream(50, 50)) == 0


def test_a_stream_that_decode_only_steps_cannot_bring_under_its_slo_is_lost():
    """50 ms SLO; 10 tokens (9 gaps) took 600 ms. With 40 more tokens at most, 49 gaps may take 2.45 s: decode-only
    steps of 10 ms (1.0 s) or 45 ms (2.4 s) still make it, 47 ms steps (2.48 s) do not; 2 more tokens never do."""
    assert can_meet_slo(_stream(10, 50), 0.05, now=0.6, decode_s=0.010)
    assert can_meet_slo(_stream(10, 50), 0.05, now=0.6, decode_s=0.045)
    assert not can_meet_slo(_stream(10, 50), 0.05, now=0.6, decode_s=0.047)
    assert not can_meet_slo(_stream(10, 12), 0.05, now=0.6, decode_s=0.010)
    # An answer an EOS may end is judged by its longest possible length; no price or no token yet: not lost.
    assert can_meet_slo(_stream(10, 50, certain=False), 0.05, now=0.6, decode_s=0.045)
    assert can_meet_slo(_stream(10, 12), 0.05, now=0.6, decode_s=None)
    assert can_meet_slo(_stream(0, 12, first_token_time=None), 0.05, now=0.6, decode_s=0.010)


def test_a_lost_stream_sets_no_target_and_does_not_hold_back_waiting_work():
    """Two streams, 50 ms SLO, headroom 1, decode-only steps of 10 ms. `lost` (2 tokens left, 100 ms over) cannot
    meet its SLO: the steps follow `fine` alone; with only lost streams they are timed as if none decoded (the idle
    cap, 2 x the SLO) and the forced unit stays, instead of decode-only catch-up steps that save nobody."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, tpot_max_gap_factor=1.0,
                       tpot_credit_fraction=0.0)
    lost, fine = _stream(10, 12), _stream(10, 50, first_token_time=0.3)  # fine: 9 gaps in 300 ms, 200 ms banked
    assert step_target_s(cfg, [lost, fine], [], now=0.6, decode_s=0.010) == step_target_s(
        cfg, [fine], [], now=0.6, decode_s=0.010)
    assert step_target_s(cfg, [lost], [], now=0.6, decode_s=0.010) == (0.1, 0.0, float("inf"))
    b = step_budgets(cfg, _cost(0.010), [lost], [], now=0.6)
    assert abs(b.target_s - 0.1) < 1e-9 and abs(b.time_s - 0.09) < 1e-9 and b.allow_forced
    assert risk_slack_s(cfg, [lost], now=0.6, decode_s=0.010) == 0.0  # it has no slack to lend, nor to guard
    # The same stream with 40 tokens left can still make it: decode-only steps, no forced unit.
    b = step_budgets(cfg, _cost(0.010), [_stream(10, 50)], [], now=0.6)
    assert b.time_s == 0.0 and not b.allow_forced


def test_a_stream_behind_its_mean_lends_part_of_what_its_certain_steps_will_earn():
    """50 ms SLO, headroom 1: 10 gaps may take 500 ms; 600 ms used, 100 ms behind. Decoding 10 ms per step, each
    of its 39 certain steps after this one earns 40 ms: half of 1.56 s is lent, so the step is not decode-only."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, tpot_max_gap_factor=3.0)
    behind = _stream(10, 50)
    target, _, per_gap = step_target_s(cfg, [behind], [], now=0.6, decode_s=0.010)
    assert per_gap == 0.05 and abs(target - 0.15) < 1e-9  # 0.5 x 39 x 40 ms - 100 ms = 680 ms, capped at 3 gaps
    b = step_budgets(cfg, _cost(0.010), [behind], [], now=0.6)
    assert abs(b.time_s - 0.14) < 1e-9 and b.allow_forced
    # No certain length (an EOS may end it now), or no credit configured: decode-only steps until it caught up.
    for cfg_, stream in ((cfg, _stream(10, 50, certain=False)),
                         (EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, tpot_credit_fraction=0.0),
                          _stream(10, 50))):
        b = step_budgets(cfg_, _cost(0.010), [stream], [], now=0.6)
        assert b.time_s == 0.0 and not b.allow_forced
    # Near its end the credit is small: 3 certain steps lend 60 ms, 100 ms behind is still decode-only.
    late = _stream(46, 50, first_token_time=0.0)
    b = step_budgets(cfg, _cost(0.010), [late], [], now=0.05 * 46 + 0.1)
    assert b.time_s == 0.0


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("decode_s", [0.005, 0.030, 0.044])
def test_a_stream_that_always_takes_its_whole_target_still_ends_under_its_slo(fraction: float, decode_s: float):
    """Every step as long as the target allows (never shorter than a decode): the credit is spent as early as it
    can be, and the stream's final mean TPOT is still SLO x headroom at most."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=0.9, tpot_credit_fraction=fraction)
    stream, now, max_tokens, gaps = _stream(1, 80, first_token_time=0.0), 0.0, 80, []
    while stream.num_output_tokens < max_tokens:
        target, _, _ = step_target_s(cfg, [stream], [], now, decode_s)
        step = max(target, decode_s)
        gaps.append(step)
        now += step
        stream.num_output_tokens += 1
        stream.num_tokens += 1
    assert sum(gaps) / len(gaps) <= 0.045 + 1e-9
    assert max(gaps) > 0.045  # the credit did buy long steps early on


def test_the_credit_fraction_is_validated():
    with pytest.raises(ValueError, match="tpot_credit_fraction"):
        EngineConfig(model_path="x", tpot_credit_fraction=1.0)


@pytest.mark.parametrize(("certain", "expected"), [(False, [("a", 1)]), (True, [("a", 1), ("c", 30)])])
def test_a_waiting_prompt_moves_beside_a_stream_behind_its_mean_only_when_its_length_is_certain(
        certain: bool, expected: list) -> None:
    """Scheduler level: stream `a` (20 ms SLO) has used more than its slack. An ordinary answer may end at its next
    token, so it catches up with decode-only steps; an ignore_eos answer with 98 certain steps left, decoding at
    5 ms, lends half of 98 x 15 ms and the waiting question is prefilled now."""
    cfg = EngineConfig(model_path="unused", tpot_slo_ms=20.0, tpot_headroom=1.0, num_kv_blocks=100, block_size=4,
                       ttft_pace_fraction=0.0)
    cost = StepCostModel()
    cost.llm.w[:] = [0.004, 0.001, 0.001, 0.0, 0.0, 0.0]  # 4 ms per forward, 1 ms per decode row or prefill token
    s = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    a = Request("a", [1, 2, 3], SamplingParams(max_tokens=100, ignore_eos=certain), arrival_time=0.0,
                eos_token_ids=frozenset() if certain else frozenset({2}))
    a.max_total_tokens = 10**6
    s.add(a)
    s.update_from_output(s.schedule(now=0.0))
    a.output_token_ids, a.first_token_time = [7], 0.01  # 1 gap after this step may take 20 ms; 45 ms used
    s.add(Request("c", list(range(30)), SamplingParams(max_tokens=10), arrival_time=0.05, ttft_slo_ms=500.0))
    out = s.schedule(now=0.055)
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == expected


@pytest.mark.parametrize(("certain", "elapsed_ms", "prompt", "expected"), [
    (False, 176.0, 8, [("s", 1), ("q", 8)]), (False, 176.0, 30, [("s", 1), ("q", 4)]),
    (False, 185.0, 8, [("s", 1), ("q", 4)]), (True, 760.0, 30, [("s", 1), ("q", 30)]),
    (True, 760.0, 60, [("s", 1), ("q", 4)])])
def test_a_question_at_risk_gets_what_keeps_the_streams_savable_in_a_catch_up_step_when_that_finishes_it(
        certain: bool, elapsed_ms: float, prompt: int, expected: list) -> None:
    """20 ms SLO, headroom 0.9 (per-gap target 18 ms, midpoint 19 ms), decode-only steps of 5 ms, prefill 1 ms a
    token: a stream with 10 output tokens whose gaps so far took `elapsed_ms` is in a catch-up step (target < its
    decode). A question at risk whose whole prompt fits may have the step grow by what keeps the stream under the
    midpoint with all its certain steps decode-only, up to the gap cap (3 per-gap targets: 54 ms for the whole
    step, 49 beyond its decode); one that does not fit gets the risk
    boost (a quarter of a per-gap target, 4.5 ms: 4 tokens), as before:
    - an answer an EOS may end (no certain steps): its 10 gaps after this step may take 190 ms; 176 ms used leaves
      14 ms for the whole step, 9 beyond its decode: an 8-token question fits, a 30-token one does not; 185 ms used
      leaves only the decode;
    - an answer of certain length (90 more tokens), 580 ms behind its headroom target: half the credit at the
      target does not cover that (a catch-up step), all its 89 certain steps' earning at the midpoint (14 ms each)
      does, up to the gap cap: a 30-token question fits, a 60-token one does not."""
    cfg = EngineConfig(model_path="unused", tpot_slo_ms=20.0, tpot_headroom=0.9, num_kv_blocks=100, block_size=4,
                       ttft_pace_fraction=0.0)
    cost = StepCostModel()
    cost.llm.w[:] = [0.004, 0.001, 0.001, 0.0, 0.0, 0.0]  # 4 ms per forward, 1 ms per decode row or prefill token
    s = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    stream = Request("s", [1, 2, 3], SamplingParams(max_tokens=100, ignore_eos=certain), arrival_time=0.0,
                     eos_token_ids=frozenset() if certain else frozenset({2}))
    stream.max_total_tokens = 10**6
    s.add(stream)
    for i in range(10):  # its prompt, then 9 decodes: 10 output tokens
        s.update_from_output(s.schedule(now=0.01 * i))
        stream.output_token_ids.append(7)
    now = 1.0
    stream.first_token_time = now - elapsed_ms / 1000.0
    question = Request("q", list(range(prompt)), SamplingParams(max_tokens=10), arrival_time=now - 0.05,
                       ttft_slo_ms=119.0)
    s.add(question)
    out = s.schedule(now=now)
    assert out.budgets.target_s < 0.005 and not out.budgets.allow_forced
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == expected
