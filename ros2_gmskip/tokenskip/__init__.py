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
Token-level acceleration: visual-token pruning (FastV) and visual KV-cache removal (Skip-Vision).

Skip-Vision comes with training-time FFN skipping; the FLOPs estimates compare both with GM-Skip.

    from ros2_gmskip.tokenskip import FastVConfig, fastv_generate, kv_removal_generate
    texts = fastv_generate(model, processor, images, cfg=FastVConfig(k=2, r=0.5))
    texts = kv_removal_generate(model, processor, images, cfg=KVRemovalConfig(ratio=1.0))
    with skip_ffn(model, select_skipped(image_mask, 0.5)):      # training: FFNs skip visual rows
        loss = model(**batch).loss

- `fastv`: the decoder run functionally with a per-layer token set and KV cache (prefill with
  pruning after layer K, decode over caches of different lengths per layer).
- `kv_removal`: drop visual KV entries after prefill; decode on the smaller cache.
- `skip_ffn`: MLP wrappers that compute only the non-skipped rows (and count them).
- `settings`: the knobs as plans and bundles carry them (TokenSkip; pure stdlib).
- `flops`: FastV's per-layer FLOPs formula; prefill / decode totals (pure arithmetic, no torch).

Names are loaded from their submodule on first use (PEP 562): `import ros2_gmskip.tokenskip.flops`
does not import torch.
"""

from __future__ import annotations

from ros2_gmskip.lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    'DecoderDims': 'flops',
    'FastVConfig': 'settings',
    'KVRemovalConfig': 'kv_removal',
    'Selection': 'skip_ffn',
    'SkipFFN': 'skip_ffn',
    'TokenSkip': 'settings',
    'decode_flops': 'flops',
    'fastv_generate': 'fastv',
    'fastv_generate_ids': 'fastv',
    'fastv_prefill': 'fastv',
    'generation_flops': 'flops',
    'kv_removal_generate': 'kv_removal',
    'kv_removal_generate_ids': 'kv_removal',
    'layer_flops': 'flops',
    'num_kept': 'flops',
    'plan_kv_removal': 'kv_removal',
    'prefill_flops': 'flops',
    'rank_image_tokens': 'fastv',
    'remove_visual_kv': 'kv_removal',
    'select_skipped': 'skip_ffn',
    'skip_ffn': 'skip_ffn',
}

__all__ = [
    'DecoderDims',
    'FastVConfig',
    'KVRemovalConfig',
    'Selection',
    'SkipFFN',
    'TokenSkip',
    'decode_flops',
    'fastv_generate',
    'fastv_generate_ids',
    'fastv_prefill',
    'generation_flops',
    'kv_removal_generate',
    'kv_removal_generate_ids',
    'layer_flops',
    'num_kept',
    'plan_kv_removal',
    'prefill_flops',
    'rank_image_tokens',
    'remove_visual_kv',
    'select_skipped',
    'skip_ffn',
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
