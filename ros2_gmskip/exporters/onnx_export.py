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
Export a (GM-Skip pruned) LLaVA-style VLM to an ONNX bundle: vision + decoder graphs + manifest.

    bundle = export_bundle(Path('models/gmskip-llava-scenes'), Path('bundles/pruned'),
                           plan=Path('plans/reverse.json'), validate_n=50)

Two graphs (and an optional third), split where the runtime wants to split:

- vision.onnx    pixel_values (B, 3, H, W) -> image_embeds (B, n, C): vision tower, feature layer
                 selection, projector (what `LlavaModel.get_image_features` computes).
                 Qwen2-VL / Qwen2.5-VL: the patch rows (N, C*tp*p*p) of the grid fixed for the
                 camera -> (1, n, C) (exporters/qwen_vision.py); their decoder graphs take
                 M-RoPE position_ids (3, B, T) (vlm/mrope.py).
- decoder.onnx   inputs_embeds (B, T, C), attention_mask (B, P+T), position_ids (B, T),
                 past_key_values.{i}.key/value (B, kv, P, d) for each remaining block i
                 -> logits (B, T, V), present.{i}.key/value (B, kv, P+T, d).

Plus, for Llama-style decoders, decoder.fused.onnx: the same decoder for ONNX Runtime only, built
from the weights with ORT's fused ops and an in-place KV cache (exporters/fused_decoder.py says
why; a token-skipping bundle gets one such graph per segment, with explicit positions); TensorRT
always builds from decoder.onnx.

A plan ladder (`ladder=`, export --ladder) exports every rung's decoder as its own plan bundle
would have it, under rung names, its weights stored once in weights.bin
(exporters/ladder_export.py).

The token embedding lookup is not a graph: the table is saved as embed_tokens.npy and the runtime
indexes it with numpy (a gather is all it is; a graph would cost a session run per token).

Why a hand-written decoder wrapper instead of exporting the HF model
--------------------------------------------------------------------
`DecoderForExport` runs the decoder blocks functionally with explicit KV tensors, through the
block every functional path shares (`vlm.llama_block.block_forward`): the ORIGINAL modules for the
parts without state (RMSNorm, the o and MLP projections, final norm, lm_head) and the attention
written out (RoPE from the model's own inverse frequencies, concatenation with the past, repeat_kv
for GQA, the causal + padding mask from `attention_mask`).
Tracing the HF forward instead would trace transformers' Cache objects, mask factories and
attention-kernel dispatch: version-dependent graphs with data-dependent branches baked in, and
KV inputs that are not plain named tensors. The wrapper gives a clean graph of basic ONNX ops
(MatMul, Softmax, Where, Concat, ... all parsed by TensorRT), one input/output per KV tensor, and
works unchanged for a pruned model: it simply iterates over the blocks that remain. Its numerics
are checked against the HF model on every export (validate.py), so it cannot silently drift.

Token skipping (FastV, visual KV removal): split graphs, not pruning inside the graph
-------------------------------------------------------------------------------------
With FastV K (or KV removal starting at layer s > 0) the decoder is exported as consecutive
segments: decoder.onnx = blocks [0, K) -> hidden_states + last_token_attention (B, S), and
decoder.1.onnx = blocks [K, L) -> logits; each segment has its own KV inputs, so each keeps its own
cache length. The runtime ranks the image tokens by `last_token_attention` and gathers the kept
rows of `hidden_states` in numpy (64 scores, a (T, C) gather: microseconds), then runs the next
segment on fewer tokens. Why not prune inside one graph: TopK with a data-dependent K, a
sort to restore token order, and a gather whose output length differs between prefill and decode
would have to hold for every call, and the layers after K need a second attention mask of another
length in decode; TensorRT wants such shapes fixed per optimisation profile. Split graphs keep
every graph a plain decoder (same ops, same profiles, same validation) and cost one extra session
run per generated token. KV removal needs no graph change at all: after the prefill the runtime
gathers the kept slots of the `present.*` tensors and feeds the smaller cache back.

