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
FastV: drop the least-attended image tokens after layer K (arXiv 2403.06764).

The paper: "An Image is Worth 1/2 Tokens After Layer 2".

    cfg = FastVConfig(k=2, r=0.5)
    texts = fastv_generate(model, processor, images, 'describe the scene.', cfg,
                           max_new_tokens=48)

The method
----------
Layers 0..K-1 run on the whole prompt. In layer K-1 every image token gets a score: the attention
the LAST prompt token pays to it, averaged over heads. The ceil((1-R) * n_img) best image tokens
are kept; the others are gone for layers >= K: their hidden states are gathered away (the layers
really run on fewer tokens, so the FLOPs really fall), and they have no KV-cache entry in those
layers. K = 0 has no attention to rank by: a random subset (seeded, the same image-token slots for
every image of the batch) is kept from the start. R = 0 prunes nothing and reproduces the plain
model.

Positions and masks
-------------------
Gathering keeps the tokens in their original order and keeps their ORIGINAL position ids, so RoPE
rotates a kept token exactly as in the full model, and every generated token continues at the
absolute position it would have had without pruning. The cache therefore differs in LENGTH per
layer (layers >= K hold fewer keys), and each layer gets its own mask: the padding mask gathered
with that layer's kept index, plus causality among the new tokens (old entries all precede them).
`kept_index[l]` (B, S_l) records, for every cache slot of layer l, the original sequence index of
its token; Skip-Vision's KV removal (kv_removal.py) uses it to find visual slots in any cache.

The decoder is run functionally, block by block through `vlm.llama_block.block_forward` (the block
the ONNX export traces too): the ORIGINAL modules for everything without state (norms, q/k/v/o,
MLP, LM head, the model's own rotary module) and the attention written out (concatenation with
the past, repeat_kv for GQA, masked softmax in float32) in the same operation order as
transformers' eager attention, so with R = 0 it matches the Hugging Face model bit for bit. The
layer loop is plain Python over `decoder_stack(model).layers`, so a GM-Skip pruned model works
unchanged (K then counts the remaining blocks).

Supported: Llama-style decoders (Llama, Mistral/Qwen2 without sliding windows) behind LLaVA-style
models; anything else raises ModelLoadError naming what is missing.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from ros2_gmskip.errors import ModelLoadError
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.tokenskip.settings import FastVConfig, random_slots
from ros2_gmskip.vlm.blocks import decoder_stack
from ros2_gmskip.vlm.llama_block import block_forward, hidden_keys, unsupported_block
from ros2_gmskip.vlm.prompting import build_inputs
import torch
from torch import nn

log = logging.getLogger(__name__)

Past = list[tuple[torch.Tensor, torch.Tensor]]      # per layer: key, value (B, KV, S_l, d)

# Families whose decoder differs from Llama's in ways the functional path does not implement:
# multimodal RoPE (3-D positions), embedding scaling, extra norms around the FFN.
_UNSUPPORTED = {'qwen2_vl': 'multimodal RoPE', 'qwen2_5_vl': 'multimodal RoPE',
                'paligemma': 'Gemma decoder', 'gemma3': 'Gemma decoder'}


# --------------------------------------------------------------------------------------------------
# Which tokens to keep

def rank_image_tokens(attn_probs: torch.Tensor, image_positions: torch.Tensor,
                      last_index: int | torch.Tensor) -> torch.Tensor:
    """
    Image-token positions sorted by the attention the last prompt token pays them, best first.

    attn_probs (B, H, T, S): one layer's attention probabilities; image_positions (B, n): the key
    index of every image token; last_index: the query row of the last prompt token (int or (B,)).
    Returns (B, n) positions (values taken from image_positions); ties keep the earlier token
    first.
    """
    B, H, T, S = attn_probs.shape
    rows = torch.as_tensor(last_index, device=attn_probs.device).expand(B)       # (B,)
    last = attn_probs[torch.arange(B, device=attn_probs.device), :, rows]       # (B, H, S)
    score = last.mean(dim=1).gather(1, image_positions)                         # (B, n)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices      # (B, n)
    return image_positions.gather(1, order)


