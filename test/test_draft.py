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
Speculative decoding; the contract: the same ids as greedy.

Covers the n-gram draft table, the loop that checks its guesses, the fused ONNX Runtime decoder
running it, and `ros2-gmskip draft`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import shutil

import numpy as np
import pytest
from ros2_gmskip.errors import BundleError
from ros2_gmskip.runtime.decode import speculative_loop
from ros2_gmskip.runtime.draft import DRAFT_FILE, NgramDraft, START
from ros2_gmskip.runtime.results import DEFAULT_PROMPT

EOS = 2


def test_build_counts_contexts_backs_off_and_breaks_ties_by_the_smaller_id():
    draft = NgramDraft.build([[7, 9, 8, 13, EOS], [7, 9, 8, 14, EOS], [7, 9, 8, 14, EOS],
                              [5, 9, 6, EOS]], order=3)
    assert draft.table[(START,)] == 7                     # 3 of 4 captions start with 7
    assert draft.table[(9, 8)] == 14 and draft.table[(8,)] == 14     # 2 against 1
    assert draft.table[(5, 9)] == 6 and draft.table[(9,)] == 8
    assert draft.table[(START, 5)] == 9
    assert draft.propose([], 4) == [7, 9, 8, 14]
    assert draft.propose([5], 3) == [9, 6, EOS]           # the 2-token context wins over (9,)
    assert draft.propose([3, 9], 2) == [8, 14]            # (3, 9) unknown: backs off to (9,)
    tie = NgramDraft.build([[4, 11], [4, 10]], order=2)
    assert tie.table[(4,)] == 10


def test_propose_stops_after_a_stop_id_and_where_no_context_is_known():
    draft = NgramDraft.build([[7, 9, EOS]], order=3)
    assert draft.propose([7], 5, frozenset({EOS})) == [9, EOS]
    assert draft.propose([7], 5) == [9, EOS]              # (EOS,) was never followed: stops
    assert draft.propose([30], 3) == []
    assert draft.propose([7], 0) == []
    with pytest.raises(ValueError, match='order'):
        NgramDraft({}, order=1)


def test_save_and_load_round_trip(tmp_path):
    draft = NgramDraft.build([[7, 9, 8, 13, EOS], [5, 9, 6, EOS]], order=4)
    path = draft.save(tmp_path / DRAFT_FILE, source={'data': 'test'})
    back = NgramDraft.load(path, vocab_size=42)
    assert back.table == draft.table and back.order == 4
    assert json.loads(path.read_text())['source'] == {'data': 'test'}


@pytest.mark.parametrize('content, message', [
    ('{not json', 'draft_ngrams.json is not valid JSON'),
    (json.dumps({'format': 'other', 'order': 3, 'table': []}), "format 'other' is not"),
    (json.dumps({'format': 'ros2_gmskip.ngram_draft/1', 'order': 'x', 'table': []}),
     'order must be an integer'),
    (json.dumps({'format': 'ros2_gmskip.ngram_draft/1', 'order': 3, 'table': [[7, 99]]}),
     'bad row'),
    (json.dumps({'format': 'ros2_gmskip.ngram_draft/1', 'order': 3, 'table': [[1, 2, 3, 4]]}),
     'bad row'),
    (json.dumps([1, 2]), "format 'list' is not"),
])
def test_a_bad_table_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / DRAFT_FILE
    path.write_text(content)
    with pytest.raises(BundleError, match=message) as err:
        NgramDraft.load(path, vocab_size=42)
    assert '\n' not in str(err.value) and 'ros2-gmskip draft' in str(err.value)


class _Model:
    """A deterministic 'decoder': the greedy choice after a prefix is a hash of its last tokens."""

    def __init__(self, seed: int, vocab: int = 12) -> None:
        self.seed, self.vocab = seed, vocab
        self.runs = 0

    def choice(self, prefix: list[int]) -> int:
        return hash((self.seed, *(int(i) for i in prefix[-2:]))) % self.vocab


@pytest.mark.parametrize('seed', range(40))
def test_speculative_loop_keeps_exactly_what_the_greedy_loop_keeps(seed):
    rng = np.random.default_rng(seed)
    model = _Model(seed)
    first = int(rng.integers(model.vocab))
    stop = frozenset({int(rng.integers(model.vocab))}) if seed % 3 else frozenset()
    max_new = int(rng.integers(1, 30))
    ref = np.zeros(64, dtype=np.int64)

    def step(token: int, drafts: list[int], n: int) -> list[int]:
        assert drafts == []
        return [model.choice(list(ref[:n]))]
    want = speculative_loop(first, step, lambda n, limit: [], max_new, stop, ref)[:3]
    # plain greedy is the loop without guesses: checked against the plain rule too, keep
    # tokens until a stop token (not kept) or max_new of them
    plain, token = [], first
    while token not in stop and len(plain) < max_new:
        plain.append(token)
        token = model.choice(plain)
    assert list(ref[:want[0]]) == plain and want[2] == (token in stop and len(plain) < max_new)
    quality = seed % 4                    # 0: random guesses .. 3: mostly the model's own

    def propose(n: int, limit: int) -> list[int]:
        out, prefix = [], list(got[:n])
        for _ in range(int(rng.integers(0, 5))):
            guess = model.choice(prefix) if rng.random() < quality / 3 else int(
                rng.integers(model.vocab))
            out.append(guess)
            prefix.append(guess)
        assert limit >= 1
        return out[:limit]

    got = np.zeros(64, dtype=np.int64)

    def verify(token: int, drafts: list[int], n: int) -> list[int]:
        model.runs += 1
        rows = list(got[:n]) + drafts
        assert rows[n - 1] == token
        return [model.choice(rows[:n + i]) for i in range(len(drafts) + 1)]

    n, steps, stopped, runs = speculative_loop(first, verify, propose, max_new, stop, got)
    assert (n, steps, stopped) == want
    assert list(got[:n]) == list(ref[:n])
    assert runs <= steps and runs == model.runs


