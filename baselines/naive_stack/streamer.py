"""A transformers streamer that splits each step's token batch into per-request text deltas.

generate() keeps running until its longest request is done; each request's stream ends as soon as that
request has its max_tokens, its EOS (unless ignore_eos) or a stop string, and nothing after that is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.generation.streamers import BaseStreamer

from unifiedserve.detokenizer import IncrementalDetokenizer
from unifiedserve.sampling_params import SamplingParams

# emit(text_delta, finished, finish_reason, num_output_tokens)
Emit = Callable[[str, bool, str, int], None]


@dataclass
class RowState:
    sampling: SamplingParams
    eos_token_ids: frozenset[int]
    detok: IncrementalDetokenizer
    emit: Emit
    text: str = ""  # what was sent so far (to find stop strings that span deltas)
    num_tokens: int = 0
    done: bool = False


class BatchStreamer(BaseStreamer):
    def __init__(self, rows: list[RowState]) -> None:
        self.rows = rows
        self._prompt_seen = False

    def all_done(self) -> bool:
        return all(r.done for r in self.rows)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()
        for row, token in zip(self.rows, tokens, strict=True):
            if not row.done:
                self._step(row, int(token))

    def end(self) -> None:
        # generate() stopped (batch max reached, or every row done): close any row still open.
        for row in self.rows:
            if not row.done:
                self._finish(row, row.detok.flush(), "length")

    def _step(self, row: RowState, token: int) -> None:
        row.num_tokens += 1
        is_eos = token in row.eos_token_ids and not row.sampling.ignore_eos
        delta = "" if is_eos else row.detok.push(token)
        if row.sampling.stop:
            cut = _stop_cut(row.text + delta, row.sampling.stop)
            if cut is not None:
                self._finish(row, (row.text + delta)[len(row.text):cut], "stop")
                return
        if is_eos:
            self._finish(row, row.detok.flush(), "stop")
        elif row.num_tokens >= row.sampling.max_tokens:
            self._finish(row, delta + row.detok.flush(), "length")
        elif delta:
            row.text += delta
            row.emit(delta, False, "", row.num_tokens)

    def _finish(self, row: RowState, delta: str, reason: str) -> None:
        row.done = True
        row.text += delta
        row.emit(delta, True, reason, row.num_tokens)


def _stop_cut(text: str, stops: tuple[str, ...]) -> int | None:
    """Index where the earliest stop string starts (the answer ends before it), or None."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None
