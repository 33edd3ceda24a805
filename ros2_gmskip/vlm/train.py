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
Train the default VLM from scratch on procedural scenes (nanoGPT-style: plain loops).

Command that produced the shipped model (models/gmskip-llava-scenes/README.md has the numbers):

    ros2-gmskip train --out models/gmskip-llava-scenes

Data: `scenes` train-split scenes are rendered once and kept as the processor's exact input (uint8
at model resolution, normalised on the fly), with their captions and ground truth.

Stage 1, vision pretraining (LLaVA starts from a pretrained vision tower; we have none): the vision
tower + projector learn to predict each scene's ground truth (class and colour in each of the 6
position x distance slots, lighting, weather) through a linear head on the projected image tokens.
These steps cost a fraction of a whole-model step. Measured without it: after 450 whole-model
steps the decoder named the main object in only 37.5 % of val scenes.

Stage 2, the whole model: caption loss on the answer tokens, plus the same ground-truth loss, with
stochastic depth on the decoder ("LayerDrop", Fan et al. 2019): block l is skipped for a whole
batch with probability layerdrop * l / (L - 1). Later blocks are dropped more often, which makes
them the cheap ones to remove, matching GM-Skip's late-blocks-first search (`--layerdrop 0`: off).
Independent drops rarely skip several late blocks at once, which is what a GM-Skip plan does, so
with probability `drop_suffix` a batch also exits early: its last k blocks (k uniform in 1..L/2)
are all skipped (LayerSkip-style early exit, Elhoushi et al. 2024), so the decoder learns to
answer from any depth >= L/2. The shipped model uses 0.25; measured against the same recipe
without it (README "Results"): on 2000 test scenes the full model scores about the same (0.948 /
0.949) while GM-Skip's search removes 9 of 16 blocks at -0.85 pt instead of 6; at 0.5 the full
model falls to 0.942 on 500 test scenes (bench/results/early_exit/). `--drop-suffix 0` draws
exactly what plain LayerDrop drew, so the older recipes reproduce.

Image-blind answers (`--blind-answers PROB`): in that share of stage-2 batches the answer tokens
cannot attend to the image tokens (a 4-D attention mask); the prompt tokens after the image still
see it. This is the exact condition visual KV removal at ratio 1 creates at inference (the prefill
sees the image, every decode step only the text keys; test_tokenskip.py checks that the two give
the same logits), so the prompt tokens learn to carry the image, and KV removal could stop costing
accuracy (a model trained without it loses ~70 points to KV removal). Off by default: the ~6
prompt tokens must carry the whole scene, and a run with 0.5 (plus early exit, 1500 steps) learnt
far slower: val accuracy 0.41 after 600 steps, where the recipes without it were at 0.72-0.75. It
was stopped there.

Skip-FFN (`--skip-ffn RATIO`, Skip-Vision arXiv 2503.21817): in stage 2 that share of the image
tokens bypasses the FFN of every decoder block (they stay queries and keys in attention); the
retained ones are a fixed stride, the rule visual KV removal uses at inference. The summary records
the FFN rows computed against the total, and stage-2 seconds without the periodic evals.

