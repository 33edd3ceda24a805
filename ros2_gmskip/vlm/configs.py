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
Configuration dataclasses of the default model and its training.

No heavy imports here: the CLI reads their defaults for `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DefaultModelConfig:
    """Sizes of the default model; decoder depth is what GM-Skip prunes."""

    image_size: int = 128          # the processor resizes camera frames to image_size^2
    patch_size: int = 16           # -> (128/16)^2 = 64 image tokens
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 192
    text_intermediate: int = 512
    text_layers: int = 16          # decoder blocks: the candidates for skipping
    text_heads: int = 4
    max_positions: int = 256

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class TrainConfig:
    """Two stages (see ros2_gmskip/vlm/train.py): vision pretraining, then the whole model."""

    scenes: int = 16000           # train-split scenes rendered once into the cache
    vision_steps: int = 1000      # stage 1: vision tower + projector on ground-truth targets
    vision_batch_size: int = 64
    vision_lr: float = 2e-3
    steps: int = 1300             # stage 2: whole model, caption loss (+ aux)
    batch_size: int = 32
    lr: float = 1.5e-3            # peak learning rate (AdamW)
    min_lr_ratio: float = 0.05    # cosine decays to lr * min_lr_ratio
    warmup: int = 60              # linear warm-up steps (each stage)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    layerdrop: float = 0.3        # max per-block skip probability (last block); 0 = off
    drop_suffix: float = 0.25     # per batch: skip the last 1..L/2 blocks together (early exit)
    blind_answers: float = 0.0    # per batch: answer tokens cannot attend to image tokens
    skip_ffn: float = 0.0         # share of visual tokens that bypass decoder FFNs (Skip-Vision)
    aux_weight: float = 1.0       # weight of the image-token ground-truth loss; 0 = off
    seed: int = 0
    threads: int = 2              # torch intra-op threads (the target machine has 2 cores)
    eval_every: int = 200         # stage 2: greedy-decode 32 val scenes and log accuracy
    model: DefaultModelConfig = field(default_factory=DefaultModelConfig)


@dataclass
class HealConfig:
    """A short fine-tune of a GM-Skip pruned model with its token skipping on (vlm/heal.py)."""

    steps: int = 400              # optimizer steps, whole pruned model, caption loss
    batch_size: int = 32
    lr: float = 3e-4              # peak learning rate: a fifth of training's, the model is trained
    min_lr_ratio: float = 0.1
    warmup: int = 40
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    scenes: int = 8000            # train-split scenes rendered once (the model saw 16000)
    seed: int = 0
    threads: int = 2
    eval_every: int = 100         # greedy-decode `eval_n` val scenes with the token skipping on
    eval_n: int = 64
    val_n: int = 500              # val scenes scored before and after (the plan's metric record)
