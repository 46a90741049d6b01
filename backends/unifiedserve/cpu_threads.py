"""torch intra-op threads on CPU, per kind of work: few for decode steps, more for big matmuls.

Measured on the 2-core VM with the small model (docs/benchmarks.md): one OpenMP thread runs a
4-stream decode step in 11.7 ms served, two threads in 17.8 ms (small ops pay the fork/join and fight the
response thread and tritonserver for the cores); but the vision tower runs 1.65x faster on two threads and
a 256-token prefill 1.9x faster. So the engine keeps `cpu_threads` for decode-sized forwards and bursts to
`cpu_burst_threads` for encoder slices and for forwards with at least `cpu_burst_min_tokens` prefill tokens.
Switching costs well under a microsecond (torch.set_num_threads only resizes the next parallel region).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class CpuThreads:
    def __init__(self, base: int, burst: int, burst_min_tokens: int, on_cpu: bool) -> None:
        self.base = base
        # Bursting is on only where it changes something: on CPU, with a burst larger than the base.
        self.burst = burst if on_cpu and 0 < base < burst else 0
        self.burst_min_tokens = burst_min_tokens
        if on_cpu and base:
            torch.set_num_threads(base)  # process-wide: the engine owns its process when served

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def llm_bursts(self, num_prefill_tokens: int) -> bool:
        """Whether an LLM forward with this many prefill tokens runs on the burst threads."""
        return self.enabled and num_prefill_tokens >= self.burst_min_tokens

    @contextlib.contextmanager
    def bursting(self, active: bool = True) -> Iterator[None]:
        if not (active and self.enabled):
            yield
            return
        torch.set_num_threads(self.burst)
        try:
            yield
        finally:
            torch.set_num_threads(self.base)