The ground-truth head is training-only and discarded: the shipped model is a plain
LlavaForConditionalGeneration.
"""

from __future__ import annotations

from dataclasses import asdict
import json
import logging
import math
from pathlib import Path
import random
import time

import numpy as np
from ros2_gmskip.runtime.results import DEFAULT_PROMPT
from ros2_gmskip.scenes import render_scene, split_seeds
from ros2_gmskip.scenes.spec import (
    CLASSES,
    DISTANCES,
    LIGHT_STATES,
    LIGHTINGS,
    NOUNS,
    POSITIONS,
    VEHICLE_COLORS,
    WEATHERS,
)
from ros2_gmskip.tokenskip.skip_ffn import select_skipped, skip_ffn
from ros2_gmskip.vlm.configs import TrainConfig
from ros2_gmskip.vlm.default_model import build_model, build_processor, build_tokenizer
from ros2_gmskip.vlm.prompting import prompt_text
import torch
from tqdm import tqdm

LOG = logging.getLogger(__name__)
AUX_COLORS = (None,) + tuple(dict.fromkeys(VEHICLE_COLORS + LIGHT_STATES))
SLOTS = [(p, d) for d in DISTANCES for p in POSITIONS]


def vocabulary_corpus(n_captions: int = 2000) -> list[str]:
    """Text the tokenizer is trained on: train-split captions, the prompt, every grammar word."""
    corpus = [render_scene(s, 64, 48)[1].caption for s in split_seeds('train', n_captions)]
    words = list(NOUNS.values()) + list(VEHICLE_COLORS + LIGHT_STATES + LIGHTINGS) + [
        'close far on the left right ahead a , . clear rainy foggy']
    return corpus + [DEFAULT_PROMPT, ' '.join(words)]


def aux_targets(scene) -> list[int]:
    """[class per slot (0 = empty) x6, colour per slot x6, lighting, weather] for one scene."""
    cls = [0] * len(SLOTS)
    color = [0] * len(SLOTS)
    for obj in scene.objects:
        k = SLOTS.index((obj.position, obj.distance))
        cls[k] = 1 + CLASSES.index(obj.cls)
        color[k] = AUX_COLORS.index(obj.color)
    return cls + color + [LIGHTINGS.index(scene.lighting), WEATHERS.index(scene.weather)]


class AuxHead(torch.nn.Module):
    """Training-only: ground truth from the flattened projected image tokens (B, N, C)."""

    def __init__(self, n_tokens: int, hidden: int) -> None:
        super().__init__()
        self.sizes = [1 + len(CLASSES)] * len(SLOTS) + [len(AUX_COLORS)] * len(SLOTS) + \
            [len(LIGHTINGS), len(WEATHERS)]
        self.proj = torch.nn.Linear(n_tokens * hidden, sum(self.sizes))

    def loss(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.proj(feats.flatten(1))                   # (B, sum(sizes))
        parts = torch.split(logits, self.sizes, dim=1)
        return sum(torch.nn.functional.cross_entropy(part, targets[:, i])
                   for i, part in enumerate(parts)) / len(parts)


class SceneCache:
    """Train scenes rendered once: pixels as uint8 at model resolution + answers + aux targets."""

    def __init__(self, processor, n: int, progress: bool = True) -> None:
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.scale = float(ip.rescale_factor)
        seeds = split_seeds('train', n)
        self.pixels: np.ndarray | None = None
        self.answers: list[list[int]] = []
        self.aux = np.zeros((n, 2 * len(SLOTS) + 2), dtype=np.int64)
        eos = processor.tokenizer.eos_token_id
        chunk = 64
        for start in tqdm(range(0, n, chunk), desc='render', disable=not progress, unit='x64'):
            rendered = [render_scene(s) for s in seeds[start:start + chunk]]
            pv = ip([im for im, _ in rendered], return_tensors='np')['pixel_values']
            raw = np.rint((pv * ip.image_std[0] + ip.image_mean[0]) / self.scale)  # back to 0..255
            if self.pixels is None:
                self.pixels = np.empty((n,) + pv.shape[1:], dtype=np.uint8)
            self.pixels[start:start + len(rendered)] = raw.astype(np.uint8)
            for i, (_, scene) in enumerate(rendered):
                self.answers.append(processor.tokenizer(scene.caption, add_special_tokens=False)
                                    ['input_ids'] + [eos])
                self.aux[start + i] = aux_targets(scene)

    def __len__(self) -> int:
        return len(self.answers)

    def pixel_values(self, idx) -> torch.Tensor:
        """Exactly the processor's output for these scenes: (B, 3, H, W) float32."""
        x = torch.from_numpy(self.pixels[idx]).float() * self.scale
        return (x - self.mean) / self.std


