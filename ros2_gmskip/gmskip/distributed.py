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
Score a search step's candidates on a Ray cluster: `calibrate --ray [ADDRESS]`.

    scorer = RayScorer(model_dir, samples, metric='cider', workers=8)   # starts a local cluster
    result = search(scorer, scorer.num_blocks, strategy='greedy')       # the same search
    scorer.close()

Who does what:
- one `prepare` task loads the model, tokenises the calibration set, and runs the unpruned model
  over it: that is the baseline S(empty), and it fills the vision-feature cache. Batches and
  features go into the object store ONCE; every worker is created with a reference to them.
- `workers` actors each load the model once and install the cached features, so their vision
  tower never runs. A task is (removed blocks, token settings, a shard of the batches) and
  returns the shard's texts and generated lengths: a few hundred bytes.
- the driver joins each candidate's shards in batch order and computes the metric on the whole
  set, so any metric (CIDEr's document frequencies included) is exactly the serial one.
  Candidates are split into shards only when there are fewer of them than workers (reverse
  search, greedy's last steps), so every worker stays busy.

A worker that dies is restarted by Ray (max_restarts) and its unfinished task re-run
(max_task_retries); the result cannot change, since every task is a pure function of its inputs.

A local cluster binds 127.0.0.1 only: the node address is loopback (RAY_ENABLE_WINDOWS_OR_OSX_
CLUSTER=0 stops Ray from swapping it for the host's address), the dashboard is off and usage
stats are disabled. `ss -ltnp` shows every listener on 127.0.0.1 (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
import pickle
from typing import Any, Sequence

from ros2_gmskip.errors import GmSkipError
from ros2_gmskip.gmskip.scoring import checked_score, Done, Removed

logger = logging.getLogger(__name__)

INSTALL_HINT = ("--ray needs the optional dependency ray: pip install 'ros2_gmskip[ray]' "
                '(or pip install ray==2.60.0)')
LOCAL = 'local'
RESTARTS = 3          # times Ray restarts a dead worker (and re-runs its task) before giving up
CPU_WAIT_S = 30.0     # how long the workers may wait for free CPUs before that is an error
LOOPBACK = ('127.0.0.1', '::1', 'localhost')


def import_ray():
    """Return the ray module; GmSkipError saying how to install it when it is missing."""
    # before the first `import ray`: keep a local node on the loopback address
    os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'
    os.environ['RAY_USAGE_STATS_ENABLED'] = '0'
    try:
        import ray
    except ImportError:
        raise GmSkipError(INSTALL_HINT) from None
    return ray


def start_ray(address: str, workers: int | None) -> tuple[int, bool]:
    """
    Connect to the cluster at `address`, or start a loopback-only one ('local').

    Return how many workers to run (`workers`, or one per CPU of the cluster) and whether this
    call connected (False: ray was already initialised by the caller, who will shut it down).
    """
    ray = import_ray()
    if ray.is_initialized():
        return workers or max(1, int(ray.cluster_resources().get('CPU', 1))), False
    if address == LOCAL:
        cpus = workers or os.cpu_count() or 1
        ray.init(address='local', num_cpus=cpus, include_dashboard=False,
                 _node_ip_address='127.0.0.1', log_to_driver=False,
                 logging_level=logging.WARNING)
        node = ray.util.get_node_ip_address()
        if node not in LOOPBACK:
            ray.shutdown()
            raise GmSkipError(f'the local Ray node came up on {node!r}, not 127.0.0.1: ray was '
                              'imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set; '
                              'set it in the environment')
    else:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise GmSkipError(f'cannot connect to the Ray cluster {address!r} ({err}): start '
                              'it with `ray start --head`, or pass --ray alone for a local '
                              'one') from None
    return workers or max(1, int(ray.cluster_resources().get('CPU', 1))), True


def reserve(ray, workers: int):
    """
    Return a placement group holding one CPU per worker; GmSkipError after CPU_WAIT_S.

    Reserving them all up front means a worker never waits, silently, for a CPU that other
    jobs (or another scorer) hold: the search fails at once with a line that says so.
    """
    from ray.util.placement_group import placement_group, remove_placement_group
    group = placement_group([{'CPU': 1}] * workers)
    if not group.wait(timeout_seconds=CPU_WAIT_S):
        remove_placement_group(group)
        free = ray.available_resources().get('CPU', 0.0)
        raise GmSkipError(f'the Ray cluster cannot give {workers} worker(s) one CPU each '
                          f'({free:g} free after {CPU_WAIT_S:g} s): lower --workers, or wait '
                          'until other jobs leave the cluster')
    return group


def shards(n_batches: int, n_candidates: int, workers: int) -> list[range]:
    """
    Return the batch ranges each candidate is split into: enough to keep `workers` busy.

    One range (the whole set) while there are at least as many candidates as workers.
    """
    k = max(1, min(n_batches, math.ceil(workers / max(1, n_candidates))))
    edges = [round(i * n_batches / k) for i in range(k + 1)]
    return [range(a, b) for a, b in zip(edges, edges[1:])]


def prepare(model_dir: Path, samples: list, settings: dict) -> tuple[dict, dict]:
    """
    Return (info, payload): the baseline's outputs, and what every worker needs.

    Runs as one Ray task: the unpruned model over every batch, which also caches the vision
    features. The payload (batches, features, image-free samples) goes into the object store.
    """
    from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
    evaluator = CalibrationEvaluator(model_dir, samples, **settings)
    texts, lengths = evaluator.generate((), None, range(len(evaluator.batches)))
    features = {} if evaluator.vision is None else evaluator.vision.store   # vision stack: none
    payload = {'batches': evaluator.batches, 'features': features,
               'samples': [dataclasses.replace(s, image=None) for s in samples]}
    info = {'family': evaluator.family, 'num_blocks': evaluator.num_blocks,
            'batches': len(evaluator.batches), 'texts': texts, 'lengths': lengths,
            'payload_bytes': len(pickle.dumps(payload, protocol=5))}
    return info, payload


class EvaluatorWorker:
    """A Ray actor: the model, loaded once, with the calibration set's cached vision features."""

    def __init__(self, model_dir: Path, payload: dict, settings: dict) -> None:
        from ros2_gmskip.gmskip.evaluator import CalibrationEvaluator
        self.evaluator = CalibrationEvaluator(model_dir, payload['samples'],
                                              batches=payload['batches'], **settings)
        if self.evaluator.vision is not None:
            self.evaluator.vision.store = dict(payload['features'])

    def generate(self, tag: Any, removed: Removed, tokens, batch_ids: Sequence[int]
                 ) -> tuple[Any, list[str], list[int]]:
        """Return (tag, texts, lengths) of the batches `batch_ids` with `removed` and `tokens`."""
        texts, lengths = self.evaluator.generate(removed, tokens, batch_ids)
        return tag, texts, lengths

    def workload(self, removed: Removed, mean_new_tokens: float):
        """Return the token search's Workload of the plan `removed` (evaluator.workload)."""
        self.evaluator.new_tokens[(tuple(sorted(removed)), None)] = mean_new_tokens
        return self.evaluator.workload(removed)

    def check_tokens(self) -> None:
        """Raise ModelLoadError if token skipping cannot run on this model (evaluator)."""
        self.evaluator.check_tokens()

    def status(self) -> dict:
        """Return this process's id and how often its vision tower really ran (tests)."""
        vision = self.evaluator.vision
        return {'pid': os.getpid(), 'vision_calls': None if vision is None else vision.calls}


class RayScorer:
    """A BatchScorer (scoring.py) whose evaluations run on Ray actors; see the module doc."""

    def __init__(self, model_dir: Path, samples: Sequence, metric: str = 'accuracy',
                 batch_size: int = 16, max_new_tokens: int = 48, trust_remote_code: bool = False,
                 workers: int | None = None, address: str = LOCAL, object_parser: str = '',
                 **settings) -> None:
        from ros2_gmskip.gmskip.metrics import checked, resolve_metric
        self.ray = import_ray()
        self.metric_name = metric
        # the metric runs here, on the driver: object_f1's parser need not reach the workers
        self.metric = checked(resolve_metric(metric, object_parser), metric)
        self.samples = list(samples)
        self.workers, self.connected = start_ray(address, workers)
        ray = self.ray
        try:
            settings = dict(settings, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            trust_remote_code=trust_remote_code)
            self.group = reserve(ray, self.workers)
            info_ref, self.payload = ray.remote(prepare).options(
                num_returns=2, max_retries=RESTARTS, num_cpus=1,
                scheduling_strategy=self._bundle(0)).remote(model_dir, self.samples, settings)
            info = self._get(info_ref)
            self.family, self.num_blocks = info['family'], info['num_blocks']
            self.n_batches, self.payload_bytes = info['batches'], info['payload_bytes']
            self.mean_new: dict[tuple, float] = {}
            self.seed = {((), None): (info['texts'], info['lengths'])}   # the baseline, done
            actor = ray.remote(EvaluatorWorker)
            self.actors = [actor.options(num_cpus=1, max_restarts=RESTARTS,
                                         max_task_retries=RESTARTS,
                                         scheduling_strategy=self._bundle(i)).remote(
                                             model_dir, self.payload, settings)
                           for i in range(self.workers)]
        except BaseException:
            self.close()
            raise
        self.tasks = 0               # tasks run (shards of candidates)
        self.task_bytes = 0          # pickled task arguments sent
        self.result_bytes = 0        # pickled results received

    def score_many(self, sets: Sequence[Removed], done: Done | None = None,
                   tokens=None) -> list[float]:
        """Return S(R) of every set, in order; candidates (or shards) run on free workers."""
        from ray.util import ActorPool
        keys = [(tuple(sorted(s)), None if tokens is None or tokens.is_off else tokens)
                for s in sets]
        outputs: dict[int, dict[int, tuple[list[str], list[int]]]] = {}
        scores: dict[int, float] = {}
        todo = []
        for i, key in enumerate(keys):
            if key in self.seed:
                outputs[i] = {0: self.seed.pop(key)}
                scores[i] = self._finish(key, [outputs[i][0]])
                if done is not None:
                    done(i)
            else:
                todo.append(i)
        ranges = shards(self.n_batches, len(todo), self.workers)
        tasks = [((i, j), keys[i][0], keys[i][1], list(r))
                 for i in todo for j, r in enumerate(ranges)]
        pool = ActorPool(self.actors)
        results = pool.map_unordered(lambda actor, task: actor.generate.remote(*task), tasks)
        try:
            for (i, j), texts, lengths in results:
                self.tasks += 1
                self.result_bytes += len(pickle.dumps((texts, lengths)))
                outputs.setdefault(i, {})[j] = (texts, lengths)
                if len(outputs[i]) == len(ranges):
                    scores[i] = self._finish(keys[i], [outputs[i][j] for j in range(len(ranges))])
                    if done is not None:
                        done(i)
        except self.ray.exceptions.RayError as err:
            raise _error(err) from None
        self.task_bytes += sum(len(pickle.dumps(task)) for task in tasks)
        return [scores[i] for i in range(len(keys))]

    def score(self, removed: Sequence[int] = (), tokens=None) -> float:
        """Return S(R) of one set (token search: with the token settings `tokens`)."""
        return self.score_many([tuple(removed)], tokens=tokens)[0]

    def _finish(self, key: tuple, parts: list[tuple[list[str], list[int]]]) -> float:
        """Return the metric of a candidate from its shards' outputs, joined in batch order."""
        texts = [t for part, _ in parts for t in part]
        lengths = [n for _, part in parts for n in part]
        self.mean_new[key] = sum(lengths) / len(lengths)
        removed, tokens = key
        what = f'removed={list(removed)}' + ('' if tokens is None else f' {tokens.describe()}')
        return checked_score(lambda _: self.metric(texts, self.samples), key, what)

    def workload(self, removed: Sequence[int] = ()):
        """Return the token search's Workload of the plan `removed` (evaluator.workload)."""
        key = (tuple(sorted(removed)), None)
        if key not in self.mean_new:
            self.score(removed)
        return self._get(self.actors[0].workload.remote(key[0], self.mean_new[key]))

    def check_tokens(self) -> None:
        """Raise ModelLoadError now if token skipping cannot run on this model."""
        self._get(self.actors[0].check_tokens.remote())

    def status(self) -> list[dict]:
        """Return every worker's process id and vision-tower call count."""
        return self._get([a.status.remote() for a in self.actors])

    def _get(self, refs):
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as err:
            raise _error(err) from None

    def _bundle(self, i: int):
        """Return the scheduling strategy that runs on worker i's reserved CPU."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        return PlacementGroupSchedulingStrategy(placement_group=self.group,
                                                placement_group_bundle_index=i)

    def close(self) -> None:
        """Stop the workers, free their CPUs and disconnect (a local cluster is shut down)."""
        from ray.util.placement_group import remove_placement_group
        for actor in getattr(self, 'actors', []):
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if getattr(self, 'group', None) is not None:
            remove_placement_group(self.group)
            self.group = None
        if self.connected:
            self.ray.shutdown()


def _error(err: Exception) -> GmSkipError:
    """Return a Ray failure as one line: the worker's own GmSkipError where it raised one."""
    cause = getattr(err, 'cause', None)
    if isinstance(cause, GmSkipError):
        return cause
    what = cause if isinstance(cause, BaseException) else err
    first = str(what).strip().splitlines()[0] if str(what).strip() else type(what).__name__
    return GmSkipError(f'a Ray worker failed ({type(what).__name__}: {first}); its log is under '
                       '/tmp/ray/session_latest/logs')
