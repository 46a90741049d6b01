"""DecodeSlots: at most `count` holders at once across processes, a dead holder's slot comes back, 0 = no limit."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from flashcodec.decode_slots import DecodeSlots


def _hold(directory: str, count: int, hold_s: float, log: str) -> None:
    with DecodeSlots(directory, count).hold() as index:
        with open(log, "a") as f:
            f.write(f"start {time.monotonic()} {index}\n")
        time.sleep(hold_s)
        with open(log, "a") as f:
            f.write(f"end {time.monotonic()} {index}\n")


def _max_concurrent(log: Path) -> int:
    events = sorted((float(t), kind) for kind, t, _ in (line.split() for line in log.read_text().splitlines()))
    live = peak = 0
    for _, kind in events:  # at equal times "end" sorts before "start": a handover is not an overlap
        live += 1 if kind == "start" else -1
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("count", [1, 2])
def test_processes_never_hold_more_than_count_slots(tmp_path: Path, count: int) -> None:
    log = tmp_path / "log"
    ctx = mp.get_context("spawn")  # separate processes, as Triton's instances are
    procs = [ctx.Process(target=_hold, args=(str(tmp_path / "slots"), count, 0.3, str(log))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 8  # all four decoded
    assert _max_concurrent(log) == count


def test_a_killed_holder_releases_its_slot(tmp_path: Path) -> None:
    directory = str(tmp_path / "slots")
    ctx = mp.get_context("spawn")
    holder = ctx.Process(target=_hold, args=(directory, 1, 60.0, str(tmp_path / "log")))
    holder.start()
    deadline = time.monotonic() + 20
    while not (tmp_path / "log").exists():  # it holds the only slot
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    started = time.monotonic()
    with DecodeSlots(directory, 1).hold() as index:
        assert index == 0
    assert time.monotonic() - started < 5


def test_no_limit_needs_no_files(tmp_path: Path) -> None:
    slots = DecodeSlots(tmp_path / "slots", 0)
    with slots.hold() as a, slots.hold() as b:
        assert (a, b) == (-1, -1)
    assert not (tmp_path / "slots").exists()


def test_one_server_one_directory_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    a, b = DecodeSlots.for_server("flashcodec", 2), DecodeSlots.for_server("other", 2)
    assert a.directory != b.directory and str(os.getppid()) in a.directory.name
