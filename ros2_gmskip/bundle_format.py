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
Define the ONNX bundle format: its manifest, every file and tensor name, and its version.

The contract between `ros2-gmskip export` (the writer) and every runtime (the readers), kept in
one module at the bottom of the import graph (stdlib, errors, formats and token settings only),
so writer and readers cannot drift apart and neither imports the other.

    bundle = load_bundle(Path('bundles/pruned'))        # files hashed, layout checked
    bundle.manifest.decoder.num_layers, bundle.manifest.segments[0].portable
    bundle.file(bundle.manifest.segments[-1].fused)

A bundle folder holds (names from this module):

    manifest.json                   `Manifest`, format ros2_gmskip/onnx-bundle@FORMAT_VERSION
    vision.onnx                     pixel_values (B, 3, H, W) -> image_embeds (B, n, C)
    decoder.onnx, decoder.1.onnx    the decoder's segments in plain ONNX ops (what TensorRT
                                    builds from); a bundle without token skipping has one
    decoder.fused.onnx, ...         the same segments for ONNX Runtime only (contrib ops, KV
                                    cache in place); absent for models the fused graph does
                                    not cover
    decoder.fused.int4.onnx, decoder.fused.prefill.int8.onnx, ...
                                    quantized decode-step / prefill copies (export
                                    --fused-weights)
    embed_tokens.npy                the token embedding table (vocab, C) float32
    tokenizer.json, ...             tokenizer and processor files of the model
    draft_ngrams.json               the n-gram draft table (`ros2-gmskip draft`), where made
    decoder.rung2.onnx, decoder.rung2.fused.1.onnx, ...
                                    a ladder bundle's graphs, rung by rung (`export --ladder`),
                                    instead of decoder*.onnx
    weights.bin                     a ladder bundle's weights: every large initializer of its
                                    rung graphs, each once (ONNX external data)

