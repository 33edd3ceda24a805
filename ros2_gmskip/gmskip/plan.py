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
Skip plans: the JSON contract between calibrate, prune, export and the node.

    plan = SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy')
    save_plan(plan, 'plan.json')                        # atomic: never half-written
    plan = load_plan('plan.json', model_dir=model_dir)  # refuses a plan made for other weights

The file (format `ros2_gmskip/skip-plan@1`):

    {"format": "ros2_gmskip/skip-plan@1",
     "model": {"path": ..., "sha256": <weights>, "family": "llava", "num_blocks": 24},
     "stack": "decoder", "removed_blocks": [19, 21, 22, 23],
     "metric": {"name": "accuracy", "baseline": 0.91, "final": 0.90, "split": "val", "n": 256},
     "objective": {"lambda": 0.3, "min_score_ratio": null, "max_sparsity": null, "tolerance": 0.0},
     "strategy": "reverse", "protect_first": 0.25, "trajectory": [{step}, ...], "evaluations": 19,
     "tokens": null, "run": {"engine": "serial", "workers": 1, "wall_time_s": 812.4,
     "resumed_evaluations": 0}, "created_by": "ros2_gmskip 0.1.0", "created_at": "2025-...+00:00"}

`model.sha256` is `weights_sha256(model_dir)`: sha256 over the bytes of the folder's
`*.safetensors` files in sorted name order. `tokens` holds the token-skip settings applied on top
of the removed blocks (`TokenSkip.to_dict()`: `{"fastv": {"k", "r", "seed"} | null, "kv_removal":
{"ratio", "start_layer"} | null}`, plus the `search` record when calibrate chose them; null: none);
it is validated on load, so export and the node never meet a malformed one. `run` says how the
search ran (serial or on Ray, how many workers, its wall time, evaluations taken over from an
interrupted run); it does not change the plan, and plans made before it have none. This module
is pure
stdlib: the node can read plans without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ros2_gmskip import __version__
from ros2_gmskip.errors import ModelLoadError, PlanError
from ros2_gmskip.folders import write_file
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.strategies import SearchResult, Step
from ros2_gmskip.tokenskip.settings import TokenSkip

