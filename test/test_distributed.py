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
GM-Skip on a local Ray cluster (2 CPUs, 127.0.0.1 only): the same plan as the serial search.

One cluster for the module; the default model on 4 val scenes, 8 new tokens, 2 batches, so a
greedy step has more candidates than workers and a reverse step is split into batch shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ros2_gmskip.argtypes import model_dir_or_default
from ros2_gmskip.gmskip.distributed import RayScorer, shards, start_ray
from ros2_gmskip.gmskip.objective import Objective
from ros2_gmskip.gmskip.plan import load_plan
from ros2_gmskip.gmskip.strategies import search
from ros2_gmskip.scenes import load_samples

pytestmark = pytest.mark.timeout(600)      # a hung cluster fails the module, not the suite

MODEL = model_dir_or_default(None)
SETTINGS = {'metric': 'cider', 'batch_size': 2, 'max_new_tokens': 8}
GREEDY = {'strategy': 'greedy', 'objective': Objective(lam=0.3, max_sparsity=1 / 16)}
REVERSE = {'strategy': 'reverse', 'objective': Objective(lam=0.3, max_sparsity=2 / 16)}


def test_shards_keep_every_worker_busy():
    assert shards(4, 12, 2) == [range(0, 4)]                 # enough candidates: whole set
    assert shards(4, 1, 2) == [range(0, 2), range(2, 4)]     # reverse: halves
    assert shards(5, 1, 3) == [range(0, 2), range(2, 3), range(3, 5)]
    assert shards(2, 1, 8) == [range(0, 1), range(1, 2)]     # never smaller than a batch
    assert shards(6, 2, 5) == [range(0, 2), range(2, 4), range(4, 6)]


@pytest.fixture(scope='module')
def cluster():
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # as in the workers (one CPU each): the same arithmetic
    workers, connected = start_ray('local', 2)
    assert (workers, connected) == (2, True)
    import ray
    yield ray
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def samples():
    return load_samples('val', 4)


@pytest.fixture(scope='module')
def serial(samples):
    """Return the serial searches, which the Ray ones must repeat exactly."""
    import torch
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    evaluator = CalibrationEvaluator(MODEL, samples, **SETTINGS)
    out = {name: search(evaluator.score, evaluator.num_blocks, progress=False, **kw)
           for name, kw in (('greedy', GREEDY), ('reverse', REVERSE))}
    torch.set_num_threads(threads)
    return out


def same(a, b) -> bool:
    return ([s.to_dict() for s in a.evaluated] == [s.to_dict() for s in b.evaluated]
            and [s.to_dict() for s in a.trajectory] == [s.to_dict() for s in b.trajectory]
            and a.best == b.best and a.evaluations == b.evaluations)


def listeners_of(pids: set[int]) -> list[str]:
    """Return the local addresses of every listening TCP socket the processes `pids` hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f'/proc/{pid}/fd'):
                link = os.readlink(f'/proc/{pid}/fd/{fd}')
                if link.startswith('socket:['):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = []
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == '0A' and fields[9] in inodes:     # 0A: LISTEN
                found.append(fields[1])
    return found


def ray_pids() -> set[int]:
    """Return this process and every process of the Ray session (its command names ray)."""
    pids = {os.getpid()}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                cmd = Path(f'/proc/{entry}/cmdline').read_bytes().replace(b'\0', b' ')
            except OSError:
                continue
            if b'ray' in cmd and (b'site-packages/ray' in cmd or cmd.startswith(b'ray::')):
                pids.add(int(entry))
    return pids


LOOPBACK_HEX = ('0100007F:', '0000000000000000FFFF00000100007F:',
                '00000000000000000000000001000000:')     # 127.0.0.1, ::ffff:127.0.0.1, ::1


# Before the `scorer` fixture holds both CPUs: this one needs one for itself. With one worker
# nothing is sharded: the verb runs the whole search on it (the sharding: test_shards_*).

def test_calibrate_verb_with_ray(cluster, tmp_path, capsys):
    from test_plan import verb_args
    from ros2_gmskip.verbs import calibrate
    out = tmp_path / 'plan.json'
    argv = ['--n', '2', '--batch-size', '2', '--max-sparsity', '0.0625', '--no-progress',
            '--out', str(out), '--ray', '--workers', '1']
    assert calibrate.main(verb_args(calibrate, argv)) == 0
    plan = load_plan(out, model_dir=MODEL)
    assert plan.run['engine'] == 'ray' and plan.run['workers'] == 1
    assert plan.evaluations == 2 and plan.run['wall_time_s'] > 0
    assert 'on Ray (local): 1 worker' in capsys.readouterr().out


@pytest.fixture(scope='module')
def scorer(cluster, samples):
    """Two Ray workers on the calibration set; the tests below share them."""
    scorer = RayScorer(MODEL, samples, workers=2, **SETTINGS)
    yield scorer
    scorer.close()


def test_no_free_cpu_is_an_error_not_a_hang(scorer, samples, monkeypatch):
    from ros2_gmskip.errors import GmSkipError
    from ros2_gmskip.gmskip import distributed
    monkeypatch.setattr(distributed, 'CPU_WAIT_S', 1.0)
    with pytest.raises(GmSkipError, match=r'cannot give 1 worker\(s\) one CPU each \(0 free'):
        RayScorer(MODEL, samples, workers=1, **SETTINGS)


@pytest.mark.parametrize('name', ['greedy', 'reverse'])
def test_ray_search_is_the_serial_search(scorer, serial, name):
    kw = GREEDY if name == 'greedy' else REVERSE
    result = search(scorer, scorer.num_blocks, progress=False, **kw)
    assert same(result, serial[name])
    assert all(s['vision_calls'] == 0 for s in scorer.status())   # features from the store
    assert scorer.task_bytes / scorer.tasks < 1000         # a task: block ids and batch ids


def test_every_ray_listener_is_on_loopback(scorer):
    listening = listeners_of(ray_pids())
    assert len(listening) >= 4, listening                   # gcs, raylet x2, workers, driver
    assert all(a.startswith(LOOPBACK_HEX) for a in listening), listening


def test_killed_workers_are_replaced_and_their_candidates_rerun(cluster, scorer, serial):
    before = {s['pid'] for s in scorer.status()}
    killed = []

    class KillMidStep:
        """Kill both workers when the first of greedy's 12 first-step candidates is scored."""

        workers = scorer.workers

        def score_many(self, sets, done=None):
            def hook(i):
                if not killed and len(sets) == 12:
                    for actor in scorer.actors:       # one of them is mid-task now
                        cluster.kill(actor, no_restart=False)
                    killed.append(i)
                done(i)
            return scorer.score_many(sets, hook)

    result = search(KillMidStep(), scorer.num_blocks, progress=False, **GREEDY)
    after = {s['pid'] for s in scorer.status()}
    assert killed
    assert same(result, serial['greedy'])
    assert not before & after                                 # both workers were replaced
