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
Token-level acceleration (ros2_gmskip.tokenskip).

FastV pruning, Skip-Vision KV removal, Skip-FFN, FLOPs estimates.

Exactness is checked against transformers itself: with nothing pruned the functional path equals
the Hugging Face model bit for bit (eager attention); with pruning / removal it equals the HF
model recomputing the whole sequence at every step with the pruned / removed keys masked out per
layer (forward pre-hooks on the decoder blocks swap in a per-layer mask), to 1e-5.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from ros2_gmskip.tokenskip.fastv import (
    embed_inputs,
    fastv_generate,
    fastv_generate_ids,
    fastv_prefill,
    FastVConfig,
    image_positions_of,
    pad_token_id,
    rank_image_tokens,
    stop_ids,
)
from ros2_gmskip.tokenskip.flops import (
    decode_flops,
    DecoderDims,
    generation_flops,
    layer_flops,
    num_kept,
    prefill_flops,
)
from ros2_gmskip.tokenskip.kv_removal import (
    drop_mask_for,
    kv_removal_generate,
    kv_removal_generate_ids,
    KVRemovalConfig,
)
from ros2_gmskip.tokenskip.skip_ffn import select_skipped, Selection, skip_ffn, SkipFFN
from ros2_gmskip.vlm.prompting import build_inputs
import torch

LAYERS = 6
N_IMG = 16                 # 64x64 image, patch 16
PROMPT = 'describe the scene.'
NEW = 8                    # tokens generated per test


@pytest.fixture(scope='module')
def vlm():
    """
    Return (model, processor) of a tiny random LLaVA.

    6 decoder blocks, GQA (4 heads, 2 KV), eager attention. Init std 0.15: greedy text varies
    (0.02 repeats one word), and float noise between cached and recomputed runs stays < 5e-6 (at
    0.3 it reaches 1.4e-5 even without pruning).
    """
    torch.set_num_threads(1)
    from ros2_gmskip.vlm.default_model import (
        build_model,
        build_processor,
        build_tokenizer,
        DefaultModelConfig,
    )
    from transformers import LlavaForConditionalGeneration
    cfg = DefaultModelConfig(image_size=64, patch_size=16, vision_hidden=32, vision_layers=1,
                             vision_heads=2, text_hidden=64, text_intermediate=128,
                             text_layers=LAYERS, text_heads=4, max_positions=128)
    tokenizer = build_tokenizer([PROMPT, 'a red car ahead, near. a bus on the left, far.',
                                 'truck pedestrian cyclist night rain fog'])
    processor = build_processor(tokenizer, cfg)
    config = build_model(cfg, tokenizer).config
    config.text_config.num_key_value_heads = 2
    for c in (config, config.text_config, config.vision_config):
        c.initializer_range = 0.15
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.set_attn_implementation('eager')
    with torch.no_grad():     # tied embeddings: zero special rows so random logits pick words
        special = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
        model.get_input_embeddings().weight[special] = 0.0
    return model, processor


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope='module')
def inputs(vlm, images):
    return build_inputs(vlm[1], images, PROMPT)


def _ids(vlm, inputs, cfg, **kw):
    model, processor = vlm
    return fastv_generate_ids(model, inputs, cfg, NEW, stop_ids(model, processor),
                              pad_token_id(processor), keep_logits=True, **kw)


# --------------------------------------------------------------------------------------------------
# Reference: the HF model, whole sequence recomputed, keys hidden per layer

