"""The scheduler: turns request state into a plan for one step (plain data); it runs nothing.

Order within a step (DESIGN.md 5): decode tokens of every running request first (never skipped),
then encoder slices and prefill chunks of requests in urgency order, under explicit budgets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from unifiedserve.block_manager import BlockManager
from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import StepBudgets, StepCostModel, min_time_to_first_token, step_budgets
from unifiedserve.encoder_cache import EncoderCache
from unifiedserve.encoder_planner import EncoderWork, plan_encoder
from unifiedserve.policy import Policy, UrgencyKey, ttft_deadline
from unifiedserve.request import Request, RequestStatus
from unifiedserve.step_spend import StepSpend


@dataclass
class TokenChunk:
    request: Request
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def samples(self) -> bool:
        """The chunk reaches the last known token, so its last position produces the next token."""
        return self.end == self.request.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[TokenChunk] = field(default_factory=list)
    encoder_work: list[EncoderWork] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    budgets: StepBudgets | None = None
    num_decodes: int = 0  # the first chunks are one decode token each for these many running streams

    @property
    def num_batched_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_prefill_tokens(self) -> int:
        return self.num_batched_tokens - self.num_decodes

    @property
    def num_encoder_tokens(self) -> float:
        return sum(w.num_tokens for w in self.encoder_work)

    @property
    def is_empty(self) -> bool:
        return not self.chunks and not self.encoder_work


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager, cost: StepCostModel | None = None,
                 same_step_encoder: bool = True) -> None:
        self.config = config
        # False when encoder slices run concurrently with the LLM step (CUDA streams): a prefill chunk may
        # then only read visual tokens finished in an earlier step.
        self.same_step_encoder = same_step_encoder
        self.blocks = block_manager
        self.cost = cost or StepCostModel()
        self.encoder_cache = EncoderCache(config.encoder_cache_tokens)
        self.policy = Policy(config.policy)
        self.urgency: UrgencyKey = self.policy.key  # this step's order (unified: late requests demoted)
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.num_preemptions = 0  # lifetime count (metrics, tests)

    # ---- membership -------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        for item in request.videos:
            self._attach_cached(item)
        self.waiting.append(request)

    def _attach_cached(self, item) -> None:
        """A video whose tokens are cached needs no encoder work (a repeated question about one video)."""
        if item.content_key is None or item.fully_encoded:
            return
        cached = (self.encoder_cache.peek(item.content_key) if item.cache_ref
                  else self.encoder_cache.acquire(item.content_key))
        if cached is not None and cached.shape[0] == item.num_tokens:
            item.embeddings, item.num_encoded_groups, item.cache_ref = cached, item.num_groups, True
            item.piece_groups, item.piece_blocks_done, item.encoder_state = None, 0, None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        self.blocks.free(request)
        for item in request.videos:
            item.embeddings = item.encoder_state = None
            if item.cache_ref:
                self.encoder_cache.release(item.content_key)
                item.cache_ref = False
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)

    # ---- planning ---------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> SchedulerOutput:
        out = SchedulerOutput()
        now = time.monotonic() if now is None else now
        num_decodes = 0
        self.urgency = self._memoized(self.policy.key_at(now, self._min_time_to_first_token))
        self.running.sort(key=self.urgency)
        self.waiting.sort(key=self.urgency)

        # 1. Decode: one token for every decoding request, most urgent first; preempt the least urgent
        #    when blocks run out (never skip a decode to make room for prefill).
        scheduled: set[str] = set()
        for req in list(self.running):
            if req.status != RequestStatus.RUNNING or not req.is_decoding:
                continue
            while not self.blocks.allocate(req, 1):
                victim = self._least_urgent_running(exclude=scheduled)
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                out.chunks.append(TokenChunk(req, req.num_computed_tokens, req.num_computed_tokens + 1))
                scheduled.add(req.request_id)
                num_decodes += 1

        # 2. Encoder slices and prefill chunks, most urgent request first: running requests still in prefill
        #    and waiting ones in ONE policy order (a text question with a tight TTFT deadline goes ahead of a
        #    long video's prefill that started earlier), within what the decodes leave of the step.
        prefilling = [r for r in self.running if r.request_id not in scheduled]
        candidates = sorted(prefilling + self.waiting, key=self.urgency)
        decoders = [r for r in self.running if r.request_id in scheduled]
        out.budgets = budgets = step_budgets(self.config, self.cost, decoders, candidates, now)
        spend = StepSpend(budgets, self.config, self.cost, num_decodes)
        slots = self.config.max_num_seqs - len(self.running)
        for req in candidates:
            is_new = req.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
            if is_new and out.preempted:
                # Fix: no admissions in a step that had to preempt (vLLM v1 does the same). A victim sits at
                # the head of `waiting`, ahead of more urgent requests (priority inversion), would take back
                # the blocks it just gave up (thrash), and a less urgent newcomer admitted on the freed
                # blocks would then run while the more urgent victim waits. Next step admits in policy order.
                continue
            if is_new and slots <= 0:
                continue
            if self._ttft_at_risk(req, budgets, now, num_decodes):
                spend.boost_for_risk(self._finish_boost(req, spend, num_decodes))
            work = plan_encoder(req, spend.encoder_cap(), self.policy.slices_encoder,
                                allow_minimum=spend.may_force(out.encoder_work))
            out.encoder_work.extend(work)
            spend.encoder(req, work)
            planned = self._planned_groups(req, out)
            limit = min(req.num_tokens, _visual_limit(req, planned))
            wanted = limit - req.num_computed_tokens
            if wanted <= 0:
                continue
            if work and self._not_worth_a_forward(req, limit, wanted, out):
                spend.prefill_closed = True  # deferred, not skipped: less urgent prefill does not overtake it
                continue
            # The boost (spending the decoders' TPOT slack) only for a prompt it finishes: a first token now.
            may_boost = (limit == req.num_tokens and wanted <= self._room_for(req)
                         and not self.policy.is_demoted(self.urgency(req)))
            n = spend.prefill_cap(req.num_computed_tokens, wanted, may_boost)
            # Fix (deadlock): a running request in prefill takes the blocks of less urgent running requests.
            # Without this, two prefills that each hold part of the pool (e.g. one waited for its encoder
            # while another started) wait for each other forever: only decodes used to preempt.
            while not is_new and n > self._room_for(req) and self._preempt_less_urgent(req, out):
                pass
            if is_new and n > 0 and self._room_for(req) <= 0:
                # Fix (deadlock, fuzz trace): a newcomer more urgent than running requests demoted as late, with
                # every block held by them, closed prefill for them too: nothing ran, nothing freed a block. A
                # newcomer that does not fit waits (vLLM admits none when blocks run out); the running go on.
                continue
            n = max(0, min(n, self._room_for(req)))
            spend.prefill(req.num_computed_tokens, n, wanted)
            if n == 0:
                continue
            self.blocks.allocate(req, n)
            out.chunks.append(TokenChunk(req, req.num_computed_tokens, req.num_computed_tokens + n))
            if is_new:
                self.waiting.remove(req)
                self.running.append(req)
                req.status = RequestStatus.RUNNING
                slots -= 1
        out.num_decodes = sum(1 for c in out.chunks if c.request.request_id in scheduled)
        self._check_budgets(out)
        return out

    def update_from_output(self, out: SchedulerOutput) -> None:
        """Advance progress counters after the runner executed `out`."""
        for work in out.encoder_work:
            video = work.video
            if work.completes:
                video.num_encoded_groups = max(video.num_encoded_groups, work.group_end)
                video.piece_groups, video.piece_blocks_done = None, 0
                if video.fully_encoded and video.content_key is not None and not video.cache_ref:
                    video.cache_ref = self.encoder_cache.insert(video.content_key, video.embeddings)
            else:
                video.piece_groups = (work.group_start, work.group_end)
                video.piece_blocks_done = work.block_start + work.num_blocks
        for chunk in out.chunks:
            chunk.request.num_computed_tokens = chunk.end
            # Embeddings of a video are dropped once its last token is in the KV cache.
            for item in chunk.request.videos:
                if item.embeddings is not None and chunk.end >= item.end:
                    item.embeddings = None

    # ---- helpers ----------------------------------------------------------------------------
    def _ttft_at_risk(self, req: Request, budgets: StepBudgets, now: float, num_decodes: int) -> bool:
        """`req` can still make its TTFT deadline at full speed but not in steps like this one: each carries the
        step's headroom of its work, less the batch jump a lone stream's step pays once prefill joins it, and
        its first token comes out when the step that finishes the work ends. (Work / headroom share alone, the
        fixed costs left out, said "on time" to questions that then finished one step past their deadline.)
        Also in a stream's catch-up steps (target <= 0), when the risk boost exists there: the streams still have
        the noise margin or the credit of their certain steps to give (tpot_slack.py). Served (2026-12-06, 1.26
        req/s): a lone stream 69 ms behind took 47 decode-only steps (700 ms) while a question with a 119 ms
        TTFT SLO waited for all of them."""
        if not (budgets.risk_boost_s or budgets.finish_boost_s) or req.first_token_time is not None \
                or req.ttft_slo_ms is None:
            return False
        if self.policy.is_demoted(self.urgency(req)):
            return False
        per_step = budgets.time_s - (self.cost.batch_jump_s if num_decodes == 1 else 0.0) - self.cost.burst_s
        if per_step <= 0:
            return True
        steps = math.ceil(self._min_time_to_first_token(req) / per_step)
        return now + steps * budgets.target_s > ttft_deadline(req)

    def _finish_boost(self, req: Request, spend: StepSpend, num_decodes: int) -> float | None:
        """What a catch-up step's boost (StepBudgets.finish_boost_s) gives `req` when it buys all of its work before
        its first token (its price, the batch jump a lone stream's step pays, the burst threads' fixed cost), so
        the first token comes out of this step; else None (the risk boost)."""
        if spend.finish_boost_s <= spend.risk_boost_s:
            return None
        prefill = req.num_tokens - req.num_computed_tokens
        fixed = (self.cost.batch_jump_s if num_decodes == 1 else 0.0) + (
            self.cost.burst_s if prefill >= self.config.cpu_burst_min_tokens else 0.0)
        need = self._min_time_to_first_token(req) + fixed - max(spend.time_s, 0.0)
        if need > spend.finish_boost_s:
            return None
        return max(spend.risk_boost_s, min(spend.finish_boost_s, need + 5e-4))  # a margin for rounding to tokens

    def _not_worth_a_forward(self, req: Request, limit: int, wanted: int, out: SchedulerOutput) -> bool:
        """A prefill chunk that stops at `req`'s encoder frontier, in a step that has no LLM forward yet and runs
        encoder and LLM one after the other: its tokens would cost less than the forward's fixed part, so it
        waits for the encoder to move on (measured: a lone 360p video's prompt took 32 steps of ~25 tokens
        each paying the fixed cost, 921 ms to its first token instead of 626 ms)."""
        if not self.same_step_encoder or out.chunks or limit >= req.num_tokens:
            return False
        price = self.cost.prefill_token_s(req.num_computed_tokens + wanted // 2)
        burst = self.cost.burst_s if wanted >= self.config.cpu_burst_min_tokens else 0.0
        return wanted * price < float(self.cost.llm.w[0]) + burst

    @staticmethod
    def _memoized(key: UrgencyKey) -> UrgencyKey:
        """One key per request for the whole step (the plan is made at one instant)."""
        cache: dict[str, tuple] = {}

        def memo(req: Request) -> tuple:
            if req.request_id not in cache:
                cache[req.request_id] = key(req)
            return cache[req.request_id]

        return memo

    def _min_time_to_first_token(self, req: Request) -> float:
        return min_time_to_first_token(self.cost, req)

    def _planned_groups(self, req: Request, out: SchedulerOutput) -> dict[int, int]:
        if not self.same_step_encoder:
            return {}
        return {id(w.video): w.group_end for w in out.encoder_work if w.request is req and w.completes}

    def _room_for(self, req: Request) -> int:
        """How many more tokens fit into `req`'s blocks plus all free blocks."""
        capacity = (len(req.block_ids) + self.blocks.num_free_blocks) * self.blocks.block_size
        return capacity - req.num_computed_tokens

    def _least_urgent_running(self, exclude: set[str]) -> Request:
        for req in reversed(self.running):
            if req.request_id not in exclude:
                return req
        return self.running[-1]

    def _preempt_less_urgent(self, req: Request, out: SchedulerOutput) -> bool:
        """Preempt the least urgent running request if it is less urgent than `req` (dropping its decode in
        this step, like a decode's own preemption does); False if there is none. Runs before any admission
        of this step, so `running` is still sorted most urgent first."""
        victim = self.running[-1]
        if victim is req or self.urgency(victim) <= self.urgency(req):
            return False
        self._preempt(victim, out)
        return True

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        """Recompute-style preemption: free the KV blocks, go back to waiting, keep generated tokens."""
        self.blocks.free(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        req.status = RequestStatus.PREEMPTED
        for item in req.videos:
            if item.embeddings is None and item.fully_encoded:
                item.num_encoded_groups = 0  # embeddings were dropped after use: take them from the cache
                self._attach_cached(item)  # or encode again
        self.running.remove(req)
        self.waiting.insert(0, req)
        out.preempted.append(req)
        out.chunks = [c for c in out.chunks if c.request is not req]

    def _check_budgets(self, out: SchedulerOutput) -> None:
        assert out.num_batched_tokens <= max(self.config.max_num_batched_tokens, out.num_decodes), (
            "token budget exceeded")
        assert len(self.running) <= self.config.max_num_seqs, "max_num_seqs exceeded"
        if self.policy.slices_encoder:
            # The one allowed overrun: a single group through a single block when nothing else is encoded.
            smallest_unit = max((w.num_tokens for w in out.encoder_work if w.num_blocks == 1
                                 and w.group_end - w.group_start == 1), default=0.0)
            assert out.num_encoder_tokens <= max(self.config.encoder_budget_tokens, smallest_unit) + 1e-9, (
                "encoder budget exceeded"
            )


def _visual_limit(req: Request, planned: dict[int, int]) -> int:
    for item in req.videos:
        groups = max(item.num_encoded_groups, planned.get(id(item), 0))
        if groups < item.num_groups:
            return item.offset + groups * item.tokens_per_group
    return req.num_tokens
