"""Where a sweep's cells run: on this machine (``local``), as Ray tasks (``ray``) or as Slurm jobs
through submitit (``slurm``).

Every executor calls the same :func:`~genbench.experiments.execute.run_cell`, which writes an
ordinary run folder under ``options.out``: for Ray and Slurm that folder must be on a file system
every worker sees. A cell that is retried (its Ray worker died) or requeued (its Slurm job was
pre-empted or timed out) simply runs again and resumes from its last checkpoint; the driver gets
one :class:`CellOutcome` per cell, in the order given, and prints one line per finished cell.

Ray and submitit are optional extras (``pip install genbench[ray]``, ``genbench[slurm]``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from genbench.core.errors import GenbenchError, UsageError
from genbench.experiments.execute import CellOutcome, ExecutionOptions, execute, run_cell

EXECUTORS = ("local", "ray", "slurm")
_EXTRAS = {"ray": ("ray", "genbench[ray]"), "slurm": ("submitit", "genbench[slurm]")}

# Test-only: the path of a marker file, read by the Ray driver and handed to every task. The first
# cell to save a checkpoint creates it and SIGKILLs its own worker, as if its machine died; the
# retry sees the marker and carries on.
KILL_ONCE_ENV = "GENBENCH_TEST_KILL_ONCE"


@dataclass
class ExecutorOptions:
    """Where cells run and what each asks for; nothing here changes a run's numbers."""

    name: str = "local"
    address: str | None = None  # ray: a running cluster (ray://host:10001, auto); None: start one
    cpus_per_cell: float = 1
    gpus_per_cell: float = 0  # ray
    max_retries: int = 3  # ray: runs of a cell whose worker died; slurm: requeues after a timeout
    slurm_partition: str | None = None
    slurm_time_min: int = 60
    slurm_gpus: int = 0
    slurm_folder: str | None = None  # submitit's job files; None: <out>/.submitit
    slurm_cluster: str | None = None  # None: Slurm, found by submitit; "local" or "debug" for tests

    def validate(self) -> None:
        if self.name not in EXECUTORS:
            raise UsageError(f"unknown executor '{self.name}'; choose one of {', '.join(EXECUTORS)}")
        checks = [("--cpus-per-cell", self.cpus_per_cell, self.cpus_per_cell > 0, "> 0"),
                  ("--gpus-per-cell", self.gpus_per_cell, self.gpus_per_cell >= 0, ">= 0"),
                  ("max_retries", self.max_retries, self.max_retries >= 0, ">= 0"),
                  ("--slurm-time", self.slurm_time_min, self.slurm_time_min >= 1, ">= 1 (minutes)"),
                  ("--slurm-gpus", self.slurm_gpus, self.slurm_gpus >= 0, ">= 0")]
        for option, value, ok, rule in checks:
            if not ok:
                raise UsageError(f"{option} must be {rule}, got {value}")


def check_executor_available(name: str) -> None:
    """Raise a one-line :class:`UsageError` naming the extra to install when ``name`` needs a
    package that is missing (or ``name`` is not an executor)."""
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}")
    if name == "local":
        return
    module, extra = _EXTRAS[name]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--executor {name} needs the '{module}' package: "
                         f"pip install '{extra}'") from None


def execute_with(specs: list, options: ExecutionOptions,
                 executor: ExecutorOptions | None = None) -> list[CellOutcome]:
    """Run every spec with ``executor``; one outcome per spec, in the order given."""
    executor = executor or ExecutorOptions()
    executor.validate()
    check_executor_available(executor.name)
    if executor.name == "local":
        return execute(specs, options)
    if not specs:
        return []
    if options.fresh:  # once, here: a retried or requeued cell must resume, not start over
        _delete_run_folders(specs, options.out)
    remote = dataclasses.replace(
        options, out=str(Path(options.out).resolve()), progress=False, jobs=1, fresh=False,
        data_dir=str(Path(options.data_dir).resolve()) if options.data_dir else None)
    run = _execute_ray if executor.name == "ray" else _execute_slurm
    return run(specs, remote, executor)


def _delete_run_folders(specs: list, out: str) -> None:
    from genbench.core.locking import run_lock
    from genbench.training import RunDir

    for spec in specs:
        path = RunDir.for_spec(out, spec).path
        with run_lock(path):
            shutil.rmtree(path, ignore_errors=True)


def _announce(done: int, total: int, outcome: CellOutcome) -> None:
    spec = outcome.spec
    detail = f": {outcome.error}" if outcome.status == "failed" else ""
    print(f"[{done}/{total}] {outcome.status} {spec.model} seed {spec.seed} ({spec.run_id}){detail}",
          file=sys.stderr, flush=True)


def _lost_cell(spec, options: ExecutionOptions, reason: str) -> CellOutcome:
    """A cell whose worker or job never returned: a failed outcome, or an error without
    ``keep_going``."""
    from genbench.training import RunDir

    if not options.keep_going:
        raise GenbenchError(f"{spec.model} seed {spec.seed}: {reason}")
    return CellOutcome(spec, "failed", RunDir.for_spec(options.out, spec).path, error=reason)


def _run_cell_remotely(spec, options: ExecutionOptions, threads: int) -> CellOutcome:
    import torch

    torch.set_num_threads(max(1, threads))
    prefix = f"[{spec.model} seed {spec.seed}] "
    return run_cell(spec, options, log=lambda m: print(prefix + m, file=sys.stderr, flush=True))


# ---------------------------------------------------------------------------------------- Ray

