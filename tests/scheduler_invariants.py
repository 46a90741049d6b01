"""What the randomized scheduler traces (test_scheduler.py) check after every step; see that file's docstring."""

from __future__ import annotations

from dataclasses import dataclass

from unifiedserve.policy import Policy
from unifiedserve.request import Request, RequestStatus
from unifiedserve.scheduler import Scheduler, SchedulerOutput


def _visual_limit_after(req: Request, out: SchedulerOutput) -> int:
    """Independent of the scheduler's helper: the end a chunk may reach with this step's encoder work."""
    planned: dict[int, int] = {}
    for w in out.encoder_work:
        if w.request is req and w.completes:
            planned[id(w.video)] = max(planned.get(id(w.video), 0), w.group_end)
    for v in req.videos:
        groups = max(v.num_encoded_groups, planned.get(id(v), 0))
        if groups < v.num_groups:
            return v.offset + groups * v.tokens_per_group
    return req.num_tokens


def _pending_tpg(req: Request, out: SchedulerOutput) -> float | None:
    """Cost of the smallest further encoder unit of req's first video still un-encoded after this step
    (one more block of the piece in flight, else one group through one block); None if all are done."""
    planned = {id(w.video): w.group_end for w in out.encoder_work if w.request is req and w.completes}
    for v in req.videos:
        if max(v.num_encoded_groups, planned.get(id(v), 0)) < v.num_groups:
            mine = [w for w in out.encoder_work if w.video is v and not w.completes]
            groups = (mine[-1].group_end - mine[-1].group_start) if mine else (
                (v.piece_groups[1] - v.piece_groups[0]) if v.piece_groups and not any(
                    w.video is v for w in out.encoder_work) else 1)
            return groups * v.tokens_per_group / v.encoder_depth
    return None


@dataclass
class Before:
    running: list[Request]
    waiting: list[Request]
    decoding: list[Request]
    computed: dict[str, int]
    encoded: dict[int, int]  # id(video) -> num_encoded_groups


def snapshot(s: Scheduler) -> Before:
    live = s.running + s.waiting
    return Before(
        running=list(s.running),
        waiting=list(s.waiting),
        decoding=[r for r in s.running if r.is_decoding],
        computed={r.request_id: r.num_computed_tokens for r in live},
        encoded={id(v): v.num_encoded_groups for r in live for v in r.videos},
    )


def check_plan(s: Scheduler, before: Before, out: SchedulerOutput, ctx: str) -> None:
    cfg = s.config
    key = s.urgency  # this step's order (unified demotes requests that cannot meet their TTFT deadline)
    preempted = {r.request_id for r in out.preempted}
    by_req: dict[str, list] = {}
    for c in out.chunks:
        by_req.setdefault(c.request.request_id, []).append(c)

    # Budgets and slots.
    num_decodes = sum(1 for r in before.decoding if r.request_id in by_req)
    assert out.num_batched_tokens <= max(cfg.max_num_batched_tokens, num_decodes), f"{ctx}: token budget"
    if num_decodes > cfg.max_num_batched_tokens:
        assert out.num_batched_tokens == num_decodes, f"{ctx}: prefill on top of an over-budget decode batch"
    assert len(s.running) <= cfg.max_num_seqs, f"{ctx}: max_num_seqs"
    if Policy(cfg.policy).slices_encoder:
        w0 = out.encoder_work[0] if len(out.encoder_work) == 1 else None
        one_unit_minimum = w0 is not None and w0.num_blocks == 1 and (
            w0.group_end - w0.group_start == 1 or w0.block_start > 0)  # one block of one group / of the piece
        assert out.num_encoder_tokens <= cfg.encoder_budget_tokens + 1e-9 or one_unit_minimum, f"{ctx}: encoder budget"
    else:
        for w in out.encoder_work:
            assert w.group_end == w.video.num_groups and w.completes, f"{ctx}: blocking/fcfs encode whole videos"

    # Encoder work is contiguous, in video order, for requests that are still alive.
    ends: dict[int, int] = {}
    for w in out.encoder_work:
        assert not w.request.status.finished
        expected = ends.get(id(w.video), w.video.num_encoded_groups)
        assert w.group_start == expected, f"{ctx}: encoder slice does not continue the video"
        ends[id(w.video)] = w.group_end if w.completes else w.group_start
        index = next(i for i, v in enumerate(w.request.videos) if v is w.video)
        earlier = w.request.videos[:index]
        assert all(_visual_limit_after(w.request, out) >= v.end for v in earlier), f"{ctx}: videos out of order"

    # Decodes: every running decoder gets exactly one token, unless preempted.
    decoded = set()
    for r in before.decoding:
        if r.request_id in preempted:
            assert r.status == RequestStatus.PREEMPTED and not r.block_ids, f"{ctx}: preempted {r.request_id}"
            continue
        chunks = by_req.get(r.request_id, [])
        assert len(chunks) == 1 and chunks[0].num_tokens == 1, f"{ctx}: decode of {r.request_id} skipped"
        assert chunks[0].start == before.computed[r.request_id]
        decoded.add(r.request_id)
    for p in out.preempted:
        for r in before.decoding:
            if r.request_id in decoded:
                assert key(p) > key(r), f"{ctx}: preempted {p.request_id} is more urgent than decoding {r.request_id}"

    # Chunks: one per request, continue its KV, end within num_tokens and the encoded video tokens.
    for rid, chunks in by_req.items():
        assert len(chunks) == 1, f"{ctx}: {rid} has {len(chunks)} chunks"
        c = chunks[0]
        req = c.request
        assert req.status == RequestStatus.RUNNING and req in s.running, f"{ctx}: chunk for non-running {rid}"
        expected_start = 0 if rid in preempted else before.computed[rid]
        assert c.start == expected_start == req.num_computed_tokens, f"{ctx}: {rid} chunk starts at {c.start}"
        assert 0 <= c.start < c.end <= req.num_tokens, f"{ctx}: {rid} chunk [{c.start},{c.end}) > {req.num_tokens}"
        assert c.end <= _visual_limit_after(req, out), f"{ctx}: {rid} chunk passes its encoded video tokens"
        assert len(req.block_ids) * s.blocks.block_size >= c.end, f"{ctx}: {rid} has no KV room for its chunk"

    # Urgency among waiting requests (those preempted in this step included): an admitted request
    # never overtakes a more urgent one, unless that one is waiting for its encoder.
    waiting = before.waiting + [r for r in out.preempted if r not in before.waiting]
    admitted = [r for r in waiting if r.status == RequestStatus.RUNNING]
    assert not (admitted and out.preempted), f"{ctx}: admitted new requests in a step that had to preempt"
    for a in admitted:
        for w in waiting:
            if w.status.finished or w.status == RequestStatus.RUNNING or key(w) >= key(a):
                continue
            assert _visual_limit_after(w, out) <= w.num_computed_tokens, (
                f"{ctx}: {a.request_id} admitted before the more urgent {w.request_id}")

    # Urgency of encoder slices and prefill chunks within one class (running prefills / waiting).
    prefilling = [r for r in before.running if r not in before.decoding and r.request_id not in preempted]
    used_by = {}
    for w in out.encoder_work:
        used_by[w.request.request_id] = used_by.get(w.request.request_id, 0) + w.num_tokens
    for group in (prefilling, waiting):
        for m in group:
            for low in group:
                if key(m) >= key(low) or low.request_id not in used_by or m.status.finished:
                    continue
                tpg = _pending_tpg(m, out)
                if tpg is None:
                    continue
                assert Policy(cfg.policy).slices_encoder, f"{ctx}: blocking skipped {m.request_id}'s video"
                # When m was planned at most (total - low's share) was used, so another group of m did not fit.
                left = cfg.encoder_budget_tokens - out.num_encoder_tokens + used_by[low.request_id]
                assert tpg > left, f"{ctx}: encoder slice of {low.request_id} overtook {m.request_id}"
    for m in prefilling:
        if m.status != RequestStatus.RUNNING:
            continue
        reach = min(m.num_tokens, _visual_limit_after(m, out))
        got = by_req[m.request_id][0].end if m.request_id in by_req else before.computed[m.request_id]
        if got >= reach:
            continue
        for low in prefilling:
            if key(low) > key(m) and low.request_id in by_req and low.status == RequestStatus.RUNNING:
                raise AssertionError(f"{ctx}: prefill of {low.request_id} overtook {m.request_id} "
                                     f"(which reached {got} of {reach})")


