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
The whole pipeline on the embedded default, offline: camera bag -> GM-Skip-pruned VLM -> bag.

Steps (each announced on one line):
  1. render 20 test scenes (640x480, 10 fps, sensor_msgs/Image rgb8, MCAP) with their ground truth
     into demo_out/camera0 (a rosbag2 folder);
  2. load the ONNX Runtime backend on the embedded default model pruned by its shipped GM-Skip
     plan (the first run exports the ONNX bundle into the cache: about a minute; later runs
     reuse it);
  3. replay the bag through the gmskip_describer pipeline into demo_out/descriptions;
  4. print ground truth vs model output per frame, marked by whether the main object is named;
  5. print the latency breakdown (p50 / p90 / max per stage, tokens/s) and the accuracy;
  6. say where the output bag is.

Takes about a minute the first time (export), a few seconds to tens of seconds after that,
depending on the CPU. Leaves behind demo_out/camera0, demo_out/descriptions (rosbag2 folders) and
demo_out/.gmskip-demo.json (what the demo made: a re-run replaces only those), plus the cached
bundle under ~/.cache/ros2_gmskip/bundles ($ROS2_GMSKIP_CACHE).

    ros2-gmskip demo                       # what `make demo` runs
    ros2-gmskip demo --full                # the unpruned model, for comparison
    ros2-gmskip demo --backend torch --n 50 --rate realtime --out /tmp/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import shutil
import sys
import time
from typing import Any

from ros2_gmskip.argtypes import positive_int
from ros2_gmskip.verbs.replay import add_fake_backend_argument, latency_table, RATES

HELP = 'run the whole pipeline on the embedded default: test bag -> pruned VLM -> output bag'

STEPS = 6
WIDTH, HEIGHT, FPS = 640, 480, 10.0
CAMERA_BAG = 'camera0'          # rosbag2 folders: no ROS 1 '.bag' suffix
OUTPUT_BAG = 'descriptions'
MARKER = '.gmskip-demo.json'              # names what the demo created in --out
DEMO_STAGES = ('preprocess_ms', 'vision_ms', 'prefill_ms', 'decode_per_token_ms', 'total_ms')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--backend', choices=('onnxruntime', 'torch', 'tensorrt'),
                        default='onnxruntime', help='inference backend (default: onnxruntime)')
    parser.add_argument('--full', action='store_true',
                        help='the unpruned default model (default: pruned by its shipped plan)')
    parser.add_argument('--n', type=positive_int, default=20, help='frames (default: 20)')
    parser.add_argument('--out', type=Path, default=Path('demo_out'),
                        help='output folder (default: demo_out)')
    parser.add_argument('--rate', choices=RATES, default='max',
                        help='replay rate: max (every frame, default) or realtime (10 fps, newest '
                             'frame wins)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    add_fake_backend_argument(parser)


class _Step:

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f'[{self.n}/{STEPS}] {text}', flush=True)


def _marks() -> tuple[str, str]:
    """('✓', '✗') where stdout can print them, else ('y', 'n')."""
    try:
        '✓✗'.encode(sys.stdout.encoding or 'ascii')
        return '✓', '✗'
    except (UnicodeEncodeError, LookupError):
        return 'y', 'n'


# ---------------------------------------------------------------------------------------------
# demo_out: replace only what an earlier demo made


def _is_bag_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and all(
        p.is_file() and (p.name == 'metadata.yaml' or p.suffix in ('.mcap', '.db3'))
        for p in path.iterdir())


