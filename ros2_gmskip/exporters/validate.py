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
Validate a freshly exported bundle against the PyTorch model it came from.

Always runs after export (optimum-style), in this order, and reports every failure together:

1. graphs      onnx.checker (full_check), opset in 17..20, every op parseable by TensorRT 10
2. interface   input/output names, dtypes and dynamic axes as the export config declares
3. inputs      the runtime's preprocessing == the HF processor's pixel_values (<= 1e-6), and the
               runtime's prompt ids == the processor's input_ids
4. values      ONNX Runtime vs PyTorch, one line per output, within its tolerance: image_embeds;
               logits and present.* at prefill and at one decode step with past; logits for a
               batch of 2 with left padding (dynamic batch + attention_mask); output shapes
5. greedy      the ORT backend's greedy text == transformers `generate` on `n` test scenes (with
               token skipping: == the torch reference, tokenskip.reference, with the same settings)

decoder.fused.onnx (the ONNX Runtime-only graph, when the bundle has one) gets 1 without the
TensorRT lint (contrib ops: it is never given to TensorRT), its last-position logits and KV rows
at prefill and one decode step against PyTorch in 4, and its own greedy run against `generate` in 5
(with weight-quantized decode steps: at least MIN_QUANTIZED_AGREEMENT of the scenes identical).

A decoder split into segments (token skipping) is checked segment by segment in 1-2 and, run
unpruned, as a whole against the HF decoder in 4 (hidden states and the FastV attention output at
each split against `output_hidden_states` / `output_attentions`).

A plan-ladder bundle (`ladder`, exporters/ladder_export.py) has every rung's graphs checked in
1-2, its plan rung's values in 4 (against the torch model pruned to it), and in 5 rung by rung:
each rung's greedy text against the torch model pruned to that rung (its extra blocks taken out
for the check).

    report = validate_bundle(bundle_dir, model, processor, config, n_scenes=50)
    for check in report.checks: print(check.line())
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from ros2_gmskip.bundle_format import TensorSpec, VISION
from ros2_gmskip.exporters.export_config import ExportConfig
from ros2_gmskip.exporters.fused_decoder import MIN_QUANTIZED_AGREEMENT
from ros2_gmskip.exporters.trt_ops import check_opset, graph_opset
from ros2_gmskip.vlm.llama_block import last_row_attention
import torch

log = logging.getLogger(__name__)

PREPROCESS_ATOL = 1e-6
_ORT_DTYPES = {'float32': 'tensor(float)', 'int64': 'tensor(int64)', 'float16': 'tensor(float16)'}


