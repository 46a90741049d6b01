"""The online step cost model and the TPOT-derived step budgets."""

from __future__ import annotations

import random
from types import SimpleNamespace

from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import OnlineLinearFit, StepCostModel, step_budgets


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


def _decoders(n: int, context: int, tpot_slo_ms: float | None = None):
    return [SimpleNamespace(num_tokens=context, tpot_slo_ms=tpot_slo_ms) for _ in range(n)]


def test_budgets_fill_the_tpot_headroom():
    cost = StepCostModel()
    cost.llm.w[:] = [0.010, 1e-4, 0.0]  # 10 ms per step + 0.1 ms per token
    cost.encoder.w[:] = [0.0, 1e-3]  # 1 ms per encoder token
    cfg = EngineConfig(model_path="x", tpot_slo_ms=50.0, tpot_headroom=1.0, max_num_batched_tokens=4096,
                       encoder_budget_tokens=4096, min_prefill_chunk=4)
    # 4 decoders: 10.4 ms predicted, 39.6 ms headroom; half to the encoder when videos wait.
    b = step_budgets(cfg, cost, _decoders(4, 100), prefill_context=0, encoder_pending=True)
    assert b.tokens == 4 + int(0.0396 * 0.5 / 1e-4)
    assert abs(b.encoder_tokens - 0.0396 * 0.5 / 1e-3) < 1e-6
    # No video waiting: all headroom to prefill.
    b = step_budgets(cfg, cost, _decoders(4, 100), prefill_context=0, encoder_pending=False)
    assert b.tokens == 4 + int(0.0396 / 1e-4) and b.encoder_tokens == 0.0
    # A tighter per-request SLO wins; no headroom left -> the minimum prefill chunk only.
    b = step_budgets(cfg, cost, _decoders(4, 100, tpot_slo_ms=5.0), prefill_context=0, encoder_pending=True)
    assert b.tokens == 4 + 4 and b.encoder_tokens == 0.0


def test_budgets_are_the_maxima_without_decoders_slo_or_for_baselines():
    cost = StepCostModel()
    base = {"model_path": "x", "max_num_batched_tokens": 512, "encoder_budget_tokens": 256}
    cfg = EngineConfig(**base, tpot_slo_ms=50.0)
    full = (512, 256.0)
    assert tuple(vars(step_budgets(cfg, cost, [], 0, True)).values()) == full
    assert tuple(vars(step_budgets(EngineConfig(**base), cost, _decoders(2, 10), 0, True)).values()) == full
    blocking = EngineConfig(**base, tpot_slo_ms=50.0, policy="blocking")
    assert tuple(vars(step_budgets(blocking, cost, _decoders(2, 10), 0, True)).values()) == full