FORMAT = 'ros2_gmskip/skip-plan@1'
STACKS = ('decoder', 'vision')
_CHUNK = 1 << 20     # bytes read at a time when hashing weights


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """sha256 (hex) over the bytes of the `*.safetensors` files in `model_dir`, sorted by name."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f'no such model folder {str(model_dir)!r}')
    files = sorted(model_dir.glob('*.safetensors'))
    if not files:
        raise ModelLoadError(f'no *.safetensors weights in {str(model_dir)!r}: save the model '
                             'with save_pretrained(..., safe_serialization=True)')
    digest = hashlib.sha256()
    for path in files:
        with open(path, 'rb') as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelRef:
    """The model a plan was made for."""

    path: str              # as given to calibrate
    sha256: str            # weights_sha256 of that folder
    family: str            # blocks.family_of: 'llava', 'qwen2_vl', ...
    num_blocks: int        # blocks in the stack before removal


@dataclass
class MetricRecord:
    """The calibration metric: unpruned baseline S(empty) and S(plan)."""

    name: str
    baseline: float
    final: float
    split: str | None = None     # calibration data: 'val', 'test' or a folder
    n: int | None = None         # calibration samples


@dataclass
class SkipPlan:
    """A skip plan as a Python object; `to_dict` / `from_dict` give the JSON document."""

    model: ModelRef
    removed_blocks: list[int]
    metric: MetricRecord
    objective: Objective
    strategy: str
    protect_first: float | int
    trajectory: list[Step]
    evaluations: int
    stack: str = 'decoder'
    tolerance: float = 0.0
    tokens: dict | None = None
    run: dict | None = None          # {engine, workers, wall_time_s, resumed_evaluations}
    created_by: str = f'ros2_gmskip {__version__}'
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec='seconds'))
    plan_format: str = FORMAT  # the file's 'format' key

    @property
    def kept_blocks(self) -> list[int]:
        return [b for b in range(self.model.num_blocks) if b not in self.removed_blocks]

    @property
    def sparsity(self) -> float:
        return len(self.removed_blocks) / self.model.num_blocks

    @classmethod
    def from_search(cls, result: SearchResult, model_dir: str | os.PathLike, family: str,
                    metric: str, split: str | None = None, n: int | None = None,
                    protect_first: float | int = 0.25, stack: str = 'decoder',
                    sha256: str | None = None) -> SkipPlan:
        """Make the plan for `result.best`, for the weights in `model_dir`."""
        return cls(
            model=ModelRef(path=str(model_dir), sha256=sha256 or weights_sha256(model_dir),
                           family=family, num_blocks=result.num_blocks),
            removed_blocks=sorted(result.best.removed),
            metric=MetricRecord(name=metric, baseline=result.baseline, final=result.best.score,
                                split=split, n=n),
            objective=result.objective, strategy=result.strategy, protect_first=protect_first,
            trajectory=list(result.trajectory), evaluations=result.evaluations, stack=stack,
            tolerance=result.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {
            'format': self.plan_format,
            'model': {'path': self.model.path, 'sha256': self.model.sha256,
                      'family': self.model.family, 'num_blocks': self.model.num_blocks},
            'stack': self.stack,
            'removed_blocks': sorted(self.removed_blocks),
            'metric': {'name': self.metric.name, 'baseline': self.metric.baseline,
                       'final': self.metric.final, 'split': self.metric.split,
                       'n': self.metric.n},
            'objective': {**self.objective.to_dict(), 'tolerance': self.tolerance},
            'strategy': self.strategy,
            'protect_first': self.protect_first,
            'trajectory': [step.to_dict() for step in self.trajectory],
            'evaluations': self.evaluations,
            'tokens': self.tokens,
            'run': self.run,
            'created_by': self.created_by,
            'created_at': self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SkipPlan:
        """Validate and convert a parsed plan document; PlanError names the bad field."""
        if not isinstance(data, dict):
            raise PlanError(f'expected a JSON object, got {type(data).__name__}')
        fmt = data.get('format')
        if fmt != FORMAT:
            raise PlanError(f'format {fmt!r} is not {FORMAT!r}: make the plan with this '
                            'version of ros2-gmskip calibrate')
        model = _field(data, 'model', dict)
        num_blocks = _field(model, 'num_blocks', int, 'model.')
        if num_blocks < 1:
            raise PlanError(f'model.num_blocks is {num_blocks}: expected at least 1')
        stack = _field(data, 'stack', str)
        if stack not in STACKS:
            raise PlanError(f'stack {stack!r} is not one of {", ".join(STACKS)}')
        removed = _field(data, 'removed_blocks', list)
        for b in removed:
            if isinstance(b, bool) or not isinstance(b, int):
                raise PlanError(f'removed_blocks holds {b!r}: expected block indices (integers)')
            if not 0 <= b < num_blocks:
                raise PlanError(f'removed block {b} out of range: the model has {num_blocks} '
                                f'{stack} blocks (0..{num_blocks - 1})')
        if len(set(removed)) != len(removed):
            twice = sorted({b for b in removed if removed.count(b) > 1})
            raise PlanError(f'removed_blocks lists {twice} more than once')
        if len(removed) == num_blocks:
            raise PlanError(f'removed_blocks removes all {num_blocks} blocks: keep at least one')
        metric = _field(data, 'metric', dict)
        objective = _field(data, 'objective', dict)
        try:
            obj = Objective(lam=float(_field(objective, 'lambda', (int, float), 'objective.')),
                            min_score_ratio=_field(objective, 'min_score_ratio', (int, float),
                                                   'objective.', optional=True),
                            max_sparsity=_field(objective, 'max_sparsity', (int, float),
                                                'objective.', optional=True))
        except PlanError as err:
            raise PlanError(f'objective: {err}') from None
        trajectory = []
        for i, step in enumerate(_field(data, 'trajectory', list)):
            try:
                trajectory.append(Step.from_dict(step))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise PlanError(f'trajectory step {i} is malformed ({type(err).__name__}: '
                                f'{err})') from None
        protect_first = data.get('protect_first', 0)
        if isinstance(protect_first, bool) or not isinstance(protect_first, (int, float)):
            raise PlanError(f'protect_first {protect_first!r} is not a number')
        tokens = data.get('tokens')
        if tokens is not None and not isinstance(tokens, dict):
            raise PlanError(f'tokens must be null or an object, got {type(tokens).__name__}')
        try:
            TokenSkip.from_dict(tokens)           # what export and the node will apply
        except ValueError as err:
            raise PlanError(str(err)) from None
        return cls(
            model=ModelRef(path=_field(model, 'path', str, 'model.'),
                           sha256=_field(model, 'sha256', str, 'model.'),
                           family=_field(model, 'family', str, 'model.'), num_blocks=num_blocks),
            removed_blocks=sorted(removed),
            metric=MetricRecord(name=_field(metric, 'name', str, 'metric.'),
                                baseline=float(_field(metric, 'baseline', (int, float),
                                                      'metric.')),
                                final=float(_field(metric, 'final', (int, float), 'metric.')),
                                split=_field(metric, 'split', str, 'metric.', optional=True),
                                n=_field(metric, 'n', int, 'metric.', optional=True)),
            objective=obj,
            strategy=_field(data, 'strategy', str),
            protect_first=protect_first,
            trajectory=trajectory,
            evaluations=_field(data, 'evaluations', int, optional=True) or 0,
            stack=stack,
            tolerance=float(_field(objective, 'tolerance', (int, float), 'objective.',
                                   optional=True) or 0.0),
            tokens=tokens,
            run=_field(data, 'run', dict, optional=True),
            created_by=_field(data, 'created_by', str),
            created_at=_field(data, 'created_at', str, optional=True) or '',
        )


def _field(data: dict, key: str, types: type | tuple[type, ...], prefix: str = '',
           optional: bool = False) -> Any:
    """data[key] checked against `types` (bool is never an int here; floats must be finite)."""
    if key not in data or (optional and data[key] is None):
        if optional:
            return None
        raise PlanError(f"missing required key '{prefix}{key}'")
    value = data[key]
    types = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = ' or '.join(t.__name__ for t in types)
        raise PlanError(f'{prefix}{key} is {value!r}: expected {names}')
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanError(f'{prefix}{key} is {value!r}: expected a finite number')
    return value


def plan_json(plan: SkipPlan) -> str:
    """Return the plan file's text (indented, stable key order)."""
    return json.dumps(plan.to_dict(), indent=2, allow_nan=False) + '\n'