def check_state(s: Scheduler, requests: list[Request], ctx: str) -> None:
    blocks = s.blocks
    owned = [b for r in s.running + s.waiting for b in r.block_ids]
    assert len(owned) == len(set(owned)), f"{ctx}: a block is owned twice"
    assert sorted(owned + list(blocks._free)) == list(range(blocks.num_blocks)), f"{ctx}: block leak / double free"
    ids = [r.request_id for r in s.running + s.waiting]
    assert len(ids) == len(set(ids)), f"{ctx}: a request is both running and waiting"
    for r in s.running:
        assert r.status == RequestStatus.RUNNING
        assert len(r.block_ids) == blocks.blocks_for(r.num_computed_tokens), f"{ctx}: {r.request_id} blocks"
        assert 0 < r.num_computed_tokens < r.num_tokens
    for r in s.waiting:
        assert r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
        assert r.num_computed_tokens == 0 and not r.block_ids
    for r in requests:
        if r.status.finished:
            assert not r.block_ids and r not in s.running and r not in s.waiting
            assert all(v.embeddings is None for v in r.videos), f"{ctx}: finished {r.request_id} keeps embeddings"


def check_time(s: Scheduler, out: SchedulerOutput, ctx: str) -> str | None:
    """Timed (unified + TPOT target): prefill and encoder work fit the headroom the budgets give, except for
    the boost (the decoders' slack, spent on one prompt that it finishes, or in part on a request whose TTFT
    deadline is at risk) or one forced unit in a step that has
    nothing else: one vision block of one group (or of the piece in flight), or at most min_prefill_chunk tokens
    of one request. Returns which exception the step used."""
    b = out.budgets
    if b is None or not b.timed:
        return None
    cost = s.cost
    planned = sum(cost.encoder_work_s(w) for w in out.encoder_work)
    prefills = out.chunks[out.num_decodes:]
    for c in prefills:
        planned += c.num_tokens * cost.prefill_token_s(c.start + c.num_tokens // 2)
    if planned <= b.time_s + 1e-9:
        return None
    if planned <= b.time_s + b.boost_s + 1e-9 and any(c.samples for c in prefills):
        return "boost"
    if planned <= b.time_s + max(b.risk_boost_s, b.finish_boost_s) + 1e-9:  # a request at risk spent it
        return "risk"
    forced_encoder = (len(out.encoder_work) == 1 and not prefills and out.encoder_work[0].num_blocks == 1)
    forced_prefill = (not out.encoder_work and len(prefills) == 1
                      and prefills[0].num_tokens <= s.config.min_prefill_chunk)
    assert forced_encoder or forced_prefill, f"{ctx}: planned {planned:.4f} s > headroom {b.time_s:.4f} s"
    return "forced"
