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
Plot a GM-Skip search: score ratio and objective against the number of blocks removed.

    from ros2_gmskip.gmskip.plot import plot_healing, plot_search, plot_token_search
    plot_search(result, 'plan.png', title='default model, val n=256')
    plot_token_search(token_result, 'plan-tokens.png')
    plot_healing(summary['log'], 'heal.png', summary['val_accuracy'])   # heal --plot

Left axis: S(R)/S(empty) along the trajectory (line) and for every evaluated candidate (faint
dots); the score floor as a dashed line when set. Right axis: J(R). The chosen plan is ringed.

The token search has no path to draw (it is a grid), so its plot is the trade-off itself: score
ratio against the FLOPs ratio of every setting, infeasible ones hollow, the chosen one ringed.
"""

from __future__ import annotations

import os
from pathlib import Path

from ros2_gmskip.gmskip.strategies import SearchResult
from ros2_gmskip.gmskip.token_search import TokenSearchResult


def _save(fig, path: Path) -> None:
    """Lay out and write `fig` as a PNG at `path`, complete or not at all (file_in_place)."""
    from ros2_gmskip.folders import file_in_place
    fig.tight_layout()
    with file_in_place(path, 'plot') as tmp:
        fig.savefig(tmp, format='png')


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')            # no display needed; harmless when already set
    import matplotlib.pyplot as plt
    return plt


def plot_search(result: SearchResult, path: str | os.PathLike, title: str = '') -> Path:
    """Write the search plot as a PNG at `path`; returns the path."""
    plt = _pyplot()

    path = Path(path)
    xs = [len(s.removed) for s in result.trajectory]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        if result.evaluated:
            ax.scatter([len(s.removed) for s in result.evaluated],
                       [s.score_ratio for s in result.evaluated], s=12, color='tab:blue',
                       alpha=0.2, label='evaluated candidates')
        ax.plot(xs, [s.score_ratio for s in result.trajectory], 'o-', color='tab:blue',
                label='S(R)/S(∅) trajectory')
        floor = result.objective.min_score_ratio
        if floor is not None:
            ax.axhline(floor, color='tab:red', linestyle='--', linewidth=1,
                       label=f'floor {floor:g}')
        cap = result.objective.max_sparsity
        if cap is not None:
            ax.axvline(cap * result.num_blocks, color='tab:gray', linestyle=':', linewidth=1,
                       label=f'max sparsity {cap:g}')
        best = result.best
        ax.plot([len(best.removed)], [best.score_ratio], 'o', markersize=14,
                markerfacecolor='none', markeredgecolor='tab:green', markeredgewidth=2,
                label=f'plan: {len(best.removed)}/{result.num_blocks} removed')
        ax.set_xlabel(f'blocks removed (of {result.num_blocks})')
        ax.set_ylabel('score ratio S(R)/S(∅)', color='tab:blue')
        ax.grid(alpha=0.3)

        right = ax.twinx()
        right.plot(xs, [s.objective for s in result.trajectory], 's--', color='tab:orange',
                   markersize=4, label=f'J (λ={result.objective.lam:g})')
        right.plot([len(best.removed)], [best.objective], '*', color='tab:green', markersize=12)
        right.set_ylabel('objective J', color='tab:orange')

        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc='lower left', fontsize=8)
        ax.set_title(title or f'GM-Skip {result.strategy}: removed {list(best.removed)}',
                     fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_token_search(result: TokenSearchResult, path: str | os.PathLike, title: str = ''
                      ) -> Path:
    """Write the token-search plot (score ratio vs FLOPs ratio) as a PNG at `path`."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        for feasible, style in ((True, {'color': 'tab:blue'}),
                                (False, {'facecolors': 'none', 'edgecolors': 'tab:gray'})):
            steps = [s for s in result.trajectory if s.feasible is feasible]
            if steps:
                ax.scatter([s.flops_ratio for s in steps], [s.score_ratio for s in steps], s=22,
                           label='feasible settings' if feasible else 'below the floor', **style)
        off = result.trajectory[0]
        ax.plot([off.flops_ratio], [off.score_ratio], 's', color='tab:orange', markersize=7,
                label='no token skipping (block plan)')
        floor = result.objective.min_score_ratio
        if floor is not None:
            ax.axhline(floor, color='tab:red', linestyle='--', linewidth=1,
                       label=f'floor {floor:g}')
        best = result.best
        ax.plot([best.flops_ratio], [best.score_ratio], 'o', markersize=14,
                markerfacecolor='none', markeredgecolor='tab:green', markeredgewidth=2,
                label=f'chosen: {best.setting.describe()} (J {best.objective:.3f})')
        ax.set_xlabel('decoder FLOPs / block plan FLOPs (estimate)')
        ax.set_ylabel('score ratio S/S(∅) (unpruned model)')
        ax.grid(alpha=0.3)
        ax.legend(loc='lower right', fontsize=8)
        ax.set_title(title or f'token search: λ={result.objective.lam:g}, '
                     f'{result.evaluations} evaluations', fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def plot_healing(log: list[dict], path: str | os.PathLike, val: dict | None = None,
                 eval_n: int | None = None, title: str = '') -> Path:
    """
    Write a healing run's curve as a PNG at `path`.

    Caption loss per step (faint) with its running mean, val accuracy at the logged steps (`eval_n`
    scenes) and, from `val` ({'n', 'before', 'after'}), the larger before / after measurement at
    steps 0 and last.
    """
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    try:
        steps = [e['step'] + 1 for e in log]
        losses = [e['loss'] for e in log]
        window = max(1, len(losses) // 20)
        recent = [losses[max(0, i - window + 1):i + 1] for i in range(len(losses))]
        ax.plot(steps, losses, color='tab:blue', alpha=0.25, linewidth=0.8)
        ax.plot(steps, [sum(r) / len(r) for r in recent], color='tab:blue',
                label=f'caption loss (mean of {window})')
        ax.set_xlabel('healing step')
        ax.set_ylabel('caption loss', color='tab:blue')
        ax.grid(alpha=0.3)
        right = ax.twinx()
        points = [(e['step'] + 1, e['val_accuracy']) for e in log if 'val_accuracy' in e]
        if points:
            right.plot([p[0] for p in points], [p[1] for p in points], 'o:', color='tab:green',
                       alpha=0.6, label=f'val accuracy ({eval_n or "?"} scenes)')
        if val and val.get('before') is not None and val.get('after') is not None:
            right.plot([0, steps[-1] if steps else 0], [val['before'], val['after']], 's',
                       color='tab:green', markersize=8,
                       label=f'val accuracy before / after ({val["n"]} scenes)')
        right.set_ylabel('val accuracy (token skipping on)', color='tab:green')
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], loc='center right', fontsize=8)
        ax.set_title(title or 'healing', fontsize=10)
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
