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
The bad-input sweep of issue 17, through `ros2-gmskip`: each bad input gives one line and exit 1.

Every test runs the real command line (`cli.main`) and checks three things: the exit status, that
stderr is exactly one line `error: ...`, and that nothing partial is left where the output was
to go. Argument errors exit 2 (argparse), as `ros2-gmskip --help` says.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
import shutil

import cv2
import numpy as np
from PIL import Image
import pytest
from ros2_gmskip import cli
from test_images import bomb_png
from test_outputs import run_as_nobody, shared_dir, tiny_filesystem  # noqa: F401

TINY_LAYERS = 4


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Return (exit status, stdout, stderr) of `ros2-gmskip argv` run in this process."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:                 # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """Return the one `error: ...` line of stderr (transformers' progress bars aside)."""
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith('Loading weights')]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def png16(path: Path) -> Path:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    cv2.imwrite(str(path), ramp)
    return path


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 'somewhere/inside')


# ------------------------------------------------------------------------------------------------
# exit codes and wording

def test_help_says_what_the_exit_codes_mean(capsys):
    code, out, _ = run(['--help'], capsys)
    assert code == 0 and 'Exit status: 0 done; 1 an expected failure' in ' '.join(out.split())
    assert '2 a malformed command line (argparse)' in ' '.join(out.split())


@pytest.mark.parametrize('argv,message', [
    (['describe', 'x.png', '--draft-tokens', '1000'], '1000 is greater than the maximum of 16'),
    (['describe', 'x.png', '--prompt', ''], "parameter 'prompt' = '': '' should be non-empty"),
    (['describe', 'x.png', '--prompt', '   '], 'is blank'),
    (['describe', 'x.png', '--max-new-tokens', '0'], '0 is less than the minimum of 1'),
    (['replay', 'b', '--out', 'o', '--max-image-pixels', '0'], 'less than the minimum of 1'),
    (['export', '--out', 'o', '--max-new-tokens', '-3'], 'expected a positive integer'),
])
def test_argument_errors_exit_2_with_the_schema_words(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err, err


def test_a_folder_given_as_an_image_says_it_is_a_folder(tmp_path, capsys):
    code, _, err = run(['describe', str(tmp_path)], capsys)
    assert code == 1
    assert one_error_line(err) == (f"error: image '{tmp_path}' is a folder, not an image file: "
                                   'pass a png or jpeg file')


def test_a_model_with_its_own_code_names_trust_remote_code(tiny_model_dir, tmp_path, capsys):
    remote = tmp_path / 'remote'
    shutil.copytree(tiny_model_dir, remote)
    config = json.loads((remote / 'config.json').read_text())
    config.update(model_type='my_custom_vlm',
                  auto_map={'AutoModelForImageTextToText': 'modeling_x.XForVision'})
    (remote / 'config.json').write_text(json.dumps(config))
    code, _, err = run(['evaluate', '--model', str(remote), '--n', '1'], capsys)
    assert code == 1
    line = one_error_line(err)
    assert 'needs its own Python code' in line and '--trust-remote-code' in line


# ------------------------------------------------------------------------------------------------
# images: 16-bit converted, float refused, bombs refused before decoding

def test_describe_converts_a_16_bit_png(tiny_bundle, tmp_path, capsys):
    code, out, err = run(['describe', str(png16(tmp_path / 'g16.png')), '--bundle',
                          str(tiny_bundle), '--max-new-tokens', '4', '--json'], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])['tokens'] >= 1


@pytest.mark.parametrize('make,message', [
    (lambda p: Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(p, 'TIFF'),
     'has 32-bit float pixels, which have no fixed range'),
    (lambda p: p.write_bytes(bomb_png(15000, 10000, header_only=True)),
     '15000x10000 = 150,000,000 pixels, over the limit of 50,000,000'),
    (lambda p: p.write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10),
     'starts like a png file but its header is truncated or corrupt'),
])
def test_describe_refuses_bad_image_files_in_one_line(make, message, tmp_path, capsys):
    path = tmp_path / 'frame.img'
    make(path)
    code, _, err = run(['describe', str(path), '--backend', 'torch'], capsys)   # never loaded
    assert code == 1 and message in one_error_line(err)