def _prepare_out(out: Path, names: tuple[str, ...]) -> None:
    """Make `out`; remove earlier demo outputs `names` (only those the marker says it made)."""
    from ros2_gmskip.errors import GmSkipError

    from ros2_gmskip.folders import check_writable, write_file

    if out.exists() and not out.is_dir():
        raise GmSkipError(f'--out {str(out)!r} is a file: pass a folder')
    check_writable(out / MARKER, '--out')
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    try:
        made = set(json.loads(marker.read_text())['created']) if marker.is_file() else set()
    except (OSError, ValueError, KeyError, TypeError):
        made = set()
    for name in names:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        if name not in made or not _is_bag_folder(path):
            raise GmSkipError(f'{str(path)!r} exists and was not made by the demo: remove it or '
                              f'pass --out DIR')
    for name in names:
        if (out / name).exists():
            shutil.rmtree(out / name)
    # written before the bags: an interrupted run is still cleaned up by the next one
    write_file(marker, json.dumps({'created': list(names)}) + '\n', 'demo marker')


# ---------------------------------------------------------------------------------------------
# backend


def _check_default_model(full: bool) -> tuple[Path, Path | None]:
    """Return (default model folder, its shipped plan or None with --full); one-line errors."""
    from ros2_gmskip.errors import ModelLoadError, PlanError
    from ros2_gmskip.runtime.defaults import (
        default_model_dir,
        DEFAULT_MODEL_NAME,
        DEFAULT_PLAN_NAME,
        default_plan_path,
    )

    model_dir = default_model_dir()
    if not model_dir.is_dir():
        raise ModelLoadError(f'the default model {DEFAULT_MODEL_NAME} is missing from '
                             f'{str(model_dir)!r}: train it with `ros2-gmskip train`')
    plan = None if full else default_plan_path()
    if not full and plan is None:
        raise PlanError(f'the default skip plan {str(model_dir / "plans" / DEFAULT_PLAN_NAME)!r} '
                        f'is missing: create it with `ros2-gmskip calibrate`, or run the demo '
                        f'with --full')
    return model_dir, plan


def _create_backend(kind: str, model_dir: Path, plan: Path | None, full: bool) -> Any:
    """Return the backend on the default model (+ plan); export the ONNX bundle if not cached."""
    from ros2_gmskip.runtime.defaults import bundle_cache_path, ensure_bundle
    from ros2_gmskip.runtime.factory import create_backend

    if kind == 'torch':
        return create_backend('torch', model=model_dir, plan=plan)
    cached = bundle_cache_path(model_dir, plan)
    if not (cached / 'manifest.json').is_file():
        print(f'      first run: exporting the {"pruned" if plan else "full"} model to an ONNX '
              f'bundle in {cached} (about a minute; cached for later runs)', flush=True)
    t0 = time.perf_counter()
    bundle = ensure_bundle(model_dir, plan, full=full)
    if time.perf_counter() - t0 > 1.0:
        print(f'      exported in {time.perf_counter() - t0:.0f} s', flush=True)
    return create_backend(kind, bundle=bundle)


# ---------------------------------------------------------------------------------------------
# tables


