"""Who measures the trials: the driver itself, one after another, or Ray workers in parallel.

Both take the same *jobs* — the new assignments of one round of proposals, in proposal order —
and put each measured :class:`~.objective.Candidate` in the evaluator's cache under its key, so
the runner tells the optimiser the same results in the same order whoever measured them (the
schedule never depends on the worker count; see ``SearchConfig.proposal_batch``).

Ray (``SearchConfig.ray``): each worker is an actor that holds a copy of the evaluator (reference
model, calibration and held-out data, the reference's outputs — sent once through Ray's object
store) and reserves ``threads`` CPUs; its intra-op threads (ONNX Runtime sessions, OpenMP, torch)
are pinned to ``threads`` so that trials running side by side do not take each other's cores.
Timings taken there are still made while other trials run: the finalists are re-timed alone in
the driver after the workers are gone (:func:`deepshrink.search.runner._finish`).

A local cluster started for the run (``ray="local"``) lives in a fresh temporary folder that is
removed after ``ray.shutdown()``; it gets a token of its own in the environment of the processes
it starts (Ray's token authentication without writing ``~/.ray/auth_token``) and usage statistics
off. An address is checked before Ray is asked (a TCP connection, 5 s), since ``ray.init`` waits
minutes on an address where nothing answers.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import socket
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DeepshrinkError, InputError, MissingExtraError, first_line
from .config import LOCAL_RAY, SearchConfig
from .objective import Candidate, Evaluator

CONNECT_TIMEOUT_S = 5.0
_HOST_PORT = re.compile(r"(?:ray://)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


@dataclass(frozen=True)
class Job:
    """One new assignment to measure, under the number of the first trial that proposed it."""

    trial: int
    assign: dict[str, str]
    key: str
    origin: str


Done = Callable[[Candidate], None]


class Sequential:
    """The driver measures the jobs itself, in order."""

    workers = 1

    def __init__(self, ev: Evaluator) -> None:
        self.ev = ev

    def run(self, jobs: list[Job], done: Done) -> None:
        for job in jobs:
            done(self.ev.evaluate(job.assign, trial=job.trial, origin=job.origin))


def import_ray(what: str = "deepshrink search --ray") -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", what) from None
    return ray


def check_address(address: str) -> None:
    """Refuse, in one line, an address that is not one or where nothing answers (no Ray call).

    Accepted: ``local`` (a cluster for the run), ``auto`` (Ray finds the one started on this
    machine with ``ray start --head``), ``HOST:PORT`` (the head's GCS port) and
    ``ray://HOST:PORT`` (Ray Client). Raises :class:`InputError`.
    """
    if address in (LOCAL_RAY, "auto"):
        return
    m = _HOST_PORT.fullmatch(address.strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise InputError(f"--ray {address!r} is not a Ray address; give HOST:PORT (the head node's port, 6379 by "
                         "default), ray://HOST:PORT, auto, or --ray alone to start a local cluster for the run")
    host, port = m.group(1).strip("[]"), int(m.group(2))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or first_line(exc) or type(exc).__name__
        raise InputError(f"--ray {address}: no Ray cluster answers at {host}:{port} ({reason}); start one with "
                         "'ray start --head' or give --ray alone to start a local cluster for the run") from None


class _TrialWorker:
    """A Ray actor: measures candidates with its own copy of the evaluator, ``threads`` threads."""

    def __init__(self, ev: Evaluator, threads: int) -> None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(limits=threads)  # OpenMP/BLAS pools already loaded
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(threads)
        self.ev = ev

    def evaluate(self, job: Job) -> Candidate:
        self.ev.cache.clear()  # the driver keeps the cache; a worker never sees a key twice
        return self.ev.evaluate(job.assign, trial=job.trial, origin=job.origin)


class RayPool:
    """Ray actors measuring jobs side by side; results reach ``done`` as they finish."""

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self.ray, self.actors = ray, actors
        self.workers = len(actors)

    def run(self, jobs: list[Job], done: Done) -> None:
        ray = self.ray
        pending, idle = deque(jobs), list(self.actors)
        running: dict[Any, tuple[Job, Any]] = {}
        while pending or running:
            while pending and idle:
                actor, job = idle.pop(0), pending.popleft()
                running[actor.evaluate.remote(job)] = (job, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                job, actor = running.pop(ref)
                done(self._get(ref, job))
                idle.append(actor)

    def _get(self, ref: Any, job: Job) -> Candidate:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, DeepshrinkError):
                raise cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            raise DeepshrinkError(f"a Ray worker died while measuring trial {job.trial}: {first_line(exc)}") from None


@contextlib.contextmanager
def workers(ev: Evaluator, config: SearchConfig, say: Any) -> Iterator[Sequential | RayPool]:
    """The trial runner for ``config``: :class:`Sequential`, or a :class:`RayPool` for the block."""
    if config.ray is None:
        yield Sequential(ev)
        return
    ray = import_ray()
    with _cluster(ray, config, say) as cpus:
        n = config.ray_workers or max(1, int(cpus) // config.threads)
        if cpus < config.threads:
            raise InputError(f"the Ray cluster has {cpus:g} CPUs; a trial needs {config.threads} (--threads)")
        if config.ray_workers is not None and config.ray_workers * config.threads > cpus:
            raise InputError(f"--ray-workers {config.ray_workers} x --threads {config.threads} CPUs is more than the "
                             f"Ray cluster's {cpus:g}")
        snapshot = copy.copy(ev)
        snapshot.cache = {}
        state = ray.put(snapshot)
        actor = ray.remote(num_cpus=config.threads)(_TrialWorker)
        actors = [actor.remote(state, config.threads) for _ in range(n)]
        say(f"{n} Ray workers, {config.threads} thread{'s' if config.threads > 1 else ''} each")
        try:
            yield RayPool(ray, actors)
        finally:
            for a in actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)


def _process_token() -> str:
    """One token per process: Ray's driver keeps the first token it read for the process's life, so a
    second local cluster with a new token would refuse it."""
    global _TOKEN
    if _TOKEN is None:
        import secrets

        _TOKEN = secrets.token_hex(32)
    return _TOKEN


_TOKEN: str | None = None


@contextlib.contextmanager
def _cluster(ray: Any, config: SearchConfig, say: Any) -> Iterator[float]:
    """Connect to (or start) the cluster; yield its CPU count; disconnect (or shut it down) after."""
    if ray.is_initialized():  # the caller's own ray.init: used as it is, left running
        yield float(ray.cluster_resources().get("CPU", 0))
        return
    address = config.ray or LOCAL_RAY
    check_address(address)
    if address != LOCAL_RAY:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            raise InputError(f"--ray {address}: cannot connect ({first_line(exc)})") from None
        try:
            say(f"connected to the Ray cluster at {address}")
            yield float(ray.cluster_resources().get("CPU", 0))
        finally:
            ray.shutdown()
        return
    tmp = tempfile.mkdtemp(prefix="ds-ray-")
    env = {"RAY_USAGE_STATS_ENABLED": "0",
           # the processes this cluster starts import the same deepshrink as the driver
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                      os.environ.get("PYTHONPATH")) if p)}
    if "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        # Ray turns token authentication on for a new local cluster and, finding this token, writes
        # none to ~/.ray/auth_token
        env["RAY_AUTH_TOKEN"] = _process_token()
    saved = {k: os.environ.get(k) for k in (*env, "RAY_AUTH_MODE")}  # ray.init sets RAY_AUTH_MODE
    os.environ.update(env)
    try:
        cpus = None if config.ray_workers is None else config.ray_workers * config.threads
        say("starting a local Ray cluster for the trials")
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", _temp_dir=tmp)
        except Exception as exc:  # noqa: BLE001 - Ray's start-up failures have no common base
            raise DeepshrinkError(f"could not start a local Ray cluster: {first_line(exc)}") from None
        try:
            yield float(ray.cluster_resources().get("CPU", 0))
        finally:
            ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
