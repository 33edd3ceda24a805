# Copyright 2026 ros2_gmskip developers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
Write a Llama-style decoder block once: the math every functional path and export runs.

Three things run a decoder block outside transformers' own forward, and all take it from here:
token skipping's functional decoder (tokenskip/fastv.py: prefill with FastV, decode over caches
of different lengths, healing's training forward), the portable ONNX graphs (exporters/
onnx_export.py traces `block_forward`), and the fused ONNX Runtime graphs (exporters/
fused_decoder.py emits contrib ops from the same weights: `qkv_weight`, `gate_up_weight`,
`rope_inv_freq`, `rms_eps`).

`block_forward` calls the ORIGINAL modules for everything without state (norms, projections,
the MLP) and writes the attention out: RoPE from the model's own inverse frequencies, the cache
concatenated with the new keys, repeat_kv for grouped-query attention, a masked softmax in float32
(transformers' eager attention, in its operation order, so the functional decoder equals the
Hugging Face model). With `FusedProjections` (what export traces) q|k|v and the MLP's gate|up are
one MatMul each and q|k rotate together: the same values (measured bit-identical on the 2-core
CPU) in about 40 % fewer graph nodes, and node count is what a small decoder's step time is made
of on a CPU.

Supported: Llama, Mistral and Qwen2 blocks (RMSNorm, q/k/v/o projections with optional q/k/v
biases, gated MLP); `unsupported_block` names what another block has that is not written here.
"""

from __future__ import annotations

import torch
from torch import nn

# Attention / block parts of other decoders that `block_forward` does not implement.
ATTENTION_EXTRAS = ('q_norm', 'k_norm', 'sinks')
BLOCK_EXTRAS = ('pre_feedforward_layernorm', 'post_feedforward_layernorm')


def unsupported_block(layer: nn.Module) -> str | None:
    """Return what a decoder block has that `block_forward` does not implement, or None."""
    extra = [n for n in ATTENTION_EXTRAS if hasattr(layer.self_attn, n)]
    extra += [n for n in BLOCK_EXTRAS if hasattr(layer, n)]
    return f'parts {extra}' if extra else None


def rope_inv_freq(rotary: nn.Module) -> tuple[torch.Tensor, float]:
    """Return a rotary module's inverse frequencies (d/2,) float32 and its attention scaling."""
    return (rotary.inv_freq.detach().float(), float(getattr(rotary, 'attention_scaling', 1.0)))


def rope(inv_freq: torch.Tensor, scaling: float, positions: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return RoPE's cos and sin (B, T, d) at `positions` (B, T), as transformers computes them."""
    freqs = positions[..., None].float() * inv_freq                     # (B, T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)                             # (B, T, d)
    return emb.cos() * scaling, emb.sin() * scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, d) by cos / sin (B, 1, T, d) (rotate_half convention)."""
    d = x.shape[-1]
    x1, x2 = x.split([d // 2, d // 2], dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def hidden_keys(key_mask: torch.Tensor, T: int, window: int | None = None) -> torch.Tensor:
    """
    Return (B, 1, T, S) True where a query must NOT see a key.

    key_mask (B, S): 1 for the keys to attend (cache slots, then the T new tokens), 0 for
    padding. Cached keys all precede the new tokens, so causality orders by cache index: query t
    sees key s when s <= S - T + t. `window`: sliding-window attention, keys older than that.
    """
    S = key_mask.shape[1]
    q_index = torch.arange(T, device=key_mask.device) + (S - T)          # (T,)
    k_index = torch.arange(S, device=key_mask.device)                    # (S,)
    visible = k_index[None, :] <= q_index[:, None]                       # (T, S)
    if window is not None:
        visible = visible & (k_index[None, :] > q_index[:, None] - window)
    return ~(visible[None, None] & key_mask[:, None, None, :].bool())     # (B, 1, T, S)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
           hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Return the attention output (B, T, H * d) and its probabilities (B, H, T, S).

    q (B, H, T, d), k and v (B, KV, S, d) with H a multiple of KV (grouped-query attention:
    each KV head serves H / KV query heads), `hidden` from `hidden_keys`.
    """
    B, H, T, d = q.shape
    KV, S = k.shape[1], k.shape[2]
    if H != KV:                                                          # repeat_kv
        k = k[:, :, None].expand(B, KV, H // KV, S, d).reshape(B, H, S, d)
        v = v[:, :, None].expand(B, KV, H // KV, S, d).reshape(B, H, S, d)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling               # (B, H, T, S)
    scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    y = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, H * d)      # (B, T, H*d)
    return y, probs


def last_row_attention(probs: torch.Tensor) -> torch.Tensor:
    """Return what the last query pays each key, averaged over heads: FastV's signal (B, S)."""
    return probs[:, :, -1].float().mean(dim=1)


def qkv_weight(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return q|k|v's weights ((H + 2 KV) d, C) and biases (None where there are none)."""
    projs = (attn.q_proj, attn.k_proj, attn.v_proj)
    weight = torch.cat([p.weight.detach() for p in projs])
    if all(p.bias is None for p in projs):
        return weight, None
    return weight, torch.cat([p.bias.detach() if p.bias is not None
                              else torch.zeros(p.out_features) for p in projs])


def gate_up_weight(mlp: nn.Module) -> torch.Tensor | None:
    """Return a gated MLP's gate|up weights (2 F, C), or None for another MLP."""
    if not all(isinstance(getattr(mlp, n, None), nn.Linear)
               for n in ('gate_proj', 'up_proj', 'down_proj')) or not hasattr(mlp, 'act_fn'):
        return None
    return torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()])


