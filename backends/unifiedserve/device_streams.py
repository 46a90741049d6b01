"""Physical sharing of one GPU: encoder slices on a low-priority CUDA stream, the LLM step on a high-priority
stream, both in flight at once (DESIGN.md 5).

The scheduler plans with `same_step_encoder=False` when this is on, so a prefill chunk only reads visual
tokens finished in an earlier step; the LLM stream still waits on each video's "ready" event, which costs
nothing when the encoder is already done and keeps the dependency explicit. Memory allocated on the
encoder stream and read by the LLM stream is marked with `record_stream` for the caching allocator.
On CPU the runner executes the same plan sequentially instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unifiedserve.scheduler import SchedulerOutput


class OverlappedExecution:
    def __init__(self, device: torch.device) -> None:
        high, low = torch.cuda.Stream.priority_range()[1], torch.cuda.Stream.priority_range()[0]
        self.llm_stream = torch.cuda.Stream(device=device, priority=high)
        self.encoder_stream = torch.cuda.Stream(device=device, priority=low)

    def execute(self, plan: SchedulerOutput, run_encoder: Callable, run_llm: Callable
                ) -> tuple[torch.Tensor, float, float]:
        e0, e1, l0, l1 = (torch.cuda.Event(enable_timing=True) for _ in range(4))
        with torch.cuda.stream(self.encoder_stream):
            e0.record()
            run_encoder(plan.encoder_work)
            e1.record()
            for w in plan.encoder_work:
                if w.completes:
                    w.video.ready_event = e1
        logits = torch.empty(0)
        with torch.cuda.stream(self.llm_stream):
            for chunk in plan.chunks:
                for video in chunk.request.videos:
                    if video.embeddings is not None and chunk.start < video.end and chunk.end > video.offset:
                        if video.ready_event is not None:
                            self.llm_stream.wait_event(video.ready_event)
                        video.embeddings.record_stream(self.llm_stream)
            l0.record()
            if plan.chunks:
                logits = run_llm(plan.chunks)
            l1.record()
        # One step = both streams done: the next plan sees finished pieces and measured times.
        self.encoder_stream.synchronize()
        self.llm_stream.synchronize()
        return logits, e0.elapsed_time(e1) / 1000.0, l0.elapsed_time(l1) / 1000.0
