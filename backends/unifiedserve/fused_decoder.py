"""The Qwen2 text decoder of Qwen2-VL / Qwen2.5-VL as a lean packed forward (vLLM's model-definition pattern).

Same weights, same math as the HF layers; what changes is the shape of the work. HF runs q, k and v as three
matmuls and gate and up as two, in a [batch, heads, tokens, head_dim] layout with a transpose on every side of
the attention, a Python RMSNorm of five ops and a mask builder per forward. On CPU a decode step is a row of
small GEMVs, so that framework work is a large share of the step: measured on the small model, one thread, one
decode with a 200-token context, HF's forward spends ~2.5 ms of its ~9 ms outside the matmuls. Here the q/k/v
projections are one matmul (vLLM's QKVParallelLinear) and gate/up one (MergedColumnParallelLinear), the norm is
one `F.rms_norm`, and the packed [tokens, heads, head_dim] layout goes straight into the paged cache.

On CPU the wide projections (more outputs than inputs: q/k/v, gate/up, the LM head) are stored transposed,
[in, out], and run as `x @ w`: MKL's one-row product over a [out, in] weight reads it as many short rows and
reached ~11 GB/s on the 2-core VM, the transposed one ~24 GB/s (one thread, 12 distinct weights so they come from
DRAM: gate/up 2816x512 534 -> 259 us, LM head 3072x512 584 -> 271 us, q/k/v 768x512 107 -> 54 us for one row;
two rows the same gain; 4 to 256 rows within a few percent either way). Narrow ones (o, down) keep [out, in],
where the transposed product was slower (down 1408 -> 512: 181 vs 201 us). On GPU every weight keeps [out, in].

The fused weights are the storage: the HF modules' q/k/v, gate/up (and untied LM head) parameters become views
into them, so the HF layers (kept for `fused_decoder=False` and for checkpoints this does not cover) still compute
with the same tensors. On CPU every projection also keeps a oneDNN-packed copy (`_Linear.pack_for_cpu`) for
products of two or more rows: a decode step of several streams and prefill chunks (small model, one thread: 4
streams 11.4 -> 7.6 ms, a 64-token chunk 33.7 -> 27.8 ms); one row stays on MKL, faster there. That doubles the
text weights' memory on CPU (the small model: 74 MB more), a price the CPU path pays for the batched steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unifiedserve.model_loader import cpu_has_native_bf16
from unifiedserve.paged_attention import paged_attention

log = logging.getLogger(__name__)


class _Linear:
    """y = x W^T + b with W kept as [out, in] (F.linear) or, `transposed`, as [in, out] (x @ W); on CPU also as a
    oneDNN-packed copy (`pack_for_cpu`) for the products where that is faster."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> None:
        self.weight, self.bias, self.transposed = weight, bias, transposed
        self.packed: torch.Tensor | None = None

    def pack_for_cpu(self) -> None:
        """Add a oneDNN-packed copy of the weight. MKL's product over a few rows (a decode step of several streams)
        costs ~2.5x one row although it reads the same weight; oneDNN's over its packed layout stays near one row's
        time. Measured, one thread, 12 distinct weights (from DRAM), us for 1 / 4 / 64 rows, MKL's best layout vs
        packed: gate/up 2816x512 266/654/2315 vs 330/274/1772, down 512x1408 178/283/1114 vs 128/134/888, q/k/v
        768x512 67/138/631 vs 65/65/513, LM head 3072x512 269/779/2772 vs 391/317/1955. So the packed copy runs
        every product except one row through a transposed (wide) weight. In bfloat16 (a CPU with AVX512-BF16) the
        packed copy wins at every row count, one row included: 1 / 4 / 64 rows, F.linear vs packed, gate/up 343/372/1139
        vs 136/143/922, down 157/149/544 vs 58/56/456, LM head 365/406/1235 vs 138/159/994; so a bf16 decode step reads
        half the bytes at more of the bandwidth (small model's projections, one row: 1.6 ms vs float32's best 3.2)."""
        self.packed = _onednn_pack(self.weight.t() if self.transposed else self.weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if self.packed is not None and self.packed.dtype == torch.bfloat16:
            return _onednn_linear(x.contiguous(), self.packed, self.bias)
        if self.packed is not None and rows >= 2:
            if rows == 2:  # measured: two rows took as long as three on either library; padded to three, 17 % faster
                return _onednn_linear(F.pad(x, (0, 0, 0, 1)), self.packed, self.bias)[:2]
            return _onednn_linear(x.contiguous(), self.packed, self.bias)
        if not self.transposed:
            return F.linear(x, self.weight, self.bias)
        return torch.addmm(self.bias, x, self.weight) if self.bias is not None else x @ self.weight


@dataclass
class _Layer:
    input_norm: torch.Tensor
    input_eps: float
    post_norm: torch.Tensor
    post_eps: float
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear


def supports(language_model: torch.nn.Module) -> str | None:
    """None if the fused forward computes exactly what `language_model` computes; else why not."""
    config = language_model.config
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} (the fused MLP is SiLU-gated)"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
        return "sliding-window layers"
    for layer in language_model.layers:
        mlp = layer.mlp
        if any(getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
            return "MLP biases"
        attn = layer.self_attn
        if (attn.q_proj.bias is None) != (attn.k_proj.bias is None) or (attn.k_proj.bias is None) != (
                attn.v_proj.bias is None):
            return "q/k/v biases present on only some projections"
    return None


class FusedTextDecoder:
    def __init__(self, language_model: torch.nn.Module, lm_head: torch.nn.Linear, on_cpu: bool) -> None:
        self.model = language_model
        config = language_model.config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.layers = [_fuse(layer, on_cpu) for layer in language_model.layers]
        self.final_norm = language_model.norm.weight
        self.final_eps = language_model.norm.variance_epsilon
        self.scaling = language_model.layers[0].self_attn.scaling
        # A head tied to the embedding table keeps its layout: the table is read by rows, and one tensor serves both.
        tied = lm_head.weight is language_model.embed_tokens.weight
        self.lm_head = _share(lm_head, ("",), "weight", None, on_cpu and not tied)
        if on_cpu:
            for lay in self.layers:
                for linear in (lay.qkv, lay.o, lay.gate_up, lay.down):
                    linear.pack_for_cpu()
            self.lm_head.pack_for_cpu()

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """embeds [tokens, hidden], positions [3, tokens] (M-RoPE) -> final hidden states [tokens, hidden].
        Runs inside `forward_context` (the step's paged-cache metadata), like the HF layers."""
        # The model's own rotary module: M-RoPE sections and any rope scaling exactly as HF computes them.
        cos, sin = self.model.rotary_emb(embeds, positions[:, None, :])
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [tokens, 1, head_dim]: broadcast over heads
        n = embeds.shape[0]
        x = embeds
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(_rms_norm(x, layer.input_norm, layer.input_eps)).split(
                (self.q_size, self.kv_size, self.kv_size), dim=-1)
            q = _rotate(q.view(n, self.num_heads, self.head_dim), cos, sin)
            k = _rotate(k.view(n, self.num_kv_heads, self.head_dim), cos, sin)
            attn = paged_attention(i, q, k, v.view(n, self.num_kv_heads, self.head_dim), self.scaling)
            x = x + layer.o(attn.view(n, self.q_size))
            gate, up = layer.gate_up(_rms_norm(x, layer.post_norm, layer.post_eps)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        return _rms_norm(x, self.final_norm, self.final_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


class HFTextDecoder:
    """HF's own layers (the reference, and the path for checkpoints `supports` rejects)."""

    def __init__(self, language_model: torch.nn.Module, lm_head: torch.nn.Module) -> None:
        self.model, self.lm_head = language_model, lm_head

    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=embeds[None], position_ids=positions[:, None, :],
                          use_cache=False).last_hidden_state[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _fuse(layer: torch.nn.Module, on_cpu: bool) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    qkv_wide = q.out_features + k.out_features + v.out_features > q.in_features
    gate_up_wide = mlp.gate_proj.out_features + mlp.up_proj.out_features > mlp.gate_proj.in_features
    norm_in, norm_post = layer.input_layernorm, layer.post_attention_layernorm
    return _Layer(
        norm_in.weight, norm_in.variance_epsilon, norm_post.weight, norm_post.variance_epsilon,
        qkv=_share(attn, ("q_proj", "k_proj", "v_proj"), "weight", "bias", on_cpu and qkv_wide),
        o=_Linear(attn.o_proj.weight, attn.o_proj.bias, transposed=False),
        gate_up=_share(mlp, ("gate_proj", "up_proj"), "weight", None, on_cpu and gate_up_wide),
        down=_Linear(mlp.down_proj.weight, None, transposed=False),
    )


def _share(parent: torch.nn.Module, names: tuple[str, ...], weight: str, bias: str | None,
           transposed: bool) -> _Linear:
    """One Linear over the named Linears (concatenated along the output dim; "" = `parent` itself), stored
    [out, in] or transposed [in, out]; each original parameter becomes a view of its part of the new storage,
    so the weights are held once."""
    mods = [getattr(parent, n) if n else parent for n in names]
    if len(mods) == 1 and not transposed:  # nothing to concatenate or transpose: keep the parameter itself
        return _Linear(getattr(mods[0], weight), mods[0].bias if bias else None, transposed=False)
    fused_w = torch.cat([getattr(m, weight).detach() for m in mods], dim=0)
    fused_b = torch.cat([m.bias.detach() for m in mods]) if bias and mods[0].bias is not None else None
    if transposed:
        fused_w = fused_w.t().contiguous()
    row = 0
    for m in mods:
        rows = m.weight.shape[0]
        part = fused_w[:, row:row + rows].t() if transposed else fused_w[row:row + rows]
        m.weight = torch.nn.Parameter(part, requires_grad=False)
        if fused_b is not None:
            m.bias = torch.nn.Parameter(fused_b[row:row + rows], requires_grad=False)
        row += rows
    return _Linear(fused_w, fused_b, transposed)


# The packed product sums in another order than MKL's; bf16 rounds its output to 8 mantissa bits.
_PACK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` [out, in] reordered for oneDNN's matmul, or None where this torch build or dtype has no such path
    (checked on one product against F.linear)."""
    if weight.dtype not in _PACK_TOLERANCE or not torch.backends.mkldnn.is_available():
        return None
    if weight.dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return None  # no native bf16 on this CPU: oneDNN would emulate it, slower than MKL's path
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 16)
        x = torch.randn(3, weight.shape[1], dtype=weight.dtype)
        tol = _PACK_TOLERANCE[weight.dtype]
        if torch.allclose(_onednn_linear(x, packed, None).float(), F.linear(x, weight).float(), rtol=tol, atol=tol):
            return packed
    except (AttributeError, RuntimeError) as exc:
        log.warning("oneDNN packed weights unavailable (%s): MKL products only", exc)
    return None


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def build_text_decoder(language_model: torch.nn.Module, lm_head: torch.nn.Module, fused: bool, on_cpu: bool
                       ) -> FusedTextDecoder | HFTextDecoder:
    reason = supports(language_model) if fused else None
    if fused and reason is None:
        return FusedTextDecoder(language_model, lm_head, on_cpu)
    if fused:
        log.warning("fused text decoder not used (%s): running HF's layers", reason)
    return HFTextDecoder(language_model, lm_head)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Qwen2 RMSNorm (normalize in float32, cast back, then scale) as one fused op."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb on [tokens, heads, head_dim]: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
