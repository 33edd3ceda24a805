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

r"""
Heal a GM-Skip pruned model: a short fine-tune of what remains, with the token skipping on.

    ros2-gmskip heal --plan models/gmskip-llava-scenes/plans/accuracy-reverse-for-healing.json \
        --fastv 1,0.5 --out /tmp/healed-10      # = models/gmskip-llava-scenes-healed

Why: GM-Skip removes blocks without training (the paper's method), and FastV then prunes image
tokens the model never learnt to do without. Each costs a little accuracy and the costs add up
(on this project's model: -0.98 pt for the block plan, -1.36 pt with FastV on top, 5000 test
scenes; healed, a deeper 10-block plan with FastV scores +0.10 pt: README "Healing"). Pruned
LLMs are commonly "healed" by a short continued training of the smaller network (Sheared-LLaMA,
LLM-Pruner, ShortGPT); here the training forward is the inference path itself:
the planned blocks are physically removed, and FastV ranks and drops image tokens after block K
exactly as the prefill does (`tokenskip.fastv.fastv_layers`, the same function, run with
gradients). With `--kv-removal 1` the answer tokens also lose the image keys, as a decode step
does after Skip-Vision's KV removal, so the model can learn to answer from the prompt tokens.

What it trains: every remaining weight (vision tower, projector, the kept blocks, embeddings) on
the caption loss of train-split scenes, AdamW, warm-up + cosine, a fifth of training's peak rate.
What it writes: a standard transformers folder (the pruned model, loads with from_pretrained),
its processor and draft table, `gmskip_heal.json` (source, plan, settings, val accuracy before /
after, seconds) and `plans/healed.json`: a plan for the healed weights that removes nothing more
and carries the token settings, so export, replay, bench and the node apply them.
"""

from __future__ import annotations

from dataclasses import asdict
import logging
import math
import random
import time

import numpy as np
from ros2_gmskip.tokenskip.settings import TokenSkip
from ros2_gmskip.vlm.configs import HealConfig
from ros2_gmskip.vlm.prompting import prompt_ids_of
from ros2_gmskip.vlm.train import adamw, caption_batch, embed_with_image, lr_at, SceneCache
import torch
from tqdm import tqdm

LOG = logging.getLogger(__name__)


def check_healable(tokens: TokenSkip) -> None:
    """Healing trains the token settings the functional path can run with gradients."""
    if tokens.kv_ratio not in (0.0, 1.0) or (tokens.kv_ratio and tokens.kv_start):
        raise ValueError(f'heal trains visual KV removal at ratio 1 from layer 0 only (the '
                         f'answer tokens see no image key), got {tokens.describe()}')


def healing_loss(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor, attention: torch.Tensor, tokens: TokenSkip,
                 prompt_len: int) -> torch.Tensor:
    """
    Return the caption loss of a prompt + answer batch through the pruned, token-skipping decoder.

    The batch is right-padded; the token skipping is inference's: FastV ranks by the last prompt
    token's attention and drops image tokens after block K; with KV removal the answer tokens see
    no image key.
    """
    from ros2_gmskip.tokenskip.fastv import fastv_layers, text_model
    image_mask = input_ids == model.config.image_token_id                  # (B, T)
    embeds, _ = embed_with_image(model, input_ids, image_mask, pixel_values)
    B, T = input_ids.shape
    positions = torch.arange(T).expand(B, T)               # right padding: index = position
    text = text_model(model)
    h, _, kept = fastv_layers(model, embeds, attention, positions, image_mask, tokens.fastv,
                              rank_row=prompt_len - 1,
                              blind_from=prompt_len if tokens.kv_ratio else None, text=text)
    logits = model.lm_head(text.norm(h))                                   # (B, T', V)
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]                        # row t predicts token t + 1
    targets = targets.gather(1, kept[-1])                  # the rows that survived pruning
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                             ignore_index=-100)


def val_accuracy(model, processor, tokens: TokenSkip, n: int) -> float:
    """Main-object accuracy on the first n val scenes with the token skipping on."""
    from ros2_gmskip.gmskip.metrics import accuracy
    from ros2_gmskip.scenes import load_samples
    from ros2_gmskip.tokenskip.reference import token_skip_texts
    was_training = model.training
    model.eval()
    samples = load_samples('val', n)
    try:
        return accuracy(token_skip_texts(model, processor, [s.image for s in samples], tokens,
                                         batch_size=32), samples)
    finally:
        model.train(was_training)


def heal(model, processor, tokens: TokenSkip, cfg: HealConfig, progress: bool = True) -> dict:
    """Fine-tune `model` (already pruned) in place; returns a summary with the training log."""
    check_healable(tokens)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    before = val_accuracy(model, processor, tokens, cfg.val_n) if cfg.val_n else None
    if before is not None:
        LOG.info('val accuracy before healing (%d scenes, %s): %.4f', cfg.val_n,
                 tokens.describe(), before)
    cache = SceneCache(processor, cfg.scenes, progress)
    prompt_ids = prompt_ids_of(processor)
    pad_id = processor.tokenizer.pad_token_id
    model.train()
    params = list(model.named_parameters())
    opt = adamw(params, cfg.lr, cfg.weight_decay)
    log: list[dict] = []
    train_seconds = 0.0
    bar = tqdm(range(cfg.steps), desc='heal', disable=not progress, unit='step')
    for step in bar:
        t_step = time.perf_counter()
        idx = rng.integers(0, len(cache), cfg.batch_size)
        input_ids, labels, attention = caption_batch(
            prompt_ids, [cache.answers[i] for i in idx], pad_id)
        for group in opt.param_groups:
            group['lr'] = lr_at(step, cfg.steps, cfg.lr, cfg)
        loss = healing_loss(model, cache.pixel_values(idx), input_ids, labels, attention,
                            tokens, len(prompt_ids))
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f'healing loss is {value} at step {step}: lower --lr')
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
        opt.step()
        train_seconds += time.perf_counter() - t_step
        log.append({'step': step, 'loss': value})
        bar.set_postfix(loss=f'{value:.3f}')
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            acc = val_accuracy(model, processor, tokens, cfg.eval_n)
            log[-1]['val_accuracy'] = acc
            LOG.info('step %d loss %.4f val accuracy (%d scenes) %.3f', step + 1, value,
                     cfg.eval_n, acc)
    model.eval()
    after = val_accuracy(model, processor, tokens, cfg.val_n) if cfg.val_n else None
    if after is not None:
        LOG.info('val accuracy after healing (%d scenes): %.4f', cfg.val_n, after)
    return {'heal_config': asdict(cfg), 'tokens': tokens.to_dict(),
            'val_accuracy': {'n': cfg.val_n, 'before': before, 'after': after},
            'train_seconds': round(train_seconds, 1),
            'total_seconds': round(time.perf_counter() - t0, 1),
            'final_loss': log[-1]['loss'] if log else None, 'log': log}