def keep_index(image_mask: torch.Tensor, kept_image: torch.Tensor) -> torch.Tensor:
    """
    (B, T') sorted sequence indices to keep: every non-image token plus the kept image tokens.

    image_mask (B, T) bool; kept_image (B, n_keep) positions of the image tokens to keep.
    """
    B, T = image_mask.shape
    keep = ~image_mask | torch.zeros_like(image_mask).scatter(1, kept_image, True)   # (B, T)
    n = int(keep[0].sum())
    assert bool((keep.sum(dim=1) == n).all()), 'every row must keep the same number of tokens'
    # Stable sort puts the kept tokens first, in their original order.
    return torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n]


def image_positions_of(image_mask: torch.Tensor) -> torch.Tensor:
    """(B, n) indices of the image tokens of each row (every row must hold the same number)."""
    counts = image_mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f'every row needs the same number of image tokens, got {counts.tolist()}')
    return image_mask.nonzero()[:, 1].view(image_mask.shape[0], -1)


def random_kept(image_positions: torch.Tensor, n_keep: int, seed: int) -> torch.Tensor:
    """(B, n_keep) image positions for K = 0: the same seeded random slots in every row, sorted."""
    slots = torch.tensor(random_slots(image_positions.shape[1], n_keep, seed),
                         device=image_positions.device)
    return image_positions[:, slots]


# --------------------------------------------------------------------------------------------------
# The decoder, functionally

def text_model(model: nn.Module) -> nn.Module:
    """Return the language model (with .layers, .norm, .rotary_emb), checked to be supported."""
    family = getattr(model.config, 'model_type', None)
    if family in _UNSUPPORTED:
        raise ModelLoadError(f'token skipping does not support {family} yet '
                             f'({_UNSUPPORTED[family]})')
    text = decoder_stack(model).module
    cfg = text.config
    if getattr(cfg, 'sliding_window', None) and getattr(cfg, 'use_sliding_window', True):
        raise ModelLoadError('token skipping does not support sliding-window attention yet')
    for i, layer in enumerate(text.layers):
        reason = unsupported_block(layer)
        if reason:
            raise ModelLoadError(f'decoder block {i} has {reason} that token skipping does '
                                 'not implement yet')
    return text