The TorchScript exporter (`dynamo=False`) is used: for a fixed-structure module like this it is
fast, deterministic and gives plain opset-17 graphs with named dynamic axes; graphs below 2 GB are
written as one self-contained file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import datetime as dt
import json
import logging
from pathlib import Path
import shutil
import time
from typing import Callable
import warnings

import numpy as np
from ros2_gmskip.bundle_format import (BundleRung, DRAFT, EMBED, FUSED, fused_file,
                                       fused_prefill_file, fused_step_file, FusedDecoder,
                                       LadderRecord, MANIFEST, Manifest, PlanRecord, Segment,
                                       sha256_file, SourceModel, TOKENIZER, VISION, WEIGHTS,
                                       WEIGHTS_FILE, write_manifest)
from ros2_gmskip.errors import BundleError, ModelLoadError
from ros2_gmskip.exporters import manifest as mf
from ros2_gmskip.exporters.export_config import (
    attention_windows,
    DEFAULT_OPSET,
    export_config_for,
    ExportConfig,
    family_of_config,
    MROPE_FAMILIES,
)
from ros2_gmskip.exporters.fused_decoder import (
    build_fused_graph,
    fused_unsupported,
    OPSET as FUSED_OPSET,
    quantize_prefill_graph,
    quantize_settings,
    quantize_step_graph,
)
from ros2_gmskip.folders import check_writable, written_in_place
from ros2_gmskip.gmskip.plan import plan_token_skip, weights_sha256
from ros2_gmskip.tokenskip.settings import TokenSkip
from ros2_gmskip.vlm.families import family_spec, language_model
from ros2_gmskip.vlm.llama_block import (block_forward, FusedProjections, hidden_keys,
                                         last_row_attention, rope, rope_inv_freq,
                                         unsupported_block)
from ros2_gmskip.vlm.mrope import mrope, mrope_section
import torch
from torch import nn

log = logging.getLogger(__name__)

# Files copied from the model folder when present (tokenizer.json is required).
MODEL_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
               'processor_config.json', 'preprocessor_config.json', 'chat_template.jinja',
               'chat_template.json', 'config.json', 'generation_config.json',
               DRAFT)         # the n-gram draft table (ros2-gmskip draft), where made
TWO_GB = 2 ** 31


# --------------------------------------------------------------------------------------------------
# Export wrappers