def _reference_logits(model, embeds, hide):
    """
    Return the HF model's last-position logits (B, V) on embeds (B, S, C), with hidden keys.

    In layer l, query i cannot see key j when hide[l][b, i, j] (on top of causality). No cache.
    """
    B, S, _ = embeds.shape
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    neg = torch.finfo(embeds.dtype).min
    handles = []

    def make_hook(layer):
        visible = causal[None] & ~hide[layer]                              # (B, S, S)
        add = torch.zeros(B, 1, S, S).masked_fill(~visible[:, None], neg)

        def hook(module, args, kwargs):
            kwargs['attention_mask'] = add
            return args, kwargs
        return hook

    layers = model.model.language_model.layers
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(make_hook(i), with_kwargs=True))
    try:
        with torch.no_grad():
            positions = torch.arange(S)[None].expand(B, S)
            out = model(inputs_embeds=embeds, attention_mask=torch.ones(B, S, dtype=torch.long),
                        position_ids=positions, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return out.logits[:, -1]


def _check_against_reference(model, inputs, tokens, logits, hide_fn, skip=None):
    """
    Every step's logits of a cached run equal the masked full recompute (atol 1e-5).

    skip (B, T): prompt tokens that bypass the FFNs (Skip-FFN) in the reference too.
    """
    embeds, mask, _, _ = embed_inputs(model, inputs)
    assert bool(mask.all()), 'the reference assumes no padding'
    T = embeds.shape[1]
    embed = model.get_input_embeddings()
    worst = 0.0
    for n in range(tokens.shape[1]):
        seq = torch.cat((embeds, embed(tokens[:, :n])), dim=1) if n else embeds   # (B, T+n, C)
        hide = [hide_fn(layer, T + n) for layer in range(LAYERS)]
        if skip is None:
            ref = _reference_logits(model, seq, hide)
        else:
            with skip_ffn(model, torch.cat((skip, torch.zeros(2, n, dtype=torch.bool)), dim=1)):
                ref = _reference_logits(model, seq, hide)
        worst = max(worst, float((ref - logits[:, n]).abs().max()))
        assert torch.equal(ref.argmax(-1), logits[:, n].argmax(-1)), f'step {n}'
    assert worst < 1e-5, f'max |logit diff| {worst:.2e}'
    return worst


# --------------------------------------------------------------------------------------------------
# FastV

@pytest.mark.parametrize('k, r, kept', [(2, 0.5, 8), (3, 0.3, 12), (1, 1.0, 0), (0, 0.25, 12)])
def test_fastv_keeps_ceil_share_after_layer_k(vlm, inputs, k, r, kept):
    model, _ = vlm
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    T = embeds.shape[1]
    logits, past, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask,
                                             FastVConfig(k=k, r=r))
    assert kept == math.ceil((1 - r) * N_IMG)
    assert logits.shape == (2, model.config.text_config.vocab_size)
    for layer, ((key, value), index) in enumerate(zip(past, kept_index)):
        S = T if layer < k else T - N_IMG + kept
        assert key.shape == value.shape == (2, 2, S, 16), f'layer {layer}'
        assert index.shape == (2, S)
        assert int(image_mask.gather(1, index).sum(1).max()) == (N_IMG if layer < k else kept)
        assert bool((index[:, 1:] > index[:, :-1]).all()), 'kept tokens stay in order'
        assert bool((index[:, -1] == T - 1).all()), 'the last prompt token is never pruned'


def test_fastv_r0_equals_hf_bit_for_bit(vlm, inputs, images):
    model, processor = vlm
    T = inputs['input_ids'].shape[1]
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    first, _ = _ids(vlm, inputs, None)
    stop = [eos, int(first[1, 1])]          # a second stop token: row 1 stops early (pad path)
    with torch.no_grad():
        hf = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, output_logits=True,
                            return_dict_in_generate=True, eos_token_id=stop)
        full = model(**inputs).logits[:, -1]                # all positions through the LM head
    hf_tokens, hf_logits = hf.sequences[:, T:], torch.stack(hf.logits, dim=1)
    assert (hf_tokens == pad).any(), 'a row stopped early'
    for cfg in (FastVConfig(k=2, r=0.0), None):
        tokens, logits = fastv_generate_ids(model, inputs, cfg, NEW, stop, pad, keep_logits=True)
        assert torch.equal(tokens, hf_tokens)
        assert torch.equal(logits, hf_logits), 'every step bit for bit'
    # HF's forward without logits_to_keep runs the LM head on all T rows (another GEMM shape).
    torch.testing.assert_close(logits[:, 0], full, atol=1e-5, rtol=0)
    with torch.no_grad():
        hf_text = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)[:, T:]
    texts = fastv_generate(model, processor, images, PROMPT, FastVConfig(2, 0.0), NEW)
    assert texts == [t.strip() for t in processor.batch_decode(hf_text, skip_special_tokens=True)]


def test_fastv_ranking_matches_hf_attention(vlm, inputs):
    model, _ = vlm
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    cfg = FastVConfig(k=3, r=0.5)
    _, _, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, cfg)
    with torch.no_grad():
        attn = model(**inputs, output_attentions=True).attentions[2]       # layer K-1: (B,H,T,T)
    image_positions = image_positions_of(image_mask)
    score = attn[:, :, -1].mean(1).gather(1, image_positions)              # (B, n_img)
    top = image_positions.gather(1, score.topk(8).indices).sort(1).values
    kept_images = kept_index[3][image_mask.gather(1, kept_index[3])].view(2, 8)
    assert torch.equal(kept_images, top)
    ranked = rank_image_tokens(attn, image_positions, embeds.shape[1] - 1)
    assert torch.equal(ranked[:, :8].sort(1).values, top)


