"""The online step cost model and the TPOT-derived step budgets."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import (
    OnlineLinearFit,
    StepBudgets,
    StepCostModel,
    StepStats,
    paced_share,
    step_budgets,
)
from unifiedserve.step_spend import StepSpend
from unifiedserve.tpot_slack import step_target_s


def test_fit_recovers_known_costs_from_noisy_samples():
    rng = random.Random(0)
    fit = OnlineLinearFit(prior=[1.0, 1.0, 1.0])
    for _ in range(300):
        tokens, attention = rng.randint(1, 512), rng.uniform(0, 200)
        fit.add([1.0, tokens, attention], 0.004 + 2e-5 * tokens + 3e-5 * attention + rng.gauss(0, 1e-4))
    assert abs(fit.w[0] - 0.004) < 5e-4 and abs(fit.w[1] - 2e-5) < 2e-6 and abs(fit.w[2] - 3e-5) < 3e-6


def test_coefficients_never_go_negative():
    fit = OnlineLinearFit(prior=[0.0, 0.0], min_samples=4, every=1)
    for x in range(1, 20):
        fit.add([1.0, float(x)], 1.0 - 0.01 * x)  # a falling cost: noise, not a real negative price
    assert (fit.w >= 0).all()


def _decoders(n: int, context: int, tpot_slo_ms: float | None = None, outputs: int = 1,
              first_token_time: float | None = None, max_tokens: int = 10**6):
    # Ordinary answers: an end-of-sequence token may end them (no TPOT credit, tpot_slack.py).
    return [SimpleNamespace(num_tokens=context, tpot_slo_ms=tpot_slo_ms, num_output_tokens=outputs,
                            first_token_time=first_token_time, eos_token_ids=frozenset({2}),
                            sampling_params=SimpleNamespace(max_tokens=max_tokens, stop=()),
                            max_total_tokens=0) for _ in range(n)]


def _cost(intercept=0.010, decode=1e-4, prefill=1e-4, attention=0.0, encoder=1e-3, burst: float | None = None,
          batch_jump: float = 0.0) -> StepCostModel:
    cost = StepCostModel(bursts=burst is not None)
    cost.llm.w[:] = [intercept, decode, prefill, attention, burst or 0.0, batch_jump]
    cost.encoder.w[:] = [0.0, encoder, 0.0]
    return cost


def test_budgets_are_the_headroom_under_the_tpot_target():
    cost = _cost()  # 10 ms per forward + 0.1 ms per decode row / prefill token; 1 ms per encoder token
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096)
    # 4 decoders: 10.4 ms predicted, 39.6 ms of headroom shared by prefill and encoder work.
    b = step_budgets(cfg, cost, _decoders(4, 100), [], now=0.0)
    assert abs(b.time_s - 0.0396) < 1e-9 and b.target_s == 0.05 and b.timed
    assert b.tokens == 4 + int(0.0396 / 1e-4) and abs(b.encoder_tokens - 39.6) < 1e-6
    # A tighter per-request SLO wins; no headroom at all -> nothing but the scheduler's forced unit.
    b = step_budgets(cfg, cost, _decoders(4, 100, tpot_slo_ms=5.0), [], now=0.0)
    assert b.time_s == 0.0 and b.tokens == 4 and b.encoder_tokens == 0.0


def test_the_chunk_that_makes_the_forward_burst_pays_the_burst_fixed_cost():
    """A forward with >= cpu_burst_min_tokens prefill tokens runs on the CPU burst threads: the fork/join cost it
    adds comes off the time of the chunk that crosses that threshold, so the mixed step still meets its target;
    a chunk that stays below it does not pay it."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096, cpu_burst_min_tokens=32)
    cost = _cost(burst=0.005)
    b = step_budgets(cfg, cost, _decoders(4, 100), [], now=0.0)
    assert abs(b.time_s - 0.0396) < 1e-9  # 50 - 10.4 (decodes) ms: no chunk planned yet
    spend = StepSpend(b, cfg, cost, num_decodes=4)
    assert spend.prefill_cap(0, 1000) == int((0.0396 - 0.005) / 1e-4)  # 346 tokens after the 5 ms burst
    spend.prefill(0, 300, 1000)
    assert abs(spend.time_s - (0.0396 - 0.005 - 0.030)) < 1e-9
    small = StepSpend(b, cfg, cost, num_decodes=4)
    small.prefill(0, 20, 20)  # below the threshold: no burst
    assert abs(small.time_s - (0.0396 - 0.002)) < 1e-9
    assert small.prefill_cap(20, 1000) == int((0.0376 - 0.005) / 1e-4 + 1e-9)  # the next chunk crosses it: pays
    assert cost.llm_s(4, 0, 0.0, burst=True) > cost.llm_s(4, 0, 0.0)


