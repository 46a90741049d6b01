"""Scheduler invariants over randomized arrival traces, without a model.

A simulated runner stands in for ModelRunner + Engine._postprocess: encoder work fills per-video "rows"
(like `run_encoder` fills `VideoItem.embeddings`), chunks are checked to read only encoded rows (the
runner's assert), `update_from_output` closes the loop, and every chunk that `samples` appends a token
(finishing at eos / max_tokens / max_total_tokens the way OutputProcessor does). Requests are cancelled at
random with `scheduler.finish(req, FINISHED_ABORTED)` and the KV pools are small, so preemption happens.

Checked after every step (see `check_plan` / `check_state` in scheduler_invariants.py):
- token budget (decodes may exceed it only when there are more decoders than budget), encoder budget
  (unified: may exceed it only by the documented one-group minimum; blocking/fcfs: whole videos),
  len(running) <= max_num_seqs;
- every running decoding request gets exactly one decode token unless it is preempted in that step,
  and every preempted request is less urgent than every request that got a decode;
- chunks start at num_computed_tokens, never pass num_tokens, never read video tokens that are not
  encoded (after this step's encoder work), one chunk per request;
- urgency: a less urgent waiting request is admitted only if every more urgent one is admitted too or
  waits for its encoder; the same for encoder slices and for prefill chunks of running requests;
- block accounting (every block owned once or free, blocks == ceil(computed / block_size));
- the plan is never empty while work is left (no deadlock), every trace ends within a bound (no
  livelock), and at the end every block is free (no leak).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch
from scheduler_invariants import check_plan, check_state, check_time, snapshot

from unifiedserve.block_manager import BlockManager
from unifiedserve.config import POLICIES, EngineConfig
from unifiedserve.cost_model import StepCostModel
from unifiedserve.encoder_planner import block_attention_work
from unifiedserve.request import Request, RequestStatus, VideoItem
from unifiedserve.sampling_params import SamplingParams
from unifiedserve.scheduler import Scheduler, SchedulerOutput

VIDEO_TOKEN = 9999
PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal_patch_size * patch_size**2 (Qwen2.5-VL)
MERGE = 2
MAX_STEPS = 20_000
STEP_S = 0.01  # simulated time per step: arrivals, TTFT deadlines and the timed traces' TPOT slack follow it


# ---- building requests ------------------------------------------------------------------------------
def make_video(rng: random.Random, offset: int) -> VideoItem:
    grid = (rng.randint(1, 4), rng.choice([2, 4, 6]), rng.choice([2, 4]))
    num_patches = grid[0] * grid[1] * grid[2]
    # A zero row expanded to the right shape: realistic layout, no memory.
    pixels = torch.zeros(1, PATCH_DIM).expand(num_patches, PATCH_DIM)
    # encoder_depth > 1: the planner may also cut a group's pass through the tower block by block.
    depth = rng.choice([1, 1, 2, 4])
    # Some blocks full-attention, some windowed: slices of one video differ in price per encoder token.
    attention = block_attention_work(grid[1], grid[2], MERGE, [rng.random() < 0.5 for _ in range(depth)], 1)
    return VideoItem(pixel_values=pixels, grid_thw=grid, offset=offset,
                     tokens_per_group=grid[1] * grid[2] // MERGE**2, second_per_grid_t=1.0,
                     encoder_depth=depth, block_attention=attention)


def make_request(rng: random.Random, request_id: str, arrival: float) -> Request:
    ids: list[int] = []
    videos: list[VideoItem] = []
    for _ in range(rng.choice([0, 1, 1, 2])):
        ids += [rng.randrange(100) for _ in range(rng.choice([0, 0, 3, 10]))]  # 0: a video at offset 0
        video = make_video(rng, len(ids))
        ids += [VIDEO_TOKEN] * video.num_tokens
        videos.append(video)
    ids += [rng.randrange(100) for _ in range(rng.choice([0, 1, 5, 20]) if videos else rng.randint(1, 30))]
    return Request(
        request_id=request_id,
        prompt_token_ids=ids,
        sampling_params=SamplingParams(max_tokens=rng.choice([1, 2, 5, 20, 60])),
        videos=videos,
        priority=rng.choice([0, 0, 1, 2, 3]),
        ttft_slo_ms=rng.choice([None, None, 100.0, 2000.0]),
        arrival_time=arrival,
    )


@dataclass
class Trace:
    config: EngineConfig
    arrivals: dict[int, list[Request]]  # step -> requests that arrive before it
    cancel_prob: float
    eos_prob: float
    requests: list[Request] = field(default_factory=list)


def make_trace(policy: str, seed: int, tpot_slo_ms: float = 0.0) -> Trace:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 8, 16])
    capacity = rng.choice([48, 64, 100, 200, 1000])  # KV pool in tokens: small pools force preemption
    max_num_seqs = rng.randint(1, 6)
    config = EngineConfig(
        model_path="unused",
        policy=policy,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=rng.choice([1, 2, max_num_seqs, 8, 16, 32, 64, 256]),
        encoder_budget_tokens=rng.choice([1, 2, 4, 8, 16, 64]),
        block_size=block_size,
        num_kv_blocks=-(-capacity // block_size),
        max_model_len=rng.choice([80, 10**6]),
        tpot_slo_ms=tpot_slo_ms,
        min_prefill_chunk=rng.choice([1, 4, 16]),
        tpot_max_gap_factor=(1.0, 3.0)[seed % 2],  # 1: the boosts are reachable; 3: long gaps paid by slack
    )
    pool_tokens = config.num_kv_blocks * block_size
    # Engine.make_request caps a request at the KV pool: it stops with "length" once it fills the pool.
    max_total = min(config.max_model_len, pool_tokens)
    arrivals: dict[int, list[Request]] = {}
    requests = []
    last_step = rng.choice([0, 10, 60])
    for i in range(rng.randint(3, 30)):
        step = rng.randint(0, last_step)
        for _ in range(100):  # what the engine would reject at admission is not part of a trace
            req = make_request(rng, f"r{i}", arrival=(step + rng.random()) * STEP_S)
            if req.num_prompt_tokens + 1 <= pool_tokens and req.num_prompt_tokens < config.max_model_len:
                break
        else:
            continue
        req.max_total_tokens = max_total
        arrivals.setdefault(step, []).append(req)
        requests.append(req)
    return Trace(config, arrivals, cancel_prob=rng.choice([0.0, 0.03, 0.2]), eos_prob=rng.choice([0.0, 0.05]),
                 requests=requests)


# ---- the simulated runner -----------------------------------------------------------------------------
class FakeRunner:
    """Tracks which encoder groups each video holds, like ModelRunner fills VideoItem.embeddings."""

    def __init__(self) -> None:
        self.groups: dict[int, set[int]] = {}

    def run_encoder(self, out: SchedulerOutput) -> None:
        # id(video) -> the piece in flight (groups, blocks done) after this step's work so far; None: finished
        pieces: dict[int, tuple[int, int, int] | None] = {}
        for w in out.encoder_work:
            v = w.video
            assert 0 <= w.group_start < w.group_end <= v.num_groups and w.num_blocks >= 1
            current = pieces.get(id(v), (*(v.piece_groups or (-1, -1)), v.piece_blocks_done))
            g0, g1, done = current or (-1, -1, 0)
            if w.block_start > 0:  # continues the piece in flight, exactly where it stopped
                assert (w.group_start, w.group_end, w.block_start) == (g0, g1, done), "piece not continued"
            else:
                assert v.piece_groups is None or id(v) in pieces, "a new piece while one is in flight"
            pieces[id(v)] = (w.group_start, w.group_end, w.block_start + w.num_blocks)
            if not w.completes:
                continue
            pieces[id(v)] = None
            if v.embeddings is None:  # the runner allocates a fresh buffer: earlier rows are gone
                v.embeddings = torch.empty(0)
                self.groups[id(v)] = set()
            self.groups[id(v)].update(range(w.group_start, w.group_end))

    def check_chunk_inputs(self, out: SchedulerOutput) -> None:
        for c in out.chunks:
            for v in c.request.videos:
                lo, hi = max(c.start, v.offset), min(c.end, v.end)
                if lo >= hi:
                    continue
                assert v.embeddings is not None, f"{c.request.request_id}: chunk reads a video with no embeddings"
                needed = range((lo - v.offset) // v.tokens_per_group, (hi - 1 - v.offset) // v.tokens_per_group + 1)
                missing = set(needed) - self.groups[id(v)]
                assert not missing, f"{c.request.request_id}: chunk [{c.start},{c.end}) reads un-encoded {missing}"


# ---- invariants ---------------------------------------------------------------------------------------












# ---- the driver ---------------------------------------------------------------------------------------
def fixed_cost_model(rng: random.Random) -> StepCostModel:
    """Prices in seconds that make the TPOT targets of the timed traces bind (never refitted: no observe)."""
    cost = StepCostModel(bursts=rng.random() < 0.5)  # half the traces pay a CPU burst-thread cost per prefill
    # A fixed cost per forward above the idle step cap too (a slow machine, a tight TPOT target).
    cost.llm.w[:] = [rng.choice([1e-3, 4e-3, 0.2]), rng.choice([2e-4, 1e-3]), rng.choice([1e-4, 1e-3]), 1e-3,
                     rng.choice([0.0, 2e-3]), rng.choice([0.0, 4e-3])]
    cost.encoder.w[:] = [rng.choice([0.0, 1e-3]), rng.choice([2e-4, 2e-3]), rng.choice([0.0, 1e-5])]
    return cost




def run_trace(trace: Trace, seed: int) -> dict[str, int]:
    """Drive the trace to the end, checking every step; returns counts of what happened (for coverage)."""
    rng = random.Random(seed * 7919 + 1)
    stats = {"steps": 0, "preemptions": 0, "partial_slices": 0, "partial_prefills": 0, "cancelled": 0}
    cfg = trace.config
    cost = fixed_cost_model(rng) if cfg.tpot_slo_ms else None
    scheduler = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    runner = FakeRunner()
    last_arrival = max(trace.arrivals, default=0)
    for step in range(MAX_STEPS):
        ctx = f"policy={cfg.policy} seed={seed} step={step}"
        for req in trace.arrivals.get(step, []):
            scheduler.add(req)
        live = scheduler.running + scheduler.waiting
        if live and rng.random() < trace.cancel_prob:
            scheduler.finish(rng.choice(live), RequestStatus.FINISHED_ABORTED)
            stats["cancelled"] += 1
        if not scheduler.has_unfinished():
            if step > last_arrival:
                break
            continue

        before = snapshot(scheduler)
        now = step * STEP_S
        out = scheduler.schedule(now=now)
        assert not out.is_empty, f"{ctx}: empty plan with unfinished requests (deadlock)"
        check_plan(scheduler, before, out, ctx)
        if cfg.tpot_slo_ms:
            stats["timed_steps"] = stats.get("timed_steps", 0) + int(out.budgets.timed)
            exception = check_time(scheduler, out, ctx)
            if exception:
                stats[exception] = stats.get(exception, 0) + 1
            live = scheduler.running + scheduler.waiting
            demoted = any(scheduler.policy.is_demoted(scheduler.urgency(r)) for r in live)
            stats["late_demoted"] = stats.get("late_demoted", 0) + int(demoted)
        stats["steps"] += 1
        stats["preemptions"] += len(out.preempted)
        stats["partial_slices"] += sum(w.group_end < w.video.num_groups for w in out.encoder_work)
        stats["partial_prefills"] += sum(not c.samples for c in out.chunks)

        runner.run_encoder(out)
        runner.check_chunk_inputs(out)
        scheduler.update_from_output(out)
        for c in out.chunks:
            if not c.samples:
                continue
            req = c.request
            req.output_token_ids.append(rng.randrange(100))  # OutputProcessor.append_token's stop rules
            if req.first_token_time is None:
                req.first_token_time = now + STEP_S
            if rng.random() < trace.eos_prob:
                scheduler.finish(req, RequestStatus.FINISHED_STOPPED)
            elif req.num_output_tokens >= req.sampling_params.max_tokens or req.num_tokens >= req.max_total_tokens:
                scheduler.finish(req, RequestStatus.FINISHED_LENGTH)
        check_state(scheduler, trace.requests, ctx)
    else:
        stuck = [(r.request_id, r.status.name, r.num_computed_tokens, r.num_tokens) for r in scheduler.running
                 + scheduler.waiting]
        raise AssertionError(f"policy={cfg.policy} seed={seed}: not finished after {MAX_STEPS} steps: {stuck}")

    assert all(r.status.finished for r in trace.requests)
    assert scheduler.blocks.num_free_blocks == scheduler.blocks.num_blocks, "blocks leaked"
    return stats


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(30))
def test_random_traces_keep_invariants(policy: str, seed: int) -> None:
    trace = make_trace(policy, seed)
    run_trace(trace, seed)


@pytest.mark.parametrize("seed", range(30))
def test_random_timed_traces_keep_invariants(seed: int) -> None:
    """unified with a TPOT target: the same invariants, plus the time headroom (and its one forced unit)."""
    trace = make_trace("unified", seed, tpot_slo_ms=_timed_slo(seed))
    run_trace(trace, seed)


def _timed_slo(seed: int) -> float:
    return random.Random(seed).choice([2.0, 5.0, 20.0, 80.0])


def test_random_timed_traces_exercise_time_budgets() -> None:
    totals: dict[str, int] = {}
    for seed in range(30):
        for key, value in run_trace(make_trace("unified", seed, tpot_slo_ms=_timed_slo(seed)), seed).items():
            totals[key] = totals.get(key, 0) + value
    kinds = ("timed_steps", "forced", "boost", "risk", "partial_prefills", "late_demoted")
    assert all(totals[k] > 0 for k in kinds), totals


def test_random_traces_exercise_preemption_and_slicing() -> None:
    """Guard the generator itself: the traces above do reach preemption, chunking, slicing, cancellation."""
    totals: dict[str, int] = {}
    for seed in range(30):
        for key, value in run_trace(make_trace("unified", seed), seed).items():
            totals[key] = totals.get(key, 0) + value
    assert all(v > 0 for v in totals.values()), totals