def test_fastv_k0_random_subset_is_seeded(vlm, inputs):
    model, _ = vlm
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)

    def kept(seed):
        cfg = FastVConfig(k=0, r=0.5, seed=seed)
        logits, _, index = fastv_prefill(model, embeds, mask, positions, image_mask, cfg)
        return logits, index[0]

    (l0, i0), (l0b, i0b) = kept(0), kept(0)
    assert torch.equal(i0, i0b) and torch.equal(l0, l0b)
    assert torch.equal(i0[0], i0[1]), 'the same image slots for every image of the batch'
    assert any(not torch.equal(i0, kept(s)[1]) for s in (1, 2, 3))


@pytest.mark.parametrize('k, r', [(2, 0.5), (0, 0.5), (4, 0.75)])
def test_fastv_decode_equals_masked_full_recompute(vlm, inputs, k, r):
    """
    Check prefill + cached decode with pruned tokens == HF recomputing everything.

    HF recomputes with the pruned keys hidden in layers >= K; equality shows the original
    positions and per-layer masks are right.
    """
    model, _ = vlm
    cfg = FastVConfig(k=k, r=r)
    tokens, logits = _ids(vlm, inputs, cfg)
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    _, _, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, cfg)
    T = embeds.shape[1]
    pruned = torch.ones(2, T, dtype=torch.bool).scatter(1, kept_index[k], False)   # (B, T)

    def hide(layer, S):
        out = torch.zeros(2, S, S, dtype=torch.bool)
        if layer >= k:
            out[:, :, :T] = pruned[:, None, :]
        return out

    _check_against_reference(model, inputs, tokens, logits, hide)


# --------------------------------------------------------------------------------------------------
# Skip-Vision KV removal

def _kv_run(vlm, inputs, cfg, fastv=None):
    model, processor = vlm
    return kv_removal_generate_ids(model, inputs, cfg, NEW, stop_ids(model, processor),
                                   pad_token_id(processor), fastv=fastv, keep_logits=True)


@pytest.mark.parametrize('ratio, start, fastv, skip', [
    (1.0, 0, None, False),                   # all visual KV, every layer
    (0.5, 2, None, False),                   # a stride subset, layers >= 2
    (0.5, 1, FastVConfig(k=3, r=0.5), False),   # on a FastV cache: rows lose different counts
    (0.75, 0, None, True),                   # Skip-Vision inference: skipped FFN, then KV gone
])
def test_kv_removal_equals_masked_full_recompute(vlm, inputs, ratio, start, fastv, skip):
    model, _ = vlm
    cfg = KVRemovalConfig(ratio=ratio, start_layer=start, skip_ffn_prefill=skip)
    tokens, logits = _kv_run(vlm, inputs, cfg, fastv)
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    T = embeds.shape[1]
    drop = drop_mask_for(image_mask, cfg)                                  # (B, T)
    assert int(drop.sum(1)[0]) == N_IMG - math.ceil((1 - ratio) * N_IMG)
    pruned = torch.zeros(2, T, dtype=torch.bool)
    if fastv is not None:
        _, _, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, fastv)
        pruned = torch.ones(2, T, dtype=torch.bool).scatter(1, kept_index[fastv.k], False)

    def hide(layer, S):
        out = torch.zeros(2, S, S, dtype=torch.bool)
        if fastv is not None and layer >= fastv.k:
            out[:, :, :T] = pruned[:, None, :]               # FastV: gone for every query
        if layer >= start:
            out[:, T:, :T] |= drop[:, None, :]               # removed KV: gone for new tokens only
        return out

    _check_against_reference(model, inputs, tokens, logits, hide, drop if skip else None)
    if fastv is None and not skip:     # the prefill saw everything: first token as unpruned
        full_tokens, full_logits = _ids(vlm, inputs, None)
        assert torch.equal(logits[:, 0], full_logits[:, 0])