def test_a_burst_price_above_the_headroom_leaves_the_chunks_below_the_threshold():
    """A burst price larger than what is left of the step: the chunk stays on the base threads with up to
    cpu_burst_min_tokens - 1 tokens instead of shrinking to min_prefill_chunk (served 2026-12-06: a 44 ms burst
    price under a 36 ms idle-step target prefilled every prompt 16 tokens per step)."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=18.0, tpot_headroom=1.0, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096, cpu_burst_min_tokens=32, min_prefill_chunk=16)
    cost = _cost(intercept=0.006, prefill=2e-4, burst=0.044)
    b = step_budgets(cfg, cost, [], [], now=0.0)  # idle: 36 ms target, 30 ms of headroom
    spend = StepSpend(b, cfg, cost, num_decodes=0)
    assert spend.prefill_cap(0, 118) == 31
    spend.prefill(0, 31, 118)
    assert abs(spend.time_s - (b.time_s - 31 * 2e-4)) < 1e-9  # no burst paid
    cheap = _cost(intercept=0.006, prefill=2e-4, burst=0.003)
    assert StepSpend(step_budgets(cfg, cheap, [], [], now=0.0), cfg, cheap, 0).prefill_cap(0, 118) == 118


def test_the_fit_separates_the_burst_fixed_cost_from_the_prefill_price():
    cost = StepCostModel(bursts=True)
    for n in range(200):
        decodes, prefill = n % 5 + 1, (n * 37) % 300
        burst = prefill >= 32
        llm_s = 0.008 + 2e-3 * decodes + (5e-5 if burst else 1e-4) * prefill + (0.004 if burst else 0.0)
        cost.observe(StepStats(0.0, llm_s, decodes, prefill, 0.0, 0.0, 0, llm_s, 0.0, llm_burst=burst))
    assert abs(cost.burst_s - 0.004) < 1.5e-3 and abs(cost.llm.w[2] - 5e-5) < 1e-5
    assert StepCostModel(bursts=False).burst_s == 0.0


def test_the_fit_separates_the_batch_jump_from_the_row_prices():
    """One-row forwards are cheaper than the linear prices of larger ones suggest (GEMV vs GEMM on a CPU): the fit
    learns the jump from a lone decode to two rows apart from the per-row prices."""
    cost = StepCostModel()
    for n in range(300):
        decodes, prefill = n % 3, (n * 7) % 13 if n % 4 else 0
        if decodes + prefill == 0:
            continue
        llm_s = 0.009 + 5e-4 * decodes + 4.7e-4 * prefill + (0.004 if decodes + prefill >= 2 else 0.0)
        cost.observe(StepStats(0.0, llm_s, decodes, prefill, 0.0, 0.0, 0, llm_s, 0.0))
    assert abs(cost.batch_jump_s - 0.004) < 2e-4 and abs(cost.llm.w[2] - 4.7e-4) < 2e-5
    assert abs(cost.llm_s(1, 0, 0.0) - 0.0095) < 2e-4 and abs(cost.llm_s(1, 8, 0.0) - 0.0173) < 3e-4


def test_pacing_counts_the_batch_jump_into_a_lone_streams_fixed_part():
    """With one stream decoding, a paced step that adds any prefill pays the jump too: the paced target must
    leave the share the pace needs beyond decode + jump, not just beyond the decode."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, ttft_pace_fraction=0.5)
    waiting = [_prompt(100, ttft_slo_ms=1000.0)]  # 100 tokens x 0.1 ms = 10 ms due by 0.5 s: a small share
    stream = _decoders(1, 100, max_tokens=10**6)
    plain = step_budgets(cfg, _cost(), stream, waiting, now=0.0)
    jumped = step_budgets(cfg, _cost(batch_jump=0.004), stream, waiting, now=0.0)
    assert plain.target_s < 0.05 and jumped.target_s > plain.target_s + 0.004 - 1e-9


