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
Lay a plan ladder out as one bundle: every rung its own decoder graphs, the weights once.

Each rung is exported as the plan bundle of that rung would be (its blocks removed, its token
skipping's splits counted in its own blocks, the last graph ending in logits), under its own
file names (`decoder.rung2.onnx`, `decoder.rung2.fused.1.onnx`, ...), so a rung runs exactly as
many graphs as a plan bundle and costs what one costs. The rungs share their blocks' weights:
`share_weights` (exporters/shared_weights.py) stores every large initializer once in
weights.bin, which ONNX Runtime maps into every session (one copy in the page cache).

    layout = ladder_layout(rung_blocks, num_blocks=16, token_skip=ts)   # checks, block numbers
    rungs = export_rungs(model, folder, layout, make_config, export_decoder, stage)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
import shutil
from typing import Callable, Sequence

from ros2_gmskip.bundle_format import FusedDecoder, GraphSpec, rung_file, Segment, WEIGHTS_FILE
from ros2_gmskip.errors import BundleError
from ros2_gmskip.tokenskip.settings import TokenSkip


@dataclass(frozen=True)
class LadderLayout:
    """A ladder's rungs in the numbers of the model exported (the deepest rung's blocks)."""

    base: tuple[int, ...]                   # full-model blocks every rung removes (exported out)
    kept: tuple[int, ...]                   # exported block j is full-model block kept[j]
    rungs: tuple[tuple[int, ...], ...]      # per rung: its removed full-model blocks

    def bundle_blocks(self, removed: Sequence[int]) -> list[int]:
        """Return the exported block indices of full-model blocks `removed` (beyond the base)."""
        drop = set(removed)
        return [j for j, b in enumerate(self.kept) if b in drop]


def ladder_layout(rungs: Sequence[Sequence[int]], num_blocks: int,
                  token_skip: TokenSkip = TokenSkip()) -> LadderLayout:
    """
    Return the layout of `rungs` (removed blocks, fastest first; nested: runtime.ladder checks).

    BundleError, one line, when a rung keeps too few blocks for the token settings.
    """
    base = tuple(sorted(rungs[-1]))
    kept = tuple(b for b in range(num_blocks) if b not in set(base))
    fastv = token_skip.fastv
    for i, removed in enumerate(rungs):
        own = num_blocks - len(set(removed))
        if fastv is not None and fastv.r > 0 and fastv.k >= own:
            raise BundleError(f'rung {i} keeps {own} decoder blocks: FastV K={fastv.k} needs '
                              'more; choose a smaller K or a ladder without that rung')
        if token_skip.kv_ratio and token_skip.kv_start >= own:
            raise BundleError(f'rung {i} keeps {own} decoder blocks: KV removal from layer '
                              f'{token_skip.kv_start} is past its last one')
    return LadderLayout(base=base, kept=kept,
                        rungs=tuple(tuple(sorted(r)) for r in rungs))


@dataclass
class RungGraphs:
    """What export_rungs wrote: every rung's segments (renamed), graphs and fused record."""

    segments: list[Segment]                  # rung by rung
    rung_segments: list[tuple[int, ...]]     # per rung: its indices into `segments`
    configs: list                            # per rung: its ExportConfig, segments renamed
    graphs: dict[str, GraphSpec]             # every segment's portable graph interface
    fused: FusedDecoder | None


def _renamed(seg: Segment, rung: int) -> Segment:
    """Return `seg` with every graph file under rung `rung`'s own name."""
    return replace(seg, **{k: rung_file(rung, getattr(seg, k)) for k in
                           ('portable', 'fused', 'fused_prefill', 'fused_step')
                           if getattr(seg, k)})


def _merged(records: list[FusedDecoder | None]) -> FusedDecoder | None:
    """Return one fused record for all rungs (nodes and quantized MatMuls summed)."""
    if records[0] is None:
        return None
    first = records[0]
    quantization = first.quantization and {
        **first.quantization, 'matmuls': sum(r.quantization['matmuls'] for r in records)}
    return replace(first, nodes=sum(r.nodes for r in records), quantization=quantization,
                   ops=tuple(sorted({op for r in records for op in r.ops})))


def export_rungs(model, folder: Path, layout: LadderLayout, make_config: Callable[[int], object],
                 export_decoder: Callable, stage: Callable[[str], None]) -> RungGraphs:
    """
    Export every rung's decoder graphs into `folder`, then store their weights once.

    `model` holds the deepest rung's blocks; each rung's extra blocks are taken out while it is
    exported. `make_config(num_layers)` returns the rung's ExportConfig (its splits);
    `export_decoder(model, folder, config)` writes one decoder's graphs under plan-bundle names
    and returns (segments, fused record), as for a plan (onnx_export.py).
    """
    from ros2_gmskip.exporters.shared_weights import share_weights
    from ros2_gmskip.vlm.blocks import temporarily_removed
    from ros2_gmskip.vlm.families import language_model

    out = RungGraphs(segments=[], rung_segments=[], configs=[], graphs={}, fused=None)
    fused = []
    for i, removed in enumerate(layout.rungs):
        with temporarily_removed(model, layout.bundle_blocks(removed)):
            config = make_config(len(language_model(model).layers))
            stage(f'rung {i}: {len(removed)} blocks removed, {config.decoder.num_layers} kept')
            scratch = Path(folder) / f'.rung{i}'
            scratch.mkdir()
            segments, record = export_decoder(model, scratch, config)
        renamed = [_renamed(seg, i) for seg in segments]
        for seg, new in zip(segments, renamed):
            for old_name, new_name in zip(seg.files(), new.files()):
                (scratch / old_name).rename(Path(folder) / new_name)
        shutil.rmtree(scratch)
        graphs = {new.name: config.graphs[seg.name] for seg, new in zip(segments, renamed)}
        config.segments = renamed
        config.graphs = {'vision': config.graphs['vision'], **graphs}
        start = len(out.segments)
        out.segments += renamed
        out.rung_segments.append(tuple(range(start, len(out.segments))))
        out.configs.append(config)
        out.graphs.update(graphs)
        fused.append(record)
    out.fused = _merged(fused)
    files = [f for seg in out.segments for f in seg.files()]
    tensors, nbytes = share_weights(Path(folder), files)
    stage(f'{WEIGHTS_FILE}: the weights of {len(files)} rung graphs, {tensors} tensors '
          f'({nbytes / 1e6:.1f} MB), each once')
    return out