def test_good_guesses_save_runs():
    model = _Model(7)
    got = np.zeros(64, dtype=np.int64)

    def verify(token, drafts, n):
        rows = list(got[:n]) + drafts
        return [model.choice(rows[:n + i]) for i in range(len(drafts) + 1)]

    def perfect(n, limit):
        prefix = list(got[:n])
        for _ in range(min(3, limit)):
            prefix.append(model.choice(prefix))
        return prefix[n:]

    n, steps, stopped, runs = speculative_loop(1, verify, perfect, 21, frozenset(), got)
    assert (n, steps, stopped) == (21, 20, False)
    assert runs == 5                                   # 4 tokens per run: 1 + 3 confirmed


def _speculative_loop(backend, draft: NgramDraft, guesses: int):
    """Build a DecodeLoop over `backend`'s runners, with `draft`."""
    from ros2_gmskip.runtime.decode import DecodeLoop
    loop = backend.decoder_loop
    return DecodeLoop(loop.runners, loop.embed_table, loop.stop_ids, draft=draft,
                      draft_tokens=guesses, fallback=loop.fallback)


def test_fused_speculative_decoding_gives_the_greedy_ids(tiny_pruned_bundle, scene_images):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    plain = OrtBackend(tiny_pruned_bundle, threads=1, draft_tokens=0)
    bundled = OrtBackend(tiny_pruned_bundle, threads=1)
    assert not plain.decoder_loop.speculative and plain.info.draft_tokens == 0
    assert bundled.decoder_loop.speculative and bundled.info.draft_tokens == 4
    ids = plain.tokenizer.prompt_ids(DEFAULT_PROMPT)
    embeds = [plain.prompt_embeds(ids, plain.image_embeds(plain.preprocess(im))[0])
              for im in scene_images]
    want = [plain.decoder_loop.generate(e, 24) for e in embeds]
    # the model's own outputs as the table: nearly every guess is confirmed
    own = NgramDraft.build([[*w.ids, EOS] for w in want], order=6)
    for guesses in (1, 3, 5):
        for loop in (_speculative_loop(plain, own, guesses), bundled.decoder_loop):
            for e, w in zip(embeds, want):
                got = loop.generate(e, 24)
                assert got.ids.tolist() == w.ids.tolist()
                assert (got.decode_steps, got.stopped) == (w.decode_steps, w.stopped)
                assert w.decode_runs is None and got.decode_runs <= got.decode_steps
    fast = _speculative_loop(plain, own, 3)
    runs = sum(fast.generate(e, 24).decode_runs for e in embeds)
    assert runs < sum(w.decode_steps for w in want) / 2


def test_the_bundle_carries_the_draft_table_under_its_manifest(tiny_pruned_bundle, tiny_model_dir,
                                                               tmp_path, caplog):
    from ros2_gmskip.bundle_format import load_bundle
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    manifest = load_bundle(tiny_pruned_bundle).manifest
    assert DRAFT_FILE in manifest.files and manifest.draft == DRAFT_FILE
    assert (tiny_pruned_bundle / DRAFT_FILE).read_bytes() == \
        (tiny_model_dir / DRAFT_FILE).read_bytes()
    copy = Path(shutil.copytree(tiny_pruned_bundle, tmp_path / 'b'))
    (copy / DRAFT_FILE).write_text('{broken')
    with pytest.raises(BundleError, match=DRAFT_FILE):
        OrtBackend(copy, threads=1)                      # the manifest hash catches it first
    with pytest.raises(BundleError, match='draft_ngrams.json is not valid JSON'):
        OrtBackend(copy, threads=1, verify=False)
    assert OrtBackend(copy, threads=1, verify=False, draft_tokens=0).info.draft_tokens == 0
    (copy / DRAFT_FILE).unlink()                      # as exported from a model without a table
    manifest = json.loads((copy / 'manifest.json').read_text())
    del manifest['files'][DRAFT_FILE]
    with pytest.raises(BundleError, match=f'manifest does not list {DRAFT_FILE}'):
        (copy / 'manifest.json').write_text(json.dumps(manifest))
        OrtBackend(copy, threads=1)                   # the manifest still names it
    manifest['draft'] = None
    (copy / 'manifest.json').write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger='ros2_gmskip.runtime.ort_backend'):
        assert OrtBackend(copy, threads=1).info.draft_tokens == 0
    assert 'has no draft table: decoding one token per run' in caplog.text
    with pytest.raises(ValueError, match='draft_tokens'):
        OrtBackend(tiny_pruned_bundle, threads=1, draft_tokens=-1)


def test_draft_cli_writes_the_table_and_reports_tokens_per_run(tiny_model_dir, tmp_path,
                                                               capsys):
    from ros2_gmskip.cli import main
    out = tmp_path / 'table.json'
    assert main(['draft', '--model', str(tiny_model_dir), '--n', '20', '--check-n', '10',
                 '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'wrote {out}' in printed and '3 guesses per run' in printed
    draft = NgramDraft.load(out, vocab_size=1000)
    assert draft.order == 4 and draft.table
    assert main(['draft', '--model', str(tmp_path), '--n', '2']) == 1
    assert 'has no tokenizer.json' in capsys.readouterr().err