def test_a_stream_that_used_its_slack_gets_short_steps():
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, tpot_max_gap_factor=1.0)
    fresh = _decoders(1, 100, outputs=10, first_token_time=0.0)  # 10 gaps may take 500 ms, 100 ms used
    assert step_target_s(cfg, fresh, [], now=0.1) == (0.05, 0.05, 0.05)  # plenty of slack: per-gap target, boost
    late = _decoders(1, 100, outputs=10, first_token_time=0.0)  # 480 ms used: 20 ms left for this gap
    target, boost, _ = step_target_s(cfg, late, [], now=0.48)
    assert abs(target - 0.02) < 1e-9 and boost == 0.0
    some = _decoders(1, 100, outputs=10, first_token_time=0.0)  # 430 ms used: 70 ms of slack, 20 ms boost
    target, boost, _ = step_target_s(cfg, some, [], now=0.43)
    assert target == 0.05 and abs(boost - 0.02) < 1e-9
    over = _decoders(1, 100, outputs=10, first_token_time=0.0)
    b = step_budgets(cfg, _cost(), over, [], now=0.6)  # already over its SLO: decode only, no forced unit
    assert b.time_s == 0.0 and not b.allow_forced
    # Decode steps alone above its SLO: it can never meet it, so it sets no target: steps are timed as if no
    # stream decoded (the idle cap, 2 x the SLO) and the forced unit stays.
    b = step_budgets(cfg, _cost(intercept=0.06), _decoders(1, 100, outputs=10, first_token_time=0.0), [], now=0.6)
    assert abs(b.target_s - 0.1) < 1e-9 and b.allow_forced