def test_the_pixel_limit_is_an_option(tmp_path, capsys):
    path = png16(tmp_path / 'g16.png')                  # 64 x 64 = 4096 pixels
    code, _, err = run(['describe', str(path), '--max-image-pixels', '4095'], capsys)
    assert code == 1 and '4,096 pixels, over the limit of 4,095' in one_error_line(err)


def test_describe_refuses_a_prompt_over_the_context(tiny_bundle, tmp_path, capsys):
    path = png16(tmp_path / 'g16.png')
    code, _, err = run(['describe', str(path), '--bundle', str(tiny_bundle),
                        '--prompt', 'describe the scene ' * 60], capsys)
    assert code == 1 and "the model's context is 128 positions" in one_error_line(err)


# ------------------------------------------------------------------------------------------------
# outputs: not writable -> refused before the work; full disk -> one line, nothing left

def test_calibrate_refuses_an_unwritable_out_before_the_search(tmp_path, capsys, monkeypatch):
    (tmp_path / 'file').write_text('x')
    code, _, err = run(['calibrate', '--out', str(tmp_path / 'file' / 'plan.json')], capsys)
    assert code == 1 and "'file' is a file, not a folder" in one_error_line(err).replace(
        str(tmp_path) + '/', '')
    import ros2_gmskip.folders as folders
    monkeypatch.setattr(folders.os, 'access', lambda path, mode: False)
    for option in ('--out', '--plot'):
        argv = ['calibrate', '--out', str(tmp_path / 'ok.json'), '--plot', str(tmp_path / 'p.png')]
        code, _, err = run(argv, capsys)
        assert code == 1 and 'no permission to write in' in one_error_line(err)
    assert listing(tmp_path) == ['file']


def test_make_bag_as_another_user_in_a_read_only_folder(shared_dir):  # noqa: F811
    ro = shared_dir / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    done = run_as_nobody('-m', 'ros2_gmskip.cli', 'make-bag', '--out',
                         str(ro / 'bag'), '--n', '2', '--no-progress')
    assert done.returncode == 1, done
    assert one_error_line(done.stderr) == (f"error: output bag '{ro}/bag' cannot be written: no "
                                           f"permission to write in '{ro}': choose a writable "
                                           'folder')
    assert listing(ro) == []


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_make_bag_on_a_full_disk_leaves_nothing(storage, capsys, monkeypatch, tmp_path):
    from ros2_gmskip.ros import bag as bagmod
    real = bagmod.BagOutputWriter.write
    calls = []

    def write_then_fill(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            enospc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bagmod.BagOutputWriter, 'write', write_then_fill)
    code, _, err = run(['make-bag', '--out', str(tmp_path / 'bag'), '--n', '5', '--width', '64',
                        '--height', '48', '--storage', storage, '--no-progress'], capsys)
    assert code == 1 and 'No space left on device' in one_error_line(err)
    assert listing(tmp_path) == []


def test_make_bag_on_a_really_full_disk(capsys):
    with tiny_filesystem('256k') as disk:
        code, _, err = run(['make-bag', '--out', str(disk / 'bag'), '--n', '30',
                            '--no-progress'], capsys)
        assert code == 1
        assert one_error_line(err) == (f"error: output bag '{disk}/bag' could not be written (No "
                                       'space left on device): free some space or write '
                                       'elsewhere; nothing partial was left')
        assert listing(disk) == []


def test_replay_on_a_full_disk_leaves_no_partial_bag(tmp_path, capsys, monkeypatch):
    code, _, err = run(['make-bag', '--out', str(tmp_path / 'in'), '--n', '6', '--width', '64',
                        '--height', '48', '--no-progress'], capsys)
    assert code == 0, err
    from ros2_gmskip.ros import bag as bagmod
    real = bagmod.BagOutputWriter.write

    def fill_after_three(self, *args, **kwargs):
        self.writes = getattr(self, 'writes', 0) + 1
        if self.writes > 3:                              # the disk fills up mid-replay
            enospc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bagmod.BagOutputWriter, 'write', fill_after_three)
    for storage in ('mcap', 'sqlite3'):
        code, _, err = run(['replay', str(tmp_path / 'in'), '--out', str(tmp_path / 'out'),
                            '--fake-backend-ms', '0', '--storage', storage, '--no-progress'],
                           capsys)
        assert code == 1, err
        assert 'No space left on device' in one_error_line(err)
        assert listing(tmp_path) == ['in']


