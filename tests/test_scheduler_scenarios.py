"""Scheduler behaviour in hand-made scenarios (the randomized invariants are in test_scheduler.py): decode first,
urgency order across running prefills and waiting requests, the time headroom and its one forced unit, TPOT catch-up,
late requests, preemption and recompute, encoder minimum units."""

from __future__ import annotations

import pytest
import torch

from unifiedserve.block_manager import BlockManager
from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import StepCostModel
from unifiedserve.request import Request, RequestStatus, VideoItem
from unifiedserve.sampling_params import SamplingParams
from unifiedserve.scheduler import Scheduler, SchedulerOutput

VIDEO_TOKEN = 9999
PATCH_DIM = 3 * 2 * 14 * 14  # channels * temporal_patch_size * patch_size**2 (Qwen2.5-VL)
MERGE = 2


# ---- hand-made scenarios ------------------------------------------------------------------------------
def _text_request(rid: str, n: int, max_tokens: int = 10, priority: int = 0, arrival: float = 0.0) -> Request:
    # An ordinary answer: an end-of-sequence token may end it any step (no TPOT credit, tpot_slack.py).
    req = Request(rid, list(range(n)), SamplingParams(max_tokens=max_tokens), priority=priority, arrival_time=arrival,
                  eos_token_ids=frozenset({2}))
    req.max_total_tokens = 10**6
    return req


def _scheduler(cost: StepCostModel | None = None, **kw) -> Scheduler:
    cfg = EngineConfig(model_path="unused", **kw)
    return Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)


def _free_forwards() -> StepCostModel:
    """A cost model whose forwards cost nothing fixed: every prefill chunk is worth a forward of its own (the
    scenarios that need prefill to trail the encoder frontier step by step)."""
    cost = StepCostModel()
    cost.llm.w[0] = cost.llm.w[5] = 0.0
    return cost


def _step(s: Scheduler, token: int = 1) -> SchedulerOutput:
    out = s.schedule()
    for w in out.encoder_work:
        if w.video.embeddings is None:
            w.video.embeddings = torch.empty(0)
    s.update_from_output(out)
    for c in out.chunks:
        if c.samples:
            c.request.output_token_ids.append(token)
    return out


def test_decode_first_then_prefill_in_urgency_order() -> None:
    s = _scheduler(max_num_batched_tokens=8, num_kv_blocks=100, block_size=4)
    a = _text_request("a", 6, arrival=0.0)
    s.add(a)
    _step(s)  # a: whole prompt, samples its first token
    assert a.is_decoding
    b, c = _text_request("b", 20, priority=3, arrival=1.0), _text_request("c", 20, priority=1, arrival=2.0)
    s.add(b)
    s.add(c)
    out = _step(s)
    # a's decode first, then the rest of the budget to the more urgent c; b waits.
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("a", 1), ("c", 7)]
    assert b.status == RequestStatus.WAITING


def test_new_urgent_request_goes_ahead_of_a_running_prefill() -> None:
    """Running prefills and waiting requests share one urgency order: a question with a tight TTFT deadline
    that arrives while a long prompt is being prefilled in chunks takes the step's prefill budget first."""
    s = _scheduler(max_num_batched_tokens=8, num_kv_blocks=100, block_size=4)
    long = _text_request("long", 40, arrival=0.0)
    long.ttft_slo_ms = 5000.0
    s.add(long)
    _step(s)  # long: first 8-token chunk, now running in prefill
    assert long.status == RequestStatus.RUNNING and long.num_computed_tokens == 8
    quick = _text_request("quick", 5, arrival=1.0)
    quick.ttft_slo_ms = 100.0  # deadline 1.1 s, long's is 5.0 s
    s.add(quick)
    out = _step(s)
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("quick", 5), ("long", 3)]