def test_banked_slack_buys_longer_gaps_up_to_the_cap():
    """The SLO is on a stream's mean TPOT: a stream that decoded fast banked slack, and one step may spend it,
    up to tpot_max_gap_factor per-gap targets; the next steps are short again until the mean is back."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, tpot_max_gap_factor=3.0)
    fast = _decoders(1, 100, outputs=10, first_token_time=0.0)  # 10 gaps may take 500 ms, 100 ms used
    target, boost, per_gap = step_target_s(cfg, fast, [], now=0.1)
    assert abs(target - 0.15) < 1e-9 and boost == 0.0 and per_gap == 0.05  # capped at 3 x 50 ms
    target, _, _ = step_target_s(cfg, fast, [], now=0.43)  # 70 ms banked: the slack, not the cap, bounds it
    assert abs(target - 0.07) < 1e-9
    target, _, _ = step_target_s(cfg, _decoders(1, 100), [], now=0.43)  # no token yet: nothing banked
    assert target == 0.05
    # Budgets follow: a lone stream's headroom grows from 50 to 150 ms minus its decode.
    b = step_budgets(cfg, _cost(), fast, [], now=0.1)
    assert abs(b.target_s - 0.15) < 1e-9 and abs(b.time_s - (0.15 - 0.0101)) < 1e-9
    with pytest.raises(ValueError, match="tpot_max_gap_factor"):
        EngineConfig(model_path="x", tpot_max_gap_factor=0.5)


def test_the_slack_keeps_the_headroom_margin():
    # With headroom 0.9 a stream's mean TPOT is steered to 45 ms, not to its 50 ms SLO: 10 gaps may take 450 ms.
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=0.9)
    target, boost, per_gap = step_target_s(cfg, _decoders(1, 100, outputs=10, first_token_time=0.0), [], now=0.43)
    assert abs(per_gap - 0.045) < 1e-9 and abs(target - 0.02) < 1e-9 and boost == 0.0


def test_idle_steps_are_capped_so_arrivals_are_seen_soon():
    cost = _cost()
    cfg = EngineConfig(model_path="x", tpot_slo_ms=25.0)
    assert step_target_s(cfg, [], [], now=0.0) == (0.05, 0.0, math.inf)  # 2 x the TPOT target by default
    assert abs(step_budgets(cfg, cost, [], [], now=0.0).time_s - 0.04) < 1e-9  # minus one forward's fixed part
    assert step_target_s(EngineConfig(model_path="x", tpot_slo_ms=25.0, max_idle_step_ms=200.0), [], [], 0.0) == (
        0.2, 0.0, math.inf)
    # No TPOT target anywhere: no cap; a waiting request's own TPOT SLO sets one.
    assert step_target_s(EngineConfig(model_path="x"), [], [], 0.0) is None
    waiting = _decoders(1, 10, tpot_slo_ms=30.0)
    assert step_target_s(EngineConfig(model_path="x"), [], waiting, 0.0) == (0.06, 0.0, math.inf)


def test_budgets_are_the_maxima_without_slo_or_for_baselines():
    cost = StepCostModel()
    base = {"model_path": "x", "max_num_batched_tokens": 512, "encoder_budget_tokens": 256}
    full = (512, 256.0)
    b = step_budgets(EngineConfig(**base), cost, _decoders(2, 10), [], 0.0)
    assert (b.tokens, b.encoder_tokens) == full and not b.timed
    for policy in ("blocking", "fcfs"):
        b = step_budgets(EngineConfig(**base, tpot_slo_ms=50.0, policy=policy), cost, _decoders(2, 10), [], 0.0)
        assert (b.tokens, b.encoder_tokens) == full and not b.timed


def test_a_feature_never_seen_keeps_its_prior_price():
    """A window of decode-only steps says nothing about prefill: its price must not be fitted to zero
    (that would make the next step's prefill budget unlimited)."""
    fit = OnlineLinearFit(prior=[1e-3, 1e-4, 5e-4], min_samples=4, every=1)
    for n in range(1, 40):
        fit.add([1.0, float(n % 8 + 1), 0.0], 2e-3 + 3e-4 * (n % 8 + 1))
    assert abs(fit.w[2] - 5e-4) < 1e-12 and abs(fit.w[1] - 3e-4) < 1e-9


def test_a_price_the_window_no_longer_exercises_returns_to_its_prior():
    """A price fitted too high makes the scheduler avoid that work (no step on the burst threads), so the window
    stops holding samples that could correct it: once none is left, the price is the prior again, not the last
    fit, and the work is tried again."""
    fit = OnlineLinearFit(prior=[1e-3, 3e-3], window=64, min_samples=4, every=1)
    for n in range(64):
        burst = n % 2 == 1  # the last sample too
        fit.add([1.0, float(burst)], 2e-3 + (0.044 if burst else 0.0))  # a contended spell: bursts cost 44 ms
    assert abs(fit.w[1] - 0.044) < 1e-9
    for _ in range(63):
        fit.add([1.0, 0.0], 2e-3)  # one burst sample still in the window: the fit keeps it
    assert abs(fit.w[1] - 0.044) < 1e-9
    fit.add([1.0, 0.0], 2e-3)
    assert abs(fit.w[1] - 3e-3) < 1e-12 and abs(fit.w[0] - 2e-3) < 1e-9


def _prompt(tokens: int, ttft_slo_ms: float | None, arrival: float = 0.0, first_token_time: float | None = None):
    return SimpleNamespace(videos=[], num_tokens=tokens, num_computed_tokens=0, ttft_slo_ms=ttft_slo_ms,
                           arrival_time=arrival, first_token_time=first_token_time, tpot_slo_ms=None)


def test_waiting_work_is_paced_to_a_fraction_of_its_ttft_slo_not_to_the_tpot_target():
    cost = _cost()  # 10 ms per forward, 0.1 ms per decode row / prefill token
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, ttft_pace_fraction=0.5)
    decoders = _decoders(4, 100)  # streams that go on for long: no full-speed time before any deadline
    fixed = 0.0104

    def share(candidates, now=0.0, streams=decoders):
        return paced_share(cost, streams, candidates, now, 0.5, fixed)

    # 100 prompt tokens (10 ms of work) due by 0.5 x 1 s: 2 % of every step is enough.
    one = [_prompt(100, 1000.0)]
    assert abs(share(one) - 0.02) < 1e-12
    b = step_budgets(cfg, cost, decoders, one, now=0.0)
    assert abs(b.target_s - fixed / 0.98) < 1e-12 and abs(b.time_s - (fixed / 0.98 - fixed)) < 1e-12
    assert not b.allow_forced and b.risk_boost_s == 0.0  # paced: no unit beyond the paced headroom
    # Two prompts due at once need twice the pace; one due later does not lower the pace of an earlier one.
    assert abs(share(one + [_prompt(100, 1000.0)]) - 0.04) < 1e-12
    assert abs(share(one + [_prompt(100, 9000.0)]) - 0.02) < 1e-12
    # Time passing raises the pace of the same remaining work.
    assert abs(share(one, now=0.25) - 0.04) < 1e-12
    # The whole TPOT target (today's behaviour) when the work cannot be paced: past its paced deadline, no TTFT
    # SLO, a preempted stream recomputing, pacing off, or the pace needs more than the target gives.
    for candidates, now, fraction in (
        (one, 0.6, 0.5),
        ([_prompt(100, None)], 0.0, 0.5),
        ([_prompt(100, 1000.0, first_token_time=0.1)], 0.0, 0.5),
        (one, 0.0, 0.0),
        ([_prompt(4500, 1000.0)], 0.0, 0.5),
    ):
        cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, ttft_pace_fraction=fraction)
        assert step_budgets(cfg, cost, decoders, candidates, now).target_s == 0.05
    # No stream decodes: nothing to protect, the idle cap applies as before.
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0)
    assert step_budgets(cfg, cost, [], one, now=0.0).target_s == 0.1