@dataclass
class Check:
    """One validation result: printed as a ✓/✗ line."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f'{"✓" if self.ok else "✗"} {self.name}: {self.detail}'


@dataclass
class ValidationReport:
    checks: list[Check] = field(default_factory=list)
    max_abs_diff: dict[str, float] = field(default_factory=dict)    # output -> max |ort - torch|
    tolerance: float = 0.0                                           # logits atol
    identical: int = 0
    n_scenes: int = 0
    fused_identical: str | None = None                               # 'k/n', fused decoder run
    rungs: list[dict] = field(default_factory=list)                  # ladder: per rung 'k/n'

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_manifest(self) -> dict:
        return {
            'max_abs_logit_diff': self.max_abs_diff.get('logits'),
            'tolerance': self.tolerance,
            'identical_text': f'{self.identical}/{self.n_scenes}',
            'fused_identical_text': self.fused_identical,
            'outputs': {k: float(f'{v:.3g}') for k, v in self.max_abs_diff.items()},
            'passed': self.ok,
            'checks': [c.line() for c in self.checks],
        }


def count_image_tokens(processor, image: np.ndarray) -> int:
    """Count the image tokens the processor puts in a prompt (checked against the vision graph)."""
    from ros2_gmskip.vlm.prompting import build_inputs
    ids = build_inputs(processor, [image])['input_ids'].numpy()
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int((ids[0] == image_token_id).sum())


def scene_images(n: int) -> list[np.ndarray]:
    """`n` RGB uint8 test-split scenes (never seen in training or calibration)."""
    if n <= 0:
        return []
    try:
        from ros2_gmskip.scenes import load_samples
        return [s.load_image() for s in load_samples('test', n)]
    except ImportError:
        from ros2_gmskip.scenes import render_scene, split_seeds
        return [render_scene(seed)[0] for seed in split_seeds('test', n)]


def _cache_tensors(cache) -> list[torch.Tensor]:
    """[layer0 key, layer0 value, ...] of a transformers cache (v5 `layers`, v4 key_cache)."""
    if hasattr(cache, 'layers'):
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache.key_cache, cache.value_cache) for t in pair]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float('inf')
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


# --------------------------------------------------------------------------------------------------
# 1-2. graphs and interface

def check_fused_graph(path: Path) -> Check:
    """onnx.checker on the fused decoder (the com.microsoft ops are ORT's, checked by loading)."""
    import onnx
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return Check(f'{path.name} onnx.checker', True, 'full_check passed (ONNX Runtime-only '
                     'graph: not linted for TensorRT, engines build from decoder.onnx)')
    except Exception as err:  # noqa: BLE001 - onnx raises several types
        return Check(f'{path.name} onnx.checker', False, str(err).splitlines()[0])


def check_graphs(bundle_dir: Path, config: ExportConfig, lint: Callable[[Path], list[str]],
                 segments=None) -> list[Check]:
    """Check the vision graph and the portable graph of `segments` (default: config's)."""
    import onnx

    checks = []
    for name in (VISION, *[seg.portable for seg in segments or config.segments]):
        path = Path(bundle_dir) / name
        try:
            onnx.checker.check_model(str(path), full_check=True)
            checks.append(Check(f'{name} onnx.checker', True, 'full_check passed'))
        except Exception as err:  # noqa: BLE001 - onnx raises several types
            checks.append(Check(f'{name} onnx.checker', False, str(err).splitlines()[0]))
        found = graph_opset(path)
        problem = check_opset(found) or (None if found == config.opset else
                                         f'opset {found}, asked for {config.opset}')
        checks.append(Check(f'{name} opset', problem is None, problem or f'opset {found}'))
        unsupported = lint(path)
        checks.append(Check(f'{name} TensorRT ops', not unsupported,
                            f'unsupported by TensorRT 10: {", ".join(unsupported)}' if unsupported
                            else "all ops in the TensorRT 10 ONNX parser's list"))
    return checks


def check_interface(graph: str, session, inputs: list[TensorSpec],
                    outputs: list[TensorSpec]) -> list[Check]:
    """Names (in order), dtypes and axes (fixed sizes and dynamic axis names) of one session."""
    checks = []
    for kind, specs, args in (('inputs', inputs, session.get_inputs()),
                              ('outputs', outputs, session.get_outputs())):
        names = [a.name for a in args]
        want = [s.name for s in specs]
        problems = []
        if names != want:
            missing = [n for n in want if n not in names]
            extra = [n for n in names if n not in want]
            problems.append(f'names differ (missing {missing[:4]}, unexpected {extra[:4]})'
                            if missing or extra else 'names in a different order')
        else:
            for spec, arg in zip(specs, args):
                if arg.type != _ORT_DTYPES.get(spec.dtype, spec.dtype):
                    problems.append(f'{spec.name} dtype {arg.type}, expected {spec.dtype}')
                if list(arg.shape) != list(spec.shape):
                    problems.append(f'{spec.name} axes {list(arg.shape)}, expected '
                                    f'{list(spec.shape)}')
        checks.append(Check(f'{graph} {kind}', not problems, '; '.join(problems[:4]) if problems
                            else f'{len(want)} {kind}: names, dtypes, axes as declared'))
    return checks


def _check_shapes(graph: str, specs: list[TensorSpec], arrays: list[np.ndarray],
                  sizes: dict[str, int]) -> Check:
    problems = []
    for spec, arr in zip(specs, arrays):
        want = tuple(sizes.get(a, a) if isinstance(a, str) else a for a in spec.shape)
        if tuple(arr.shape) != want:
            problems.append(f'{spec.name} {tuple(arr.shape)} != {want}')
    return Check(f'{graph} output shapes', not problems,
                 '; '.join(problems[:4]) if problems else
                 ', '.join(f'{k}={v}' for k, v in sizes.items()) + ': all as declared')


# --------------------------------------------------------------------------------------------------
# 3-4. inputs and values

def _decoder_feed(embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray,
                  past: list[np.ndarray], first: int = 0,
                  input_name: str = 'inputs_embeds') -> dict[str, np.ndarray]:
    feed = {input_name: embeds.astype(np.float32), 'attention_mask': mask.astype(np.int64),
            'position_ids': positions.astype(np.int64)}
    for j in range(len(past) // 2):
        feed[f'past_key_values.{first + j}.key'] = past[2 * j]
        feed[f'past_key_values.{first + j}.value'] = past[2 * j + 1]
    return feed


def run_segments(sessions: list, config: ExportConfig, embeds: np.ndarray, mask: np.ndarray,
                 positions: np.ndarray, past: list[np.ndarray], only: list[str] | None = None
                 ) -> tuple[dict[str, np.ndarray], list[Check]]:
    """
    Run every decoder segment in order, no token skipping -> {name: array}.

    The names are `logits`, `present.{i}.*` for all blocks and, per split at block s,
    `hidden_states@s` and `last_token_attention@s`; plus one output-shape check per segment.
    `only=['logits']`: just the logits.
    """
    out: dict[str, np.ndarray] = {}
    checks = []
    h = embeds
    B, T = positions.shape[-2:]                          # (B, T), M-RoPE's (3, B, T)
    sizes = {'batch': B, 'seq': T, 'total': mask.shape[1]}
    for session, seg in zip(sessions, config.segments):
        outputs = config.graphs[seg.name].outputs
        names = [o.name for o in outputs]
        feed = _decoder_feed(h, mask, positions, past[2 * seg.first:2 * seg.stop], seg.first,
                             seg.input_name)
        values = session.run(None, feed)
        checks.append(_check_shapes(f'{seg.name} outputs', list(outputs), values, sizes))
        for name, value in zip(names, values):
            out[name if seg.last or name.startswith('present.') else f'{name}@{seg.stop}'] = value
        h = values[0]
    if only is not None:
        out = {k: v for k, v in out.items() if k in only}
    return out, checks


def _reference(out, first_layer: int = 0) -> dict[str, np.ndarray]:
    """Return the same keys from a transformers forward (output_hidden_states / _attentions)."""
    ref = {'logits': out.logits.numpy()}
    for i, t in enumerate(_cache_tensors(out.past_key_values)):
        ref[f'present.{first_layer + i // 2}.{"key" if i % 2 == 0 else "value"}'] = t.numpy()
    for s, h in enumerate(out.hidden_states or ()):
        ref[f'hidden_states@{s}'] = h.numpy()            # after block s-1 (s < L: not normed)
    for s, a in enumerate(out.attentions or (), start=1):
        ref[f'last_token_attention@{s}'] = last_row_attention(a).numpy()
    return ref


def _merge_diffs(diffs: dict[str, float], ours: dict[str, np.ndarray],
                 ref: dict[str, np.ndarray]) -> None:
    """Per output NAME (the part before '@'), the max |ours - ref| over everything compared."""
    for key, value in ours.items():
        name = key.split('@')[0]
        diffs[name] = max(diffs.get(name, 0.0), _max_diff(value, ref[key]))


def _fused_diffs(runners, embeds: np.ndarray, step_embeds: np.ndarray, ref, step_ref,
                 positions: np.ndarray, step_positions: np.ndarray) -> dict[str, float]:
    """
    Check the fused runners (ort_runners.FusedRunner, one per segment) against torch.

    They run unpruned: the prompt at `positions` (T,) or (3, T), then one decode step at
    `step_positions` (1,) or (3, 1). Checked are the last position's logits
    and the KV rows their in-place buffers hold after the step.
    """
    T = embeds.shape[1]
    h = np.ascontiguousarray(embeds, dtype=np.float32)
    for runner in runners:
        h = runner.prefill(h, positions).out
    prefill = h[0, -1]
    h = np.ascontiguousarray(step_embeds, dtype=np.float32)
    for runner in runners:
        h = runner.run(h, step_positions, T)
    logits = max(_max_diff(prefill, ref.logits[0, -1].numpy()),
                 _max_diff(h[0, -1], step_ref.logits[0, -1].numpy()))
    buffers = [array for runner in runners for array in runner.arrays]
    kv = max(_max_diff(array[:, :, :T + 1], want.numpy())
             for array, want in zip(buffers, _cache_tensors(step_ref.past_key_values)))
    return {'logits': logits, 'present': kv}


@torch.no_grad()
def check_values(backend, model, processor, config: ExportConfig, image: np.ndarray, prompt: str,
                 report: ValidationReport, fused=None, portable=None) -> list[Check]:
    """
    Check preprocessing, prompt ids, and ORT vs PyTorch values for every output.

    A segmented decoder is run segment after segment, unpruned, against the whole HF decoder;
    with `fused` (the fused runners) the fused graphs' logits and KV rows are checked too.
    `portable`: the portable runners of `config`'s segments (default: the backend's).
    """
    from ros2_gmskip.vlm.families import (decode_positions, family_spec, image_features,
                                          merged_image_tokens, position_ids)
    from ros2_gmskip.vlm.prompting import build_inputs

    checks = []
    inputs = build_inputs(processor, [image], prompt)
    positions, delta = position_ids(model, inputs)                   # (1, T) or (3, 1, T)
    pixel_values = inputs['pixel_values']     # Idefics3: (1, tiles, 3, H, W); Qwen: patch rows
    ids = inputs['input_ids']                                             # (1, T)
    T = ids.shape[1]
    sessions = [runner.session for runner in (portable or backend.portable)]
    split = len(config.segments) > 1
    extras = {'output_hidden_states': split,
              'output_attentions': config.rank_at is not None}
    offset = family_spec(model).position_offset          # PaliGemma counts positions from 1:
    graph_positions = positions - offset                 # its graphs add the 1 themselves
    prefix = {} if inputs.get('token_type_ids') is None else {     # PaliGemma's prefix-LM
        'token_type_ids': inputs['token_type_ids']}

    # 3. the runtime's own inputs
    mine = backend.preprocess(image)
    pixels = pixel_values.numpy()                      # (1 or tiles, 3, H, W), or patch rows
    if pixels.ndim > 4:
        pixels = pixels.reshape(-1, *pixels.shape[-3:])
    diff = _max_diff(mine, pixels)
    checks.append(Check('preprocess', diff <= PREPROCESS_ATOL,
                        f'max |runtime - HF processor| {diff:.1e} '
                        f'(tolerance {PREPROCESS_ATOL:.0e})'))
    runtime_ids = backend.tokenizer.prompt_ids(prompt)
    same = np.array_equal(runtime_ids, ids[0].numpy())
    checks.append(Check('prompt ids', same, f"{T} ids identical to the processor's" if same else
                        f'runtime {runtime_ids.tolist()[:8]}.. != processor '
                        f'{ids[0].tolist()[:8]}..'))
    mine = backend.prompt_positions(runtime_ids)
    mine = np.arange(len(runtime_ids)) if mine is None else mine
    want = graph_positions.numpy()[..., 0, :]
    same = np.array_equal(mine, want)
    checks.append(Check('positions', same, f"{want.shape} identical to the model's" if same
                        else f'runtime {mine.tolist()} != model {want.tolist()}'))

    # 4a. vision
    ref_feats = merged_image_tokens(image_features(model, inputs))[None]  # (1, n, C)
    ort_feats = backend.image_embeds(pixels)                      # (1 or tiles, n, C)
    vision = config.graphs['vision']
    shape_checks = [_check_shapes('vision', list(vision.outputs), [ort_feats],
                                  {'batch': pixels.shape[0]})]
    ort_feats = ort_feats.reshape(1, -1, ort_feats.shape[-1])
    diffs = {'image_embeds': _max_diff(ort_feats, ref_feats.numpy())}

    # 4b. decoder prefill, from the same merged embeddings as the torch model
    embeds = model.get_input_embeddings()(ids)
    mask = ids == model.config.image_token_id
    embeds = embeds.masked_scatter(mask[..., None], ref_feats.to(embeds.dtype))
    ref = model(inputs_embeds=embeds, attention_mask=inputs['attention_mask'],
                position_ids=positions, use_cache=True, **extras, **prefix)
    L, kv, d = config.decoder.num_layers, config.decoder.num_kv_heads, config.decoder.head_dim
    empty = [np.zeros((1, kv, 0, d), np.float32)] * (2 * L)
    ort, shapes = run_segments(sessions, config, embeds.numpy(), np.ones((1, T)),
                               graph_positions.numpy(), empty)
    _merge_diffs(diffs, ort, _reference(ref))
    shape_checks += [Check(f'decoder prefill: {c.name}', c.ok, c.detail) for c in shapes]

    # 4c. one decode step with past
    token = int(ref.logits[0, -1].argmax())
    step_positions = decode_positions(model, torch.tensor([[T]]), delta)  # (1, 1) / (3, 1, 1)
    step_ref = model(input_ids=torch.tensor([[token]]), attention_mask=torch.ones(1, T + 1,
                     dtype=torch.int64), past_key_values=ref.past_key_values,
                     position_ids=step_positions, use_cache=True, **extras)
    step_embeds = backend.embed_table[token][None, None]
    past = [ort[f'present.{i}.{k}'] for i in range(L) for k in ('key', 'value')]
    step, shapes = run_segments(sessions, config, step_embeds, np.ones((1, T + 1)),
                                (step_positions - offset).numpy(), past)
    _merge_diffs(diffs, step, _reference(step_ref))
    shape_checks += [Check(f'decoder step: {c.name}', c.ok, c.detail) for c in shapes]
    fused_checks = []
    if fused is not None:
        fd = _fused_diffs(fused, embeds.numpy(), step_embeds, ref, step_ref,
                          graph_positions.numpy()[..., 0, :],
                          (step_positions - offset).numpy()[..., 0, :])
        for name, tol in (('logits', config.logits_atol), ('present', config.kv_atol)):
            fused_checks.append(Check(f'fused decoder {name}', fd[name] <= tol,
                                      f'max |onnx - torch| {fd[name]:.1e} (tolerance {tol:.0e}; '
                                      'prefill and one decode step)'))

    # 4d. batch of 2, the second row left-padded by 3: dynamic batch + attention_mask
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, embeds.shape[2]), embeds[:, :T - pad]], dim=1)
    emb2 = torch.cat([embeds, padded])                                    # (2, T, C)
    mask2 = torch.ones(2, T, dtype=torch.int64)
    mask2[1, :pad] = 0
    shifted = torch.cat([torch.zeros_like(positions[..., :pad]), positions[..., :T - pad]], -1)
    pos2 = torch.cat([positions, shifted], dim=-2)           # the padded row's real tokens
    prefix2 = {k: torch.zeros_like(mask2) for k in prefix}           # the whole prompt: prefix
    ref2 = model(inputs_embeds=emb2, attention_mask=mask2, position_ids=pos2,
                 **prefix2).logits.numpy()
    pos2 = (pos2 - offset).clamp(min=0)
    empty2 = [np.zeros((2, kv, 0, d), np.float32)] * (2 * L)
    ort2 = run_segments(sessions, config, emb2.numpy(), mask2.numpy(), pos2.numpy(), empty2,
                        only=['logits'])[0]['logits']
    padded = _max_diff(ort2[0], ref2[0])
    padded = max(padded, _max_diff(ort2[1, pad:], ref2[1, pad:]))         # real tokens only
    tol = config.logits_atol
    diffs['logits'] = max(diffs['logits'], padded)

    # one line per output name (prefill and step together; all segments together)
    specs = {spec.name: spec for graph in config.graphs.values() for spec in graph.outputs}
    for spec in specs.values():
        value = diffs[spec.name]
        detail = f'max |onnx - torch| {value:.1e} (tolerance {spec.atol:.0e})'
        if spec.name == 'logits':
            detail += f'; batch 2 with left padding {padded:.1e}'
        checks.append(Check(spec.name, value <= spec.atol, detail))
    checks += shape_checks + fused_checks
    report.max_abs_diff.update(diffs)
    report.tolerance = tol
    return checks


