"""Sampled token -> stop checks, detokenized delta, RequestOutput (the per-request post-processing)."""

from __future__ import annotations

import time

from unifiedserve.detokenizer import IncrementalDetokenizer
from unifiedserve.outputs import RequestOutput
from unifiedserve.request import Request, RequestStatus


class TextState:
    """Text of one request: the detokenizer plus stop-string hold-back.

    With stop strings, the last (longest stop - 1) characters are held back while streaming, so a stop
    string that arrives split across tokens is never partly emitted.
    """

    def __init__(self, tokenizer, request: Request) -> None:
        params = request.sampling_params
        self.detok = IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
        self.stops = params.stop
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def add(self, token_id: int) -> bool:
        """Append a token's text; True if a stop string now appears (text is cut before it)."""
        before = len(self.text)
        self.text += self.detok.push(token_id)
        if not self.stops:
            return False
        search_from = max(0, before - self.hold)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def finish(self) -> bool:
        """Take in the held-back tail of the detokenizer (and still honour stop strings in it); True if a
        stop string was found in it (the text is cut before it)."""
        self.text += self.detok.flush()
        hits = [i for i in (self.text.find(s, max(0, self.emitted - self.hold)) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
        return bool(hits)

    def delta(self, finished: bool) -> str:
        end = len(self.text) if finished else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:end]
        self.emitted = end
        return out


class OutputProcessor:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, TextState] = {}

    def append_token(self, req: Request, token_id: int) -> RequestOutput:
        """Record one sampled token, decide whether the request is finished, and build its delta."""
        state = self.states.get(req.request_id)
        if state is None:
            state = self.states[req.request_id] = TextState(self.tokenizer, req)
        now = time.monotonic()
        if req.first_token_time is None:
            req.first_token_time = now
        req.output_token_ids.append(token_id)
        status, stop_hit = None, False
        if token_id in req.eos_token_ids:
            status = RequestStatus.FINISHED_STOPPED  # the eos token itself adds no text
        else:
            stop_hit = state.add(token_id)
            if stop_hit:
                status = RequestStatus.FINISHED_STOPPED
            elif req.num_output_tokens >= req.sampling_params.max_tokens or req.num_tokens >= req.max_total_tokens:
                status = RequestStatus.FINISHED_LENGTH
        if status is not None:
            if not stop_hit and state.finish():
                # Fix: a stop string completed by the held-back tail (e.g. "a " where the space shares a token
                # with an unfinished emoji) cuts the text, so the reason is "stop", not "length".
                status = RequestStatus.FINISHED_STOPPED
            req.status = status
            req.finish_time = now
        return self._output(req, state, [token_id])

    def _output(self, req: Request, state: TextState, token_ids: list[int]) -> RequestOutput:
        finished = req.status.finished
        out = RequestOutput(
            request_id=req.request_id,
            text_delta=state.delta(finished),
            token_ids_delta=token_ids,
            finished=finished,
            finish_reason=req.finish_reason,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
        )
        if finished:
            self.states.pop(req.request_id, None)
        return out

    def full_text(self, request_id: str) -> str:
        state = self.states.get(request_id)
        return state.text if state else ""

    def release(self, request_id: str) -> None:
        self.states.pop(request_id, None)
