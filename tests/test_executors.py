"""Sweeps on Ray and on Slurm through submitit: a missing extra is one usage error; a Ray worker
killed mid-cell is retried and its cell resumes; submitit's local executor runs cells and requeues
a pre-empted one as the same call.

The ``distributed`` tests start a local Ray instance or submitit's local executor (tens of
seconds): ``pytest -m distributed``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys

import pytest
from click.testing import CliRunner

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.experiments.execute import ExecutionOptions
from genbench.experiments.executors import KILL_ONCE_ENV, ExecutorOptions, SubmititCell, execute_with
from genbench.experiments.plan import parse_overrides, parse_sweep_specs, plan_sweep
from tests.test_sweep import TINY

SETTINGS = {"steps": 4, "log_every": 2, "checkpoint_every": 2, "sample_every": 4, "batch_size": 8,
            "base_width": 4}


def _specs(latent_dims=(2, 4), seeds=(0, 1)):
    axes = parse_sweep_specs([f"latent_dim={','.join(map(str, latent_dims))}"])
    overrides = parse_overrides([f"{k}={v}" for k, v in SETTINGS.items()])
    return [cell.spec for cell in plan_sweep(axes, ["vae"], "mnist", "smoke", list(seeds), overrides,
                                             None, 32)]


def _options(out) -> ExecutionOptions:
    return ExecutionOptions(out=str(out), device="cpu", metrics=["mmd"], progress=False, keep_going=True)


def _loss_steps(run_path) -> list[int]:
    with open(run_path / "losses.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("name, module, extra", [("ray", "ray", "genbench[ray]"),
                                                 ("slurm", "submitit", "genbench[slurm]")])
def test_a_missing_extra_is_one_usage_error_naming_it(monkeypatch, tmp_path, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(UsageError, match=rf"--executor {name} needs .*pip install '{re.escape(extra)}'"):
        execute_with(_specs(), _options(tmp_path), ExecutorOptions(name))
    result = CliRunner().invoke(main, ["sweep", "latent_dim=2", "--models", "vae", "--executor", name,
                                       "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 2
    assert extra in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()  # failed before anything was written


@pytest.mark.parametrize("executor, message", [
    (ExecutorOptions("nope"), "unknown executor 'nope'; choose one of local, ray, slurm"),
    (ExecutorOptions("ray", cpus_per_cell=0), "--cpus-per-cell must be > 0"),
    (ExecutorOptions("slurm", slurm_time_min=0), "--slurm-time must be >= 1"),
])
def test_bad_executor_options_are_usage_errors(tmp_path, executor, message):
    with pytest.raises(UsageError, match=message):
        execute_with(_specs(), _options(tmp_path), executor)


def test_sweep_api_checks_executor_options_by_name(tmp_path):
    from genbench import api

    with pytest.raises(UsageError, match="unknown executor option 'cpus_per_cel'; did you mean "
                                         "'cpus_per_cell'"):
        api.sweep({"latent_dim": [2]}, "vae", out=tmp_path, executor="ray",
                  executor_options={"cpus_per_cel": 2})
    with pytest.raises(UsageError, match="with --executor ray give --cpus-per-cell"):
        api.sweep({"latent_dim": [2]}, "vae", out=tmp_path, executor="ray", jobs=2)


def test_requeue_resubmits_the_same_cell(tmp_path):
    """submitit calls ``checkpoint`` on pre-emption and requeues what it returns: the same call
    (which resumes from the run's checkpoint), surviving the pickle submitit writes."""
    DelayedSubmission = pytest.importorskip("submitit.helpers").DelayedSubmission
    spec, options = _specs()[0], _options(tmp_path)
    cell = SubmititCell(threads=2)
    delayed = cell.checkpoint(spec, options)
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is cell and delayed.args == (spec, options) and delayed.kwargs == {}
    delayed.dump(tmp_path / "submitted.pkl")
    loaded = DelayedSubmission.load(tmp_path / "submitted.pkl")
    assert loaded.args == (spec, options) and loaded.function.threads == 2
    assert callable(loaded.function.checkpoint)


@pytest.mark.distributed
def test_ray_sweep_resumes_the_cell_whose_worker_was_killed(monkeypatch, tmp_path):
    """4 cells on a local Ray instance with 2 CPUs; the first cell to checkpoint SIGKILLs its
    worker. Ray retries it, it resumes from step 2, and every cell finishes exactly once."""
    ray = pytest.importorskip("ray")

    from genbench.reporting.collect import collect_results

    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the local Ray's num_cpus: 2 cells at once
    out = tmp_path / "out"
    args = ["sweep", "latent_dim=2,4", "--models", "vae", "--seeds", "0,1", "--out", str(out), *TINY,
            "--metrics", "mmd", "--no-report", "--executor", "ray", "--cpus-per-cell", "1"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert marker.exists(), "no worker was killed"
    assert not ray.is_initialized()  # the Ray it started is shut down

    finished = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(finished) == 4 and [line[:5] for line in finished] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    resumed = [line for line in finished if " resumed vae " in line]
    assert len(resumed) == 1, finished  # the killed cell; the others trained in one go
    frame = collect_results(out)
    mmd = frame[frame["metric"] == "mmd"]
    assert len(mmd) == 4 and mmd["run_id"].is_unique
    assert set(frame["run_status"]) == {"complete"}
    for config in out.glob("mnist/vae/*/config.json"):
        assert json.loads(config.read_text())["status"] == "complete"
        assert _loss_steps(config.parent) == [2, 4]  # the killed cell continued from step 2
    killed = resumed[0].split("(")[1].split(")")[0]
    assert (out / "mnist" / "vae" / killed / "checkpoint.pt").is_file()


@pytest.mark.distributed
def test_slurm_path_with_submitits_local_executor(tmp_path):
    from genbench import api

    pytest.importorskip("submitit")
    out = tmp_path / "out"
    batch = api.sweep({"latent_dim": [2]}, "vae", seeds=[0, 1], overrides=SETTINGS, out=out,
                      device="cpu", limit=32, metrics="mmd", progress=False, report=False,
                      executor="slurm", executor_options={"slurm_cluster": "local"})
    assert [o.status for o in batch.outcomes] == ["trained", "trained"]
    assert all(o.evaluated for o in batch.outcomes)
    for outcome in batch.outcomes:
        assert json.loads((outcome.run_path / "config.json").read_text())["status"] == "complete"
        assert "mmd" in json.loads((outcome.run_path / "metrics.json").read_text())["metrics"]
    assert list((out / ".submitit").glob("*_log.err"))  # one log per job, beside the results


@pytest.mark.distributed
def test_a_ray_cell_dying_past_its_retries_is_a_failed_outcome(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    monkeypatch.setenv(KILL_ONCE_ENV, str(tmp_path / "killed"))
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    specs = _specs(latent_dims=(2,), seeds=(0,))
    [outcome] = execute_with(specs, _options(tmp_path / "out"), ExecutorOptions("ray", max_retries=0))
    assert outcome.status == "failed" and outcome.spec == specs[0]
    assert "its Ray worker died (1 attempt; WorkerCrashedError" in outcome.error
    assert outcome.run_path == tmp_path / "out" / "mnist" / "vae" / specs[0].run_id
