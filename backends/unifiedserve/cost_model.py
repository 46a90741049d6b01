"""Step cost model fitted online from measured step times, and the per-step budgets it implies.

UnifiedServe keeps every running stream within its TPOT SLO: a step's predicted time = LLM time (a fixed part
per forward + decode rows + prefill tokens + attention work + a fixed part for a forward on the CPU burst
threads, cpu_threads.py) + encoder time (pieces started + encoder tokens carried through the tower + the
attention work of the blocks they went through, encoder_planner.py). Decode
rows and prefill tokens have separate prices: on a CPU, and for small batches on a GPU, a decode row costs
mostly the weight reads it shares with the rest of the batch while a prefill token costs its full matmuls.
A forward over two or more rows also pays a fixed `batch_jump_s` a single-row forward does not: on a CPU a
one-row matmul is MKL's GEMV case, and more rows cost much more at first (one 1408x512 float32 matmul, one
thread: 61 us for one row, 115 for two, 144 for four, 199 for eight). Measured on the 2-core VM with the small
model: one decode 9.4 ms, two decodes 14.9 ms, one decode + a 1-token prefill chunk 13.4 ms, + 8 tokens 18.5 ms,
then ~0.47 ms per token; so the first prefill token added to a lone stream's step costs ~4 ms, not a token's
price. Priced linearly, paced steps that added a few tokens to one stream ran 21 % over their target (median).
Coefficients are refitted by least squares over a sliding window of measured steps (non-negative, with a prior
until enough samples exist), so the budgets follow the real machine (the jump too, whatever it is on a GPU).

The step's time target (`step_target_s`, tpot_slack.py) comes from the running streams' TPOT SLOs: every
stream's mean TPOT stays under the tightest SLO x `tpot_headroom`; one gap may take up to `tpot_max_gap_factor` x
that when the streams' faster gaps banked the slack (or their certain remaining steps will earn it), and a
stream whose mean TPOT so far has used up its slack (a slow earlier step, a preemption) gets decode-only steps
until it is back under its SLO. Decodes are planned
first; what is left of the target is the time headroom that prefill chunks and encoder slices share, in
urgency order (scheduler.py).

The headroom is not spent just because it exists: a longer step is a slower token for every stream. With
`ttft_pace_fraction` > 0 the target is lowered to the shortest step that still finishes every waiting
request's first-token work by that fraction of its TTFT SLO (`paced_share`), counting the full-speed time after
the running streams end (work that fits there waits), so at low load streams decode near their unloaded speed
and under load the target is the TPOT target as before.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unifiedserve.tpot_slack import risk_slack_s, step_target_s, stream_left_tokens


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
    encoder_attention_work: float = 0.0  # thousands of patch pairs the encoder's blocks attended over
    token_budget: int = 0
    encoder_budget: float = 0.0
    target_s: float = 0.0  # the step's planned time (0: no target, the configured maxima applied)
    llm_burst: bool = False  # the LLM forward ran on the CPU burst threads


class OnlineLinearFit:
    """y ~ x . w with w >= 0, least squares over the last `window` samples, refitted every `every` adds."""

    def __init__(self, prior: list[float], window: int = 512, every: int = 16, min_samples: int = 24) -> None:
        self.prior = np.asarray(prior, dtype=np.float64)
        self.w = self.prior.copy()
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
        # A feature that never varied in the window (e.g. no prefill seen yet) gets its prior price, not a price
        # fitted to zero (that would make the next step's budget unlimited), and not the last fit either: a
        # price fitted too high makes the scheduler avoid that work, so no new sample would ever correct it
        # (served, 2026-12-06: a 44 ms burst price fitted from four contended steps kept every forward off the
        # burst threads for the next 30 minutes; video prompts went in as 16-token chunks).
        varied = x.std(axis=0) > 0
        varied[0] = True  # the intercept column
        fixed = ~varied
        y_rest = y - x[:, fixed] @ self.prior[fixed] if fixed.any() else y
        cols = np.flatnonzero(varied)
        w = np.zeros(len(cols))
        active = np.ones(len(cols), dtype=bool)
        # A negative marginal cost is noise (collinear features on a busy machine): drop it and refit.
        for _ in range(len(cols)):
            w[:] = 0.0
            w[active], *_ = np.linalg.lstsq(x[:, cols[active]], y_rest, rcond=None)
            if (w >= 0).all():
                break
            active &= w > 0
            if not active.any():
                break
        new = self.prior.copy()
        new[cols] = np.maximum(w, 0.0)
        self.w = new

    def predict(self, x: list[float]) -> float:
        return float(np.dot(self.w, x))


class StepCostModel:
    # Priors for the small CPU model; the fit replaces them after a few dozen steps.
    def __init__(self, bursts: bool = False) -> None:
        # [1, decode rows, prefill tokens, attention kwork, ran on the burst threads, forward of >= 2 rows]
        self.llm = OnlineLinearFit(prior=[6e-3, 1e-3, 2.5e-4, 1e-4, 3e-3, 4e-3])
        self.bursts = bursts
        # [pieces started, encoder tokens, attention kwork]; small model, 2 threads, quiet VM: 1 ms to start a piece
        # (patch embedding, rotary tables), 0.06 ms per encoder token, 1.1 us per thousand patch pairs.
        self.encoder = OnlineLinearFit(prior=[1e-3, 6e-5, 1.1e-6])

    def observe(self, s: StepStats) -> None:
        if s.num_decode_tokens + s.num_prefill_tokens:
            self.llm.add(_llm_features(s.num_decode_tokens, s.num_prefill_tokens, s.attention_work, s.llm_burst),
                         s.llm_s)
        if s.encoder_tokens:
            self.encoder.add([float(s.num_encoder_pieces_started), s.encoder_tokens, s.encoder_attention_work],
                             s.encoder_s)

    def llm_s(self, decode_tokens: int, prefill_tokens: int, attention_work: float, burst: bool = False) -> float:
        return self.llm.predict(_llm_features(decode_tokens, prefill_tokens, attention_work, burst))

    @property
    def batch_jump_s(self) -> float:
        """What a forward of two or more rows pays beyond the linear prices (GEMM instead of GEMV on a CPU)."""
        return float(self.llm.w[5])

    @property
    def burst_s(self) -> float:
        """What a forward pays extra on the burst threads (fork/join of small ops); 0 without bursting."""
        return float(self.llm.w[4]) if self.bursts else 0.0

    def prefill_token_s(self, context: int) -> float:
        """Marginal time of one prefill token that attends over `context` tokens."""
        return max(self.llm.w[2] + self.llm.w[3] * context / 1000.0, 1e-9)

    def encoder_s(self, pieces_started: int, encoder_tokens: float, attention_work: float = 0.0) -> float:
        return self.encoder.predict([float(pieces_started), encoder_tokens, attention_work])

    def encoder_work_s(self, work) -> float:
        """Predicted time of one piece of encoder work (encoder_planner.EncoderWork)."""
        return self.encoder_s(int(work.block_start == 0), work.num_tokens, work.attention_work)

    def encoder_left_s(self, video) -> float:
        """Encoder time a video still needs (its groups not yet out of the tower, through every block)."""
        groups = video.num_groups - video.num_encoded_groups
        return self.encoder_s(0, groups * video.tokens_per_group, groups * sum(video.block_attention))

    @property
    def encoder_token_s(self) -> float:
        return max(self.encoder.w[1], 1e-9)


def _llm_features(decode_tokens: int, prefill_tokens: int, attention_work: float, burst: bool) -> list[float]:
    rows = decode_tokens + prefill_tokens
    return [1.0, float(decode_tokens), float(prefill_tokens), attention_work, float(burst), float(rows >= 2)]


def min_time_to_first_token(cost: StepCostModel, req) -> float:
    """Lower bound of the execution time `req` still needs before its first token: its remaining encoder
    work and prefill tokens at the cost model's marginal prices, as if it had the machine to itself."""
    prefill = req.num_tokens - req.num_computed_tokens
    context = (req.num_computed_tokens + req.num_tokens) // 2
    return sum(cost.encoder_left_s(v) for v in req.videos) + prefill * cost.prefill_token_s(context)


