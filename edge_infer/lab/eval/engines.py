"""Many logs: in this process, in worker processes on every core, or on a Ray cluster; the same results.

The unit of work is one log (one MCAP file is one episode, as robotics
teams treat it on Ray). Each worker -- a process of the pool or a Ray actor --
loads the model once (:class:`Evaluator`) and evaluates the logs it is handed
one after another, returning a :class:`~.results.LogResult`: counts and
histograms, a few kilobytes whatever the log's length. Results are put back
in the order the logs were given, so the output does not depend on which
worker finished first.

Decision files and golden files are written by the workers themselves: on a
Ray cluster ``--decisions-dir`` and ``--golden`` must be on storage every
node sees (NFS, a mounted bucket), as must the logs and the model.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from ...errors import EdgeInferError
from .model import EvalOptions, LoadedModel, load_model
from .paths import LogPath
from .results import LogResult
from .run import Outputs, evaluate_log

ENGINES = ("local", "ray")

Progress = Callable[[LogResult], None]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs (picklable)."""

    options: EvalOptions
    baseline: Optional[EvalOptions] = None
    outputs: Outputs = Outputs()


class Evaluator:
    """One worker's loaded model (and baseline): a process-pool worker's state, or a Ray actor."""

    def __init__(self, job: Job, model: Optional[LoadedModel] = None):
        self.model = model or load_model(job.options)
        self.baseline = None if job.baseline is None else load_model(job.baseline)
        self.outputs = job.outputs

    def evaluate(self, log: LogPath) -> LogResult:
        return evaluate_log(log, self.model, self.baseline, self.outputs)

    def evaluate_indexed(self, item: "tuple[int, LogPath]") -> "tuple[int, LogResult]":
        """The log's index comes back with its result: workers return them in the order they finish."""
        index, log = item
        return index, self.evaluate(log)


def run_local(logs: Sequence[LogPath], job: Job, workers: int, progress: Optional[Progress] = None,
              model: Optional[LoadedModel] = None) -> List[LogResult]:
    """In this process (``workers`` 1), or in a pool of ``workers`` processes, each with its own model."""
    if workers <= 1 or len(logs) <= 1:
        evaluator = Evaluator(job, model)
        results = []
        for log in logs:
            results.append(evaluator.evaluate(log))
            if progress is not None:
                progress(results[-1])
        return results
    # fork: the workers start at once, with numpy and the interpreter's module already imported (no interpreter
    # is shared: each loads its own model in _start_worker)
    context = multiprocessing.get_context("fork")
    ordered: List[Optional[LogResult]] = [None] * len(logs)
    with context.Pool(min(workers, len(logs)), initializer=_start_worker, initargs=(job,)) as pool:
        for index, result in pool.imap_unordered(_evaluate_in_worker, list(enumerate(logs))):
            ordered[index] = result
            if progress is not None:
                progress(result)
    return [r for r in ordered if r is not None]


_WORKER: Optional[Evaluator] = None


def _start_worker(job: Job) -> None:
    global _WORKER
    _WORKER = Evaluator(job)


def _evaluate_in_worker(item: "tuple[int, LogPath]") -> "tuple[int, LogResult]":
    assert _WORKER is not None
    return _WORKER.evaluate_indexed(item)


def run_ray(logs: Sequence[LogPath], job: Job, workers: int, address: Optional[str] = None,
            progress: Optional[Progress] = None) -> List[LogResult]:
    """On Ray: ``workers`` actors, each holding a loaded model, fed logs through an ``ActorPool``.

    Without ``address`` (and no Ray already started in this process) a local Ray is started with ``workers``
    CPUs and shut down at the end; with one (``ray://host:10001`` or ``host:6379``) the cluster's own.
    """
    ray = _ray()
    from ray.util import ActorPool

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    actors = []
    try:
        actor_class = ray.remote(num_cpus=1)(Evaluator)
        actors = [actor_class.remote(job) for _ in range(min(workers, len(logs)) or 1)]
        pool = ActorPool(actors)
        ordered: List[Optional[LogResult]] = [None] * len(logs)
        items = list(enumerate(logs))
        for index, result in pool.map_unordered(lambda actor, item: actor.evaluate_indexed.remote(item), items):
            ordered[index] = result
            if progress is not None:
                progress(result)
        return [r for r in ordered if r is not None]
    except ray.exceptions.RayActorError as exc:
        raise EdgeInferError(f"a Ray worker failed: {str(exc).splitlines()[0]}") from None
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _ray():
    try:
        import ray
    except ImportError:
        raise EdgeInferError("--engine ray needs Ray: pip install 'edge-infer[cluster]' (or 'ray[default]')") \
            from None
    return ray