def test_kv_removal_cache_shapes(vlm, inputs):
    from ros2_gmskip.tokenskip.fastv import layer_masks
    from ros2_gmskip.tokenskip.kv_removal import plan_kv_removal, remove_visual_kv
    model, _ = vlm
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    T = embeds.shape[1]
    _, past, kept_index = fastv_prefill(model, embeds, mask, positions, image_mask, None)
    keep, masks = plan_kv_removal(kept_index, layer_masks(mask, kept_index), image_mask, 3)
    small = remove_visual_kv(past, keep)
    assert [k.shape[2] for k, _ in small] == [T] * 3 + [T - N_IMG] * 3
    assert [m.shape[1] for m in masks] == [T] * 3 + [T - N_IMG] * 3
    kept_ids = inputs['input_ids'].gather(1, keep[3])
    assert not bool((kept_ids == model.config.image_token_id).any())
    assert torch.equal(small[3][0], past[3][0][:, :, ~image_mask[0]]), 'text keys untouched'


def test_kv_removal_text_api(vlm, images):
    model, processor = vlm
    texts = kv_removal_generate(model, processor, images, PROMPT,
                                KVRemovalConfig(ratio=1.0, skip_ffn_prefill=True), NEW)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


# --------------------------------------------------------------------------------------------------
# Skip-FFN