def paced_share(cost: StepCostModel, decoders: Sequence, candidates: Sequence, now: float, fraction: float,
                fixed_s: float) -> float:
    """The share of each step's time that prefill and encoder work needs while the `decoders` stream, so that
    every candidate's work before its first token (and the work of every candidate due earlier) is done by its
    paced deadline, arrival + `fraction` x its TTFT SLO.

    The streams' remaining steps (at most their max_tokens, `fixed_s` each) take the same machine time whatever
    the pace, so when they and the work due by a deadline fit before it, that work needs no share now: it runs
    at full speed once the streams are done (a video encode waits for a short answer instead of slowing it).
    Otherwise the streams outlast the deadline and the work needs work / time-left of every step. 1.0 (the whole
    headroom) when a candidate has no TTFT SLO, already streamed tokens (a preempted stream recomputing is
    stalled), or cannot make its paced deadline. Earliest paced deadline first, the work summed: two requests
    due at once need twice the pace."""
    due: list[tuple[float, float]] = []
    for req in candidates:
        if req.ttft_slo_ms is None or req.first_token_time is not None:
            return 1.0
        due.append((req.arrival_time + fraction * req.ttft_slo_ms / 1000.0, min_time_to_first_token(cost, req)))
    streams_s = max((stream_left_tokens(r) for r in decoders), default=0) * fixed_s
    share, work = 0.0, 0.0
    for deadline, need in sorted(due):
        work += need
        left = deadline - now
        if work >= left:
            return 1.0
        if streams_s + work > left:
            share = max(share, work / left)
    return share