def test_timed_step_spends_the_headroom_in_urgency_order_with_one_forced_unit() -> None:
    cfg = EngineConfig(model_path="unused", tpot_slo_ms=20.0, tpot_headroom=1.0, num_kv_blocks=100, block_size=4,
                       min_prefill_chunk=2)
    cost = StepCostModel()
    cost.llm.w[:] = [0.004, 0.001, 0.001, 0.0, 0.0, 0.0]  # 4 ms per forward, 1 ms per decode row or prefill token
    s = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    a = _text_request("a", 3, max_tokens=100, arrival=0.0)
    s.add(a)
    out = s.schedule(now=0.0)  # no decoder: the idle cap (40 ms) - 4 ms leaves room for 36 tokens; a needs 3
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("a", 3)]
    s.update_from_output(out)
    a.output_token_ids, a.first_token_time = [7], 0.01
    b, c = _text_request("b", 30, priority=2, arrival=0.0), _text_request("c", 30, priority=1, arrival=0.0)
    s.add(b)
    s.add(c)
    out = s.schedule(now=0.01)
    # target 20 ms - (4 + 1) ms for a's decode = 15 ms of headroom: 15 tokens of c (more urgent), none of b.
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("a", 1), ("c", 15)]
    assert abs(out.budgets.time_s - 0.015) < 1e-9
    s.update_from_output(out)
    a.output_token_ids.append(7)
    # a has used its slack (2 gaps, 45 ms since its first token > 40 ms): a decode-only step to catch up.
    out = s.schedule(now=0.055)
    assert out.budgets.time_s == 0.0 and not out.budgets.allow_forced
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("a", 1)]
    s.update_from_output(out)
    a.output_token_ids.append(7)
    # Back under: 3 gaps may take 60 ms, 54.5 ms used, so this step may take 5.5 ms; with the forward's fixed
    # cost set to 0 the decode is predicted at 1 ms, and the 4.5 ms left buy 4 tokens of c.
    s.cost.llm.w[0] = 0.0
    out = s.schedule(now=0.0645)
    assert out.budgets.allow_forced
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("a", 1), ("c", 4)]


@pytest.mark.parametrize(("streams", "expected_tokens"), [(1, 12), (2, 11)])
def test_the_first_prefill_beside_a_lone_stream_pays_the_batch_jump(streams: int, expected_tokens: int) -> None:
    """A lone decode is a one-row forward; the first prefill token makes it a batch and costs the jump on top of
    its price (cost_model.py). With two streams the decode prediction already holds the jump."""
    cfg = EngineConfig(model_path="unused", tpot_slo_ms=20.0, tpot_headroom=1.0, ttft_pace_fraction=0.0,
                       num_kv_blocks=100, block_size=4)
    cost = StepCostModel()
    cost.llm.w[:] = [0.004, 0.001, 0.001, 0.0, 0.0, 0.003]  # + 3 ms for any forward of two or more rows
    s = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    running = [_text_request(f"s{i}", 3, max_tokens=100, arrival=0.0) for i in range(streams)]
    for r in running:
        s.add(r)
    s.update_from_output(s.schedule(now=0.0))
    for r in running:
        r.output_token_ids, r.first_token_time = [7], 0.01
    s.add(_text_request("c", 30, arrival=0.0))
    out = s.schedule(now=0.01)
    # 1 stream: 20 - 5 (one-row decode) - 3 (jump) = 12 ms -> 12 tokens; 2 streams: 20 - 9 (4 + 2 + 3) = 11.
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks if x.request.request_id == "c"] == [
        ("c", expected_tokens)]


@pytest.mark.parametrize(("ttft_slo_ms", "expected_tokens"), [(55.0, 17), (200.0, 12)])
def test_a_question_that_steps_like_this_one_would_finish_late_spends_the_risk_boost(
        ttft_slo_ms: float, expected_tokens: int) -> None:
    """At risk is counted in steps: each carries the headroom less the batch jump, and the first token comes when
    the last one ends. 33 tokens at 12 tokens per 20 ms step take 3 steps, 60 ms: past a 55 ms deadline (work /
    share alone, 33 ms / 0.75 = 44 ms, said on time and the question finished one step late), so the step spends
    the risk boost (a quarter of the per-gap target, 5 ms, from the stream's banked slack)."""
    cfg = EngineConfig(model_path="unused", tpot_slo_ms=20.0, tpot_headroom=1.0, tpot_max_gap_factor=1.0,
                       ttft_pace_fraction=0.0, num_kv_blocks=100, block_size=4)
    cost = StepCostModel()
    cost.llm.w[:] = [0.004, 0.001, 0.001, 0.0, 0.0, 0.003]  # 4 ms per forward, 1 ms per row, 3 ms batch jump
    s = Scheduler(cfg, BlockManager(cfg.num_kv_blocks, cfg.block_size), cost)
    stream = _text_request("s", 3, max_tokens=100, arrival=0.0)
    s.add(stream)
    for i in range(21):  # its prompt, then 20 decodes 10 ms apart: 0.2 s of slack banked (20 gaps x 20 ms)
        s.update_from_output(s.schedule(now=0.01 * i))
        stream.output_token_ids.append(7)
    stream.first_token_time = 0.0
    question = _text_request("q", 33, arrival=0.2)
    question.ttft_slo_ms = ttft_slo_ms
    s.add(question)
    out = s.schedule(now=0.2)
    assert out.budgets.risk_boost_s == pytest.approx(0.005)
    # 20 - 5 (decode) - 3 (jump) = 12 ms -> 12 tokens; at risk, + 5 ms -> 17 (a 200 ms deadline is not at risk)
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks if x.request.request_id == "q"] == [
        ("q", expected_tokens)]


