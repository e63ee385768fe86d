"""Train and evaluate a list of run specs, one after another or in parallel processes.

Each cell is an ordinary run folder: a finished cell is skipped, an interrupted one resumes from
its checkpoint, an evaluated one is not evaluated again. So re-running the same command after a
crash finishes the work without repeating or losing any of it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genbench.core.errors import GenbenchError
from genbench.core.locking import run_lock


@dataclass
class ExecutionOptions:
    """How cells run; nothing here changes a run's numbers (device aside, which is recorded)."""

    out: str = "results"
    device: str = "auto"
    data_dir: str | None = None
    allow_download: bool = True
    evaluate: bool = True
    metrics: list[str] | None = None  # None: every registered metric
    fresh: bool = False
    progress: bool = True
    tensorboard: bool = False
    jobs: int = 1
    keep_going: bool = False  # a failed cell does not stop the others (sweeps)


@dataclass
class CellOutcome:
    spec: Any  # RunSpec
    status: str  # trained, resumed, skipped or failed
    run_path: Path
    steps: int = 0
    train_time_s: float = 0.0
    parameters: int = 0
    final_losses: dict[str, float] = field(default_factory=dict)
    evaluated: bool = False
    error: str = ""


def _needs_evaluation(run_path: Path, metrics: list[str] | None) -> bool:
    import json

    try:
        document = json.loads((run_path / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return True
    if metrics is None:
        from genbench.evaluation import METRICS

        metrics = METRICS.names()
    return any(name not in document.get("metrics", {}) for name in metrics)


def run_cell(spec, options: ExecutionOptions, log: Callable[[str], None] | None = None) -> CellOutcome:
    """Train (or resume, or skip) one run, then evaluate the metrics it still lacks."""
    from genbench.training import RunDir

    log = log or (lambda message: print(message, file=sys.stderr))
    run_path = RunDir.for_spec(options.out, spec).path
    try:
        with run_lock(run_path, log):
            return _train_and_evaluate(spec, options, log, run_path)
    except GenbenchError as error:
        from genbench.training.harness import RunInterrupted

        if not options.keep_going or isinstance(error, RunInterrupted):  # Ctrl-C stops the sweep
            raise
        log(f"failed {spec.model} seed {spec.seed}: {error}")
        return CellOutcome(spec, "failed", run_path, error=str(error))


def _train_and_evaluate(spec, options: ExecutionOptions, log, run_path: Path) -> CellOutcome:
    from genbench.evaluation import evaluate_run
    from genbench.training import fit

    result = fit(spec, options.out, device=options.device, fresh=options.fresh,
                 progress=options.progress, tensorboard=options.tensorboard,
                 data_dir=options.data_dir, allow_download=options.allow_download)
    outcome = CellOutcome(spec, result.status, result.run_dir.path, result.steps,
                          result.train_time_s, result.parameters, result.final_losses)
    if result.status == "skipped":
        log(f"skipped {spec.model} seed {spec.seed}: already complete in {run_path}")
    if options.evaluate and _needs_evaluation(run_path, options.metrics):
        log(f"evaluating {spec.model} seed {spec.seed} ({spec.budget} settings)")
        evaluate_run(result.run_dir, options.metrics, device=options.device,
                     data_dir=options.data_dir, allow_download=options.allow_download)
        outcome.evaluated = True
    return outcome


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_cell_quietly(spec, options: ExecutionOptions) -> CellOutcome:
    prefix = f"[{spec.model} seed {spec.seed}] "
    return run_cell(spec, options, log=lambda m: print(prefix + m, file=sys.stderr, flush=True))


def execute(specs: list, options: ExecutionOptions) -> list[CellOutcome]:
    """Run every spec; returns one outcome per spec, in the order given.

    With ``jobs > 1`` cells run in that many spawned processes, each with an equal share of the
    CPU threads and without per-step progress bars (one line per finished cell instead).
    """
    if options.jobs < 1:
        from genbench.core.errors import UsageError

        raise UsageError(f"--jobs must be >= 1, got {options.jobs}")
    if options.jobs == 1 or len(specs) <= 1:
        return [run_cell(spec, options) for spec in specs]
    return _execute_parallel(specs, options)


def _execute_parallel(specs: list, options: ExecutionOptions) -> list[CellOutcome]:
    from tqdm.auto import tqdm

    jobs = min(options.jobs, len(specs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    worker_options = ExecutionOptions(**{**options.__dict__, "progress": False})
    # spawn: a forked child would inherit torch's thread pools and locks in an undefined state.
    context = multiprocessing.get_context("spawn")
    outcomes: dict[int, CellOutcome] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                             initargs=(threads,)) as pool, \
            tqdm(total=len(specs), desc="cells", unit="cell", disable=not options.progress,
                 file=sys.stderr) as bar:
        pending = {pool.submit(_run_cell_quietly, spec, worker_options): index
                   for index, spec in enumerate(specs)}
        try:
            with _forwarded_signals(pool):
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        outcomes[index] = future.result()  # a failure without keep_going re-raises
                        bar.update(1)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [outcomes[i] for i in range(len(specs))]


@contextlib.contextmanager
def _forwarded_signals(pool: ProcessPoolExecutor) -> Iterator[None]:
    """SIGINT and SIGTERM sent to this process go on to the workers, and nothing else happens
    here: each worker's harness finishes its step, checkpoints and raises RunInterrupted, which
    comes back through its future and stops the sweep. Without this, a signal to the parent alone
    (``kill``, a batch system, a background job's Ctrl-C) killed it and left the workers training
    on as orphans that still held their runs' locks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum, frame):
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in saved:
        signal.signal(number, forward)
    try:
        yield
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous)