def test_a_pace_the_tpot_target_caps_leaves_the_risk_boost_to_work_at_risk():
    """The pace lowers the step to what finishes the work by a fraction of its deadline; when that step would be
    longer than the TPOT target allows, the steps stay at the target and the work is not on pace, so a request at
    risk may still spend the risk boost (before, any share below 1 took it away)."""
    cost = _cost()  # 10 ms per forward, 0.1 ms per decode row / prefill token
    cfg = EngineConfig(model_path="x", tpot_slo_ms=20.0, tpot_headroom=1.0, ttft_pace_fraction=0.5,
                       tpot_max_gap_factor=1.0)
    stream = _decoders(1, 100, outputs=100, first_token_time=-1.0)  # 100 gaps in 1 s against 2 s: 1 s banked
    # 1000 tokens (100 ms) due by 250 ms: 40 % of a step, 10.1 / 0.6 = 16.8 ms, within the 20 ms target: on pace.
    b = step_budgets(cfg, cost, stream, [_prompt(1000, 500.0)], now=0.0)
    assert b.target_s == pytest.approx(0.0101 / 0.6) and b.risk_boost_s == 0.0
    # 1500 tokens need 60 %: 25.3 ms steps, capped at 20 ms; a quarter of the per-gap target for work at risk.
    b = step_budgets(cfg, cost, stream, [_prompt(1500, 500.0)], now=0.0)
    assert b.target_s == pytest.approx(0.02) and b.risk_boost_s == pytest.approx(0.005)