def _gather_tokens(index: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Rows `index` (B, T') of each (B, T) or (B, T, C) tensor."""
    out = []
    for t in tensors:
        if t.dim() == 3:
            out.append(t.gather(1, index[..., None].expand(-1, -1, t.shape[2])))
        else:
            out.append(t.gather(1, index))
    return out


@torch.no_grad()
def fastv_prefill(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor, image_mask: torch.Tensor, cfg: FastVConfig | None
                  ) -> tuple[torch.Tensor, Past, list[torch.Tensor]]:
    """
    Run the prompt through the decoder, image tokens pruned after layer K.

    inputs_embeds (B, T, C) with image features merged in; attention_mask (B, T) (left padding);
    position_ids (B, T); image_mask (B, T) bool. cfg None: no pruning (a plain functional prefill).
    Returns logits of the last prompt token (B, V), the cache per layer ((B, KV, S_l, d) key and
    value), and kept_index per layer: (B, S_l) original sequence index of every cache slot.
    """
    if not bool(attention_mask[:, -1].all()):
        raise ValueError('fastv_prefill needs left padding: the last prompt token of every row '
                         'must be at index T-1')
    text = text_model(model)
    h, past, kept_index = fastv_layers(model, inputs_embeds, attention_mask, position_ids,
                                       image_mask, cfg, inputs_embeds.shape[1] - 1, text=text)
    logits = model.lm_head(text.norm(h[:, -1:]))[:, 0]                      # (B, V)
    return logits, past, kept_index


def fastv_layers(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, image_mask: torch.Tensor, cfg: FastVConfig | None,
                 rank_row: int, blind_from: int | None = None, text: nn.Module | None = None
                 ) -> tuple[torch.Tensor, Past, list[torch.Tensor]]:
    """
    Run the decoder blocks over a whole sequence, image tokens pruned after layer K.

    Differentiable: the inference prefill and `vlm/heal.py`'s training forward are this one
    function.

    rank_row: the query row ranking the image tokens (the last prompt token: T-1 in a left-padded
    prefill, P-1 in a right-padded prompt + answer). blind_from: queries at original index >=
    blind_from see no image key, what a decode step sees after visual KV removal at ratio 1
    (None: off). `text`: `text_model(model)` when the caller has it (the norm after this needs it
    too). Returns the final hidden states (B, T', C) before the norm, the cache and kept_index per
    layer ((B, S_l) original sequence index of every slot).
    """
    text = text if text is not None else text_model(model)
    layers = text.layers
    B, T, C = inputs_embeds.shape
    image_positions = image_positions_of(image_mask)                       # (B, n_img)
    n_img = image_positions.shape[1]
    n_keep = n_img if cfg is None else cfg.n_keep(n_img)
    prune_at = cfg.k if cfg is not None and n_keep < n_img and cfg.k < len(layers) else None

    def hidden_for(mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        hidden = hidden_keys(mask, mask.shape[1])                          # (B, 1, T', T')
        if blind_from is None:
            return hidden
        image_key = image_mask.gather(1, index)[:, None, None, :]          # (B, 1, 1, T')
        return hidden | ((index >= blind_from)[:, None, :, None] & image_key)

    h, mask, pos = inputs_embeds, attention_mask, position_ids
    index = torch.arange(T, device=h.device).expand(B, T)                  # (B, T) original index
    if prune_at == 0:
        keep = keep_index(image_mask, random_kept(image_positions, n_keep, cfg.seed))
        h, mask, pos, index = _gather_tokens(keep, h, mask, pos, index)    # (B, T', ...)
    cos, sin = text.rotary_emb(h, pos)                                     # (B, T, d)
    hidden = hidden_for(mask, index)
    past: Past = []
    kept_index: list[torch.Tensor] = []
    probs = None
    for i, layer in enumerate(layers):
        if prune_at is not None and i == prune_at and i > 0:
            # Rank by layer K-1's attention from the rank row (nothing has been gathered yet, so
            # rows and keys are still the original indices).
            ranked = rank_image_tokens(probs, image_positions, rank_row)   # (B, n_img)
            keep = keep_index(image_mask, ranked[:, :n_keep])              # (B, T')
            h, mask, pos, index = _gather_tokens(keep, h, mask, pos, index)
            cos, sin = text.rotary_emb(h, pos)                             # original positions
            hidden = hidden_for(mask, index)
        h, present, probs = block_forward(layer, h, cos, sin, None, hidden)
        past.append(present)
        kept_index.append(index)
    return h, past, kept_index


@torch.no_grad()
def decode_step(model: nn.Module, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                past: Past, past_masks: list[torch.Tensor], text: nn.Module | None = None
                ) -> tuple[torch.Tensor, Past, list[torch.Tensor]]:
    """
    Run new tokens (B, T, C) at absolute positions (B, T) over a cache of per-layer lengths.

    past_masks[l] (B, S_l) says which cache slots to attend. Returns logits (B, T, V), the grown
    cache and masks. `text`: `text_model(model)` when the caller has it (it costs ~2 ms).
    """
    text = text if text is not None else text_model(model)
    B, T, _ = inputs_embeds.shape
    new_mask = torch.ones(B, T, dtype=past_masks[0].dtype, device=inputs_embeds.device)
    h = inputs_embeds
    cos, sin = text.rotary_emb(h, position_ids)                            # (B, T, d)
    new_past: Past = []
    new_masks: list[torch.Tensor] = []
    for i, layer in enumerate(text.layers):
        keys = torch.cat((past_masks[i], new_mask), dim=1)                  # (B, S_i + T)
        hidden = hidden_keys(keys, T)                                      # (B, 1, T, S_i + T)
        h, present, _ = block_forward(layer, h, cos, sin, past[i], hidden)
        new_past.append(present)
        new_masks.append(keys)
    return model.lm_head(text.norm(h)), new_past, new_masks


def layer_masks(attention_mask: torch.Tensor,
                kept_index: list[torch.Tensor]) -> list[torch.Tensor]:
    """Return the padding mask of each layer's cache slots: (B, S_l) per layer."""
    return [attention_mask.gather(1, index) for index in kept_index]


def stop_ids(model: nn.Module, processor) -> list[int]:
    """Token ids that end a description (the generation config's eos, else the tokenizer's)."""
    eos = getattr(model.generation_config, 'eos_token_id', None)
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def pad_token_id(processor) -> int:
    """Return the id written after a row has stopped (pad, else eos, as `generate` does)."""
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@torch.no_grad()
def greedy_decode(model: nn.Module, logits_last: torch.Tensor, past: Past,
                  masks: list[torch.Tensor], next_position: torch.Tensor, max_new_tokens: int,
                  stop: Sequence[int], pad_id: int, keep_logits: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Decode greedy tokens (B, N) from a prefill's last logits and cache.

    As transformers' `generate` emits them: the stop token included, `pad_id` after a row has
    stopped, N <= max_new_tokens.

    next_position (B,): absolute position of the first generated token. With keep_logits, also
    the logits each token was chosen from (B, N, V).
    """
    if max_new_tokens < 1:
        raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    text = text_model(model)
    embed = model.get_input_embeddings()
    stop_t = torch.tensor(list(stop), device=logits_last.device)
    done = torch.zeros(logits_last.shape[0], dtype=torch.bool, device=logits_last.device)
    logits = logits_last                                                   # (B, V)
    tokens, all_logits = [], []
    for step in range(max_new_tokens):
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long),
                            logits.argmax(dim=-1))                         # (B,)
        tokens.append(token)
        if keep_logits:
            all_logits.append(logits)
        done = done | torch.isin(token, stop_t)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        positions = (next_position + step)[:, None]                         # (B, 1)
        out, past, masks = decode_step(model, embed(token[:, None]), positions, past, masks, text)
        logits = out[:, -1]
    return torch.stack(tokens, dim=1), (torch.stack(all_logits, dim=1) if keep_logits else None)


# --------------------------------------------------------------------------------------------------
# From images to text

@torch.no_grad()
def embed_inputs(model: nn.Module, inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
    """
    Build the decoder inputs from processor outputs, as the LLaVA forward and `generate` do.

    -> (inputs_embeds (B, T, C), attention_mask (B, T), position_ids (B, T), image_mask (B, T));
    positions count real tokens only, so left padding does not shift them.
    """
    ids = inputs['input_ids']                                              # (B, T)
    image_mask = ids == model.config.image_token_id
    embeds = model.get_input_embeddings()(ids)                            # (B, T, C)
    feats = model.get_image_features(pixel_values=inputs['pixel_values']).pooler_output
    feats = torch.cat(list(feats), dim=0)                                  # (B * n_img, C)
    embeds = embeds.masked_scatter(image_mask[..., None], feats.to(embeds.dtype))
    mask = inputs.get('attention_mask')
    if mask is None:
        mask = torch.ones_like(ids)
    positions = (mask.long().cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)
    return embeds, mask, positions, image_mask


@torch.no_grad()
def fastv_generate_ids(model: nn.Module, inputs, cfg: FastVConfig | None, max_new_tokens: int,
                       stop: Sequence[int], pad_id: int, keep_logits: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy token ids (B, N) (and optionally their logits) for processor outputs `inputs`."""
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    logits, past, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, cfg)
    return greedy_decode(model, logits, past, layer_masks(mask, kept_index),
                         positions[:, -1] + 1, max_new_tokens, stop, pad_id, keep_logits)


@torch.no_grad()
def fastv_generate(model: nn.Module, processor, images: Sequence[np.ndarray],
                   prompt: str = DEFAULT_PROMPT, cfg: FastVConfig | None = None,
                   max_new_tokens: int = 48) -> list[str]:
    """Greedy descriptions of RGB uint8 images with FastV pruning (cfg None: none)."""
    inputs = build_inputs(processor, images, prompt).to(model.device)
    tokens, _ = fastv_generate_ids(model, inputs, cfg, max_new_tokens, stop_ids(model, processor),
                                   pad_token_id(processor))
    return [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