# --------------------------------------------------------------------------------------------------
# 5. greedy text

def check_greedy(backend, model, processor, images: list[np.ndarray], prompt: str,
                 max_new_tokens: int, record: Callable[[int, int], None] | None,
                 stage: Callable[[str], None], name: str = 'greedy text',
                 references: dict | None = None, min_agreement: float = 1.0,
                 rung: int | None = None) -> Check:
    """
    Compare `backend`'s greedy texts with the torch reference for its token settings.

    `record(identical, n)` gets the counts; `references` caches the reference texts between
    calls; the check passes when at least `min_agreement` of the scenes are identical (1.0: all).
    `rung`: run that rung of a ladder bundle (`model` is then pruned to it by the caller).
    """
    from ros2_gmskip.vlm.generation import generate_texts

    if not images:
        return Check(name, True, 'skipped (--validate-n 0)')
    token_skip = getattr(backend, 'token_skip', None)
    references = {} if references is None else references
    key = None if token_skip is None or token_skip.is_off else token_skip.describe()
    stage(f'greedy decoding {len(images)} test scenes with the ORT backend'
          + ('' if key in references else ' and the torch reference'))
    if key in references:
        reference = references[key]
    elif key is None:
        reference = references[key] = generate_texts(model, processor, images, prompt,
                                                     max_new_tokens=max_new_tokens, batch_size=16)
    else:
        from ros2_gmskip.tokenskip.reference import token_skip_texts
        reference = references[key] = token_skip_texts(
            model, processor, images, token_skip, prompt, max_new_tokens=max_new_tokens,
            batch_size=16)
    mismatches = []
    for i, (image, want) in enumerate(zip(images, reference)):
        got = (backend.describe(image, prompt, max_new_tokens) if rung is None else
               backend.describe(image, prompt, max_new_tokens, rung=rung)).text
        if got != want:
            mismatches.append((i, got, want))
    n = len(images)
    if record is not None:
        record(n - len(mismatches), n)
    against = 'transformers generate' if key is None else f'the torch reference with {key}'
    detail = f'{n - len(mismatches)}/{n} test scenes identical to {against}'
    if min_agreement != 1.0:
        detail += f' (quantized weights: at least {min_agreement:.0%} needed)'
    if mismatches:
        i, got, want = mismatches[0]
        detail += f'; first difference, scene {i}: onnx {got!r} vs torch {want!r}'
    return Check(name, n - len(mismatches) >= min_agreement * n, detail)