The decoder is a list of N >= 1 *segments*: consecutive block ranges [first, stop) of the
(pruned) decoder, each with its own KV cache. Segment 0 reads `inputs_embeds`, later ones
`inputs_hidden` (the previous segment's `hidden_states`); only the last ends in `logits`; the one
that ends at FastV's K also outputs what FastV ranks the image tokens by. Token skipping splits
the decoder where it acts (FastV's K, KV removal's first layer). A plan ladder (`LadderRecord`)
holds each rung's own segments, as that rung's plan bundle would have them (renamed), one rung
after the other in `segments`; a rung lists its own, and the manifest's `decoder` is the plan
rung's.

FORMAT_VERSION is bumped whenever the layout changes (a file, a tensor name, a manifest key); a
bundle of another version is refused with one line that says to re-export it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import hashlib
import logging
from pathlib import Path
from typing import Any

from ros2_gmskip.errors import BundleError
from ros2_gmskip.formats import read_format_json, write_json_atomic
from ros2_gmskip.tokenskip.settings import TokenSkip

log = logging.getLogger(__name__)

FORMAT_NAME = 'ros2_gmskip/onnx-bundle'
FORMAT_VERSION = 5     # 4: ladders as segments shared by rungs + head.npz; 3: three branches
FORMAT = f'{FORMAT_NAME}@{FORMAT_VERSION}'
REEXPORT = 're-run ros2-gmskip export'

# Files.
MANIFEST = 'manifest.json'
VISION = 'vision.onnx'
EMBED = 'embed_tokens.npy'
TOKENIZER = 'tokenizer.json'
DRAFT = 'draft_ngrams.json'
DECODER = 'decoder.onnx'
FUSED = 'decoder.fused.onnx'
WEIGHTS_FILE = 'weights.bin'           # ladder bundles: every rung graph's weights, each once

# Tensor names. Vision graph:
PIXEL_VALUES, IMAGE_EMBEDS = 'pixel_values', 'image_embeds'
# every decoder graph:
INPUTS_EMBEDS = 'inputs_embeds'        # segment 0's input (B, seq, C)
INPUTS_HIDDEN = 'inputs_hidden'        # later segments' input: the residual stream (B, seq, C)
HIDDEN_STATES = 'hidden_states'        # every segment but the last: the residual stream out
LOGITS = 'logits'                      # the last segment: portable (B, seq, V), fused (1, 1, V)
POSITION_IDS = 'position_ids'          # (B, seq) int64, absolute positions (RoPE)
# portable graphs:
ATTENTION_MASK = 'attention_mask'      # (B, past + seq) int64, 1 = attend
LAST_TOKEN_ATTENTION = 'last_token_attention'   # ranking segment: (B, past + seq), see below
# fused graphs (ONNX Runtime GroupQueryAttention):
SEQLENS_K = 'seqlens_k'                # (1,) int32: cached rows + new rows - 1
TOTAL_SEQUENCE_LENGTH = 'total_sequence_length'   # () int32: cached rows + new rows
ALL_LOGITS = 'all_logits'              # the last fused graph: logits of every new row (1, seq, V)
LAST_QUERY = 'last_query'              # ranking fused graph: the last block's rotated query at
#                                        the last position (1, 1, H * d)
KV_KINDS = ('key', 'value')

# Dynamic axis names of the portable graphs (TensorRT profiles fill them in).
BATCH, SEQ, PAST, TOTAL = 'batch', 'seq', 'past', 'total'

# Fused decoder variants.
POSITIONS = ('cache', 'explicit')      # RoPE at the cache length (plain) | at position_ids
WEIGHTS = ('fp32', 'int8', 'int4')     # decode-step weights (export --fused-weights)


def past_name(layer: int, kind: str) -> str:
    """Name the KV-cache input of decoder block `layer` ('key' | 'value')."""
    return f'past_key_values.{layer}.{kind}'


def present_name(layer: int, kind: str) -> str:
    """Name the KV-cache output of decoder block `layer` ('key' | 'value')."""
    return f'present.{layer}.{kind}'


def portable_file(index: int) -> str:
    """Name segment `index`'s portable graph: decoder.onnx, decoder.1.onnx, ..."""
    return DECODER if index == 0 else f'decoder.{index}.onnx'


def rung_file(rung: int, name: str) -> str:
    """Name rung `rung`'s own copy of graph file `name`: decoder.1.onnx -> decoder.rung2.1.onnx."""
    return name.replace('decoder', f'decoder.rung{rung}', 1)


def fused_file(index: int) -> str:
    """Name segment `index`'s fused graph: decoder.fused.onnx, decoder.fused.1.onnx, ..."""
    return FUSED if index == 0 else f'decoder.fused.{index}.onnx'


def fused_step_file(index: int, weights: str) -> str:
    """Name segment `index`'s quantized decode-step graph, e.g. decoder.fused.1.int4.onnx."""
    return fused_file(index).replace('.onnx', f'.{weights}.onnx')


def fused_prefill_file(index: int) -> str:
    """Name segment `index`'s int8 prefill graph, e.g. decoder.fused.prefill.int8.onnx."""
    return fused_file(index).replace('.onnx', '.prefill.int8.onnx')


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (constant memory for multi-GB graphs)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The manifest's parts

@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, axes (int = fixed, str = dynamic axis name), dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = 'float32'
    atol: float | None = None          # outputs: max |onnx - torch| export validation accepts

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Return {axis index: axis name} of the dynamic axes."""
        return {i: a for i, a in enumerate(self.shape) if isinstance(a, str)}


@dataclass(frozen=True)
class GraphSpec:
    """The inputs and outputs of one portable graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Segment:
    """Decoder blocks [first, stop) as one unit with its own KV cache, and its graph files."""

    first: int
    stop: int
    last: bool                          # ends in the final norm + lm_head (logits)
    ranks: bool                         # ends at FastV's K: outputs FastV's ranking signal
    portable: str                       # plain-op graph (every engine can run it)
    fused: str | None = None            # fp32 fused ONNX Runtime graph
    fused_prefill: str | None = None    # its int8 prefill copy (None: `fused`)
    fused_step: str | None = None       # its quantized decode-step graph (None: `fused`)

    @property
    def name(self) -> str:
        """Return the graph's name, e.g. decoder.1: its `graphs` key and its engine's name."""
        return self.portable[:-len('.onnx')]

    @property
    def input_name(self) -> str:
        """Return the main input: inputs_embeds (segment 0) or inputs_hidden."""
        return INPUTS_EMBEDS if self.first == 0 else INPUTS_HIDDEN

    @property
    def output_name(self) -> str:
        """Return the main output: logits (last segment) or hidden_states."""
        return LOGITS if self.last else HIDDEN_STATES

    @property
    def layers(self) -> range:
        """Return the block indices of this segment."""
        return range(self.first, self.stop)

    def past_names(self) -> list[str]:
        """Return the KV inputs, (layer first key, layer first value, ...) in graph order."""
        return [past_name(i, k) for i in self.layers for k in KV_KINDS]

    def present_names(self) -> list[str]:
        """Return the KV outputs in the same order."""
        return [present_name(i, k) for i in self.layers for k in KV_KINDS]

    def files(self) -> list[str]:
        """Return every graph file of this segment."""
        return [f for f in (self.portable, self.fused, self.fused_prefill, self.fused_step) if f]


@dataclass(frozen=True)
class FusedDecoder:
    """How the fused ONNX Runtime graphs of every segment were made."""

    max_length: int                     # positions the KV buffers (1, kv, M, d) hold
    positions: str                      # 'cache' or 'explicit' (see POSITIONS)
    attention_scale: float              # the attention's softmax scale (FastV ranks with it)
    step_weights: str = 'fp32'          # decode-step graphs' MatMul weights (WEIGHTS)
    prefill_weights: str = 'fp32'       # 'fp32' or 'int8' (dynamic quantization)
    quantization: dict | None = None    # how the step weights were quantized
    opset: int = 23
    nodes: int = 0                      # graph nodes, every segment together
    ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class DecoderShape:
    """What the decoder graphs' shapes depend on (after pruning)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float | None = None
    family: str = 'llava'
    decoder_type: str = 'llama'


@dataclass(frozen=True)
class Tokens:
    """Token ids and the prompt template (the image token expanded, `{prompt}` placeholder)."""

    image_token: str
    image_token_id: int
    num_image_tokens: int
    prompt_template: str
    stop_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    add_special_tokens: bool = True
    clean_up_tokenization_spaces: bool = False


@dataclass(frozen=True)
class Tiles:
    """Idefics3 / SmolVLM image splitting, fixed at export by the camera's resolution."""

    camera: tuple[int, int]             # (H, W) of the frames the bundle was exported for
    longest_edge: int                   # the first resize: the long edge to this
    grid: tuple[int, int]               # (rows, cols) of tiles, plus one global image; (0, 0)
    split: bool = True                  # False: the global image only (do_image_splitting off)


@dataclass(frozen=True)
class Preprocess:
    """The image processor's steps: resize (fixed, shortest edge + crop, tiles), normalise."""

    size: tuple[int, int]               # (H, W) of pixel_values (of one tile with `tiles`)
    resample: str = 'bilinear'
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    shortest_edge: int | None = None    # LLaVA-1.5: short edge to this, then centre-crop `size`
    tiles: Tiles | None = None          # Idefics3 / SmolVLM: tiles + the global image


@dataclass(frozen=True)
class MRope:
    """
    Qwen2-VL / Qwen2.5-VL: the image layout fixed at export for one camera resolution.

    The patch grid follows from the frame size (smart resize), so the vision graph's patch rows,
    Qwen2.5-VL's attention windows, the image token count and the decode positions' rope delta
    are all fixed by `camera_size`; `preprocess.size` is the resized (H, W).
    """

    camera_size: tuple[int, int]        # (H, W) of the frames the bundle was exported for
    grid_thw: tuple[int, int, int]      # image_grid_thw of such a frame, in patches
    patch_size: int
    merge_size: int                     # merged patches per side: one image token per merge^2
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    mrope_section: tuple[int, ...]      # rotary frequencies of the t, h, w rows
    rope_delta: int                     # decode step k after T prompt rows: T + k + rope_delta
    windows: int | None = None          # Qwen2.5-VL's attention windows per image (2-VL: None)


@dataclass(frozen=True)
class SourceModel:
    """The weights the bundle was exported from."""

    path: str
    sha256: str                         # over the *.safetensors files (gmskip.plan)


@dataclass(frozen=True)
class PlanRecord:
    """The skip plan the bundle was pruned by (path and sha256 None: blocks given directly)."""

    removed_blocks: tuple[int, ...]
    stack: str = 'decoder'
    plan_id: str | None = None          # gmskip.plan.plan_id: its content, 12 hex digits
    path: str | None = None
    sha256: str | None = None           # of the plan file


@dataclass(frozen=True)
class BundleRung:
    """One plan-ladder rung of a ladder bundle: its blocks, its own graphs, its validation."""

    removed_blocks: tuple[int, ...]     # of the full model, sorted
    segments: tuple[int, ...]           # its own segments: indices into Manifest.segments
    score: float | None = None          # calibration score (the ladder file's)
    flops_ratio: float | None = None
    validation: dict | None = None      # greedy text vs the torch model pruned to it


@dataclass(frozen=True)
class LadderRecord:
    """A ladder bundle's rungs (fastest first), each with its own graphs, and their weights."""

    rungs: tuple[BundleRung, ...]
    plan_rung: int                      # the calibrated plan: what runs without a choice
    num_blocks: int                     # decoder blocks of the full model
    weights: str                        # WEIGHTS_FILE: every rung graph's large weights, once
    path: str | None = None             # the ladder file exported, and its sha256
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle records: what it was made from, how, and what the runtime needs."""

    created_at: str
    source_model: SourceModel
    plan: PlanRecord | None
    opset: int
    files: dict[str, str]               # every file but manifest.json: name -> sha256
    graphs: dict[str, GraphSpec]        # 'vision' and each segment's name
    tokens: Tokens
    preprocess: Preprocess
    decoder: DecoderShape
    token_skip: TokenSkip               # what the runtime applies unless told otherwise
    segments: tuple[Segment, ...]
    fused: FusedDecoder | None
    mrope: MRope | None                 # Qwen: positions and the patch grid (else null)
    draft: str | None                   # DRAFT when the bundle carries a draft table
    validation: dict | None
    versions: dict[str, str | None]
    ladder: LadderRecord | None         # plan-ladder bundles (export --ladder), else None

    @property
    def model_id(self) -> str:
        """Return the weights' id: the first 12 hex digits of their sha256."""
        return self.source_model.sha256[:12]

    @property
    def plan_id(self) -> str:
        """Return the plan's id: its plan_id, 'full' unpruned, 'blocks:1,3' without a file."""
        return plan_id_of(self.plan)

    @property
    def blocks_removed(self) -> list[int]:
        """Return the decoder blocks the plan removed (empty for the full model)."""
        return list(self.plan.removed_blocks) if self.plan else []

    def to_dict(self) -> dict:
        """Return the JSON form (what manifest.json holds)."""
        return {'format': FORMAT, **_to_json(self)}

    @classmethod
    def from_dict(cls, data: dict, where: str = 'bundle') -> Manifest:
        """Read the JSON form; BundleError naming the bad entry (one line) otherwise."""
        try:
            return _manifest_from_dict(data)
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f'{where}: manifest entry {_describe(err)}: {REEXPORT}') from None