def test_work_that_fits_after_the_streams_end_waits_for_them():
    cost = _cost()
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, ttft_pace_fraction=0.5)
    fixed = 0.0104
    short = _decoders(2, 100, outputs=5, max_tokens=15)  # 10 more steps: done by ~0.104 s
    # 100 ms of work due at 0.5 s fits in the 0.396 s after the streams: decode-only steps (2 rows: 10.2 ms),
    # no forced unit.
    video = [_prompt(1000, 1000.0)]
    assert paced_share(cost, short, video, 0.0, 0.5, fixed) == 0.0
    b = step_budgets(cfg, cost, short, video, now=0.0)
    assert abs(b.target_s - 0.0102) < 1e-12 and b.time_s == 0.0 and not b.allow_forced and b.risk_boost_s == 0.0
    # 420 ms does not fit after them (0.104 + 0.42 > 0.5): the streams outlast the deadline at any pace that
    # makes it, so every step carries work / time left.
    assert abs(paced_share(cost, short, [_prompt(4200, 1000.0)], 0.0, 0.5, fixed) - 0.42 / 0.5) < 1e-12
    # Work that cannot make its paced deadline gets the whole headroom.
    assert paced_share(cost, short, [_prompt(5000, 1000.0)], 0.0, 0.5, fixed) == 1.0


def test_the_risk_boost_is_part_of_the_boost_not_on_top_of_it():
    """A prompt-finishing prefill that took the whole boost leaves nothing for a request at risk later in the same
    step (before, the risk part came on top: 12.5 ms spent where the decoders' slack allowed 8)."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096)
    b = StepBudgets(tokens=100, encoder_tokens=0.0, time_s=0.0, target_s=0.018, boost_s=0.008, risk_boost_s=0.0045)
    spend = StepSpend(b, cfg, _cost(), num_decodes=1)
    assert spend.prefill_cap(0, 80, may_boost=True) == 80  # 8 ms buys the whole prompt
    spend.prefill(0, 80, 80)
    spend.boost_for_risk()
    assert spend.time_s == pytest.approx(0.0) and spend.boost_s == 0.0
    fresh = StepSpend(b, cfg, _cost(), num_decodes=1)
    fresh.boost_for_risk()
    assert fresh.time_s == pytest.approx(0.0045) and fresh.boost_s == pytest.approx(0.0035)


def test_a_request_at_risk_may_spend_half_the_tpot_noise_margin_when_nothing_is_banked():
    """Half the margin up to the SLO is 0.05 x SLO per gap so far (25 ms here) beyond the headroom target (mean TPOT
    = 0.9 x SLO). A stream 10 ms under that target: the step's 10 ms target, and a quarter of a per-gap target more
    for a request at risk. A stream exactly at it banks nothing: a catch-up step (target < its 5.1 ms decode) with
    the same risk boost, and a request at risk that it gets a first token out of may have the whole 25 ms for the
    step (up to the gap cap; scheduler._finish_boost). Past the midpoint: nothing."""
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=0.9, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096)
    cost = _cost(intercept=0.005)
    ahead = step_budgets(cfg, cost, _decoders(1, 100, outputs=10, first_token_time=0.0), [], now=0.44)
    assert ahead.target_s == pytest.approx(0.010) and ahead.risk_boost_s == pytest.approx(0.25 * 0.045)
    assert ahead.finish_boost_s == 0.0  # not a catch-up step
    at_target = step_budgets(cfg, cost, _decoders(1, 100, outputs=10, first_token_time=0.0), [], now=0.45)
    assert at_target.boost_s == 0.0 and at_target.risk_boost_s == pytest.approx(0.25 * 0.045)
    assert at_target.finish_boost_s == pytest.approx(0.025 - 0.0051)
    past = step_budgets(cfg, cost, _decoders(1, 100, outputs=10, first_token_time=0.0), [], now=0.48)
    assert past.risk_boost_s == 0.0 and past.finish_boost_s == 0.0  # past the midpoint
