"""flashcodec.cpu_priority: CPU decoders niced below the engine, every thread of the process included.

Renicing is one-way for an unprivileged process, so each check runs in its own child interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flashcodec.cpu_priority import AUTO_CPU_NICE, resolve_cpu_nice


@pytest.mark.parametrize(("setting", "engine", "expected"), [
    ("auto", "pyav", AUTO_CPU_NICE), ("", "pyav_full", AUTO_CPU_NICE), ("auto", "nvdec", 0),
    ("auto", "dali", 0), ("0", "pyav", 0), ("19", "nvdec", 19), (" 5 ", "pyav", 5),
])
def test_resolve_cpu_nice(setting, engine, expected):
    assert resolve_cpu_nice(setting, engine) == expected


@pytest.mark.parametrize("setting", ["20", "-1", "low"])
def test_resolve_cpu_nice_rejects(setting):
    with pytest.raises(ValueError):
        resolve_cpu_nice(setting, "pyav")


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


CHILD_PRELUDE = """
import json, os, threading
from flashcodec.cpu_priority import lower_process_priority
def nices():
    out = {}
    for t in os.listdir("/proc/self/task"):
        try:
            out[int(t)] = os.getpriority(os.PRIO_PROCESS, int(t))
        except ProcessLookupError:  # a thread that just ended (the joined one) may still be listed
            pass
    return out
"""


def test_every_thread_and_later_threads_are_niced():
    result = _child(CHILD_PRELUDE + """
stop = threading.Event()
before = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
for t in before: t.start()
target = max(7, os.getpriority(os.PRIO_PROCESS, 0))  # a runner already niced above 7 stays where it is
main_after = lower_process_priority(target)
seen = {}
later = threading.Thread(target=lambda: seen.update(nice=os.getpriority(os.PRIO_PROCESS, 0)))
later.start(); later.join()
all_threads = nices()
stop.set()
print(json.dumps({"target": target, "main": main_after, "later": seen["nice"],
                  "all": list(all_threads.values()), "count": len(all_threads)}))
""")
    assert result["count"] >= 4  # the main thread and the three started before renicing
    target = result["target"]
    assert result["main"] == target and result["later"] == target
    assert set(result["all"]) == {target}


def test_never_lowers_and_zero_changes_nothing():
    result = _child(CHILD_PRELUDE + """
start = os.getpriority(os.PRIO_PROCESS, 0)
unchanged = lower_process_priority(0)
raised = os.nice(max(0, min(12, 19 - start)))
kept = lower_process_priority(min(5, raised))
print(json.dumps({"start": start, "unchanged": unchanged, "raised": raised, "kept": kept}))
""")
    assert result["unchanged"] == result["start"]
    assert result["kept"] == result["raised"]