def plan_id_of(plan: PlanRecord | None, removed: list[int] | None = None) -> str:
    """Return the id every backend reports for a plan (see Manifest.plan_id)."""
    if plan is None and not removed:
        return 'full'
    if plan is not None and plan.plan_id:
        return plan.plan_id
    blocks = plan.removed_blocks if plan is not None else removed
    return 'blocks:' + ','.join(str(b) for b in blocks) if blocks else 'full'


def _to_json(value: Any) -> Any:
    if isinstance(value, TokenSkip):
        return value.to_dict()
    if hasattr(value, '__dataclass_fields__'):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _describe(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f'{err.args[0]!r} is missing'
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _build(cls, data: Any, **converted):
    """`cls(**data)` with every field present (no silent defaults for what is missing)."""
    if not isinstance(data, dict):
        raise TypeError(f'{cls.__name__} must be an object, got {type(data).__name__}')
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f'{cls.__name__} has unknown keys {unknown}')
    missing = [n for n in names if n not in data]
    if missing:
        raise KeyError(f'{cls.__name__}.{missing[0]}')
    return cls(**{**data, **converted})


def _tensor(d: dict) -> TensorSpec:
    return _build(TensorSpec, d, shape=tuple(d['shape']))


def _graph(d: dict) -> GraphSpec:
    return _build(GraphSpec, d, inputs=tuple(_tensor(t) for t in d['inputs']),
                  outputs=tuple(_tensor(t) for t in d['outputs']))


