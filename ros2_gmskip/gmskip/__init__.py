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
GM-Skip: the metric-guided search for Transformer blocks to skip, and its skip plans.

    from ros2_gmskip.gmskip import Objective, search, SkipPlan, save_plan, load_plan
    result = search(score_fn, num_blocks=24, strategy='reverse', objective=Objective(lam=0.3))
    save_plan(SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy'), 'p.json')

`search_tokens` (token_search.py) then tunes FastV / KV removal on the block-pruned model.

Light imports only (no torch): `plot` (matplotlib) and the evaluator (torch) are imported from
their modules directly.
"""

from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.plan import (
    FORMAT,
    load_plan,
    MetricRecord,
    ModelRef,
    plan_id,
    save_plan,
    SkipPlan,
    weights_sha256,
)
from ros2_gmskip.gmskip.strategies import protected_blocks, search, SearchResult, Step, Strategy
from ros2_gmskip.gmskip.token_search import search_tokens, TokenSearchResult, TokenStep, Workload

__all__ = [
    'FORMAT',
    'MetricRecord',
    'ModelRef',
    'Objective',
    'SearchResult',
    'SkipPlan',
    'Step',
    'Strategy',
    'TokenSearchResult',
    'TokenStep',
    'Workload',
    'load_plan',
    'plan_id',
    'protected_blocks',
    'save_plan',
    'search',
    'search_tokens',
    'weights_sha256',
]
