"""Which work goes first: the urgency order the scheduler walks every step."""

from __future__ import annotations

import math
from collections.abc import Callable

from unifiedserve.request import Request

DEFAULT_PRIORITY_LEVEL = 5  # what Triton's "0 = default level" maps to; 1 is the most urgent

UrgencyKey = Callable[[Request], tuple]


def priority_rank(request: Request) -> int:
    return request.priority if request.priority > 0 else DEFAULT_PRIORITY_LEVEL


def ttft_deadline(request: Request) -> float:
    if request.ttft_slo_ms is None:
        return math.inf
    return request.arrival_time + request.ttft_slo_ms / 1000.0


class Policy:
    """`unified` and `blocking` order by priority, then TTFT deadline, then arrival; `fcfs` by arrival only.

    `unified` also demotes, within its priority level, a request that can no longer meet its TTFT deadline
    (it is past it, or the work it still needs before its first token cannot finish in time even at full
    speed): earliest-deadline-first alone lets one late request make every request behind it late too (the
    domino effect of EDF under overload). A demoted request is still served, after the ones that can make it,
    shortest remaining work first.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.slices_encoder = name == "unified"  # blocking/fcfs encode a whole video in one step (vLLM-like)
        self.demotes_late = name == "unified"

    def key(self, request: Request, late: bool = False, remaining_s: float = 0.0) -> tuple:
        if self.name == "fcfs":
            return (request.arrival_time, request.request_id)
        if late and self.demotes_late:
            # Past saving: its TTFT SLO is lost whatever happens, so among late requests the shortest remaining
            # work goes first (least mean latency), not the oldest deadline (which would make a short question
            # wait behind every late video).
            return (priority_rank(request), True, remaining_s, request.arrival_time, request.request_id)
        return (priority_rank(request), False, ttft_deadline(request), request.arrival_time, request.request_id)

    def is_demoted(self, key: tuple) -> bool:
        """The key says the request was demoted as late (see `key`)."""
        return self.demotes_late and bool(key[1])

    def key_at(self, now: float, min_time_to_first_token: Callable[[Request], float]) -> UrgencyKey:
        """The key for one step at time `now`; `min_time_to_first_token(r)` is a lower bound of the time r's
        remaining encoder and prefill work takes (cost model)."""
        if not self.demotes_late:
            return self.key

        def key(request: Request) -> tuple:
            if request.first_token_time is not None or request.ttft_slo_ms is None:
                return self.key(request)
            remaining = min_time_to_first_token(request)
            return self.key(request, now + remaining > ttft_deadline(request), remaining)

        return key