@dataclass(frozen=True)
class StepBudgets:
    """Limits one step starts with. `tokens` counts decodes too. `time_s` is the headroom left for prefill
    and encoder work after the decodes (inf: no time target); `target_s` the whole step's target (0: none);
    `boost_s` extra time the step may take to finish the prompt of the most urgent request (its first token
    comes out of this step) when every decoding stream has that much TPOT slack."""

    tokens: int
    encoder_tokens: float
    time_s: float = math.inf
    target_s: float = 0.0
    boost_s: float = 0.0
    allow_forced: bool = True  # False while a stream catches up on its TPOT slack with decode-only steps
    risk_boost_s: float = 0.0  # the part of the boost a request whose TTFT deadline is at risk may spend
    # In a catch-up step: what a request at risk may spend instead when that gets its first token out of this step.
    finish_boost_s: float = 0.0

    @property
    def timed(self) -> bool:
        return not math.isinf(self.time_s)


def step_budgets(config, cost: StepCostModel, decoders: Sequence, candidates: Sequence, now: float) -> StepBudgets:
    """Budgets for one step: the configured maxima, and (policy `unified` with a TPOT target) the time
    headroom left under the step's target after the predicted decode time. `tokens` / `encoder_tokens`
    are then what the headroom would buy if all of it went to prefill (at no context) / to the encoder;
    the scheduler spends the headroom itself, request by request, at each request's context."""
    full = StepBudgets(config.max_num_batched_tokens, float(config.encoder_budget_tokens))
    decode_attention = sum(r.num_tokens for r in decoders) / 1000.0
    decode_s = cost.llm_s(len(decoders), 0, decode_attention)
    planned = step_target_s(config, decoders, candidates, now, decode_s)
    if planned is None:
        return full
    target, boost, per_gap = planned
    unpaced, share, paced = target, 1.0, False
    if decoders and candidates and config.ttft_pace_fraction > 0:
        # A step of time T spends T - fixed on prefill/encoder work; that share must reach the pace.
        # A lone stream's step pays the batch jump as soon as any prefill joins it.
        fixed_s = decode_s + cost.burst_s + (cost.batch_jump_s if len(decoders) == 1 else 0.0)
        share = paced_share(cost, decoders, candidates, now, config.ttft_pace_fraction, fixed_s)
        if share < 1.0:
            # The pace holds only when the TPOT target leaves room for it; when it does not, the steps stay at
            # the target and the work is not on pace (see risk_boost below).
            paced_target = fixed_s / (1.0 - share)
            paced = paced_target <= target
            target = min(target, paced_target)
    # A forward with enough prefill runs on the burst threads (when bursting): StepSpend charges that fixed cost to
    # the chunk that crosses the burst threshold, not to the headroom, so a small chunk does not pay for it.
    headroom = max(0.0, target - decode_s)
    tokens = len(decoders) + int(min(headroom / cost.prefill_token_s(0), config.max_num_batched_tokens))
    encoder = headroom / cost.encoder_token_s
    # No forced unit while the work is paced: a unit larger than the paced headroom (one group through one block
    # of a 720p video) made every step overrun the TPOT target (measured: p99 TPOT 25 ms, SLO 18.5 ms); the pace
    # rises as the deadline nears until the headroom holds a unit. Nor while a stream behind its TPOT slack
    # catches up with decode-only steps: every stream that sets the target can still meet its SLO that way
    # (step_target_s leaves out those that cannot, so waiting requests starve only while one still can).
    catching_up = math.isfinite(per_gap) and unpaced < decode_s
    no_forced = share < 1.0 or catching_up
    # A request that would miss its TTFT deadline at the normal pace may spend part of the slack on any of its
    # work (encoder slices too), at most a quarter of a per-gap target more: a bounded longer gap now, not a late
    # request (half a target measured 94.9% SLO attainment but a 1.50x p99 gap ratio). Not while the work is
    # on pace: the pace already finishes it by a fraction of its deadline. A pace the TPOT target caps is not:
    # a 114-token question beside one stream needed 49 % of each step and got 30 % (~12 tokens per 11 ms
    # step), reached its 140 ms deadline with 12 tokens to go, and was then demoted as late (step trace,
    # 0.686 req/s).
    # It may also draw on half the TPOT noise margin (risk_slack_s), so it exists when no slack is banked under the
    # headroom target too.
    at_risk = max(boost, risk_slack_s(config, decoders, now, decode_s) - max(target, 0.0))
    risk_boost = min(at_risk, 0.25 * per_gap) if math.isfinite(per_gap) and not paced else 0.0
    finish_boost = 0.0
    if catching_up:
        # A catch-up step gives waiting work nothing, so a quarter of a per-gap target (less the batch jump) bought
        # a question at risk a few tokens or none: it waited for the whole catch-up (served, 2026-12-06, 1.116-1.673
        # req/s: 16 of 21 late questions waited 3-128 decode-only steps, up to 1.96 s, for a 108 ms TTFT SLO).
        # A request whose first token this step can produce may have the step grow to the gap cap (the longest any
        # step may take), while every stream can still end under the midpoint of its headroom target and its SLO
        # with all its certain steps decode-only after this one (the whole step counts: its decodes too). Only
        # then: given to any request at risk (up to one per-gap target of work), per-gap slices of videos that
        # needed seconds of work spent the streams' slack in 52 catch-up steps and four streams missed their TPOT
        # SLO (A/B at 0.837 req/s, 2026-12-06); capped at one per-gap target, a 116-token question (~35 ms with
        # the batch jump) never fitted and waited 24 catch-up steps (A/B at 0.558 req/s).
        savable = risk_slack_s(config, decoders, now, decode_s, full_credit=True) - decode_s
        finish_boost = max(0.0, min(savable, per_gap * config.tpot_max_gap_factor - decode_s))
    return StepBudgets(min(tokens, config.max_num_batched_tokens), min(encoder, float(config.encoder_budget_tokens)),
                       headroom, target, boost, not no_forced, risk_boost, finish_boost)
