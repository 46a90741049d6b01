"""What the benchmark scripts share: the machine they ran on (DESIGN.md 7: state the machine) and the prompts of
the request traces bench_engine and bench_serving replay."""

from __future__ import annotations

import os
import platform
from pathlib import Path

TEXT_PROMPTS = (
    "Tell me a story about a red cat and a blue car.",
    "Explain how a train moves along the river, step by step.",
    "Summarize what happens when the green ball rolls down the road.",
    "Describe a city street at night: the lights, the cars, the people walking home.",
    "Write a short poem about mountains, birds and a yellow kite.",
    "Why does the robot stop at the door? Give three reasons.",
)
VIDEO_PROMPTS = ("Describe this video.", "What happens in this video?", "How many objects move in this video?",
                 "Summarize the video in two sentences.")


def host_info() -> dict:
    """CPU model, usable cores (the affinity mask, which containers narrow), OS and Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(), "python": platform.python_version()}
