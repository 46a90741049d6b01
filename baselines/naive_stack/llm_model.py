"""`llm` step: decoupled, Triton dynamic batching, ONE HF generate() per batch Triton hands over (static batching).

execute() blocks for the whole generate(), so with one instance the requests that arrive meanwhile queue in
Triton until the batch's longest request is done: the stock behaviour this baseline stands for. A streamer
sends each request's text deltas to its own response sender (stream=true) or one final response.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from naive_stack.batch_generate import BatchItem, generate_batch
from naive_stack.checkpoint import checkpoint_dtype, checkpoint_path
from naive_stack.prompt import prompt_token_ids
from naive_stack.streamer import BatchStreamer, RowState
from triton_adapters.engine_params import triton_parameters
from triton_adapters.errors import to_triton_error
from triton_adapters.request_fields import parse_generate_request
from unifiedserve.detokenizer import IncrementalDetokenizer
from unifiedserve.errors import InvalidRequestError

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException("llm must be decoupled (model_transaction_policy)")
        params = triton_parameters(model_config)
        path = checkpoint_path(params)
        self.default_max_tokens = int(params.get("default_max_tokens") or 128)
        dtype = checkpoint_dtype(params)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        gen = self.model.generation_config
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        self.eos_ids = [int(e) for e in eos if e is not None] or [self.tokenizer.eos_token_id]
        self.pad_id = int(gen.pad_token_id if gen.pad_token_id is not None else self.eos_ids[0])
        self.video_token_id = int(self.model.config.video_token_id)
        self.max_model_len = int(self.model.config.text_config.max_position_embeddings)
        pb_utils.Logger.log_info(f"llm: HF generate() over static batches of {path} ({self.model.dtype})")

    def execute(self, requests: list) -> None:
        items, rows = [], []
        for request in requests:
            sender = request.get_response_sender()
            try:
                item, stream = self._parse(request)
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone, the batch goes on
                sender.send(pb_utils.InferenceResponse(error=to_triton_error(exc)), flags=FINAL)
                continue
            items.append(item)
            rows.append(RowState(item.sampling, frozenset(self.eos_ids), IncrementalDetokenizer(self.tokenizer),
                                 _emitter(sender, stream, len(item.prompt_ids))))
        if not items:
            return None
        streamer = BatchStreamer(rows)
        try:
            generate_batch(self.model, items, self.video_token_id, self.pad_id, self.eos_ids, streamer,
                           streamer.all_done)
            streamer.end()  # no-op when generate() already ended it
        except Exception as exc:  # noqa: BLE001 - every open request of the failed batch gets the error
            for row in rows:
                if not row.done:
                    row.done = True
                    row.emit.fail(exc)
        return None

    def _parse(self, request) -> tuple[BatchItem, bool]:
        raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
        fields = json.loads(raw)
        tensors = {k: np.array(v) for k, v in fields.items()}
        parsed = parse_generate_request(tensors, {}, self.default_max_tokens)
        parsed.sampling.validate(self.max_model_len)
        embeds = pb_utils.get_input_tensor_by_name(request, "video_embeds").as_numpy()
        item = BatchItem(prompt_token_ids(self.tokenizer, parsed.text, None, self.video_token_id), parsed.sampling)
        if embeds.size:
            grid = pb_utils.get_input_tensor_by_name(request, "video_grid_thw").as_numpy().reshape(-1, 3)[0]
            spt = pb_utils.get_input_tensor_by_name(request, "second_per_grid_ts").as_numpy().reshape(-1)[0]
            emb = torch.from_numpy(np.ascontiguousarray(embeds.reshape(-1, embeds.shape[-1])))
            item = BatchItem(prompt_token_ids(self.tokenizer, parsed.text, emb.shape[0], self.video_token_id),
                             parsed.sampling, emb, tuple(int(g) for g in grid), float(spt))
        if len(item.prompt_ids) >= self.max_model_len:
            raise InvalidRequestError(f"prompt is {len(item.prompt_ids)} tokens (video tokens included) but the "
                                      f"model's context is {self.max_model_len}")
        return item, parsed.stream


class _emitter:
    """The streamer's emit callback for one request: its deltas go to its own response sender."""

    def __init__(self, sender, stream: bool, num_input_tokens: int) -> None:
        self.sender, self.stream, self.num_input_tokens = sender, stream, num_input_tokens
        self.texts: list[str] = []

    def __call__(self, delta: str, finished: bool, reason: str, num_output_tokens: int) -> None:
        try:
            if self.stream:
                self.sender.send(self._response(delta, reason, num_output_tokens), flags=FINAL if finished else 0)
                return
            self.texts.append(delta)
            if finished:
                self.sender.send(self._response("".join(self.texts), reason, num_output_tokens), flags=FINAL)
        except Exception as exc:  # noqa: BLE001 - a client that went away must not end the others' generate()
            pb_utils.Logger.log_warn(f"llm: sending a response failed: {exc}")

    def fail(self, exc: BaseException) -> None:
        self.sender.send(pb_utils.InferenceResponse(error=to_triton_error(exc)), flags=FINAL)

    def _response(self, text: str, reason: str, num_output_tokens: int):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("finish_reason", np.array([reason.encode()], dtype=np.object_)),
            pb_utils.Tensor("num_input_tokens", np.array([self.num_input_tokens], dtype=np.uint32)),
            pb_utils.Tensor("num_output_tokens", np.array([num_output_tokens], dtype=np.uint32)),
        ])