def _ray_cell(spec, options: ExecutionOptions, threads: int, kill_once: str | None) -> CellOutcome:
    """The body of one Ray task."""
    if kill_once:
        _die_after_first_checkpoint(Path(kill_once))
    return _run_cell_remotely(spec, options, threads)


def _die_after_first_checkpoint(marker: Path) -> None:
    """Test-only (``GENBENCH_TEST_KILL_ONCE``): after its next checkpoint, the first worker to
    create ``marker`` kills itself with SIGKILL; every later one trains on."""
    from genbench.training.checkpoint import CheckpointStore

    save = CheckpointStore.save
    if marker.exists() or getattr(save, "kills_once", False):
        return

    def save_then_die(store, state):
        save(store, state)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    save_then_die.kills_once = True
    CheckpointStore.save = save_then_die


def _execute_ray(specs: list, options: ExecutionOptions, executor: ExecutorOptions) -> list[CellOutcome]:
    import logging

    import ray

    started = not ray.is_initialized()  # else: the caller's Ray, left as it is
    if started:
        local = executor.address is None and "RAY_ADDRESS" not in os.environ
        ray.init(address=executor.address, num_cpus=os.cpu_count() if local else None,
                 ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    # max_retries re-runs a task whose worker process died; retry_exceptions=False: a cell that
    # raised is not retried (it would fail the same way).
    task = ray.remote(num_cpus=executor.cpus_per_cell, num_gpus=executor.gpus_per_cell,
                      max_retries=executor.max_retries, retry_exceptions=False)(_ray_cell)
    threads, kill_once = int(executor.cpus_per_cell), os.environ.get(KILL_ONCE_ENV)
    pending = {task.remote(spec, options, threads, kill_once): index for index, spec in enumerate(specs)}
    outcomes: dict[int, CellOutcome] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                outcomes[index] = _ray_outcome(ray, ref, specs[index], options, executor)
                _announce(len(outcomes), len(specs), outcomes[index])
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:  # a cluster we joined only loses this driver
            ray.shutdown()
    return [outcomes[i] for i in range(len(specs))]


def _ray_outcome(ray, ref, spec, options: ExecutionOptions, executor: ExecutorOptions) -> CellOutcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:  # the cell raised, as it would have locally
        if isinstance(error.cause, GenbenchError):
            raise error.cause from None
        raise
    except ray.exceptions.RayError as error:  # its worker or node died, past every retry
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        attempts = executor.max_retries + 1
        return _lost_cell(spec, options, f"its Ray worker died ({attempts} attempt"
                                         f"{'s' if attempts > 1 else ''}; {type(error).__name__}: "
                                         f"{first_line}); re-run the same command to resume it")


# -------------------------------------------------------------------------------------- Slurm

class SubmititCell:
    """One cell as a submitit job. On pre-emption or timeout submitit calls :meth:`checkpoint`
    and requeues what it returns: the same call, which resumes the run from its last checkpoint
    (the run folder is the state; nothing else needs saving)."""

    def __init__(self, threads: int = 1):
        self.threads = threads

    def __call__(self, spec, options: ExecutionOptions) -> CellOutcome:
        return _run_cell_remotely(spec, options, self.threads)

    def checkpoint(self, spec, options: ExecutionOptions):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, spec, options)


def _submitit_executor(options: ExecutionOptions, executor: ExecutorOptions):
    import submitit

    cluster = executor.slurm_cluster or submitit.AutoExecutor.which()
    if cluster != "slurm" and executor.slurm_cluster is None:
        raise UsageError("--executor slurm: no Slurm found on this machine (srun is not on PATH); "
                         "run the sweep from a Slurm login node")
    folder = executor.slurm_folder or str(Path(options.out) / ".submitit")
    jobs = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                 slurm_max_num_timeout=executor.max_retries)
    parameters = {"name": "genbench", "timeout_min": executor.slurm_time_min,
                  "cpus_per_task": max(1, math.ceil(executor.cpus_per_cell)),
                  "gpus_per_node": executor.slurm_gpus}
    if executor.slurm_partition:
        parameters["slurm_partition"] = executor.slurm_partition
    jobs.update_parameters(**parameters)
    return jobs


def _execute_slurm(specs: list, options: ExecutionOptions, executor: ExecutorOptions) -> list[CellOutcome]:
    submitter = _submitit_executor(options, executor)
    # One job array (one job per cell elsewhere than Slurm).
    jobs = submitter.map_array(SubmititCell(max(1, int(executor.cpus_per_cell))), specs,
                               [options] * len(specs))
    pending = dict(enumerate(jobs))
    outcomes: dict[int, CellOutcome] = {}
    try:
        while pending:
            finished = [i for i, job in pending.items()
                        if executor.slurm_cluster == "debug" or job.done()]  # debug: runs on result()
            for index in finished:
                outcomes[index] = _slurm_outcome(pending.pop(index), specs[index], options)
                _announce(len(outcomes), len(specs), outcomes[index])
            if pending and not finished:
                time.sleep(1.0)
    except BaseException:
        for job in pending.values():
            job.cancel(check=False)
        raise
    return [outcomes[i] for i in range(len(specs))]


def _slurm_outcome(job, spec, options: ExecutionOptions) -> CellOutcome:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return job.result()
    except (FailedJobError, UncompletedJobError) as error:
        # The job's traceback is text; its last line names the exception and its message.
        lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("-")]
        last = lines[-1].strip() if lines else type(error).__name__
        return _lost_cell(spec, options, f"job {job.job_id} failed: {last} (log: {job.paths.stderr})")