def lr_at(step: int, steps: int, peak: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to peak * min_lr_ratio."""
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def adamw(named_params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Return AdamW with no weight decay on norms and biases."""
    decay = [p for _, p in named_params if p.dim() >= 2]
    no_decay = [p for _, p in named_params if p.dim() < 2]
    return torch.optim.AdamW([{'params': decay, 'weight_decay': weight_decay},
                              {'params': no_decay, 'weight_decay': 0.0}], lr=lr,
                             betas=(0.9, 0.98))


def stage2_blocks(drop_p: list[float], drop_suffix: float, rng: random.Random) -> list[int]:
    """
    Draw the indices of the decoder blocks one stage-2 batch runs.

    An early exit with probability drop_suffix (the last 1..L/2 blocks skipped), then LayerDrop
    on the rest. With drop_suffix 0 it draws exactly what plain LayerDrop drew, so older recipes
    reproduce.
    """
    L = len(drop_p)
    depth = L - rng.randint(1, L // 2) if drop_suffix and rng.random() < drop_suffix else L
    return [i for i in range(depth) if rng.random() >= drop_p[i]]


def blind_answer_mask(attention: torch.Tensor, image_row: torch.Tensor, prompt_len: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """
    Return the (B, 1, T, T) additive attention mask (0 = visible, dtype min = hidden).

    Causal, no padded keys, and queries from `prompt_len` on (the answer tokens) see no image
    key: what a decode step sees after visual KV removal at ratio 1. `image_row` (P,) marks the
    image tokens of the shared prompt. Additive, not bool: transformers passes a 4-D mask through
    as-is, and eager attention adds it to the scores (SDPA takes either).
    """
    B, T = attention.shape
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None] & attention.bool()[:, None, :]
    image = torch.zeros(T, dtype=torch.bool)
    image[:len(image_row)] = image_row
    allowed[:, prompt_len:, :] &= ~image
    mask = torch.zeros(B, 1, T, T, dtype=dtype)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def caption_batch(prompt_ids: list[int], answers: list[list[int]], pad_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Return (input_ids, labels, attention), each (B, P + longest answer): prompt + answer.

    Right-padded; labels hold the answer tokens at their own positions (-100 elsewhere),
    transformers' form.
    """
    P = len(prompt_ids)
    T = P + max(len(a) for a in answers)
    input_ids = torch.full((len(answers), T), pad_id, dtype=torch.long)
    labels = torch.full((len(answers), T), -100, dtype=torch.long)
    attention = torch.zeros((len(answers), T), dtype=torch.long)
    for b, ans in enumerate(answers):
        seq = prompt_ids + ans
        input_ids[b, :len(seq)] = torch.tensor(seq)
        labels[b, P:len(seq)] = torch.tensor(ans)
        attention[b, :len(seq)] = 1
    return input_ids, labels, attention


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image tokens (B, N_img, C), as LlavaModel merges them into the prompt."""
    return torch.stack(list(model.model.get_image_features(
        pixel_values=pixel_values, vision_feature_layer=-1,
        vision_feature_select_strategy='full').pooler_output))


def embed_with_image(model, input_ids: torch.Tensor, image_mask: torch.Tensor,
                     pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Merge the projected image tokens into the prompt embeddings, as LLaVA does, with gradients.

    Returns (inputs_embeds (B, T, C) with the projected image tokens at `image_mask`, those image
    tokens (B, N_img, C)); used by stage 2 and healing.
    """
    feats = image_features(model, pixel_values)                            # (B, N_img, C)
    embeds = model.get_input_embeddings()(input_ids)                       # (B, T, C)
    return embeds.masked_scatter(image_mask.unsqueeze(-1), feats.to(embeds.dtype)), feats


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> dict:
    """Build, train and save the default model; returns a summary dict (also saved as JSON)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()

    tokenizer = build_tokenizer(vocabulary_corpus())
    processor = build_processor(tokenizer, cfg.model)
    model = build_model(cfg.model, tokenizer)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    LOG.info('model: %.2fM parameters, %d decoder blocks, vocab %d',
             n_params / 1e6, cfg.model.text_layers, len(tokenizer))
    cache = SceneCache(processor, cfg.scenes, progress)
    aux_head = AuxHead(cfg.model.num_image_tokens, cfg.model.text_hidden)
    log: list[dict] = []

    # ---------------------------------------------------------------- stage 1: vision pretraining
    vision_params = (list(model.model.vision_tower.named_parameters()) +
                     list(model.model.multi_modal_projector.named_parameters()) +
                     list(aux_head.named_parameters()))
    opt = adamw(vision_params, cfg.vision_lr, cfg.weight_decay)
    bar = tqdm(range(cfg.vision_steps), desc='stage 1 vision', disable=not progress, unit='step')
    for step in bar:
        idx = rng.integers(0, len(cache), cfg.vision_batch_size)
        for group in opt.param_groups:
            group['lr'] = lr_at(step, cfg.vision_steps, cfg.vision_lr, cfg)
        loss = aux_head.loss(image_features(model, cache.pixel_values(idx)),
                             torch.from_numpy(cache.aux[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in vision_params], cfg.grad_clip)
        opt.step()
        log.append({'stage': 1, 'step': step, 'aux_loss': loss.item()})
        bar.set_postfix(aux_loss=f'{loss.item():.3f}')

    # ---------------------------------------------------------------- stage 2: the whole model
    params = list(model.named_parameters()) + list(aux_head.named_parameters())
    opt = adamw(params, cfg.lr, cfg.weight_decay)
    text = prompt_text(processor, DEFAULT_PROMPT)
    n_img = cfg.model.num_image_tokens
    prompt_ids = tokenizer(text.replace(processor.image_token, processor.image_token * n_img))[
        'input_ids']                                                  # includes <s>
    P = len(prompt_ids)
    layers = model.model.language_model.layers          # ModuleList of decoder blocks
    L = len(layers)
    drop_p = [cfg.layerdrop * i / (L - 1) for i in range(L)]
    drop_rng = random.Random(cfg.seed)
    image_mask_row = torch.tensor(prompt_ids) == model.config.image_token_id       # (P,)
    bar = tqdm(range(cfg.steps), desc='stage 2 model', disable=not progress, unit='step')
    stage2_seconds = 0.0                           # training steps only, evals excluded
    ffn_rows = {'computed': 0, 'total': 0}         # decoder FFN token rows (Skip-FFN saves some)
    for step in bar:
        t_step = time.perf_counter()
        # ---- data: prompt + answer, right-padded; loss on the answer tokens only
        idx = rng.integers(0, len(cache), cfg.batch_size)
        input_ids, labels, attention = caption_batch(prompt_ids, [cache.answers[i] for i in idx],
                                                     tokenizer.pad_token_id)
        for group in opt.param_groups:
            group['lr'] = lr_at(step, cfg.steps, cfg.lr, cfg)
        # ---- forward with stochastic depth: a smaller ModuleList for this batch only
        keep = stage2_blocks(drop_p, cfg.drop_suffix, drop_rng)
        blind = bool(cfg.blind_answers) and drop_rng.random() < cfg.blind_answers
        model.model.language_model.layers = torch.nn.ModuleList([layers[i] for i in keep])
        image_mask = input_ids == model.config.image_token_id                  # (B, T)
        mask = blind_answer_mask(attention, image_mask_row, P) if blind else attention
        ffn_skip = (select_skipped(image_mask, cfg.skip_ffn) if cfg.skip_ffn
                    else torch.zeros_like(image_mask))
        try:
            with skip_ffn(model, ffn_skip) as mlps:   # Skip-Vision: skipped rows bypass the FFN
                embeds, feats = embed_with_image(model, input_ids, image_mask,
                                                 cache.pixel_values(idx))
                out_ = model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                             use_cache=False)
        finally:
            model.model.language_model.layers = layers
        ffn_rows['computed'] += sum(m.rows for m in mlps)
        ffn_rows['total'] += ffn_skip.numel() * len(mlps)
        loss = out_.loss
        if cfg.aux_weight:
            loss = loss + cfg.aux_weight * aux_head.loss(feats, torch.from_numpy(cache.aux[idx]))
        # ---- backward / step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
        opt.step()
        loss_value = out_.loss.item()                      # caption loss (aux not included)
        stage2_seconds += time.perf_counter() - t_step
        log.append({'stage': 2, 'step': step, 'loss': loss_value, 'blocks': len(keep),
                    'blind': blind})
        bar.set_postfix(loss=f'{loss_value:.3f}', blocks=len(keep))
        # ---- eval: greedy decodes of 32 val scenes, logged
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            model.eval()
            acc = quick_eval(model, processor, n=32)
            model.train()
            log[-1]['val_accuracy'] = acc
            LOG.info('step %d loss %.4f val accuracy (32 scenes) %.3f', step + 1, loss_value, acc)

    # ---------------------------------------------------------------- save
    model.eval()
    elapsed = time.perf_counter() - t0
    summary = {'train_config': {k: v for k, v in asdict(cfg).items() if k != 'model'},
               'model_config': asdict(cfg.model), 'parameters': n_params,
               'train_seconds': round(elapsed, 1), 'stage2_seconds': round(stage2_seconds, 1),
               'ffn_rows_computed': ffn_rows['computed'], 'ffn_rows_total': ffn_rows['total'],
               'torch_threads': cfg.threads,
               'final_loss': log[-1].get('loss') if log else None}
    from ros2_gmskip.folders import written_in_place
    with written_in_place(Path(out), 'model folder') as tmp:   # complete or not at all
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / 'training_log.json').write_text(json.dumps({'summary': summary, 'log': log}))
    return summary


@torch.no_grad()
def quick_eval(model, processor, n: int = 32) -> float:
    """
    Return the main-object accuracy of greedy decodes on the first n val scenes.

    A training-time signal.
    """
    from ros2_gmskip.gmskip.metrics import names_class
    from ros2_gmskip.vlm.generation import generate_texts
    rendered = [render_scene(seed) for seed in split_seeds('val', n)]
    texts = generate_texts(model, processor, [image for image, _ in rendered], batch_size=n)
    LOG.info('val sample: %r  (truth %r)', texts[0], rendered[0][1].caption)
    return sum(names_class(t, scene.main_class) for t, (_, scene) in zip(texts, rendered)) / n