def _frames_table(out_bag: Path) -> tuple[list[str], int, int]:
    """Lines of ground truth vs model output per frame; (lines, main object named, compared)."""
    from ros2_gmskip.gmskip.metrics import names_class
    from ros2_gmskip.ros.bag import GROUND_TRUTH_TOPIC
    from ros2_gmskip.ros.replay import read_output_bag, SCENE_TOPIC

    truths: dict[int, dict] = {}
    texts: dict[int, str] = {}
    for topic, _, msg in read_output_bag(out_bag):
        if topic == GROUND_TRUTH_TOPIC:
            truth = json.loads(msg.data)
            truths[int(truth['stamp_ns'])] = truth['scene']
        elif topic == SCENE_TOPIC:
            scene = json.loads(msg.data)
            stamp_ns = scene['stamp']['sec'] * 1_000_000_000 + scene['stamp']['nanosec']
            texts[stamp_ns] = scene['text']
    yes, no = _marks()

    def name(cls: str) -> str:
        return cls.replace('_', ' ')

    width = max([len('main object')] + [len(name(s['main_class'])) for s in truths.values()])
    lines = [f'  {"#":>3}  {"main object":<{width}}  ok  ground truth / model output']
    named = compared = 0
    for i, (stamp_ns, scene) in enumerate(sorted(truths.items())):
        text = texts.get(stamp_ns)
        if text is None:
            ok, shown = '-', '(no output: dropped, rejected or failed)'
        else:
            hit = names_class(text, scene['main_class'])
            named += hit
            compared += 1
            ok, shown = (yes if hit else no), text
        lines.append(f'  {i:>3}  {name(scene["main_class"]):<{width}}  {ok:<2}  truth: '
                     f'{scene["caption"]}')
        lines.append(f'  {"":>3}  {"":<{width}}      model: {shown}')
    return lines, named, compared


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.ros.bag import make_bag
    from ros2_gmskip.ros.params import load_params
    from ros2_gmskip.ros.replay import replay_bag

    out: Path = args.out
    camera_bag, output_bag = out / CAMERA_BAG, out / OUTPUT_BAG
    fake = args.fake_backend_ms is not None
    if not fake:                                # fail before rendering anything
        model_dir, plan = _check_default_model(args.full)
    step = _Step()

    step(f'rendering {args.n} test scenes ({WIDTH}x{HEIGHT}, {FPS:g} fps, sensor_msgs/Image rgb8, '
         f'MCAP) with ground truth into {camera_bag}')
    _prepare_out(out, (CAMERA_BAG, OUTPUT_BAG))
    make_bag(camera_bag, n=args.n, fps=FPS, storage='mcap', width=WIDTH, height=HEIGHT,
             progress=not args.no_progress)

    if fake:
        from ros2_gmskip.runtime.factory import create_backend
        step(f'backend: fake ({args.fake_backend_ms:g} ms per frame; a test hook, no model)')
        backend = create_backend(f'fake:{args.fake_backend_ms:g}')
    else:
        what = 'unpruned' if plan is None else f'pruned by GM-Skip plan {plan.name}'
        step(f'backend {args.backend}: default model {model_dir.name}, {what}')
        t0 = time.perf_counter()
        backend = _create_backend(args.backend, model_dir, plan, args.full)
        info = backend.info
        print(f'      loaded in {time.perf_counter() - t0:.1f} s'
              + (f'; blocks removed: {list(info.blocks_removed)}' if info.blocks_removed else '')
              + (f'; decoder graph: {info.decoder_graph}' if info.decoder_graph else '')
              + (f'; token skipping: {info.tokens.describe()}' if not info.tokens.is_off
                 else ''), flush=True)

    step(f'replaying {camera_bag} through the gmskip_describer pipeline (rate {args.rate}) into '
         f'{output_bag}')
    summary = replay_bag(camera_bag, output_bag, backend, load_params(), rate=args.rate,
                         progress=not args.no_progress)
    print(f'      {summary["frames"]} frames: described {summary["described"]}, dropped '
          f'{summary["dropped"]}, rejected {summary["rejected"]}, errors {summary["errors"]}'
          + (f' (last error: {summary["last_error"]})' if summary['errors'] else ''))

    step('ground truth vs model output (ok: the model names the main object)')
    lines, named, compared = _frames_table(output_bag)
    print('\n'.join(lines))

    step(f'latency on {summary["described"]} frames (backend {summary["backend"]})')
    print('\n'.join(latency_table(summary, ('p50', 'p90', 'max'), DEMO_STAGES)))
    print(f'  tokens/s {summary["tokens_per_s"]:.1f}')
    if compared:
        print(f'  accuracy (main object named): {named}/{compared} = {named / compared:.0%}')
    else:
        print('  accuracy (main object named): n/a (no frame was described)')

    step(f'output bag: {output_bag} ({summary["out_storage"]})')
    for topic, n in summary['outputs'].items():
        print(f'      {topic:<46} {n:>4} messages')
    print(f'      inspect it with `ros2 bag info {output_bag}`; the input is {camera_bag}')
    return 0
