"""The engine: step() = schedule -> run -> post-process (nano-vllm shape), plus the offline generate() API.

Single-threaded by design: one thread owns an Engine. `make_request` is the exception (pure, read-only,
safe from any thread) so that preprocessing happens outside the loop; `engine_loop.EngineLoop` drives an
Engine from a background thread for servers.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Sequence

import torch

from unifiedserve.block_manager import BlockManager
from unifiedserve.config import EngineConfig
from unifiedserve.cost_model import StepCostModel, StepStats
from unifiedserve.errors import InvalidRequestError
from unifiedserve.input_processor import InputProcessor
from unifiedserve.inputs import GenerationInput
from unifiedserve.model_loader import load_model
from unifiedserve.model_runner import ModelRunner
from unifiedserve.output_processor import OutputProcessor
from unifiedserve.outputs import CompletionOutput, RequestOutput
from unifiedserve.request import Request, RequestStatus
from unifiedserve.sampler import Sampler
from unifiedserve.sampling_params import SamplingParams
from unifiedserve.scheduler import Scheduler, SchedulerOutput
from unifiedserve.step_trace import StepTrace


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        loaded = load_model(config.model_path, config.device, config.dtype)
        self.tokenizer = loaded.tokenizer
        self.runner = ModelRunner(config, loaded)
        text_cfg = loaded.model.config.text_config
        self.max_model_len = config.max_model_len or text_cfg.max_position_embeddings
        self.blocks = BlockManager(self.runner.num_kv_blocks, config.block_size)
        self.cost = StepCostModel(bursts=self.runner.threads.enabled)
        self.scheduler = Scheduler(config, self.blocks, self.cost, same_step_encoder=self.runner.overlap is None)
        self.step_stats: collections.deque[StepStats] = collections.deque(maxlen=config.step_stats_window)
        self.sampler = Sampler(config.seed)
        self.outputs = OutputProcessor(loaded.tokenizer)
        self.processor = InputProcessor(
            loaded.tokenizer, loaded.model.config, loaded.vision,
            self.max_model_len, config.max_tokens_limit, loaded.eos_token_ids,
        )
        self.vision = loaded.vision
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.num_steps = 0
        self.trace = StepTrace(config.trace_path) if config.trace_path else None

    # ---- admission (make_request is thread-safe; add/abort belong to the engine thread) -------
    def make_request(self, request_id: str, gen_input: GenerationInput, params: SamplingParams,
                     priority: int = 0, ttft_slo_ms: float | None = None, tpot_slo_ms: float | None = None,
                     arrival_time: float | None = None) -> Request:
        """A validated request; `arrival_time` (time.monotonic(), same host) is when the request entered the
        serving pipeline, if earlier than now: the TTFT SLO counts from there, decoding and preprocessing
        included, as the client measures it."""
        req = self.processor.process(request_id, gen_input, params, priority, ttft_slo_ms, tpot_slo_ms)
        req.arrival_time = pipeline_arrival(arrival_time, req.arrival_time)
        kv_capacity = self.blocks.num_blocks * self.blocks.block_size
        if not self.blocks.fits_ever(req.num_prompt_tokens + 1):
            raise InvalidRequestError(
                f"prompt of {req.num_prompt_tokens} tokens can never fit the KV cache ({kv_capacity} tokens)"
            )
        # Fix (livelock): a request that grew to fill the whole KV pool preempted itself on its next decode,
        # recomputed, and preempted itself again, forever. It now stops with "length" at the pool's size.
        req.max_total_tokens = min(req.max_total_tokens, kv_capacity)
        return req

    def add_request(self, req: Request) -> None:
        if req.request_id in self.requests:
            raise InvalidRequestError(f"request id {req.request_id!r} is already running")
        req.arrival_time = min(req.arrival_time, time.monotonic())
        self.requests[req.request_id] = req
        self.scheduler.add(req)
        if self.trace:
            self.trace.arrival(req)

    def abort(self, request_id: str) -> RequestOutput | None:
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
        self._release(req)
        return RequestOutput(request_id, finished=True, finish_reason="abort",
                             num_prompt_tokens=req.num_prompt_tokens, num_output_tokens=req.num_output_tokens)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> dict:
        """Plain counters for metrics; safe to read from another thread (values may be one step old)."""
        return {
            "num_in_flight": len(self.requests),
            "num_waiting": len(self.scheduler.waiting),
            "num_running": len(self.scheduler.running),
            "kv_cache_usage": self.blocks.usage,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_steps": self.num_steps,
            "num_waiting_encoder": sum(1 for r in list(self.requests.values())
                                       if any(not v.fully_encoded for v in r.videos)),
            "encoder_time_share": self._encoder_time_share(),
            "encoder_cache_hits": self.scheduler.encoder_cache.hits,
        }

    def _encoder_time_share(self, last_steps: int = 64) -> float:
        """Share of the recent steps' execution time spent in the vision encoder."""
        recent = list(self.step_stats)[-last_steps:]
        total = sum(s.encoder_s + s.llm_s for s in recent)
        return sum(s.encoder_s for s in recent) / total if total > 0 else 0.0

    # ---- the loop ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        plan = self.scheduler.schedule()
        start = time.monotonic()
        logits, encoder_s, llm_s = self.runner.execute(plan)
        self._record(plan, start, encoder_s, llm_s)
        if self.trace:
            self.trace.step(plan, self.step_stats[-1], self.scheduler)
        return self._postprocess(plan, logits)

    def _record(self, plan: SchedulerOutput, start: float, encoder_s: float, llm_s: float) -> None:
        stats = StepStats(
            start_s=start, end_s=time.monotonic(),
            num_decode_tokens=plan.num_decodes, num_prefill_tokens=plan.num_prefill_tokens,
            attention_work=sum(c.num_tokens * c.end for c in plan.chunks) / 1000.0,
            encoder_tokens=plan.num_encoder_tokens,
            encoder_attention_work=sum(w.attention_work for w in plan.encoder_work),
            num_encoder_pieces_started=sum(1 for w in plan.encoder_work if w.block_start == 0),
            llm_s=llm_s, encoder_s=encoder_s,
            llm_burst=self.runner.threads.llm_bursts(plan.num_prefill_tokens),
            token_budget=plan.budgets.tokens if plan.budgets else 0,
            encoder_budget=plan.budgets.encoder_tokens if plan.budgets else 0.0,
            target_s=plan.budgets.target_s if plan.budgets else 0.0,
        )
        self.cost.observe(stats)
        self.step_stats.append(stats)

    def _postprocess(self, plan: SchedulerOutput, logits: torch.Tensor) -> list[RequestOutput]:
        self.num_steps += 1
        self.scheduler.update_from_output(plan)
        sampling = [c.request for c in plan.chunks if c.samples]
        outputs = []
        for req, token in zip(sampling, self.sampler.sample(logits, sampling) if sampling else [], strict=False):
            out = self.outputs.append_token(req, token)
            if out.finished:
                self.scheduler.finish(req, req.status)
                self.requests.pop(req.request_id, None)
                self._release(req)
                out.ttft_s = req.first_token_time - req.arrival_time
                if req.num_output_tokens > 1:
                    out.tpot_s = (req.finish_time - req.first_token_time) / (req.num_output_tokens - 1)
            outputs.append(out)
        return outputs

    def _release(self, req: Request) -> None:
        self.sampler.release(req.request_id)
        self.outputs.release(req.request_id)

    # ---- offline API ---------------------------------------------------------------------------
    def generate(self, inputs: Sequence[GenerationInput], params: SamplingParams | Sequence[SamplingParams]
                 ) -> list[CompletionOutput]:
        """Run all prompts to completion with continuous batching; results in input order."""
        params_list = [params] * len(inputs) if isinstance(params, SamplingParams) else list(params)
        reqs = [self.make_request(f"gen-{next(self._ids)}", x, p) for x, p in zip(inputs, params_list, strict=False)]
        texts: dict[str, list[str]] = {r.request_id: [] for r in reqs}
        for r in reqs:
            self.add_request(r)
        while any(not r.status.finished for r in reqs):
            for out in self.step():
                if out.request_id in texts:
                    texts[out.request_id].append(out.text_delta)
        return [
            CompletionOutput(r.request_id, list(r.prompt_token_ids), list(r.output_token_ids),
                             "".join(texts[r.request_id]), r.finish_reason, r.arrival_time,
                             r.first_token_time, r.finish_time)
            for r in reqs
        ]


# An arrival older than this is a wrong clock (another host's monotonic time), not a slow pipeline.
MAX_PIPELINE_DELAY_S = 600.0


def pipeline_arrival(arrival_time: float | None, now: float) -> float:
    """The request's arrival: `arrival_time` when it is a plausible earlier moment on this host's monotonic
    clock, else `now`."""
    if arrival_time is None or not math.isfinite(arrival_time) or not now - MAX_PIPELINE_DELAY_S <= arrival_time:
        return now
    return min(arrival_time, now)
