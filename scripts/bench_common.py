"""What both benchmark scripts report about the machine they ran on (DESIGN.md 7: state the machine)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


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