def _manifest_from_dict(d: dict) -> Manifest:
    d = {k: v for k, v in d.items() if k != 'format'}
    tokens, pre = d['tokens'], d['preprocess']
    plan = d['plan']
    fused = d['fused']
    mrope = d['mrope']
    mean, std = pre['image_mean'], pre['image_std']
    return _build(
        Manifest, d,
        source_model=_build(SourceModel, d['source_model']),
        plan=None if plan is None else _build(
            PlanRecord, plan, removed_blocks=tuple(int(b) for b in plan['removed_blocks'])),
        graphs={name: _graph(g) for name, g in d['graphs'].items()},
        tokens=_build(Tokens, tokens, stop_token_ids=tuple(tokens['stop_token_ids'])),
        preprocess=_build(Preprocess, pre, size=tuple(pre['size']),
                          image_mean=None if mean is None else tuple(mean),
                          image_std=None if std is None else tuple(std),
                          tiles=None if pre['tiles'] is None else _build(
                              Tiles, pre['tiles'], camera=tuple(pre['tiles']['camera']),
                              grid=tuple(pre['tiles']['grid']))),
        decoder=_build(DecoderShape, d['decoder']),
        token_skip=TokenSkip.from_dict(d['token_skip']),
        segments=tuple(_build(Segment, s) for s in d['segments']),
        fused=None if fused is None else _build(FusedDecoder, fused, ops=tuple(fused['ops'])),
        mrope=None if mrope is None else _build(
            MRope, mrope, **{k: tuple(mrope[k]) for k in ('camera_size', 'grid_thw',
                                                          'mrope_section')}),
        ladder=None if d['ladder'] is None else _ladder(d['ladder']))


