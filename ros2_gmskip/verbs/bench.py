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

r"""
Benchmark backends side by side on the same test scenes, in one run, and print ratios.

Configurations (each one describes every image, one configuration after the other; interleaving
them per frame was tried and rejected: torch's OpenMP threads and ONNX Runtime's intra-op pool keep
spinning after a run and steal the 2 cores from the next configuration; measured with 2 threads,
it made the 11-block ORT decoder exactly as slow as the 16-block one):
  hf_full       Hugging Face `generate` on the full model (processor + generate + decode)
  torch_full    our torch backend (own greedy loop with KV cache), full model
  torch_pruned  the same, GM-Skip plan applied
  ort_full      ONNX Runtime backend on the exported full model
  ort_pruned    ONNX Runtime backend on the exported pruned model (decoder.fused.onnx, as the node,
                speculative decoding with the bundle's draft table: `describe --help`)
  ort_pruned_greedy     the same, one token per decoder run (--draft-tokens 0): what the drafts buy
  ort_pruned_portable   the same bundle on decoder.onnx, the plain-op graph TensorRT builds from
                        (one token per run, as ort_pruned_greedy: the graphs compared alone)
  ort_pruned_int4       ort_pruned quantized (export --fused-weights int4: int4-weight decode
                        steps, dynamic int8 prefill)
  trt_full / trt_pruned   native TensorRT engines, where TensorRT and a GPU are available
  torch_fastv / ort_fastv         full model + FastV (token pruning after block K)
  torch_combined / ort_combined   GM-Skip plan + FastV + visual KV removal
  ort_combined_int4     ort_combined quantized the same way: every acceleration at once
The token configurations take FastV K,R and the KV-removal ratio from --fastv / --kv-removal, else
from the plan's `tokens` entry (`calibrate --tokens`); without either they are skipped. Every
`*_pruned` configuration is GM-Skip only (the plan's token settings are not applied there).

A healed model (`ros2-gmskip heal`: the plan's blocks removed, then fine-tuned with its token
skipping on) or any already pruned folder (`prune`) is compared with `--pruned-model DIR`: every
`*_pruned` / `*_combined` configuration runs that folder as it is, the `*_full` ones --model, and
the token settings come from DIR/plans/healed.json (or --fastv / --kv-removal):

    ros2-gmskip bench --pruned-model models/gmskip-llava-scenes-healed --n 50 --rounds 3

Besides latency, each configuration's texts are scored against the scenes' ground truth (accuracy,
CIDEr-D), and its decoder FLOPs are estimated with tokenskip/flops.py (FastV's per-layer formula
4nd^2 + 2n^2d + 2ndm; prefill + every decode step at its mean generated length), so one run gives
the side-by-side table of the token-skipping issue: full / GM-Skip / FastV / combined.

    ros2-gmskip bench --n 50
    ros2-gmskip bench --model models/gmskip-llava-scenes \
        --plan models/gmskip-llava-scenes/plans/accuracy-reverse.json --n 50 --json

A shared machine has slow spells; `--rounds R` runs every configuration R times in rotated order
and pools the frames (each round's p50 is kept as `round_p50_ms`, to show the spread).

Prints a table (p50 / p90 per-frame latency, tokens/s, ratio to hf_full, pruned/full), writes
bench.json and bench.png to --out-dir, and with --json prints the JSON as the last stdout line,
including "ort_pruned_vs_hf" and "ort_pruned_vs_ort_full" (ratios of p50 latencies).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import platform
import time

import numpy as np
from ros2_gmskip.argtypes import existing_dir, positive_int
from ros2_gmskip.runtime.results import BackendInfo, DEFAULT_PROMPT, Latency, Result
from ros2_gmskip.verbs.token_options import add_token_arguments, token_skip_from_args

HELP = 'time HF generate, torch, ONNX Runtime (and TensorRT) full vs pruned on the same scenes'
LOG = logging.getLogger(__name__)
CONFIGS = ('hf_full', 'torch_full', 'torch_pruned', 'torch_fastv', 'torch_combined', 'ort_full',
           'ort_pruned', 'ort_pruned_greedy', 'ort_pruned_portable', 'ort_pruned_int4',
           'ort_fastv', 'ort_combined',
           'ort_combined_int4',
           'trt_full', 'trt_pruned')
TOKEN_CONFIGS = ('_fastv', '_combined')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', type=Path, default=None,
                        help='model folder (default: the embedded default model)')
    parser.add_argument('--plan', type=Path, default=None,
                        help='skip plan (default: the shipped plan of the embedded model)')
    parser.add_argument('--pruned-model', type=existing_dir, default=None, metavar='DIR',
                        help='an already pruned model folder (heal / prune output) for the '
                             '*_pruned and *_combined configurations, instead of applying --plan '
                             'to --model; its token settings: DIR/plans/healed.json')
    parser.add_argument('--n', type=positive_int, default=50, help='test scenes')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames per config')
    parser.add_argument('--rounds', type=positive_int, default=1,
                        help='run every configuration this many times, the order rotated each '
                             'round, so a slow spell of a shared machine hits all of them; '
                             "p50/p90 are over all rounds' frames, and each round's p50 is "
                             'kept (round_p50_ms) to show the spread (default: %(default)s)')
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='CPU threads for torch and onnxruntime (same for all)')
    parser.add_argument('--max-new-tokens', type=positive_int, default=48)
    add_token_arguments(parser, "the plan's, for the *_fastv (FastV only) and *_combined "
                                'configurations')
    parser.add_argument('--only', nargs='+', choices=CONFIGS, default=None,
                        help='run only these configurations')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='torch / HF device (onnxruntime uses the CPU provider unless cuda)')
    parser.add_argument('--out-dir', type=Path, default=Path('bench_out'),
                        help='where bench.json and bench.png go')
    parser.add_argument('--json', action='store_true',
                        help='print the result JSON as the last stdout line')


class HFGenerate:
    """Baseline: the processor + `model.generate` path a user of transformers would write."""

    name = 'hf_generate'

    def __init__(self, model_dir: Path, device: str, threads: int) -> None:
        from ros2_gmskip.vlm.loading import load_vlm
        import torch
        torch.set_num_threads(threads)
        self.torch = torch
        self.model, self.processor = load_vlm(model_dir)
        self.model.to(device)
        self.device = device
        self.info = BackendInfo(backend=self.name, model_id='', plan_id='full', engine_id='',
                                decoder_graph='transformers generate')

    def describe(self, image, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 48) -> Result:
        from ros2_gmskip.vlm.prompting import build_inputs
        t0 = time.perf_counter()
        with self.torch.no_grad():
            inputs = build_inputs(self.processor, [image], prompt).to(self.device)
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[0, inputs['input_ids'].shape[1]:]
            if self.device == 'cuda':
                self.torch.cuda.synchronize()
        text = self.processor.decode(new, skip_special_tokens=True).strip()
        tokens = int((new != self.model.generation_config.eos_token_id).sum())
        total = (time.perf_counter() - t0) * 1e3
        return Result(text=text, tokens=tokens, latency=Latency(total_ms=total))


def token_settings(args, plan: Path | None):
    """(TokenSkip for *_fastv, TokenSkip for *_combined), or (None, None) when none is set."""
    from ros2_gmskip.gmskip.plan import plan_token_skip
    from ros2_gmskip.tokenskip.settings import TokenSkip
    combined = token_skip_from_args(args, plan) or plan_token_skip(plan)
    if combined.fastv is None and not combined.kv_ratio:
        return None, None
    return (TokenSkip(fastv=combined.fastv) if combined.fastv is not None else None, combined)


def pruned_source(args, model_dir: Path, plan: Path | None) -> tuple[Path, Path | None]:
    """
    Return the (model folder, plan) the *_pruned / *_combined configurations run.

    That is --pruned-model with its heal plan (token settings only; it removes nothing more),
    else --model with --plan.
    """
    if args.pruned_model is None:
        return model_dir, plan
    from ros2_gmskip.verbs.heal import HEALED_PLAN
    healed = args.pruned_model / HEALED_PLAN
    return args.pruned_model, healed if healed.is_file() else None


def make_backends(args, model_dir: Path, plan: Path | None) -> dict:
    """Name -> backend, for the configurations that can run here."""
    from ros2_gmskip.runtime.defaults import ensure_bundle
    from ros2_gmskip.runtime.factory import create_backend
    from ros2_gmskip.tokenskip.settings import TokenSkip
    wanted = args.only or CONFIGS
    backends = {}
    providers = 'cuda' if args.device == 'cuda' else 'cpu'
    pruned_dir, pruned_plan = pruned_source(args, model_dir, plan)
    fastv_only, combined = token_settings(args, pruned_plan)
    for name in wanted:
        pruned = '_pruned' in name or '_combined' in name
        tokens = (fastv_only if name.endswith('_fastv') else combined
                  if '_combined' in name else TokenSkip())
        if pruned and plan is None and args.pruned_model is None:
            LOG.warning('skipping %s: no plan', name)
            continue
        source = pruned_dir if pruned else model_dir
        source_plan = pruned_plan if pruned else None
        if tokens is None:
            LOG.warning('skipping %s: no token settings (pass --fastv / --kv-removal or a plan '
                        'made with calibrate --tokens)', name)
            continue
        if name == 'hf_full':
            backends[name] = HFGenerate(model_dir, args.device, args.threads)
        elif name.startswith('torch'):
            backends[name] = create_backend('torch', model=source, plan=source_plan,
                                            device=args.device, threads=args.threads,
                                            tokens=tokens, full=not pruned)
        elif name.startswith('ort'):
            bundle = ensure_bundle(source, source_plan, full=not pruned, tokens=tokens,
                                   fused_weights='int4' if name.endswith('_int4') else 'fp32')
            backends[name] = create_backend('onnxruntime', bundle=bundle, providers=providers,
                                            threads=args.threads,
                                            graph='portable' if 'portable' in name else 'auto',
                                            **({'draft_tokens': 0} if 'greedy' in name
                                               or 'portable' in name else {}))
        elif name.startswith('trt'):
            from ros2_gmskip.runtime.trt_backend import available
            ok, why = available()
            if not ok:
                LOG.warning('skipping %s: %s', name, why)
                continue
            bundle = ensure_bundle(source, source_plan, full=not pruned)
            backends[name] = create_backend('tensorrt', bundle=bundle)
    return backends


def summarize(results: list[Result]) -> dict:
    from ros2_gmskip.runtime.stats import percentiles
    totals = [r.latency.total_ms for r in results]
    tokens = sum(r.tokens for r in results)
    seconds = sum(totals) / 1e3
    p = percentiles(totals, (50, 90))
    stages = {s: sum(getattr(r.latency, s) for r in results) / len(results)
              for s in ('preprocess_ms', 'vision_ms', 'prefill_ms', 'decode_ms')}
    return {'p50_ms': p['p50'], 'p90_ms': p['p90'], 'max_ms': p['max'],
            'tokens_per_s': tokens / seconds if seconds else 0.0,
            'mean_tokens': tokens / len(results), 'mean_stage_ms': stages}


def quality(texts: list[str], samples) -> dict:
    """Accuracy (main object named) and CIDEr-D of a configuration's texts."""
    from ros2_gmskip.gmskip.metrics import accuracy, cider
    return {'accuracy': accuracy(texts, samples), 'cider': cider(texts, samples)}


