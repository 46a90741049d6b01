"""`decode` step: our flashcodec adapter (engine pyav_full: full sequential decode, then sampling, as vLLM's
pyav loader does), plus what the batching steps after it need.

The ensemble takes unbatched [1] inputs (the same contract as model_repository/mllm), but Triton's dynamic
batcher needs max_batch_size > 0, whose tensors carry a batch dim. This step (max_batch_size 0) is where
that dim is added: frames [1, T, H, W, 3], and the LLM's fields as one JSON string [1, 1].
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_adapters.errors import to_triton_error
from triton_adapters.flashcodec_model import TritonPythonModel as FlashCodecModel
from unifiedserve.errors import InvalidRequestError

# Inputs the llm step reads (parsed there by triton_adapters.request_fields, as our unifiedserve does).
LLM_FIELDS = ("text_input", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "ignore_eos")


class TritonPythonModel(FlashCodecModel):
    def execute(self, requests: list) -> list:
        return [self._batched(request) for request in requests]

    def _batched(self, request):
        decoded = self._one(request)
        if decoded.has_error():
            return decoded
        try:
            out = {t.name(): t.as_numpy() for t in decoded.output_tensors()}
            fields = _llm_fields(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
            return pb_utils.InferenceResponse(error=to_triton_error(exc))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("frames", np.ascontiguousarray(out["frames"][None])),
            pb_utils.Tensor("sample_fps", out["sample_fps"].reshape(1, 1)),
            pb_utils.Tensor("request", np.array([[json.dumps(fields).encode()]], dtype=np.object_)),
        ])


def _llm_fields(request) -> dict:
    """{name: list of values}; bytes become text (a non-UTF-8 field is the client's fault)."""
    fields = {}
    for name in LLM_FIELDS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        values = tensor.as_numpy().reshape(-1).tolist()
        try:
            fields[name] = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{name} is not valid UTF-8") from exc
    return fields
