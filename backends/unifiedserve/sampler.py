"""Next-token choice per request: greedy, or temperature / top-k / top-p with a per-request seeded generator."""

from __future__ import annotations

import torch

from unifiedserve.request import Request

# Fix: a client's temperature of e.g. 1e-45 passed validation, became 0 in float32 and turned the row into
# NaN (0/0), so torch.multinomial raised and the whole step failed (every in-flight request with it).
# Below this temperature sampling is greedy anyway (vLLM's _SAMPLING_EPS).
MIN_SAMPLING_TEMPERATURE = 1e-5


class Sampler:
    def __init__(self, seed: int) -> None:
        self._seeder = torch.Generator().manual_seed(seed)
        self._generators: dict[str, torch.Generator] = {}

    def sample(self, logits: torch.Tensor, requests: list[Request]) -> list[int]:
        """logits: float32 [len(requests), vocab]."""
        tokens = logits.argmax(dim=-1).tolist()  # greedy for everyone, then overwrite the sampling rows
        for i, req in enumerate(requests):
            p = req.sampling_params
            if p.greedy or p.temperature < MIN_SAMPLING_TEMPERATURE:
                continue
            row = logits[i].cpu()
            row = (row - row.max()) / p.temperature  # Fix: <= 0 before scaling: a small temperature cannot give inf
            if p.top_k > 0 and p.top_k < row.numel():
                kth = torch.topk(row, p.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            if p.top_p < 1.0:
                sorted_logits, order = torch.sort(row, descending=True)
                probs = sorted_logits.softmax(-1)
                # keep the smallest prefix whose mass reaches top_p (the first token always stays)
                drop = probs.cumsum(-1) - probs >= p.top_p
                row = row.index_fill(0, order[drop], float("-inf"))
            tokens[i] = int(torch.multinomial(row.softmax(-1), 1, generator=self._generator(req)).item())
        return tokens

    def _generator(self, req: Request) -> torch.Generator:
        gen = self._generators.get(req.request_id)
        if gen is None:
            seed = req.sampling_params.seed
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,), generator=self._seeder).item())
            gen = self._generators[req.request_id] = torch.Generator().manual_seed(seed)
        return gen

    def release(self, request_id: str) -> None:
        self._generators.pop(request_id, None)
