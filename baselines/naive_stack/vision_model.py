"""`vision_encoder` step: Triton dynamic batching + HF's own vision tower, once over all videos of a batch.

Each request brings frames [1, T, H, W, 3] (ragged: sizes differ, hence allow_ragged_batch) and sample_fps
[1, 1]. Patchify is our torch port of HF's video processor math (torchvision cannot load here); the tower
is Qwen2_5_VLForConditionalGeneration(...).model.visual, run on the concatenated patches of the batch, and its
merged output is split back per request. Zero frames (a text-only request) -> empty embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import Qwen2_5_VLForConditionalGeneration

from naive_stack.checkpoint import checkpoint_dtype, checkpoint_path
from triton_adapters.engine_params import triton_parameters
from triton_adapters.errors import to_triton_error
from unifiedserve.errors import InvalidRequestError
from unifiedserve.vision import as_uint8_tensor, load_vision_spec, patchify_frames


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = triton_parameters(json.loads(args["model_config"]))
        model_path = checkpoint_path(params)
        self.spec = load_vision_spec(model_path)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=checkpoint_dtype(params))
        self.visual = model.model.visual.eval()  # the LLM half is dropped with `model`
        self.hidden = int(model.config.text_config.hidden_size)
        pb_utils.Logger.log_info(f"vision_encoder: HF vision tower of {model_path} ({model.dtype})")

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        work = []  # (request index, pixel_values, grid, second_per_grid_t)
        for i, request in enumerate(requests):
            try:
                item = self._patchify(request)
                if item is None:
                    responses[i] = _outputs(np.zeros((1, 0, self.hidden), np.float32), np.zeros((1, 0, 3), np.int64),
                                            np.zeros((1, 0), np.float32))
                else:
                    work.append((i, *item))
            except Exception as exc:  # noqa: BLE001 - every failure becomes this request's error response
                responses[i] = pb_utils.InferenceResponse(error=to_triton_error(exc))
        if work:
            self._encode(work, responses)
        return responses

    def _patchify(self, request):
        frames = pb_utils.get_input_tensor_by_name(request, "frames").as_numpy()
        if frames.size == 0:
            return None
        fps = float(pb_utils.get_input_tensor_by_name(request, "sample_fps").as_numpy().reshape(-1)[0])
        if not fps > 0:
            raise InvalidRequestError(f"sample_fps must be > 0, got {fps}")
        try:
            pixels, grid = patchify_frames(as_uint8_tensor(frames[0]), self.spec)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"bad video frames: {exc}") from exc
        return pixels, grid, self.spec.temporal_patch_size / fps

    def _encode(self, work: list, responses: list) -> None:
        try:
            grids = torch.tensor([grid for _, _, grid, _ in work], dtype=torch.long)
            with torch.inference_mode():
                merged = self.visual(torch.cat([p for _, p, _, _ in work]), grid_thw=grids).pooler_output
            sizes = (grids.prod(-1) // self.spec.merge_size**2).tolist()
            for (i, _, grid, spt), emb in zip(work, torch.split(merged, sizes), strict=True):
                responses[i] = _outputs(emb.float().numpy()[None], np.array([[grid]], np.int64),
                                        np.array([[spt]], np.float32))
        except Exception as exc:  # noqa: BLE001 - the whole batch failed in the tower: each request hears why
            for i, *_ in work:
                responses[i] = pb_utils.InferenceResponse(error=to_triton_error(exc))


def _outputs(embeds: np.ndarray, grid_thw: np.ndarray, second_per_grid_ts: np.ndarray):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("video_embeds", np.ascontiguousarray(embeds, dtype=np.float32)),
        pb_utils.Tensor("video_grid_thw", grid_thw),
        pb_utils.Tensor("second_per_grid_ts", second_per_grid_ts),
    ])