def _ladder(d: dict) -> LadderRecord:
    rungs = tuple(_build(BundleRung, r, removed_blocks=tuple(int(b) for b in r['removed_blocks']),
                         segments=tuple(int(s) for s in r['segments'])) for r in d['rungs'])
    return _build(LadderRecord, d, rungs=rungs)


# --------------------------------------------------------------------------------------------
# Reading, checking and writing a bundle folder

@dataclass(frozen=True)
class Bundle:
    """A checked bundle folder and its manifest."""

    path: Path
    manifest: Manifest
    bundle_id: str          # the first 12 hex digits of manifest.json's sha256

    def file(self, name: str) -> Path:
        """Return the path of the bundle file `name`."""
        return self.path / name

    def where(self) -> str:
        """Return how errors name this bundle."""
        return f'bundle {str(self.path)!r}'


def read_manifest(path: Path) -> Manifest:
    """Return the manifest of the bundle folder `path` (its files not checked)."""
    path = Path(path)
    where = f'bundle {str(path)!r}'
    if not path.is_dir():
        raise BundleError(f'{where} does not exist: create it with '
                          '`ros2-gmskip export --model DIR --out BUNDLE`')
    if not (path / MANIFEST).is_file():
        raise BundleError(f'{where} has no {MANIFEST}: it is not an export bundle (or the export '
                          f'was interrupted): {REEXPORT}')
    data = read_format_json(path / MANIFEST, FORMAT, BundleError, where, REEXPORT)
    return Manifest.from_dict(data, where)


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Return the bundle at `path`, its files checked against the manifest (sha256: `verify`)."""
    path = Path(path)
    manifest = read_manifest(path)
    where = f'bundle {str(path)!r}'
    check_layout(manifest, where)
    for name, expected in manifest.files.items():
        if Path(name).name != name or name in ('.', '..'):
            raise BundleError(f'{where}: manifest lists {name!r}, not a file name in the bundle '
                              f'folder: {REEXPORT}')
        file = path / name
        if not file.is_file():
            raise BundleError(f'{where}: {name} is missing: {REEXPORT}')
        if verify:
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(f'{where}: {name} sha256 mismatch (manifest '
                                  f'{str(expected)[:12]}.., file {actual[:12]}..): {REEXPORT}')
    log.debug('%s: %d files checked', where, len(manifest.files))
    return Bundle(path=path, manifest=manifest,
                  bundle_id=sha256_file(path / MANIFEST)[:12])


def check_layout(m: Manifest, where: str) -> None:
    """Raise BundleError unless the manifest describes a layout this version can run."""
    problems = []
    listed = set(m.files)
    for name in (VISION, EMBED, TOKENIZER) + ((m.draft,) if m.draft else ()):
        if name not in listed:
            problems.append(f'does not list {name}')
    chains = ([range(len(m.segments))] if m.ladder is None else   # a ladder: each rung's own
              [r.segments for r in m.ladder.rungs])
    ends = ([m.decoder.num_layers] if m.ladder is None else
            [m.ladder.num_blocks - len(r.removed_blocks) for r in m.ladder.rungs])
    for r, (chain, end) in enumerate(zip(chains, ends)):
        stops = [0]
        for j, i in enumerate(chain):
            if not 0 <= i < len(m.segments):
                problems.append(f'ladder rung {r} runs segment {i} of {len(m.segments)}')
                break
            seg = m.segments[i]
            name = portable_file(j) if m.ladder is None else rung_file(r, portable_file(j))
            if seg.first != stops[-1] or seg.stop <= seg.first or seg.portable != name:
                problems.append(f'segment {i} {[seg.first, seg.stop]} does not follow the one '
                                f'before')
            stops.append(seg.stop)
            if seg.last != (j == len(chain) - 1):
                problems.append(f'segment {i} last={seg.last}')
        if stops[-1] != end:
            problems.append(f'segments end at block {stops[-1]}, the decoder has {end}')
    for i, seg in enumerate(m.segments):
        missing = [f for f in seg.files() if f not in listed]
        if missing:
            problems.append(f'segment {i} names unlisted {missing}')
        if m.fused is not None and seg.fused is None:
            problems.append(f'segment {i} has no fused graph')
        if seg.name not in m.graphs:
            problems.append(f'graphs has no {seg.name}')
    if not m.segments:
        problems.append('has no decoder segments')
    if m.fused is not None and (m.fused.positions not in POSITIONS or m.fused.max_length < 1
                                or m.fused.step_weights not in WEIGHTS):
        problems.append(f'fused {m.fused}')
    if m.fused is not None and m.fused.positions == 'cache' and len(chains[0]) > 1:
        problems.append('a segmented decoder with cache positions')
    if m.mrope is not None:
        t, h, w = m.mrope.grid_thw
        if t * h * w // m.mrope.merge_size ** 2 != m.tokens.num_image_tokens:
            problems.append(f'mrope grid {list(m.mrope.grid_thw)} does not make '
                            f'{m.tokens.num_image_tokens} image tokens')
    if m.ladder is not None:
        problems += _ladder_problems(m.ladder, len(m.segments), listed)
    if problems:
        raise BundleError(f'{where}: manifest {"; ".join(problems[:3])}: {REEXPORT}')


def _ladder_problems(ladder: LadderRecord, n_segments: int, listed: set[str]) -> list[str]:
    """Return what is wrong with a ladder record (each segment belongs to one rung)."""
    problems = [] if ladder.weights in listed else [f'does not list {ladder.weights}']
    if not 0 <= ladder.plan_rung < len(ladder.rungs):
        problems.append(f'ladder plan_rung {ladder.plan_rung} of {len(ladder.rungs)} rungs')
    owned = [s for rung in ladder.rungs for s in rung.segments]
    if sorted(owned) != list(range(n_segments)):
        problems.append(f'ladder rungs run segments {owned}, not each of {n_segments} once')
    return problems


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically (the last file an export writes)."""
    return write_json_atomic(Path(folder) / MANIFEST, manifest.to_dict())