@pytest.mark.parametrize("policy", ["unified", "blocking"])
def test_unified_serves_a_request_that_can_still_make_its_deadline_before_a_late_one(policy: str) -> None:
    s = _scheduler(policy=policy, max_num_batched_tokens=8, num_kv_blocks=100, block_size=4)
    late, ontime = _text_request("late", 20, arrival=0.0), _text_request("ontime", 20, arrival=0.5)
    late.ttft_slo_ms, ontime.ttft_slo_ms = 900.0, 1000.0  # deadlines 0.9 s and 1.5 s
    s.add(late)
    s.add(ontime)
    out = s.schedule(now=1.0)  # late's deadline has passed; ontime's has not
    first = "ontime" if policy == "unified" else "late"  # blocking keeps plain earliest-deadline-first
    assert [x.request.request_id for x in out.chunks] == [first]


def test_late_requests_go_shortest_remaining_work_first() -> None:
    s = _scheduler(max_num_batched_tokens=8, num_kv_blocks=100, block_size=4)
    long, short = _text_request("long", 40, arrival=0.0), _text_request("short", 6, arrival=0.2)
    long.ttft_slo_ms, short.ttft_slo_ms = 100.0, 100.0  # both deadlines passed at t=1
    s.add(long)
    s.add(short)
    out = s.schedule(now=1.0)
    assert [(x.request.request_id, x.num_tokens) for x in out.chunks] == [("short", 6), ("long", 2)]


def test_fcfs_ignores_priority() -> None:
    s = _scheduler(policy="fcfs", max_num_batched_tokens=8, num_kv_blocks=100, block_size=4)
    late_urgent, early = _text_request("u", 8, priority=1, arrival=5.0), _text_request("e", 8, priority=9, arrival=1.0)
    s.add(late_urgent)
    s.add(early)
    out = _step(s)
    assert [x.request.request_id for x in out.chunks] == ["e"]


def test_decode_preempts_least_urgent_and_recomputes() -> None:
    # 3 blocks of 4 tokens: two requests of 5 tokens each fill them; the next decode needs a block.
    s = _scheduler(max_num_batched_tokens=64, num_kv_blocks=3, block_size=4)
    hi, lo = _text_request("hi", 4, priority=1), _text_request("lo", 5, priority=2)
    s.add(hi)
    s.add(lo)
    _step(s)
    assert hi.is_decoding and lo.is_decoding and s.blocks.num_free_blocks == 0
    out = _step(s)  # hi: 5 tokens fit its first 2 blocks? no: 4 computed + 1 -> needs block 2 -> preempt lo
    assert [r.request_id for r in out.preempted] == ["lo"]
    assert lo.status == RequestStatus.PREEMPTED and lo.num_computed_tokens == 0 and lo.output_token_ids == [1]
    assert [x.request.request_id for x in out.chunks] == ["hi"]
    s.finish(hi, RequestStatus.FINISHED_STOPPED)
    out = _step(s, token=2)  # lo recomputes prompt + its generated token, and samples again
    assert [(x.request.request_id, x.start, x.end) for x in out.chunks] == [("lo", 0, 6)]
    assert lo.output_token_ids == [1, 2]
    s.finish(lo, RequestStatus.FINISHED_ABORTED)
    assert s.blocks.num_free_blocks == s.blocks.num_blocks


def _video_request(rid: str, text_before: int, groups: int, tpg_side: int, text_after: int, **kw) -> Request:
    grid = (groups, tpg_side * MERGE, MERGE)
    v = VideoItem(torch.zeros(groups * grid[1] * grid[2], PATCH_DIM), grid, offset=text_before,
                  tokens_per_group=tpg_side, second_per_grid_t=1.0)
    ids = list(range(text_before)) + [VIDEO_TOKEN] * v.num_tokens + list(range(text_after))
    req = Request(rid, ids, SamplingParams(max_tokens=kw.pop("max_tokens", 2)), videos=[v], **kw)
    req.max_total_tokens = 10**6
    return req


