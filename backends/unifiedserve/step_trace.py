"""Opt-in JSON-lines trace of what the engine does (EngineConfig.trace_path; env MLLM_ENGINE_TRACE_PATH).

One line per arrival and per step: what the step ran (decodes, prefill chunks, encoder slices), how long the
encoder and the LLM took, and the queue it left (each waiting or prefilling request with its urgency key, which
says whether the policy demoted it as late). For reading a served run after the fact: why a request waited.
Times are time.monotonic() seconds, the clock Request.arrival_time uses.
"""

from __future__ import annotations

import json
from typing import IO

from unifiedserve.cost_model import StepStats
from unifiedserve.request import Request
from unifiedserve.scheduler import Scheduler, SchedulerOutput


class StepTrace:
    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives with the engine

    def arrival(self, req: Request) -> None:
        self._write({"ev": "arrival", "id": req.request_id, "t": req.arrival_time, "prompt": req.num_prompt_tokens,
                     "videos": len(req.videos), "ttft_slo_ms": req.ttft_slo_ms})

    def step(self, plan: SchedulerOutput, stats: StepStats, scheduler: Scheduler) -> None:
        """`stats`: the step's own record (times); the queue: requests not yet at their first token, in the order
        and with the urgency keys the scheduler planned this step with."""
        queue = [r for r in scheduler.running if r.first_token_time is None] + scheduler.waiting
        self._write({
            "ev": "step", "t": stats.start_s, "dur": round(stats.end_s - stats.start_s, 5),
            "enc_s": round(stats.encoder_s, 5), "llm_s": round(stats.llm_s, 5), "decodes": plan.num_decodes,
            "prefill": [[c.request.request_id, c.num_tokens] for c in plan.chunks[plan.num_decodes:]],
            # Each slice: request, encoder tokens, groups, first block, blocks, attention kwork (the price's inputs).
            "encoder": [[w.request.request_id, round(w.num_tokens, 1), w.group_end - w.group_start, w.block_start,
                         w.num_blocks, round(w.attention_work, 1)] for w in plan.encoder_work],
            "target_s": stats.target_s, "budget": stats.token_budget,
            "attn": round(stats.attention_work, 3), "burst": stats.llm_burst,  # with the above: the fit's features
            # The fitted prices the step was planned with: a drifting fit shows up as budgets that shrink.
            "llm_w": [round(float(w), 6) for w in scheduler.cost.llm.w],
            "enc_w": [round(float(w), 6) for w in scheduler.cost.encoder.w],
            "queue": [[r.request_id, _jsonable(scheduler.urgency(r))] for r in queue],
        })

    def close(self) -> None:
        self._file.close()

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")


def _jsonable(key: tuple) -> list:
    return [x if isinstance(x, (int, float, str, bool)) else str(x) for x in key]
