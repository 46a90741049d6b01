"""Which work goes first: the urgency order the scheduler walks every step."""

from __future__ import annotations

import math

from unifiedserve.request import Request

DEFAULT_PRIORITY_LEVEL = 5  # what Triton's "0 = default level" maps to; 1 is the most urgent


def priority_rank(request: Request) -> int:
    return request.priority if request.priority > 0 else DEFAULT_PRIORITY_LEVEL


def ttft_deadline(request: Request) -> float:
    if request.ttft_slo_ms is None:
        return math.inf
    return request.arrival_time + request.ttft_slo_ms / 1000.0


class Policy:
    """`unified` and `blocking` order by priority, then TTFT deadline, then arrival; `fcfs` by arrival only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.slices_encoder = name == "unified"  # blocking/fcfs encode a whole video in one step (vLLM-like)

    def key(self, request: Request) -> tuple:
        if self.name == "fcfs":
            return (request.arrival_time, request.request_id)
        return (priority_rank(request), ttft_deadline(request), request.arrival_time, request.request_id)
