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
Pick the rows token skipping keeps, in numpy: FastV's ranking and visual KV removal's slots.

The numpy twin of `tokenskip.fastv` / `tokenskip.kv_removal` (torch), batch 1; which slots a rule
keeps is defined once, in `tokenskip.settings`, so both pick the same tokens. The decode loop
(runtime/decode.py) calls these between segments (FastV) and after the prefill (KV removal).

    scores = head_averaged_attention(query, keys, scale)        # what the last token pays each key
    kept = rank_image_rows(scores, image_rows, n_keep)          # FastV's best image rows, sorted
    rows = keep_rows(T, image_rows, kept)                       # + every text row, in order
"""

from __future__ import annotations

import numpy as np

from ros2_gmskip.tokenskip.settings import random_slots, retained_slots


def keep_rows(n_rows: int, image_rows: np.ndarray, kept_image_rows: np.ndarray) -> np.ndarray:
    """Return sorted row indices to keep: every non-image row plus `kept_image_rows`."""
    keep = np.ones(n_rows, dtype=bool)
    keep[image_rows] = False
    keep[kept_image_rows] = True
    return np.flatnonzero(keep)


def rank_image_rows(scores: np.ndarray, image_rows: np.ndarray, n_keep: int) -> np.ndarray:
    """Return the `n_keep` image rows with the highest scores (ties: the earlier row), sorted."""
    order = np.argsort(-scores[image_rows], kind='stable')
    return np.sort(image_rows[order[:n_keep]])


def random_image_rows(image_rows: np.ndarray, n_keep: int, seed: int) -> np.ndarray:
    """Return FastV K = 0's rows: `n_keep` image rows chosen by `seed` (no attention to rank)."""
    return image_rows[random_slots(len(image_rows), n_keep, seed)]


def dropped_image_rows(image_rows: np.ndarray, ratio: float) -> np.ndarray:
    """Return the image rows whose KV entries visual KV removal drops (the stride rule)."""
    return np.setdiff1d(image_rows, image_rows[retained_slots(len(image_rows), ratio)])


def head_averaged_attention(query: np.ndarray, keys: np.ndarray, scale: float) -> np.ndarray:
    """
    Return one query's softmax attention over `keys`, averaged over heads: (T,).

    query (H * d,) and keys (KV, T, d) both rotated; H is a multiple of KV (head h reads KV head
    h // (H / KV)). What a fused graph's `last_query` and its cached keys give FastV; a portable
    graph outputs the same average as `last_token_attention`.
    """
    kv, _, d = keys.shape
    q = query.reshape(kv, -1, d).astype(np.float64)                   # (KV, group, d)
    scores = np.einsum('kgd,ktd->kgt', q, keys.astype(np.float64)) * scale
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs.reshape(-1, probs.shape[-1]).mean(axis=0).astype(np.float32)