def plan_id(plan: SkipPlan) -> str:
    """Short id of a plan: first 12 hex digits of sha256 over its canonical JSON content."""
    canonical = json.dumps(plan.to_dict(), sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def save_plan(plan: SkipPlan, path: str | os.PathLike) -> Path:
    """
    Write the plan atomically (folders.write_file: a temp file in the same folder, renamed).

    Nothing is written if the plan cannot be serialised; an existing file at `path` is only ever
    replaced by a complete new one; a write error is OutputError, one line.
    """
    path = Path(path)
    try:
        text = plan_json(plan)
    except (TypeError, ValueError) as err:
        raise PlanError(f'cannot write plan {str(path)!r}: {err}') from err
    return write_file(path, text, 'plan')


def load_plan(path: str | os.PathLike, model_dir: str | os.PathLike | None = None,
              check_hash: bool = True) -> SkipPlan:
    """
    Read and validate a plan; with `model_dir`, check it was made for those weights.

    The model folder is checked first (vlm.loading.check_model_dir), so a corrupt weights file is
    reported as such, not as a plan made for other weights.
    """
    path = Path(path)
    if not path.is_file():
        raise PlanError(f'no such plan file {str(path)!r}: make one with ros2-gmskip calibrate')
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except UnicodeDecodeError as err:
        raise PlanError(f'plan {path} is not UTF-8 text ({err.reason}): re-run ros2-gmskip '
                        'calibrate') from None
    except json.JSONDecodeError as err:
        raise PlanError(f'plan {path} is not valid JSON ({err.msg} at line {err.lineno} column '
                        f'{err.colno}): re-run ros2-gmskip calibrate') from None
    try:
        plan = SkipPlan.from_dict(data)
    except PlanError as err:
        raise PlanError(f'plan {path}: {err}') from None
    if model_dir is not None and check_hash:
        from ros2_gmskip.vlm.loading import check_model_dir     # torch-free
        check_model_dir(Path(model_dir))
        actual = weights_sha256(model_dir)
        if actual != plan.model.sha256:
            raise PlanError(f'plan {path} was made for model sha256 {plan.model.sha256[:12]}, '
                            f'but {model_dir} has {actual[:12]}: re-run ros2-gmskip calibrate '
                            'for this model')
    return plan


def check_plan_fits(plan: SkipPlan, path: str | os.PathLike, model: Any) -> None:
    """
    Raise PlanError naming the field where `plan` disagrees with the loaded `model`.

    The one check of a plan against a model, run by every verb that applies a plan once the model
    is loaded (prune, heal, evaluate, export, the torch backend): the family, the block count of
    the plan's stack, and the token skipping against the blocks the plan keeps. The weights hash
    is `load_plan`'s. Imports torch (through vlm.blocks) only when called.
    """
    from ros2_gmskip.vlm.blocks import family_of, get_stack

    where = f'plan {str(path)!r}'
    family = family_of(model)
    if plan.model.family != family:
        raise PlanError(f'{where} is for a {plan.model.family} model, the model is {family}: '
                        're-run ros2-gmskip calibrate for this model')
    blocks = get_stack(model, plan.stack).num_blocks
    if blocks != plan.model.num_blocks:
        raise PlanError(f'{where} says model.num_blocks {plan.model.num_blocks}, the model has '
                        f'{blocks} {plan.stack} blocks: re-run ros2-gmskip calibrate for it')
    kept = blocks - len(plan.removed_blocks)
    tokens = TokenSkip.from_dict(plan.tokens)
    if tokens.fastv is not None and tokens.fastv.r > 0 and tokens.fastv.k >= kept:
        raise PlanError(f'{where}: tokens.fastv.k {tokens.fastv.k} needs more than the {kept} '
                        'blocks the plan keeps: re-run ros2-gmskip calibrate --tokens')
    if tokens.kv_ratio and tokens.kv_start >= kept:
        raise PlanError(f'{where}: tokens.kv_removal.start_layer {tokens.kv_start} is past the '
                        f'{kept} blocks the plan keeps: re-run ros2-gmskip calibrate --tokens')


def plan_token_skip(path: str | os.PathLike | None) -> TokenSkip:
    """
    Return the token-skip settings a plan file records (`tokens`), or none (no plan / tokens).

    The weights hash is not checked here: callers that load the model check it.
    """
    if path is None:
        return TokenSkip()
    return TokenSkip.from_dict(load_plan(path, check_hash=False).tokens)
