"""Run CPU decoding at a lower OS scheduling priority than the LLM engine that shares the cores.

On a CPU-only machine FlashCodec's decoder threads and the UnifiedServe engine compete for the same few
cores. The engine plans every step to a TPOT target; a decoder thread that takes the core under one of
its OpenMP threads stretches a planned 15 ms step to 100-250 ms (measured with the step trace on the
2-core VM, docs/benchmarks.md), which misses the TPOT of every running stream and the TTFT of whatever
waited behind that step. Decoding is throughput work that can absorb a few milliseconds here and there;
a decode step cannot. A higher nice value makes the kernel hand the core to the engine the moment it
wants it (CFS weights: nice 10 gets ~1/9 of a contended core) while the decoders still get every idle
cycle. GPU engines decode on NVDEC, so their few CPU threads keep normal priority.

Linux keeps the nice value per thread and a new thread inherits its creator's, so the process's existing
threads are reniced once at model load and every thread made later (decoder pools, FFmpeg's own frame
threads) starts niced.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_ENGINES = ("pyav", "pyav_full")
AUTO_CPU_NICE = 10  # "auto" on CPU engines; 0 (unchanged) on GPU engines


def resolve_cpu_nice(setting: str, engine_name: str) -> int:
    """The nice increment a deployment asked for: "auto" (10 for CPU engines, else 0) or an integer 0-19."""
    text = (setting or "auto").strip().lower()
    if text == "auto":
        return AUTO_CPU_NICE if engine_name in CPU_ENGINES else 0
    value = int(text)
    if not 0 <= value <= 19:
        raise ValueError(f"cpu_nice must be 'auto' or an integer 0-19, got {setting!r}")
    return value


def lower_process_priority(nice: int) -> int:
    """Raise every thread of this process to at least ``nice``; returns the main thread's nice afterwards.

    Never lowers a nice value (that needs privileges and is not what anyone asked for)."""
    if nice <= 0:
        return os.getpriority(os.PRIO_PROCESS, 0)
    tasks = Path("/proc/self/task")
    thread_ids = [int(p.name) for p in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in thread_ids:
        try:
            # On Linux PRIO_PROCESS with a thread id sets that one thread (nice is a per-thread attribute).
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile, or one we may not touch: leave it
    return os.getpriority(os.PRIO_PROCESS, 0)
