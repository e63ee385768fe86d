"""Test sessions. `nox -s tests` is the default and what CI runs."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# pytest exits 5 when a marker selects no test; that is not a failure here.
PYTEST_OK = [0, 5]


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """Fast tests (no `slow` or `benchmark` marker): under 10 minutes on 2 CPU cores."""
    session.install("-e", ".[dev]")
    # Small matrices: OpenBLAS threads only add overhead on a 2-core machine (see genbench/cli.py).
    session.env["OPENBLAS_NUM_THREADS"] = "1"
    session.run("pytest", "-m", "not slow and not benchmark and not distributed", "--durations=10",
                *session.posargs, success_codes=PYTEST_OK)


@nox.session(reuse_venv=True)
def slow(session: nox.Session) -> None:
    """Long training and evaluation tests, marked `slow`."""
    session.install("-e", ".[dev]")
    session.env["OPENBLAS_NUM_THREADS"] = "1"
    session.run("pytest", "-m", "slow", "--durations=10", *session.posargs, success_codes=PYTEST_OK)


@nox.session(reuse_venv=True)
def distributed(session: nox.Session) -> None:
    """Sweeps on a local Ray instance and through submitit's local executor (installs the extras)."""
    session.install("-e", ".[dev,ray,slurm]")
    session.env["OPENBLAS_NUM_THREADS"] = "1"
    session.run("pytest", "-m", "distributed", "--durations=10", *session.posargs,
                success_codes=PYTEST_OK)


@nox.session(reuse_venv=True)
def bench(session: nox.Session) -> None:
    """Speed and memory figures beside their comparisons, measured in one run (about 20 minutes
    on 2 CPU cores; run nothing else meanwhile). `nox -s bench -- --quick` checks the code only."""
    session.install("-e", ".[dev]")
    session.env["OPENBLAS_NUM_THREADS"] = "1"
    session.run("python", "-m", "benchmarks.bench", *session.posargs)


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "genbench", "tests", "benchmarks", "noxfile.py")