class VisionForExport(nn.Module):
    """pixel_values -> image_embeds: vision tower, feature-layer selection, projector."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        llava = model.model
        self.vision_tower = llava.vision_tower
        self.projector = llava.multi_modal_projector
        self.feature_layer = model.config.vision_feature_layer           # int or list of ints
        self.select_strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states                                       # (L+1) x (B, N, Cv)
        layers = self.feature_layer
        if isinstance(layers, int):
            layers = [layers]
        feats = [hidden[i][:, 1:] if self.select_strategy == 'default' else hidden[i]
                 for i in layers]
        feats = feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)
        return self.projector(feats)                                     # (B, n, C)


class DecoderForExport(nn.Module):
    """
    The text decoder (or one segment of it) with explicit KV tensors, for tracing.

    forward(inputs_embeds, attention_mask, position_ids, *past) -> (logits, *present), with past /
    present ordered (layer 0 key, layer 0 value, layer 1 key, ...). Every block is
    `vlm.llama_block.block_forward` with `FusedProjections` (one MatMul for q|k|v, one for the
    MLP's gate|up: the same values in about 40 % fewer graph nodes; the fused weights are copies,
    so export holds the projection weights twice).

    A segment (blocks [first, stop), for token skipping) that is not the last returns the hidden
    states instead of logits, and with `ranks` also the head-averaged attention the last query
    pays every key in its last block, (B, S): FastV's ranking signal.
    """

    def __init__(self, model: nn.Module, first: int = 0, stop: int | None = None,
                 ranks: bool = False) -> None:
        super().__init__()
        text = language_model(model)
        stop = len(text.layers) if stop is None else stop
        self.first, self.last, self.ranks = first, stop == len(text.layers), ranks
        self.layers = text.layers[first:stop]            # a segment: blocks [first, stop)
        self.norm = text.norm
        self.lm_head = model.lm_head
        inv_freq, self.rope_scaling = rope_inv_freq(text.rotary_emb)
        self.register_buffer('inv_freq', inv_freq.clone(), persistent=False)
        self.mrope_section = mrope_section(text.rotary_emb)     # Qwen: positions (3, B, T)
        self.windows = attention_windows(text.config, len(text.layers))[first:stop]
        family = family_spec(model)                 # PaliGemma: positions from 1, prefix-LM
        self.offset, self.prefix_lm = family.position_offset, family.name == 'paligemma'
        for i, layer in enumerate(self.layers):
            reason = unsupported_block(layer)
            if reason:
                raise ModelLoadError(f'decoder block {first + i} has {reason} that the export '
                                     'wrapper does not implement yet')
        self.fused = nn.ModuleList(FusedProjections(layer) for layer in self.layers)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, *past: torch.Tensor):
        T = inputs_embeds.shape[1]
        if self.mrope_section is None:
            cos, sin = rope(self.inv_freq, self.rope_scaling, position_ids + self.offset)
        else:
            cos, sin = mrope(self.inv_freq, self.rope_scaling, position_ids, self.mrope_section)
        hidden = {w: hidden_keys(attention_mask, T, w, self.prefix_lm) for w in set(self.windows)}
        h = inputs_embeds
        presents = []
        for i, layer in enumerate(self.layers):
            h, kv, probs = block_forward(layer, h, cos, sin, (past[2 * i], past[2 * i + 1]),
                                         hidden[self.windows[i]], self.fused[i])
            presents += kv
        if not self.last:                                   # a segment before a split
            extra = [last_row_attention(probs)] if self.ranks else []    # (B, S) for FastV
            return (h, *extra, *presents)
        logits = self.lm_head(self.norm(h))                                 # (B, T, V)
        return (logits, *presents)


# --------------------------------------------------------------------------------------------------
# Export

@dataclass
class ExportResult:
    """What `export_bundle` produced."""

    path: Path
    manifest: Manifest
    checks: list = field(default_factory=list)          # validate.Check, in the order run
    seconds: dict[str, float] = field(default_factory=dict)


def _export_fused(model, folder: Path, length: int, weights: str, segments: list[Segment],
                  token_skip: bool, stage) -> tuple[list[Segment], FusedDecoder]:
    """
    Write every segment's fused graph and, with `weights` int4 / int8, its quantized copies.

    A plain bundle's one fused graph rotates at the cache length; with `token_skip` (token
    skipping, or M-RoPE) each segment gets an explicit-position graph (fused_decoder.py says
    why). The quantized copies: decode
    steps with MatMulNBits, the prefill with dynamic int8. Return the segments naming their
    files, and the manifest's `fused` record.
    """
    rotation = 'explicit' if token_skip else 'cache'
    what = ('ONNX Runtime contrib ops' if not token_skip else
            f'{len(segments)} segment(s) with explicit positions')
    stage(f'exporting {FUSED} ({what}, KV buffers of {length} positions)')
    nodes, ops, out = 0, set(), []
    for i, seg in enumerate(segments):
        n, found = build_fused_graph(model, folder / fused_file(i), length, seg, rotation)
        nodes, ops = nodes + n, ops | set(found)
        out.append(replace(seg, fused=fused_file(i)))
    matmuls = 0
    if weights != 'fp32':
        stage(f'quantizing the fused decoder: decode steps to {weights} (MatMulNBits), prefill '
              'to dynamic int8 (MatMulInteger)')
        for i, seg in enumerate(out):
            source = folder / seg.fused
            if token_skip:   # steps need no RotaryEmbedding: GroupQueryAttention rotates one row
                source = folder / seg.fused.replace('.onnx', '.step.onnx')
                build_fused_graph(model, source, length, seg, 'step')
            matmuls += quantize_step_graph(source, folder / fused_step_file(i, weights), weights)
            if token_skip:
                source.unlink()
            quantize_prefill_graph(folder / seg.fused, folder / fused_prefill_file(i))
            out[i] = replace(seg, fused_step=fused_step_file(i, weights),
                             fused_prefill=fused_prefill_file(i))
    attn = language_model(model).layers[0].self_attn
    record = FusedDecoder(
        max_length=int(length), positions='explicit' if token_skip else 'cache',
        attention_scale=float(attn.scaling), step_weights=weights,
        prefill_weights='fp32' if weights == 'fp32' else 'int8',
        quantization=None if weights == 'fp32' else quantize_settings(weights, matmuls),
        opset=FUSED_OPSET, nodes=nodes, ops=tuple(sorted(ops)))
    return out, record


def _export_decoder(model, folder: Path, config: ExportConfig, removed: str, *, fused: bool,
                    fused_weights: str, fused_max_length: int | None, explicit: bool,
                    stage) -> tuple[list[Segment], FusedDecoder | None]:
    """
    Write the decoder's graphs for `config` into `folder`: portable, and (`fused`) fused.

    Return the segments naming their files, and the fused record (None: no fused graph, with a
    log line saying why). `explicit`: explicit-position fused graphs (token skipping, M-RoPE);
    `removed` describes the pruning in the stage lines.
    """
    num_layers = config.decoder.num_layers
    for seg in config.segments:
        part = '' if len(config.segments) == 1 else f'blocks {seg.first}..{seg.stop - 1} of '
        stage(f'exporting {seg.portable} ({part}{num_layers} blocks{removed})')
        graph = config.graphs[seg.name]
        _export_graph(DecoderForExport(model, seg.first, seg.stop, seg.ranks),
                      _dummy_decoder_inputs(config, seg), folder / seg.portable, graph.inputs,
                      graph.outputs, config.opset)
    if not fused:
        return list(config.segments), None
    reason = fused_unsupported(model)
    if reason and fused_weights != 'fp32':
        raise BundleError(f'--fused-weights {fused_weights} needs the fused decoder, and this '
                          f'model gets none ({reason}): export without it')
    if reason:
        log.warning('no fused ONNX Runtime decoder for this model (%s): the runtime uses '
                    'decoder.onnx', reason)
        return list(config.segments), None
    text_cfg = model.config.get_text_config(decoder=True)
    length = fused_max_length or min(
        int(getattr(text_cfg, 'max_position_embeddings', 0) or 2048), 2048)
    return _export_fused(model, folder, length, fused_weights, list(config.segments), explicit,
                         stage)


def resolve_plan(plan: Path | None, model_dir: Path, removed_blocks: list[int] | None,
                 model: nn.Module | None = None) -> tuple[list[int], str, PlanRecord | None]:
    """
    Return (blocks to remove, their stack, the manifest's `plan`) from a plan file or a list.

    `load_plan` refuses a plan made for other weights (PlanError naming both hashes), and
    `check_plan_fits` one that disagrees with the loaded `model` (family, block count, tokens).
    """
    if plan is not None:
        from ros2_gmskip.gmskip.plan import check_plan_fits, load_plan, plan_id
        loaded = load_plan(Path(plan), Path(model_dir))
        if model is not None:
            check_plan_fits(loaded, plan, model)
        blocks = sorted(int(b) for b in loaded.removed_blocks)
        stack = getattr(loaded, 'stack', 'decoder')
        return blocks, stack, PlanRecord(removed_blocks=tuple(blocks), stack=stack,
                                         plan_id=plan_id(loaded), path=str(Path(plan).resolve()),
                                         sha256=sha256_file(Path(plan)))
    if removed_blocks:
        blocks = sorted(int(b) for b in removed_blocks)
        return blocks, 'decoder', PlanRecord(removed_blocks=tuple(blocks))
    return [], 'decoder', None


def vision_module(model: nn.Module, config: ExportConfig, qwen_grid=None) -> nn.Module:
    """Return the family's vision export wrapper (idefics3_vision, paligemma, qwen_vision)."""
    if qwen_grid is not None:                                # Qwen: the grid fixed at export
        from ros2_gmskip.exporters.qwen_vision import QwenVisionForExport
        return QwenVisionForExport(model, qwen_grid.mrope.grid_thw)
    if config.family == 'idefics3':
        from ros2_gmskip.exporters.idefics3_vision import Idefics3VisionForExport
        return Idefics3VisionForExport(model, config.image_size)
    if config.family == 'paligemma':
        from ros2_gmskip.exporters.paligemma import PaliGemmaVisionForExport
        return PaliGemmaVisionForExport(model)
    return VisionForExport(model)


def embedding_table(model: nn.Module) -> np.ndarray:
    """Return the token embeddings (V, C) as the model looks them up (Gemma's scale included)."""
    embed = model.get_input_embeddings()
    table = embed.weight.detach().float()
    scale = getattr(embed, 'embed_scale', None)          # GemmaTextScaledWordEmbedding
    if scale is not None:
        table = table * scale.to(embed.weight.dtype)
    return np.ascontiguousarray(table.numpy())


def _dummy_vision_inputs(config: ExportConfig) -> tuple[torch.Tensor]:
    if config.pixel_shape is not None:                            # Qwen's patch rows
        return (torch.randn(*config.pixel_shape),)
    H, W = config.image_size
    return (torch.randn(2, 3, H, W),)


def _dummy_decoder_inputs(config: ExportConfig, segment=None) -> tuple[torch.Tensor, ...]:
    """Batch 2, 3 new tokens after 4 cached ones (non-trivial sizes: no axis gets specialised)."""
    d = config.decoder
    segment = segment or config.segments[0]
    B, T, P = 2, 3, 4
    mask = torch.ones(B, P + T, dtype=torch.int64)
    mask[1, 0] = 0
    positions = torch.arange(P, P + T, dtype=torch.int64)[None].expand(B, T).contiguous()
    if config.position_rows > 1:                                  # M-RoPE: (3, B, T)
        positions = positions[None].expand(config.position_rows, B, T).contiguous()
    past = [torch.randn(B, d.num_kv_heads, P, d.head_dim)
            for _ in range(2 * (segment.stop - segment.first))]
    return (torch.randn(B, T, d.hidden_size), mask, positions, *past)


def _export_graph(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list,
                  opset: int) -> None:
    dynamic_axes = {s.name: s.dynamic_axes for s in [*inputs, *outputs] if s.dynamic_axes}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')     # TracerWarnings on shape arithmetic; the deprecation
        torch.onnx.export(module, args, str(path), input_names=[s.name for s in inputs],
                          output_names=[s.name for s in outputs], dynamic_axes=dynamic_axes,
                          opset_version=opset, do_constant_folding=True, dynamo=False)


def _prepare_out(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a bundle."""
    if out.exists():
        if not out.is_dir():
            raise BundleError(f'--out {str(out)!r} is a file: pass a folder for the bundle')
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise BundleError(f'--out {str(out)!r} is a non-empty folder that is not a bundle: '
                              'pass a new or empty folder (an existing bundle is replaced)')


def _load_ladder(path: Path, model_dir: Path, plan: Path | None,
                 removed_blocks: list[int] | None):
    """Return the plan ladder to export (gmskip.ladder: model hash, nesting checked)."""
    from ros2_gmskip.gmskip.ladder import load_ladder
    if plan is not None or removed_blocks:
        raise BundleError('--ladder brings its own plan (a rung of it): give --ladder without '
                          '--plan / removed blocks')
    loaded = load_ladder(Path(path), Path(model_dir))
    if loaded.stack != 'decoder':
        raise BundleError(f'ladder {str(path)!r} has {loaded.stack} rungs: only decoder-block '
                          'ladders export')
    return loaded


def _ladder_record(loaded, rung_graphs, path: Path, validation: list[dict] | None
                   ) -> LadderRecord:
    """Return the manifest's `ladder` entry (`validation`: per rung, from validate.py)."""
    runtime = loaded.runtime()
    rungs = tuple(BundleRung(removed_blocks=tuple(r.removed_blocks), segments=segs,
                             score=r.score, flops_ratio=r.flops_ratio,
                             validation=validation[i] if validation else None)
                  for i, (r, segs) in enumerate(zip(runtime.rungs, rung_graphs.rung_segments)))
    return LadderRecord(rungs=rungs, plan_rung=runtime.plan_rung, num_blocks=runtime.num_blocks,
                        weights=WEIGHTS_FILE,
                        path=str(Path(path).resolve()), sha256=sha256_file(path))


def export_bundle(model_dir: Path, out: Path, plan: Path | None = None, *,
                  tokens: TokenSkip | None = None, ladder: Path | None = None,
                  removed_blocks: list[int] | None = None, opset: int = DEFAULT_OPSET,
                  validate_n: int = 50, prompt: str | None = None, max_new_tokens: int = 48,
                  threads: int | None = None, fused: bool = True,
                  camera_size: tuple[int, int] | None = None,
                  fused_max_length: int | None = None, fused_weights: str = 'fp32',
                  on_stage: Callable[[str], None] | None = None,
                  on_check: Callable[[object], None] | None = None) -> ExportResult:
    """
    Export `model_dir` (minus the plan's blocks) to the bundle folder `out`, then validate it.

    The bundle is written into a temporary sibling folder and renamed to `out` only after every
    validation check passed; otherwise `BundleError` lists all failures and `out` is untouched.
    `removed_blocks` is the plan-less way to prune (tests, experiments): the manifest then records
    the blocks with no plan path/hash. `tokens`: FastV / KV-removal settings for the runtime
    (default: the plan's `tokens`, if any); they split the decoder graph where they act and are
    recorded in the manifest's `token_skip`. `fused`: also write decoder.fused.onnx, the ONNX
    Runtime-only graph (exporters/fused_decoder.py) whose KV buffers hold `fused_max_length`
    positions (default: the model's max_position_embeddings, at most 2048); a model it does not
    cover gets none, with a log line saying why. `fused_weights` 'int4' / 'int8' adds the
    quantized copies the runtime uses: decode steps with int4 / int8 weights, the prefill with
    dynamic int8 (fused_decoder.py says why). `camera_size` (H, W): the frame size that fixes
    Idefics3 / SmolVLM's tile grid and prompt, and a Qwen bundle's patch grid (qwen_vision.py)
    (default: the validation scenes' size). `ladder` (a plan-ladder file, instead of `plan`):
    one bundle that runs every rung (exporters/ladder_export.py), each rung's greedy text
    validated against the model pruned to that rung.
    `on_stage(text)` / `on_check(Check)` report progress.
    """
    from ros2_gmskip.exporters import qwen_vision, trt_ops, validate
    from ros2_gmskip.runtime.results import DEFAULT_PROMPT
    from ros2_gmskip.runtime.tiles import image_prompt
    from ros2_gmskip.vlm.blocks import remove_blocks
    from ros2_gmskip.vlm.loading import check_model_dir, load_vlm
    from ros2_gmskip.vlm.prompting import prompt_text

    stage = on_stage or (lambda text: log.info('%s', text))
    if fused_weights not in WEIGHTS:
        raise BundleError(f'fused decoder weights must be one of {", ".join(WEIGHTS)}, got '
                          f'{fused_weights!r}')
    if fused_weights != 'fp32' and not fused:
        raise BundleError(f'--fused-weights {fused_weights} quantizes the fused decoder: it '
                          'cannot go with --no-fused')
    prompt = prompt or DEFAULT_PROMPT
    model_dir, out = Path(model_dir), Path(out)
    _prepare_out(out)
    check_writable(out, 'bundle folder')
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    check_model_dir(model_dir)
    family_of_config(json.loads((model_dir / 'config.json').read_text()))   # before loading
    stage(f'loading {model_dir}')
    model, processor = load_vlm(model_dir)
    export_config_for(model.config, opset=opset)       # decoder type, RoPE, opset: before work
    loaded_ladder = layout = None
    if ladder is not None:
        from ros2_gmskip.exporters.ladder_export import ladder_layout
        if family_spec(model).name != 'llava':
            raise BundleError(f'export --ladder supports LLaVA-style models, not '
                              f'{family_spec(model).name} (its rungs are validated on the LLaVA '
                              'decoder path only): export one plan without --ladder')
        loaded_ladder = _load_ladder(ladder, model_dir, plan, removed_blocks)
        token_skip = tokens if tokens is not None else TokenSkip.from_dict(loaded_ladder.tokens)
        layout = ladder_layout([r.removed_blocks for r in loaded_ladder.rungs],
                               loaded_ladder.model.num_blocks, token_skip)
        blocks, stack = list(layout.base), 'decoder'
        plan_record = PlanRecord(removed_blocks=tuple(loaded_ladder.plan_removed),
                                 plan_id=loaded_ladder.plan_id)
    else:
        blocks, stack, plan_record = resolve_plan(plan, model_dir, removed_blocks, model)
    if blocks:
        stage(f'removing {stack} blocks {blocks}')
        remove_blocks(model, blocks, stack=stack)
    num_layers = len(language_model(model).layers)
    if layout is None:
        token_skip = tokens if tokens is not None else plan_token_skip(plan)
    family = family_spec(model)
    if not token_skip.is_off and not family.token_skip:
        raise BundleError(f'token skipping ({token_skip.describe()}) is validated against '
                          "tokenskip's torch reference, which does not support "
                          f'{family.name}: export without --fastv / --kv-removal')
    if layout is None and token_skip.fastv is not None and token_skip.fastv.k >= num_layers:
        raise BundleError(f'FastV K={token_skip.fastv.k} needs more than the {num_layers} decoder '
                          'blocks the (pruned) model has: choose K < the remaining blocks')
    if layout is None and token_skip.kv_ratio and token_skip.kv_start >= num_layers:
        raise BundleError(f'KV removal from layer {token_skip.kv_start} is past the last of the '
                          f'{num_layers} decoder blocks')
    camera = tuple(camera_size) if camera_size else validate.scene_images(1)[0].shape[:2]
    qwen_grid = None
    if family_of_config(model.config) in MROPE_FAMILIES:     # token skipping: refused above
        qwen_grid = qwen_vision.qwen_layout(model, processor, camera, prompt_text)
        stage(f'{camera[0]}x{camera[1]} frames: patch grid '
              f'{list(qwen_grid.mrope.grid_thw)}, {qwen_grid.num_image_tokens} image tokens')
    preprocess = (qwen_grid.preprocess if qwen_grid
                  else mf.preprocess_entry(processor.image_processor, camera))

    def make_config(layers: int) -> ExportConfig:        # a ladder: once per rung
        splits, rank_at = token_skip.splits(layers)
        return export_config_for(model.config, num_layers=layers, opset=opset,
                                 image_size=preprocess.size, splits=splits, rank_at=rank_at,
                                 num_image_tokens=qwen_grid and qwen_grid.num_image_tokens,
                                 pixel_shape=qwen_grid and qwen_grid.pixel_shape)

    config = make_config(num_layers)
    model.eval()
    if hasattr(model, 'set_attn_implementation'):
        model.set_attn_implementation('eager')                    # plain ops in the vision graph
    seconds['load'] = time.perf_counter() - t

    with written_in_place(out, 'bundle folder') as tmp:
        t = time.perf_counter()
        stage(f'exporting {VISION} (opset {opset})')
        vision = config.graphs['vision']
        _export_graph(vision_module(model, config, qwen_grid), _dummy_vision_inputs(config),
                      tmp / VISION, vision.inputs, vision.outputs, opset)
        removed = f', {len(blocks)} {stack} blocks removed' if blocks and not layout else ''
        explicit = not token_skip.is_off or qwen_grid is not None    # FastV, M-RoPE positions

        def export_decoder(model, folder: Path, config: ExportConfig):
            return _export_decoder(model, folder, config, removed, fused=fused,
                                   fused_weights=fused_weights, fused_max_length=fused_max_length,
                                   explicit=explicit, stage=stage)

        if layout is None:
            segments, fused_record = export_decoder(model, tmp, config)
        else:                              # a ladder: every rung's graphs, the weights once
            from ros2_gmskip.exporters.ladder_export import export_rungs
            rung_graphs = export_rungs(model, tmp, layout, make_config, export_decoder, stage)
            segments, fused_record = rung_graphs.segments, rung_graphs.fused
            config = rung_graphs.configs[loaded_ladder.plan_rung]     # validated below
        np.save(tmp / EMBED, embedding_table(model), allow_pickle=False)       # (V, C)
        for name in MODEL_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        if not (tmp / TOKENIZER).is_file():
            raise ModelLoadError(f'model folder {str(model_dir)!r} has no tokenizer.json: the '
                                 'runtime needs a fast (tokenizers) tokenizer')
        seconds['export'] = time.perf_counter() - t

        if qwen_grid is not None:                                # checked by qwen_layout
            num_image_tokens = qwen_grid.num_image_tokens
        else:
            probe = np.zeros((*(preprocess.tiles.camera if preprocess.tiles else preprocess.size),
                              3), dtype=np.uint8)
            num_image_tokens = validate.count_image_tokens(processor, probe)
        image_text, tiles, suffix = None, 1, ''
        if config.family == 'paligemma':     # its processor adds BOS after the image, a newline
            from ros2_gmskip.exporters.paligemma import image_text as paligemma_text
            image_text, suffix = paligemma_text(processor, config.num_image_tokens), '\n'
        if preprocess.tiles is not None:
            rows, cols = preprocess.tiles.grid
            tiles = rows * cols + 1
            image_text = image_prompt(rows, cols, config.num_image_tokens, processor.image_token,
                                      processor.fake_image_token,
                                      getattr(processor, 'global_image_token', None)
                                      or processor.global_image_tag)
        if num_image_tokens != config.num_image_tokens * tiles:
            raise ModelLoadError(f'the processor expands the image to {num_image_tokens} tokens, '
                                 f'the vision tower makes {config.num_image_tokens * tiles}')
        manifest = Manifest(
            created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
            source_model=SourceModel(path=str(model_dir.resolve()),
                                     sha256=weights_sha256(model_dir)),
            plan=plan_record, opset=opset, files=mf.file_hashes(tmp),
            graphs=config.graphs if layout is None else {'vision': config.graphs['vision'],
                                                         **rung_graphs.graphs},
            tokens=mf.tokens_entry(processor, model.config, model.generation_config,
                                   num_image_tokens, prompt_text, image_text, suffix),
            preprocess=preprocess, decoder=config.decoder, token_skip=token_skip,
            segments=tuple(segments), fused=fused_record, mrope=qwen_grid and qwen_grid.mrope,
            draft=DRAFT if (tmp / DRAFT).is_file() else None, validation=None,
            versions=mf.versions(),
            ladder=None if layout is None else _ladder_record(loaded_ladder, rung_graphs, ladder,
                                                              None))
        write_manifest(tmp, manifest)

        t = time.perf_counter()
        stage('validating: graph checks, values vs PyTorch, greedy text vs generate')
        report = validate.validate_bundle(tmp, model, processor, config, n_scenes=validate_n,
                                          prompt=prompt, max_new_tokens=max_new_tokens,
                                          threads=threads, on_check=on_check, stage=stage,
                                          lint=trt_ops.lint_graph,
                                          ladder=layout and (layout, rung_graphs))
        seconds['validate'] = time.perf_counter() - t
        manifest = replace(manifest, validation=report.to_manifest())
        if layout is not None:
            manifest = replace(manifest, ladder=_ladder_record(loaded_ladder, rung_graphs, ladder,
                                                               report.rungs or None))
        write_manifest(tmp, manifest)
        failures = [c for c in report.checks if not c.ok]
        if failures:
            raise BundleError(f'export validation failed ({len(failures)} of {len(report.checks)} '
                              'checks): ' + '; '.join(f'{c.name}: {c.detail}' for c in failures)
                              + f': bundle not written to {str(out)!r}')
    log.info('bundle %s written (max |logit diff| %.1e, identical text %s)', out,
             manifest.validation['max_abs_logit_diff'], manifest.validation['identical_text'])
    return ExportResult(path=out, manifest=manifest, checks=report.checks, seconds=seconds)
