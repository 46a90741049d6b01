"""Step cost model fitted online from measured step times, and the per-step budgets it implies.

UnifiedServe keeps every running stream within its TPOT SLO: a step's predicted time = LLM time
(decode tokens + prefill chunk tokens + attention work) + encoder time (encoder tokens carried through
the tower). Decode tokens come first; the headroom left under the TPOT target is what prefill chunks and
encoder slices may use. Coefficients are refitted by least squares over a sliding window of measured
steps (non-negative, with a prior until enough samples exist), so the budgets follow the real machine.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np


@dataclass
class StepStats:
    """What one engine step did and how long its parts took (also the benchmark's raw data)."""

    start_s: float
    end_s: float
    num_decode_tokens: int
    num_prefill_tokens: int
    attention_work: float  # sum over chunks of query tokens x context tokens, in thousands
    encoder_tokens: float  # merged visual tokens x fraction of the tower they went through
    num_encoder_pieces_started: int
    llm_s: float
    encoder_s: float
    token_budget: int = 0
    encoder_budget: float = 0.0


class OnlineLinearFit:
    """y ~ x . w with w >= 0, least squares over the last `window` samples, refitted every `every` adds."""

    def __init__(self, prior: list[float], window: int = 512, every: int = 16, min_samples: int = 24) -> None:
        self.w = np.asarray(prior, dtype=np.float64)
        self._xs: collections.deque = collections.deque(maxlen=window)
        self._ys: collections.deque = collections.deque(maxlen=window)
        self._every, self._min, self._count = every, min_samples, 0

    def add(self, x: list[float], y: float) -> None:
        self._xs.append(x)
        self._ys.append(y)
        self._count += 1
        if len(self._xs) >= self._min and self._count % self._every == 0:
            self._refit()

    def _refit(self) -> None:
        x, y = np.asarray(self._xs), np.asarray(self._ys)
        w, *_ = np.linalg.lstsq(x, y, rcond=None)
        # A negative marginal cost is noise (collinear features on a busy machine): drop it and refit.
        active = w > 0
        if not active.all() and active.any():
            w = np.zeros_like(w)
            w[active], *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        self.w = np.maximum(w, 0.0)

    def predict(self, x: list[float]) -> float:
        return float(np.dot(self.w, x))


class StepCostModel:
    # Priors for a small CPU model; the fit replaces them after a few dozen steps.
    def __init__(self) -> None:
        self.llm = OnlineLinearFit(prior=[2e-3, 5e-5, 1e-6])  # [1, tokens, attention work]
        self.encoder = OnlineLinearFit(prior=[1e-3, 1e-4])  # [pieces started, encoder tokens]

    def observe(self, s: StepStats) -> None:
        if s.num_decode_tokens + s.num_prefill_tokens:
            self.llm.add(self._llm_x(s.num_decode_tokens + s.num_prefill_tokens, s.attention_work), s.llm_s)
        if s.encoder_tokens:
            self.encoder.add([s.num_encoder_pieces_started, s.encoder_tokens], s.encoder_s)

    @staticmethod
    def _llm_x(tokens: int, attention_work: float) -> list[float]:
        return [1.0, float(tokens), attention_work]

    def llm_s(self, tokens: int, attention_work: float) -> float:
        return self.llm.predict(self._llm_x(tokens, attention_work))

    @property
    def s_per_prefill_token(self) -> float:
        return max(self.llm.w[1], 1e-9)

    @property
    def s_per_encoder_token(self) -> float:
        return max(self.encoder.w[1], 1e-9)


@dataclass(frozen=True)
class StepBudgets:
    tokens: int
    encoder_tokens: float


def step_budgets(config, cost: StepCostModel, decoders: list, prefill_context: int,
                 encoder_pending: bool) -> StepBudgets:
    """Token and encoder budgets for one step (policy `unified`).

    Without running decoders or a TPOT target the configured maxima apply (nobody's stream can stall).
    Otherwise the step must fit the tightest TPOT among running streams: decode time is predicted first,
    the headroom under the target goes to prefill chunks and (half of it, when videos wait for the
    encoder) to encoder slices. `min_prefill_chunk` keeps new requests moving when there is no headroom;
    the encoder's minimum unit is guaranteed by the planner.
    """
    full = StepBudgets(config.max_num_batched_tokens, float(config.encoder_budget_tokens))
    if config.policy != "unified" or not decoders:
        return full
    slos = [r.tpot_slo_ms for r in decoders if r.tpot_slo_ms] or ([config.tpot_slo_ms] if config.tpot_slo_ms else [])
    if not slos:
        return full
    target_s = min(slos) / 1000.0 * config.tpot_headroom
    decode_attention = sum(r.num_tokens for r in decoders) / 1000.0
    headroom = max(0.0, target_s - cost.llm_s(len(decoders), decode_attention))
    encoder_share = 0.5 if encoder_pending else 0.0
    per_prefill_token = cost.s_per_prefill_token + cost.llm.w[2] * prefill_context / 1000.0
    prefill = int(headroom * (1.0 - encoder_share) / per_prefill_token)
    tokens = len(decoders) + max(config.min_prefill_chunk, prefill)
    encoder = headroom * encoder_share / cost.s_per_encoder_token
    return StepBudgets(min(tokens, config.max_num_batched_tokens), min(encoder, float(config.encoder_budget_tokens)))