def validate_bundle(bundle_dir: Path, model, processor, config: ExportConfig, n_scenes: int = 50,
                    prompt: str = 'describe the scene.', max_new_tokens: int = 48,
                    threads: int | None = None, on_check: Callable[[Check], None] | None = None,
                    stage: Callable[[str], None] | None = None,
                    lint: Callable[[Path], list[str]] | None = None,
                    ladder=None) -> ValidationReport:
    """
    Run every check on the bundle in `bundle_dir`; the report holds all results (no raising).

    `ladder` (ladder_export: the LadderLayout and what export_rungs wrote): a ladder bundle;
    `config` is then its plan rung's.
    """
    from ros2_gmskip.exporters.trt_ops import lint_graph
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    from ros2_gmskip.vlm.blocks import temporarily_removed

    stage = stage or (lambda text: log.info('%s', text))
    report = ValidationReport()

    def add(checks: list[Check]) -> None:
        for c in checks:
            report.checks.append(c)
            if on_check:
                on_check(c)

    layout, rungs = ladder or (None, None)
    add(check_graphs(bundle_dir, config, lint or lint_graph, rungs and rungs.segments))
    fused = exact = None
    try:
        backend = OrtBackend(Path(bundle_dir), threads=threads, graph='portable')
        manifest = backend.bundle.manifest
        if manifest.fused is not None:
            add([check_fused_graph(Path(bundle_dir) / seg.fused) for seg in manifest.segments])
            fused = OrtBackend(Path(bundle_dir), threads=threads, graph='fused')
            exact = fused if manifest.fused.step_weights == 'fp32' else OrtBackend(
                Path(bundle_dir), threads=threads, graph='fused', quantized=False)
    except Exception as err:  # noqa: BLE001 - report it as a failed check, with the others
        add([Check('onnxruntime load', False, f'{type(err).__name__}: {err}')])
        return report
    for name, session in [('vision', backend.vision),          # as the manifest declares them
                          *[(r.segment.name, r.session) for r in backend.portable]]:
        graph = manifest.graphs[name]
        add(check_interface(name, session, list(graph.inputs), list(graph.outputs)))
    images = scene_images(max(n_scenes, 1))
    if manifest.mrope is not None:           # Qwen: the scenes as the exported camera sees them
        from ros2_gmskip.exporters.qwen_vision import camera_frames
        images = camera_frames(images, manifest.mrope.camera_size)
    tiles = manifest.preprocess.tiles
    if tiles is not None:                # the frames of the camera the tile grid was fixed for
        from ros2_gmskip.runtime.geometry import pil_resize
        images = [pil_resize(image, *tiles.camera, 'bilinear') for image in images]
    portable, exact_runners = backend.portable, exact and exact.runners
    removed: list[int] = []
    if ladder is not None:                       # the plan rung's graphs, the model pruned to it
        plan = backend.ladder.plan_rung
        own = rungs.rung_segments[plan]
        portable = [portable[i] for i in own]
        exact_runners = exact_runners and [exact_runners[i] for i in own]
        removed = layout.bundle_blocks(layout.rungs[plan])
    with temporarily_removed(model, removed):
        add(check_values(backend, model, processor, config, images[0], prompt, report,
                         fused=exact_runners, portable=portable))
    references: dict = {}

    def record(identical: int, n: int) -> None:
        report.identical, report.n_scenes = identical, n

    def record_fused(identical: int, n: int) -> None:
        report.fused_identical = f'{identical}/{n}'

    if ladder is not None:
        add(check_rungs(backend, fused, model, processor, images[:n_scenes], prompt,
                        max_new_tokens, layout, report, stage))
        return report
    add([check_greedy(backend, model, processor, images[:n_scenes], prompt, max_new_tokens,
                      record, stage, references=references)])
    if fused is not None:
        quantized = manifest.fused.step_weights != 'fp32'
        add([check_greedy(fused, model, processor, images[:n_scenes], prompt, max_new_tokens,
                          record_fused, stage, references=references,
                          name='fused decoder greedy text' + (f' ({fused.info.decoder_graph})'
                                                              if quantized else ''),
                          min_agreement=MIN_QUANTIZED_AGREEMENT if quantized else 1.0)])
    return report