def estimated_flops(name: str, backend, model_dir: Path, mean_tokens: float,
                    prompt_tokens: int, image_tokens: int) -> float:
    """Return one description's decoder FLOPs (tokenskip/flops.py) at the backend's settings."""
    from ros2_gmskip.tokenskip.flops import DecoderDims, generation_flops
    config = json.loads((model_dir / 'config.json').read_text())
    text = config.get('text_config', config)
    dims = DecoderDims(layers=int(text['num_hidden_layers']), hidden=int(text['hidden_size']),
                       ffn=int(text['intermediate_size']))
    removed = list(backend.info.blocks_removed)
    ts = backend.info.tokens
    return float(generation_flops(dims, prompt_tokens, image_tokens,
                                  max(1, round(mean_tokens)), removed_blocks=removed,
                                  fastv=ts.fastv, kv_ratio=ts.kv_ratio, kv_start=ts.kv_start))


def prompt_sizes(backends: dict) -> tuple[int, int]:
    """
    Return (prompt tokens, image tokens) of the default prompt.

    Counted with any bundle backend's tokenizer or torch backend's processor (else the default
    model's: 70 and 64).
    """
    for backend in backends.values():
        tok = getattr(backend, 'tokenizer', None)
        if tok is not None and hasattr(tok, 'prompt_ids'):
            ids = tok.prompt_ids(DEFAULT_PROMPT)
            return len(ids), int((ids == tok.image_token_id).sum())
    for backend in backends.values():
        processor = getattr(backend, 'processor', None)
        if processor is not None and hasattr(backend, 'image_token_id'):
            from ros2_gmskip.vlm.prompting import prompt_ids_of
            ids = prompt_ids_of(processor)
            return len(ids), sum(i == backend.image_token_id for i in ids)
    return 70, 64


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(result['configs'])
    p50 = [result['configs'][n]['p50_ms'] for n in names]
    p90 = [result['configs'][n]['p90_ms'] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ['#999999' if n.startswith('hf') else '#4c72b0' if n.endswith('full') else
              '#55a868' if n.endswith(TOKEN_CONFIGS) or '_combined' in n else '#dd8452'
              for n in names]
    bars = ax.bar(names, p50, color=colors,
                  yerr=[[0] * len(names), [b - a for a, b in zip(p50, p90)]], capsize=4)
    for bar, value in zip(bars, p50):
        ax.annotate(f'{value:.0f}', (bar.get_x() + bar.get_width() / 2, value),
                    ha='center', va='bottom', fontsize=8)
    ax.set_ylabel('per-frame latency, ms (bar p50, whisker p90)')
    rounds = f' x {result["rounds"]} rounds' if result.get('rounds', 1) > 1 else ''
    ax.set_title(f'{result["n"]} test scenes{rounds}, {result["threads"]} threads, '
                 f'{result["machine"]}',
                 fontsize=9)
    ax.tick_params(axis='x', labelsize=8, labelrotation=20)
    fig.tight_layout()
    from ros2_gmskip.folders import file_in_place
    with file_in_place(path, 'plot') as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.runtime.defaults import default_model_dir, default_plan_path
    from ros2_gmskip.scenes import load_samples
    from tqdm import tqdm

    from ros2_gmskip.folders import check_writable
    check_writable(args.out_dir, '--out-dir')        # before the runs, not after them
    model_dir = args.model or default_model_dir()
    plan = args.plan or (default_plan_path() if args.model is None else None)
    backends = make_backends(args, model_dir, plan)
    samples = load_samples('test', args.n)
    names = list(backends)
    results: dict[str, list[Result]] = {name: [] for name in names}
    round_p50: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for sample in samples[:args.warmup]:        # warm-up: caches, allocator, threads
                backends[name].describe(sample.image, DEFAULT_PROMPT, args.max_new_tokens)
            desc = name if args.rounds == 1 else f'{name} ({r + 1}/{args.rounds})'
            got = [backends[name].describe(s.image, DEFAULT_PROMPT, args.max_new_tokens)
                   for s in tqdm(samples, desc=desc, unit='frame')]
            results[name] += got
            round_p50[name].append(float(np.median([g.latency.total_ms for g in got])))
    machine = f'{platform.processor() or platform.machine()}, {args.device}'
    out = {'n': len(samples), 'threads': args.threads, 'device': args.device,
           'machine': machine, 'model': str(model_dir), 'plan': str(plan) if plan else None,
           'pruned_model': str(args.pruned_model) if args.pruned_model else None,
           'rounds': args.rounds,
           'configs': {n: {**summarize(r), 'round_p50_ms': round_p50[n]}
                       for n, r in results.items()}}
    ref = {n: [r.text for r in results[n][:len(samples)]] for n in names}
    out['same_text_as'] = {n: {m: sum(a == b for a, b in zip(ref[n], ref[m])) / len(samples)
                               for m in names if m != n} for n in names}
    cfg = out['configs']
    prompt_tokens, image_tokens = prompt_sizes(backends)
    pruned_dir, _ = pruned_source(args, model_dir, plan)
    for name in names:
        cfg[name].update(quality(ref[name], samples))
        cfg[name]['tokens'] = backends[name].info.tokens.to_dict()
        source = pruned_dir if '_pruned' in name or '_combined' in name else model_dir
        cfg[name]['gflops'] = estimated_flops(name, backends[name], source,
                                              cfg[name]['mean_tokens'], prompt_tokens,
                                              image_tokens) / 1e9
    for name in names:
        cfg[name]['vs_hf'] = cfg[name]['p50_ms'] / cfg['hf_full']['p50_ms'] \
            if 'hf_full' in cfg else None
        full = name.split('_')[0] + '_full'
        if name.endswith(('_pruned', '_int4', *TOKEN_CONFIGS)) and full in cfg:
            out[f'{name}_vs_{full}'] = cfg[name]['p50_ms'] / cfg[full]['p50_ms']
            cfg[name]['flops_vs_full'] = cfg[name]['gflops'] / cfg[full]['gflops']
        if 'hf_full' in cfg and name != 'hf_full':
            out[f'{name}_vs_hf'] = cfg[name]['vs_hf']
    for a, b in (('ort_pruned', 'ort_pruned_portable'), ('ort_pruned_int4', 'ort_pruned'),
                 ('ort_pruned', 'ort_pruned_greedy')):
        if a in cfg and b in cfg:                   # the fused graph, its quantized copies
            out[f'{a}_vs_{b}'] = cfg[a]['p50_ms'] / cfg[b]['p50_ms']
    print(f'{"config":<15} {"p50 ms":>8} {"p90 ms":>8} {"tok/s":>7} {"vs hf":>6}  '
          f'{"vision":>6} {"prefill":>7} {"decode":>6}  {"acc":>5} {"CIDEr":>5} {"GFLOPs":>6}')
    for name in names:
        c = cfg[name]
        s = c['mean_stage_ms']
        vs = f'{c["vs_hf"]:.3f}' if c['vs_hf'] is not None else '-'
        print(f'{name:<15} {c["p50_ms"]:8.1f} {c["p90_ms"]:8.1f} {c["tokens_per_s"]:7.1f} '
              f'{vs:>6}  {s["vision_ms"]:6.1f} {s["prefill_ms"]:7.1f} {s["decode_ms"]:6.1f}  '
              f'{c["accuracy"]:5.3f} {c["cider"]:5.2f} {c["gflops"]:6.3f}')
    if args.rounds > 1:
        for name in names:
            print(f'{name}: p50 per round {", ".join(f"{v:.1f}" for v in round_p50[name])} ms')
    for name in names:
        if cfg[name]['tokens']:
            print(f'{name}: token skipping {cfg[name]["tokens"]}')
    for key in sorted(k for k in out if '_vs_' in k and k.endswith(
            ('_vs_hf', '_full', '_vs_ort_pruned', '_portable', '_greedy'))):
        print(f'{key} = {out[key]:.3f}')
    from ros2_gmskip.folders import write_file
    write_file(args.out_dir / 'bench.json', json.dumps(out, indent=1), 'bench results')
    plot(out, args.out_dir / 'bench.png')
    print(f'wrote {args.out_dir / "bench.json"} and {args.out_dir / "bench.png"}')
    if args.json:
        print(json.dumps(out))
    return 0