def test_stalled_prefills_do_not_deadlock() -> None:
    # "low" prefills as its video gets encoded (one group per step); "high" (more urgent) arrives and
    # takes the rest of a tiny pool. Then neither can finish its prompt and neither decodes: the more
    # urgent one must take the blocks of the less urgent one (preemption) instead of both waiting forever.
    s = _scheduler(_free_forwards(), max_num_batched_tokens=64, encoder_budget_tokens=4, num_kv_blocks=6,
                   block_size=4)
    low = _video_request("low", text_before=2, groups=4, tpg_side=4, text_after=1, priority=5, arrival_time=0.0)
    s.add(low)
    _step(s)  # low: group 0 encoded, tokens [0, 6)
    high = _text_request("high", 20, priority=1, arrival=1.0)
    s.add(high)
    for _ in range(30):
        if high.num_output_tokens:
            break
        out = _step(s)
        assert not out.is_empty, "deadlock: nothing scheduled while two requests wait for each other's blocks"
    assert high.num_output_tokens > 0
    assert low.num_preemptions > 0


def test_preempted_request_does_not_overtake_more_urgent_waiting_one() -> None:
    # max_num_seqs=2: "a" (urgent) and "b" (least urgent) run; "w" (middle) waits for a slot. When a's
    # decode preempts b, b must not take its blocks and slot straight back (it used to: it was put at the
    # head of the waiting queue, ahead of w); the slot goes to w, in policy order.
    s = _scheduler(max_num_seqs=2, max_num_batched_tokens=64, num_kv_blocks=3, block_size=4)
    a, b = _text_request("a", 4, priority=1, arrival=0.0), _text_request("b", 5, priority=9, arrival=0.1)
    s.add(a)
    s.add(b)
    _step(s)
    w = _text_request("w", 2, priority=5, arrival=1.0)
    s.add(w)
    out = _step(s)
    assert [r.request_id for r in out.preempted] == ["b"]
    assert b.status == RequestStatus.PREEMPTED and not b.block_ids
    out = _step(s)
    assert w.status == RequestStatus.RUNNING and b.status == RequestStatus.PREEMPTED


def test_unified_encoder_one_group_minimum_and_blocking_whole_video() -> None:
    def video_request(rid: str) -> Request:
        return _video_request(rid, text_before=2, groups=4, tpg_side=4, text_after=1)

    s = _scheduler(_free_forwards(), encoder_budget_tokens=2, num_kv_blocks=100)  # budget < one group (4 tokens)
    req = video_request("u")
    s.add(req)
    out = _step(s)
    assert [(w.group_start, w.group_end) for w in out.encoder_work] == [(0, 1)]
    assert [(c.start, c.end) for c in out.chunks] == [(0, 6)]  # text + the one encoded group

    s = _scheduler(policy="blocking", encoder_budget_tokens=2, num_kv_blocks=100)
    req = video_request("b")
    s.add(req)
    out = _step(s)
    assert [(w.group_start, w.group_end) for w in out.encoder_work] == [(0, 4)]
    assert [(c.start, c.end) for c in out.chunks] == [(0, 19)] and req.num_output_tokens == 1  # sampled


def test_lone_video_prefill_waits_for_the_encoder_instead_of_paying_a_forward_per_sliver() -> None:
    # Default prices: a forward's fixed part (6 ms) buys 24 prefill tokens. A lone video encoded one group per
    # step would otherwise get a 4-token chunk (plus a forward) per step; the chunks wait for the encoder and
    # the prompt goes through in one forward once the last group is encoded.
    s = _scheduler(encoder_budget_tokens=4, num_kv_blocks=100)
    req = _video_request("v", text_before=2, groups=4, tpg_side=4, text_after=1)
    s.add(req)
    forwards = 0
    for _ in range(4):
        out = _step(s)
        assert out.encoder_work, "the encoder moves every step"
        forwards += bool(out.chunks)
    assert req.num_output_tokens == 1 and forwards == 1 and req.num_preemptions == 0

    # A step that already runs a forward (a stream decodes) takes the trailing chunk along: it costs only its
    # tokens there.
    s = _scheduler(encoder_budget_tokens=4, num_kv_blocks=100)
    stream = _text_request("t", 3, max_tokens=50)
    s.add(stream)
    _step(s)
    video = _video_request("v", text_before=2, groups=4, tpg_side=4, text_after=1)
    s.add(video)
    out = _step(s)
    assert [(c.request.request_id, c.start, c.end) for c in out.chunks] == [("t", 3, 4), ("v", 0, 6)]