def test_prune_on_a_full_disk_leaves_nothing_and_outputs_get_usual_modes(
        tiny_model_dir, make_plan, tmp_path, capsys, monkeypatch):
    plan = make_plan(tiny_model_dir, [3], tmp_path / 'plan.json')
    old = os.umask(0o022)
    try:
        code, _, err = run(['prune', '--model', str(tiny_model_dir), '--plan', str(plan),
                            '--out', str(tmp_path / 'pruned')], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / 'pruned').stat().st_mode & 0o777 == 0o755          # was 0700 (mkdtemp)
    assert (tmp_path / 'plan.json').stat().st_mode & 0o777 == 0o644       # was 0600 (mkstemp)
    import transformers
    monkeypatch.setattr(transformers.PreTrainedModel, 'save_pretrained', enospc)
    code, _, err = run(['prune', '--model', str(tiny_model_dir), '--plan', str(plan),
                        '--out', str(tmp_path / 'again')], capsys)
    assert code == 1 and one_error_line(err) == (
        f"error: --out '{tmp_path}/again' could not be written (No space left on device): free "
        'some space or write elsewhere; nothing partial was left')
    assert listing(tmp_path) == ['plan.json', 'pruned']


# ------------------------------------------------------------------------------------------------
# plans that disagree with the model: every verb refuses them the same way

@pytest.fixture
def wrong_plan(tiny_model_dir, make_plan, tmp_path):
    """Return a plan with the model's weights hash but 6 blocks where the model has 4."""
    return make_plan(tiny_model_dir, [5], tmp_path / 'wrong.json', num_blocks=TINY_LAYERS + 2)


WRONG = 'says model.num_blocks 6, the model has 4 decoder blocks: re-run ros2-gmskip calibrate'


def test_evaluate_refuses_a_plan_for_another_block_count(tiny_model_dir, wrong_plan, capsys):
    code, _, err = run(['evaluate', '--model', str(tiny_model_dir), '--plan', str(wrong_plan),
                        '--n', '1'], capsys)
    assert code == 1 and WRONG in one_error_line(err)


def test_export_refuses_a_plan_for_another_block_count(
        tiny_model_dir, wrong_plan, tmp_path, capsys):
    code, _, err = run(['export', '--model', str(tiny_model_dir), '--plan', str(wrong_plan),
                        '--out', str(tmp_path / 'bundle'), '--validate-n', '0'], capsys)
    assert code == 1 and WRONG in one_error_line(err)
    assert not (tmp_path / 'bundle').exists()


def test_prune_and_torch_backend_use_the_same_check(tiny_model_dir, wrong_plan, tmp_path, capsys):
    code, _, err = run(['prune', '--model', str(tiny_model_dir), '--plan', str(wrong_plan),
                        '--out', str(tmp_path / 'pruned')], capsys)
    assert code == 1 and WRONG in one_error_line(err)
    from ros2_gmskip.errors import PlanError
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    with pytest.raises(PlanError, match=WRONG):
        TorchBackend(tiny_model_dir, plan=wrong_plan)


def test_a_plan_whose_fastv_k_is_past_the_kept_blocks(
        tiny_model_dir, make_plan, tmp_path, capsys):
    plan = make_plan(tiny_model_dir, [1, 2], tmp_path / 'p.json')
    doc = json.loads(plan.read_text())
    doc['tokens'] = {'fastv': {'k': 2, 'r': 0.5, 'seed': 0}, 'kv_removal': None}
    plan.write_text(json.dumps(doc))
    code, _, err = run(['evaluate', '--model', str(tiny_model_dir), '--plan', str(plan),
                        '--n', '1'], capsys)
    assert code == 1
    assert 'tokens.fastv.k 2 needs more than the 2 blocks the plan keeps' in one_error_line(err)
