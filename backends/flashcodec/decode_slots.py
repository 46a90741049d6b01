"""A limit on how many videos a model's instances decode at once, shared by the instances' processes.

Triton runs each Python-model instance in its own process and hands a request to any free instance. An
ensemble cannot route a text-only question around `flashcodec`, so with as many instances as concurrent decodes,
a question that arrives while every instance decodes a video waits for one of them to finish (step trace at
0.784 req/s: three questions reached the engine 120-600 ms after they were sent, against a 140 ms TTFT SLO).
More instances than decode slots fixes that: a question passes through a free instance at once, while videos
take one of `count` slots, so the cores are not split over more decodes than before (four instances decoding
at once measured a worse video TTFT median, 1403 vs 999 ms, than two).

The slots are lock files in one directory per server and model: `flock` locks, which the kernel releases when
the process holding one dies, so a crashed instance cannot leak its slot. Waiters queue on a gate lock, so one
waiter at a time polls the slots (roughly first come, first served).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class DecodeSlots:
    def __init__(self, directory: str | Path, count: int, poll_s: float = 0.002) -> None:
        """`count` <= 0: no limit (every instance decodes whenever it has a video)."""
        self.directory, self.count, self.poll_s = Path(directory), count, poll_s
        if count > 0:
            self.directory.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_server(cls, model_name: str, count: int) -> DecodeSlots:
        """The slots every instance of `model_name` in this tritonserver shares: Python-backend stubs are the
        server's children, so the parent pid names the server (two servers on one machine do not share)."""
        return cls(Path(tempfile.gettempdir()) / f"flashcodec-slots-{os.getppid()}-{model_name}", count)

    @contextlib.contextmanager
    def hold(self) -> Iterator[int]:
        """Wait for a free slot and hold it for the `with` block; yields its index (-1 without a limit)."""
        if self.count <= 0:
            yield -1
            return
        index, slot = self._acquire()
        try:
            yield index
        finally:
            fcntl.flock(slot, fcntl.LOCK_UN)
            slot.close()

    def _acquire(self) -> tuple[int, IO[str]]:
        with open(self.directory / "gate.lock", "a") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)  # released when the file closes
            while True:
                for index in range(self.count):
                    slot = open(self.directory / f"slot-{index}.lock", "a")  # noqa: SIM115 - held past this call
                    try:
                        fcntl.flock(slot, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        slot.close()
                        continue
                    return index, slot
                time.sleep(self.poll_s)