def test_skip_ffn_selection():
    image_mask = torch.zeros(2, 20, dtype=torch.bool)
    image_mask[:, 2:18] = True
    skip = select_skipped(image_mask, 0.75)
    assert skip.sum(1).tolist() == [12, 12] and not bool((skip & ~image_mask).any())
    assert torch.equal(skip[0], skip[1])
    assert (~skip[0, 2:18]).nonzero().squeeze(1).tolist() == [0, 4, 8, 12], 'evenly spaced'
    r1 = select_skipped(image_mask, 0.5, Selection.RANDOM, torch.Generator().manual_seed(5))
    r2 = select_skipped(image_mask, 0.5, 'random', torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and r1.sum(1).tolist() == [8, 8]
    assert not select_skipped(image_mask, 0.0).any()


def test_skip_ffn_ratio0_identical_and_rows_counted(vlm, inputs):
    model, _ = vlm
    image_mask = inputs['input_ids'] == model.config.image_token_id
    B, T = image_mask.shape
    with torch.no_grad():
        plain = model(**inputs).logits
        with skip_ffn(model, select_skipped(image_mask, 0.0)) as mlps:
            same = model(**inputs).logits
        assert torch.equal(plain, same)
        assert [m.rows for m in mlps] == [B * T] * LAYERS

        skip = select_skipped(image_mask, 0.5)
        seen = []                 # rows reaching the real projections, independent of the counter
        hooks = [layer.mlp.gate_proj.register_forward_hook(
            lambda mod, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
            for layer in model.model.language_model.layers]
        try:
            with skip_ffn(model, skip, layers=range(1, LAYERS)) as mlps:
                assert isinstance(model.model.language_model.layers[1].mlp, SkipFFN)
                model(**inputs)
        finally:
            for h in hooks:
                h.remove()
    skipped = int(skip.sum())
    assert skipped == B * (N_IMG - 8)
    assert [m.rows for m in mlps] == [B * T - skipped] * (LAYERS - 1)
    assert seen == [B * T] + [B * T - skipped] * (LAYERS - 1), 'layer 0 not wrapped'
    assert type(model.model.language_model.layers[1].mlp).__name__ == 'LlamaMLP', 'unwrapped'


def test_skip_ffn_training_steps(vlm, inputs):
    model = copy.deepcopy(vlm[0]).train()
    keys = set(model.state_dict())
    ids = inputs['input_ids']
    image_mask = ids == model.config.image_token_id
    labels = ids.masked_fill(image_mask, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(3):
        skip = select_skipped(image_mask, 0.5, Selection.RANDOM if step else 'stride', gen)
        feats = []

        def keep_features(module, args, out):
            out.retain_grad()
            feats.append(out)
        handle = model.model.multi_modal_projector.register_forward_hook(keep_features)
        try:
            with skip_ffn(model, skip) as mlps:
                loss = model(**inputs, labels=labels).loss
        finally:
            handle.remove()
        opt.zero_grad()
        loss.backward()                                    # after the wrappers are gone
        assert torch.isfinite(loss)
        # (The SigLIP pooling head and post-norm are unused by LLaVA: no grads there, ever.)
        used = [*model.model.language_model.parameters(),
                *model.model.multi_modal_projector.parameters()]
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in used)
        mlp = model.model.language_model.layers[-1].mlp
        assert float(mlp.gate_proj.weight.grad.abs().sum()) > 0
        # Skipped visual tokens still take part in attention: the loss reaches their features.
        g = feats[0].grad.reshape(-1, feats[0].shape[-1])                 # (B * n_img, C)
        skipped_feats = skip[image_mask]                                    # (B * n_img,)
        assert float(g[skipped_feats].abs().sum()) > 0
        assert mlps[0].rows == ids.numel() - int(skip.sum())
        opt.step()
        losses.append(loss.item())
    assert set(model.state_dict()) == keys
    assert losses[-1] != losses[0]


# --------------------------------------------------------------------------------------------------
# FLOPs

def test_flops_by_hand():
    assert num_kept(16, 0.5) == 8 and num_kept(16, 0.3) == 12 and num_kept(10, 0.7) == 3
    assert num_kept(16, 0.0) == 16 and num_kept(16, 1.0) == 0
    # n=4, d=2, m=3: 4*4*4 + 2*16*2 + 2*4*2*3 = 64 + 64 + 48
    assert layer_flops(4, 2, 3) == 176
    assert layer_flops(1, 2, 3, n_keys=5) == 16 + 20 + 12
    dims = DecoderDims(layers=3, hidden=2, ffn=3)
    assert prefill_flops(dims, 4, 2) == 3 * 176
    # GM-Skip removes block 1; FastV K=1 (of the 2 left) R=0.5: n=4 then n=3 (48 + 36 + 36)
    assert prefill_flops(dims, 4, 2, removed_blocks=[1]) == 2 * 176
    fastv = FastVConfig(k=1, r=0.5)
    assert prefill_flops(dims, 4, 2, removed_blocks=[1], fastv=fastv) == 176 + 120
    assert prefill_flops(dims, 4, 2, fastv=FastVConfig(k=1, r=0.0)) == 3 * 176
    # decode after 4 tokens: 5 keys; all visual KV removed: 3 keys (16 + 12 + 12)
    assert decode_flops(dims, 4, 2) == 3 * 48
    assert decode_flops(dims, 4, 2, kv_ratio=1.0) == 3 * 40
    assert decode_flops(dims, 4, 2, kv_ratio=1.0, kv_start=2) == 2 * 48 + 40
    assert decode_flops(dims, 4, 2, fastv=FastVConfig(k=2, r=0.5)) == 2 * 48 + (16 + 16 + 12)
    assert generation_flops(dims, 4, 2, 3) == 3 * 176 + 3 * 48 + 3 * (16 + 24 + 12)
    real = DecoderDims.from_config(type('C', (), {'num_hidden_layers': 16, 'hidden_size': 192,
                                                  'intermediate_size': 512}))
    assert prefill_flops(real, 70, 64, fastv=FastVConfig(2, 0.5)) < prefill_flops(real, 70, 64)
    with pytest.raises(ValueError):
        prefill_flops(dims, 4, 2, removed_blocks=[3])


def test_blind_answer_training_mask_equals_kv_removal(vlm, inputs):
    """
    Check training with --blind-answers shows what a decode step sees after KV removal.

    That is visual KV removal at ratio 1: teacher-forced logits under the training mask equal
    every step of a cached KV-removal run.
    """
    from ros2_gmskip.vlm.train import blind_answer_mask
    model, _ = vlm
    tokens, logits = _kv_run(vlm, inputs, KVRemovalConfig(ratio=1.0))
    embeds, mask, _, image_mask = embed_inputs(model, inputs)
    T, n = embeds.shape[1], tokens.shape[1]
    seq = torch.cat((embeds, model.get_input_embeddings()(tokens[:, :n - 1])), dim=1)
    attention = torch.ones(seq.shape[:2], dtype=torch.long)
    with torch.no_grad():
        out = model(inputs_embeds=seq, use_cache=False,
                    attention_mask=blind_answer_mask(attention, image_mask[0], T)).logits
        open_ = model(inputs_embeds=seq, attention_mask=attention, use_cache=False).logits
    assert float((out[:, T - 1:] - logits).abs().max()) < 1e-5
    assert float((open_[:, T:] - logits[:, 1:]).abs().max()) > 1e-3, 'the mask must matter'


def test_stage2_blocks_early_exit_and_layerdrop():
    import random

    from ros2_gmskip.vlm.train import stage2_blocks
    drop_p = [0.3 * i / 15 for i in range(16)]
    plain, new = random.Random(0), random.Random(0)
    for _ in range(50):          # drop_suffix 0 draws what plain LayerDrop drew (old recipes)
        assert stage2_blocks(drop_p, 0.0, new) == [i for i in range(16)
                                                   if plain.random() >= drop_p[i]]
    rng = random.Random(1)
    exits = [stage2_blocks([0.0] * 16, 1.0, rng) for _ in range(400)]
    assert {len(b) for b in exits} == set(range(8, 16))        # 1..8 late blocks skipped
    assert all(b == list(range(len(b))) for b in exits), 'early exit skips a suffix'


# --------------------------------------------------------------------------------------------------
# Healing (vlm/heal.py): the training forward is the inference path, run with gradients

@pytest.mark.parametrize('fastv, kv', [
    (None, False),                           # plain: the HF model
    (FastVConfig(k=2, r=0.5), False),        # FastV ranked after block 1
    (FastVConfig(k=0, r=0.5), True),         # random subset, answers without image keys
    (FastVConfig(k=3, r=0.75), True),        # FastV + KV removal ratio 1
])
def test_healing_forward_equals_cached_inference(vlm, inputs, fastv, kv):
    """
    Check the healing forward (`fastv_layers`, teacher-forced) equals cached inference.

    Its logits over prompt + generated answer equal the logits a cached greedy run chose every
    token from (FastV prefill, KV removal, decode steps).
    """
    from ros2_gmskip.tokenskip.fastv import fastv_layers, text_model
    model, _ = vlm
    if kv:
        tokens, logits = _kv_run(vlm, inputs, KVRemovalConfig(ratio=1.0), fastv=fastv)
    else:
        tokens, logits = _ids(vlm, inputs, fastv)
    embeds, mask, positions, image_mask = embed_inputs(model, inputs)
    assert bool(mask.all()), 'same prompt for both images: no padding'
    B, T = mask.shape
    n = tokens.shape[1]
    seq = torch.cat((embeds, model.get_input_embeddings()(tokens[:, :n - 1])), dim=1)
    full = torch.ones(seq.shape[:2], dtype=torch.long)
    image = torch.cat((image_mask, torch.zeros(B, n - 1, dtype=torch.bool)), dim=1)
    with torch.no_grad():
        h, _, kept = fastv_layers(model, seq, full, torch.arange(T + n - 1).expand(B, -1), image,
                                  fastv, rank_row=T - 1, blind_from=T if kv else None)
        out = model.lm_head(text_model(model).norm(h))
    assert float((out[:, -n:] - logits).abs().max()) < 1e-5
    if fastv is not None:
        assert kept[-1].shape[1] == T + n - 1 - (16 - fastv.n_keep(16))


def test_healing_loss_is_the_model_loss_and_trains_every_kept_part(vlm, images):
    """
    Check the healing loss is the model's loss and trains every kept part.

    With no token skipping it is transformers' own caption loss on a right-padded batch; with
    FastV + KV removal gradients reach the vision tower and every block.
    """
    from ros2_gmskip.tokenskip.settings import TokenSkip
    from ros2_gmskip.vlm.heal import healing_loss
    from ros2_gmskip.vlm.prompting import prompt_ids_of
    from ros2_gmskip.vlm.train import caption_batch
    model, processor = vlm
    prompt = prompt_ids_of(processor, PROMPT)
    tok = processor.tokenizer
    answers = [tok('a red car ahead.')['input_ids'][1:] + [tok.eos_token_id],
               tok('a bus on the left, far.')['input_ids'][1:] + [tok.eos_token_id]]
    input_ids, labels, attention = caption_batch(prompt, answers, tok.pad_token_id)
    pixels = processor.image_processor(images, return_tensors='pt')['pixel_values']
    with torch.no_grad():
        ours = healing_loss(model, pixels, input_ids, labels, attention, TokenSkip(), len(prompt))
        theirs = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention,
                       labels=labels).loss
    assert abs(float(ours) - float(theirs)) < 1e-5
    trained = copy.deepcopy(model).train()
    loss = healing_loss(trained, pixels, input_ids, labels, attention,
                        TokenSkip(fastv=FastVConfig(k=1, r=0.5), kv_ratio=1.0), len(prompt))
    loss.backward()
    text = trained.model.language_model
    parts = [trained.model.vision_tower, trained.model.multi_modal_projector, *text.layers]
    for part in parts:
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in part.parameters()), type(part).__name__
