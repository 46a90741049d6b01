"""StepSpend: what is left of one step's budgets while the scheduler walks its candidates in urgency order."""

from __future__ import annotations

from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import StepBudgets, StepCostModel
from unifiedserve.encoder_planner import EncoderBudget, EncoderWork
from unifiedserve.request import Request


class StepSpend:
    """What is left of one step's budgets while the scheduler walks the candidates in urgency order.

    Without a time target (blocking, fcfs, or no TPOT SLO) only the configured maxima count. With one, the
    prefill chunks and encoder slices also share the step's time headroom, priced by the cost model at each
    request's context. Two rules keep urgency and progress:
    - once a request could not get all the work it could use, later (less urgent) requests get none of that
      kind in this step: cheaper work of a less urgent request never overtakes it;
    - one unit may exceed the time headroom per step, and only when nothing else was planned (one group
      through one vision block, or `min_prefill_chunk` tokens), so the most urgent request always moves even
      when the decodes fill the step, and a step never carries two forced units.
    """

    def __init__(self, budgets: StepBudgets, config: EngineConfig, cost: StepCostModel, num_decodes: int) -> None:
        self.timed = budgets.timed
        self.cost = cost
        self.tokens = config.max_num_batched_tokens - num_decodes
        self.encoder_tokens = float(config.encoder_budget_tokens)
        self.time_s = budgets.time_s
        self.boost_s = budgets.boost_s
        self.risk_boost_s = budgets.risk_boost_s
        self.finish_boost_s = budgets.finish_boost_s
        self.min_prefill = config.min_prefill_chunk
        # Rows of the step's forward so far; the first prefill that makes it two or more pays the batch jump.
        self.rows = num_decodes
        # Prefill tokens planned so far; the chunk that brings them to cpu_burst_min_tokens pays the burst threads'
        # fixed cost (cpu_threads.py; cost_model.burst_s is 0 when the engine does not burst).
        self.prefill_tokens = 0
        self.burst_min = config.cpu_burst_min_tokens
        # Any prefill or encoder work planned in this step (a forced unit only goes to a step with none).
        self.progressed = not budgets.allow_forced
        self.encoder_closed = self.prefill_closed = False

    # encoder
    def encoder_cap(self) -> EncoderBudget:
        if self.encoder_closed:
            return EncoderBudget(0.0)
        if not self.timed:
            return EncoderBudget(self.encoder_tokens)
        return EncoderBudget(self.encoder_tokens, max(0.0, self.time_s), self.cost.encoder_work_s)

    def may_force(self, planned_encoder_work: list[EncoderWork]) -> bool:
        if not self.timed:
            return not planned_encoder_work  # the configured encoder budget may be below one unit
        return not self.progressed and not self.encoder_closed

    def encoder(self, req: Request, work: list[EncoderWork]) -> None:
        if work:
            self.encoder_tokens -= sum(w.num_tokens for w in work)
            self.time_s -= sum(self.cost.encoder_work_s(w) for w in work)
            self.progressed = True
        if self.timed and any(not v.fully_encoded for v in req.videos) and not _finishes_encoding(req, work):
            self.encoder_closed = True

    # prefill
    def boost_for_risk(self, amount: float | None = None) -> None:
        """Once per step, for the first request walked whose TTFT deadline is at risk (the most urgent one): the
        risk boost, or `amount` instead (a catch-up step's boost for a request it gets a first token out of)."""
        # The boost and the risk boost are drawn from the same streams' slack: what one spends, the other loses
        # (a prompt-finishing prefill that took the boost leaves the risk boost only what exceeds it).
        if self.risk_boost_s > 0 or amount:
            amount = self.risk_boost_s if amount is None else amount
            self.time_s += amount
            self.boost_s = max(0.0, self.boost_s - amount)
            self.risk_boost_s = 0.0
            self.finish_boost_s = 0.0

    def prefill_cap(self, context: int, wanted: int, may_boost: bool = False) -> int:
        if self.prefill_closed or self.tokens <= 0:
            return 0
        n = min(wanted, self.tokens)
        if not self.timed:
            return n
        price = self.cost.prefill_token_s(context + n // 2)
        afford = self._affordable(n, price, self.time_s)
        if afford < n and may_boost and n == wanted and self._affordable(n, price, self.time_s + self.boost_s) >= n:
            self.risk_boost_s = max(0.0, self.risk_boost_s - self.boost_s)
            self.finish_boost_s = max(0.0, self.finish_boost_s - self.boost_s)
            self.time_s, self.boost_s = self.time_s + self.boost_s, 0.0  # once per step
            afford = n
        if afford < n:
            n = int(afford) if afford >= 1 else 0
        if n <= 0 and not self.progressed:
            n = min(wanted, self.tokens, self.min_prefill)
        return n

    def _affordable(self, n: int, price: float, time_s: float) -> float:
        """How many of `n` more prefill tokens `time_s` pays for, fixed costs included. When the burst fixed cost
        leaves fewer tokens than a chunk just below the burst threshold would get, that chunk: it runs on the base
        threads and does not pay it (a burst price above the headroom would otherwise cut every chunk to
        min_prefill_chunk)."""
        burst = self._burst(n)
        afford = (time_s - self._jump(n) - burst) / price
        below = self.burst_min - 1 - self.prefill_tokens
        if afford < n and burst and below > 0:
            afford = max(afford, min(float(below), (time_s - self._jump(below)) / price))
        return afford

    def _jump(self, n: int) -> float:
        """The batch jump (cost_model.py) that adding `n` prefill rows to this step's forward would pay."""
        return self.cost.batch_jump_s if self.timed and self.rows < 2 <= self.rows + n else 0.0

    def _burst(self, n: int) -> float:
        """The burst threads' fixed cost that adding `n` prefill tokens to this step would bring."""
        crosses = self.prefill_tokens < self.burst_min <= self.prefill_tokens + n
        return self.cost.burst_s if self.timed and crosses else 0.0

    def prefill(self, context: int, n: int, wanted: int) -> None:
        if n:
            self.tokens -= n
            self.time_s -= n * self.cost.prefill_token_s(context + n // 2) + self._jump(n) + self._burst(n)
            self.rows += n
            self.prefill_tokens += n
            self.progressed = True
        if self.timed and n < wanted:
            self.prefill_closed = True


def _finishes_encoding(req: Request, work: list[EncoderWork]) -> bool:
    """The planned work completes every video of `req` that still needs the encoder."""
    done = {id(w.video): w.group_end for w in work if w.completes}
    return all(v.fully_encoded or done.get(id(v), 0) >= v.num_groups for v in req.videos)
