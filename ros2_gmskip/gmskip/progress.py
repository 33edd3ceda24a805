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
What an interrupted search has already scored, so `calibrate --resume` goes on from there.

    record = SearchProgress.beside(Path('plan.json'), inputs)   # plan.progress.json
    result = search(..., known=record.load() if resume else None, on_step=record.save)

After every step calibrate rewrites the file (atomically) with every score so far, in
evaluation order. A resumed search replays the same deterministic strategy with those scores
memoised, so it walks the same trajectory and makes the same plan; only the sets it never
reached are evaluated. The file names the inputs the scores depend on (weights hash, data,
samples, metric, batch size, block stack): a record made with other inputs is refused, while
the search settings (strategy, lambda, floors) may change, since they do not change a score.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Mapping

from ros2_gmskip.errors import PlanError
from ros2_gmskip.folders import write_file
from ros2_gmskip.gmskip.scoring import Removed

FORMAT = 'ros2_gmskip/search-progress@1'


@dataclass
class SearchProgress:
    """The progress file of one calibration: where it lives and the inputs it is valid for."""

    path: Path
    inputs: dict          # what a score depends on: sha256, data, n, metric, batch_size, stack

    @classmethod
    def beside(cls, out: Path, inputs: dict) -> SearchProgress:
        """Return the record kept next to the plan `out` (plan.json -> plan.progress.json)."""
        return cls(out.with_name(f'{out.stem}.progress.json'), dict(inputs))

    def save(self, scores: Mapping[Removed, float]) -> None:
        """Write every score so far (JSON floats round-trip exactly)."""
        doc = {'format': FORMAT, 'inputs': self.inputs,
               'scores': [[list(removed), score] for removed, score in scores.items()]}
        write_file(self.path, json.dumps(doc, indent=1) + '\n', 'search progress')

    def load(self) -> dict[Removed, float]:
        """Return the recorded scores; PlanError if there are none or they are for other inputs."""
        if not self.path.is_file():
            raise PlanError(f'--resume: no progress file {str(self.path)!r} (calibrate writes it '
                            'next to --out after every step): run without --resume')
        try:
            doc = json.loads(self.path.read_text(encoding='utf-8'))
            if doc.get('format') != FORMAT:
                raise ValueError(f'format {doc.get("format")!r} is not {FORMAT!r}')
            scores = {tuple(int(b) for b in removed): float(score)
                      for removed, score in doc['scores']}
            inputs = doc['inputs']
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise PlanError(f'--resume: progress file {str(self.path)!r} is unreadable ({err}): '
                            'delete it and run without --resume') from None
        changed = sorted(k for k in set(inputs) | set(self.inputs)
                         if inputs.get(k) != self.inputs.get(k))
        if changed:
            values = ', '.join(repr(inputs.get(k)) for k in changed)
            raise PlanError(f'--resume: progress file {str(self.path)!r} was made with other '
                            f'{", ".join(changed)} ({values}): rerun with those, or without '
                            '--resume')
        return scores

    def remove(self) -> None:
        """Delete the record (the plan, written, now holds the whole search)."""
        self.path.unlink(missing_ok=True)