def check_rungs(backend, fused, model, processor, images: list[np.ndarray], prompt: str,
                max_new_tokens: int, layout, report: ValidationReport,
                stage: Callable[[str], None]) -> list[Check]:
    """
    Check every rung's greedy text (portable and fused runners) against its pruned torch model.

    `model` holds the deepest rung's blocks; each rung's extra blocks are taken out for its
    reference (vlm.blocks.temporarily_removed). The plan's rung fills the report's counts.
    """
    from ros2_gmskip.vlm.blocks import temporarily_removed

    checks = []
    ladder = backend.ladder
    quantized = fused is not None and fused.bundle.manifest.fused.step_weights != 'fp32'
    for i, rung in enumerate(ladder.rungs):
        counts: dict[str, str | None] = {'identical_text': None, 'fused_identical_text': None}

        def record(identical: int, n: int, key: str = 'identical_text') -> None:
            counts[key] = f'{identical}/{n}'

        blocks = list(rung.removed_blocks)
        with temporarily_removed(model, layout.bundle_blocks(blocks)):
            references: dict = {}
            checks.append(check_greedy(backend, model, processor, images, prompt,
                                       max_new_tokens, record, stage, references=references,
                                       name=f'rung {i} greedy text ({len(blocks)} blocks '
                                            'removed)', rung=i))
            if fused is not None:
                checks.append(check_greedy(
                    fused, model, processor, images, prompt, max_new_tokens,
                    lambda k, n: record(k, n, 'fused_identical_text'), stage,
                    references=references, name=f'rung {i} fused decoder greedy text',
                    min_agreement=MIN_QUANTIZED_AGREEMENT if quantized else 1.0, rung=i))
        report.rungs.append(counts)
        if i == ladder.plan_rung and counts['identical_text']:
            report.identical, report.n_scenes = map(int, counts['identical_text'].split('/'))
            report.fused_identical = counts['fused_identical_text']
    return checks