def rms_eps(norm: nn.Module) -> float:
    """Return an RMSNorm's epsilon."""
    return float(getattr(norm, 'variance_epsilon', getattr(norm, 'eps', 1e-6)))


class FusedProjections(nn.Module):
    """One block's q|k|v and gate|up as single linear layers (copies of the weights)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        weight, bias = qkv_weight(layer.self_attn)
        self.qkv = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        self.qkv.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            self.qkv.bias = nn.Parameter(bias, requires_grad=False)
        gate_up = gate_up_weight(layer.mlp)
        self.gate_up = None
        if gate_up is not None:
            self.gate_up = nn.Linear(gate_up.shape[1], gate_up.shape[0], bias=False)
            self.gate_up.weight = nn.Parameter(gate_up, requires_grad=False)


def block_forward(layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  past: tuple[torch.Tensor, torch.Tensor] | None, hidden: torch.Tensor,
                  fused: FusedProjections | None = None
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """
    Run one decoder block: h (B, T, C) -> (h, its cache (key, value) with `past`, probs).

    cos / sin (B, T, d) from `rope`; past (B, KV, P, d) key and value or None; hidden
    (B, 1, T, P + T) from `hidden_keys`; `fused`: this block's FusedProjections (export).
    """
    attn = layer.self_attn
    B, T, _ = h.shape
    d = attn.head_dim
    cos, sin = cos[:, None], sin[:, None]                                 # (B, 1, T, d)
    x = layer.input_layernorm(h)
    if fused is None:                            # transformers' own projections
        q = attn.q_proj(x).view(B, T, -1, d).transpose(1, 2)              # (B, H, T, d)
        k = attn.k_proj(x).view(B, T, -1, d).transpose(1, 2)              # (B, KV, T, d)
        v = attn.v_proj(x).view(B, T, -1, d).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    else:                                        # one MatMul, one rotation for q|k
        H, KV = attn.q_proj.out_features // d, attn.k_proj.out_features // d
        qkv = fused.qkv(x).view(B, T, H + 2 * KV, d).transpose(1, 2)      # (B, H+2KV, T, d)
        qk, v = qkv.split([H + KV, KV], dim=1)
        q, k = apply_rope(qk, cos, sin).split([H, KV], dim=1)
    if past is not None:
        k = torch.cat((past[0], k), dim=2)                                # (B, KV, S, d)
        v = torch.cat((past[1], v), dim=2)
    y, probs = attend(q, k, v, attn.scaling, hidden)
    h = h + attn.o_proj(y)
    x = layer.post_attention_layernorm(h)
    mlp = layer.mlp
    if fused is None or fused.gate_up is None:
        h = h + mlp(x)
    else:
        gate, up = fused.gate_up(x).split([mlp.gate_proj.out_features] * 2, dim=-1)
        h = h + mlp.down_proj(mlp.act_fn(gate) * up)
    return h, (k, v), probs
