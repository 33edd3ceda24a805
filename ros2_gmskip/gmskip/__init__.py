"""GM-Skip: the metric-guided search for Transformer blocks to skip, and its skip plans.

    from ros2_gmskip.gmskip import Objective, search, SkipPlan, save_plan, load_plan
    result = search(score_fn, num_blocks=24, strategy='reverse', objective=Objective(lam=0.3))
    save_plan(SkipPlan.from_search(result, model_dir, family='llava', metric='accuracy'), 'p.json')

`search_tokens` (token_search.py) then tunes FastV / KV removal on the block-pruned model.

Light imports only (no torch): `plot` (matplotlib) and the evaluator (torch) are imported from
their modules directly.
"""

from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.plan import (
    FORMAT, MetricRecord, ModelRef, SkipPlan, load_plan, plan_id, save_plan, weights_sha256)
from ros2_gmskip.gmskip.strategies import (
    SearchResult, Step, Strategy, protected_blocks, search)
from ros2_gmskip.gmskip.token_search import (
    TokenSearchResult, TokenStep, Workload, search_tokens)

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
