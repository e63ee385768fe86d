"""Sweep specs and seeds: parsing, typing, validation before anything trains; and a tiny sweep
through the real command line, interrupted and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.experiments.plan import (
    parse_overrides,
    parse_seeds,
    parse_sweep_spec,
    parse_sweep_specs,
    plan_sweep,
)

TINY = ["--set", "steps=4", "--set", "log_every=2", "--set", "checkpoint_every=2",
        "--set", "sample_every=4", "--set", "batch_size=8", "--set", "base_width=4",
        "--limit", "32", "--no-progress", "--device", "cpu", "--metrics", "mmd,kl"]


@pytest.mark.parametrize("text, key, values", [
    ("latent_dim=100,500,1000", "latent_dim", ("100", "500", "1000")),
    ("latent_dim = 100, 500", "latent_dim", ("100", "500")),
    ("latent_dim=100:1000:x10", "latent_dim", ("100", "1000")),
    ("latent_dim=10:100:*3", "latent_dim", ("10", "30", "90")),
    ("latent_dim=2:10:4", "latent_dim", ("2", "6", "10")),
    ("latent_dim=2:10:+4,64", "latent_dim", ("2", "6", "10", "64")),
    ("dropout=0.1:0.3:+0.1", "dropout", ("0.1", "0.2", "0.3")),
    ("learning_rate=1e-4:1e-2:x10", "learning_rate", ("0.0001", "0.001", "0.01")),
    ("gvae.latent_dim=8,16", "gvae.latent_dim", ("8", "16")),
])
def test_sweep_specs_parse_lists_and_ranges(text, key, values):
    axis = parse_sweep_spec(text)
    assert (axis.key, axis.values) == (key, values)


@pytest.mark.parametrize("texts, message", [
    (["latent_dim="], "empty value"),
    (["latent_dim=1,,2"], "empty value"),
    (["=1,2"], "is not a config key"),
    (["latent_dim"], "has no '='"),
    (["latent_dim=1,2", "latent_dim=3"], "given twice"),
    (["latent_dim=100,100"], "value 100 is given twice"),
    (["latent_dim=100:10:x10"], "stop is below start"),
    (["latent_dim=0:10:x10"], "geometric range needs start > 0"),
    (["latent_dim=1:10:x1"], "factor > 1"),
    (["latent_dim=1:2:+0"], "step must be positive"),
    (["latent_dim=1:a:2"], "a range is start:stop"),
    ([], "at least one spec"),
])
def test_malformed_sweep_specs_are_usage_errors(texts, message):
    with pytest.raises(UsageError, match=message):
        parse_sweep_specs(texts)


def test_sweep_values_are_typed_by_each_models_config():
    cells = plan_sweep(parse_sweep_specs(["latent_dim=100,500,1000"]), ["gvae", "vae"], "mnist",
                       "smoke", [0, 1])
    assert len(cells) == 12 and len({c.spec.run_id for c in cells}) == 12
    gvae = [c.values["latent_dim"] for c in cells if c.spec.model == "gvae"]
    assert gvae == [100, 100, 500, 500, 1000, 1000]
    assert all(isinstance(c.spec.model_config["latent_dim"], int) for c in cells)
    # a harness setting sweeps for every model; a scoped key for its model only
    cells = plan_sweep(parse_sweep_specs(["gvae.latent_dim=8,16", "steps=10,20"]), ["gvae", "vae"],
                       "mnist", "smoke", [0])
    made = sorted((c.spec.model, c.spec.model_config["latent_dim"], c.spec.train.steps) for c in cells)
    assert made == [("gvae", 8, 10), ("gvae", 8, 20), ("gvae", 16, 10), ("gvae", 16, 20),
                    ("vae", 32, 10), ("vae", 32, 20)]


@pytest.mark.parametrize("specs, models, message", [
    (["latent_dim=a,b"], ["gvae"], "sweep gvae: latent_dim='a' is not a valid int"),
    (["latent_dim=-3,4"], ["vae"], "latent_dim must be >= 1"),
    (["latnt_dim=1,2"], ["gvae"],
     "'latnt_dim' is not a config key of model 'gvae'; did you mean 'latent_dim'"),
    (["gradient_penalty=true,false"], ["wgan", "gan"],
     "not a config key of model 'gan'.*write wgan.gradient_penalty"),
    (["gan.latent_dim=1,2"], ["gvae"], "'gan' is not one of the models swept"),
    (["kl_weight=1,2"], ["gvae", "gan"], "'kl_weight' is not a config key of model 'gan'"),
])
def test_sweep_keys_and_values_are_checked_before_training(specs, models, message):
    with pytest.raises(UsageError, match=message):
        plan_sweep(parse_sweep_specs(specs), models, "mnist", "smoke", [0])


def test_a_key_both_swept_and_set_is_an_error():
    with pytest.raises(UsageError, match="both swept and set"):
        plan_sweep(parse_sweep_specs(["latent_dim=1,2"]), ["vae"], "mnist", "smoke", [0],
                   parse_overrides(["latent_dim=3"]))


@pytest.mark.parametrize("text, seeds", [("0,1,2", [0, 1, 2]), ("3", [3]), ("0:3", [0, 1, 2]),
                                         (" 5, 7 ", [5, 7])])
def test_seed_lists(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a,b", "", "1,1", "-1", "0:"])
def test_bad_seed_lists(text):
    with pytest.raises(UsageError):
        parse_seeds(text)


def test_sweep_command_rejects_bad_key_before_writing_anything(tmp_path):
    result = CliRunner().invoke(main, ["sweep", "latnt_dim=4,8", "--models", "vae", "--out",
                                       str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 2
    assert "did you mean 'latent_dim'" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _sweep_args(out):
    return ["sweep", "latent_dim=2,4", "--models", "vae", "--seeds", "0,1", "--out", str(out), *TINY]


def test_sweep_end_to_end_table_csv_and_rerun(tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, _sweep_args(tmp_path), catch_exceptions=False)
    assert first.exit_code == 0, first.output
    configs = sorted(tmp_path.glob("mnist/vae/*/config.json"))
    assert len(configs) == 4
    frame = pd.read_csv(tmp_path / "results.csv")
    assert list(frame.columns[:6]) == ["run_id", "dataset", "model", "budget", "seed", "latent_dim"]
    mmd = frame[frame["metric"] == "mmd"]
    assert len(mmd) == 4 and mmd["run_id"].is_unique
    assert sorted(mmd["latent_dim"]) == [2, 2, 4, 4]
    # The printed comparison table: one row per latent size, 2 seeds each, mean ± std of MMD.
    for size in (2, 4):
        values = mmd[mmd["latent_dim"] == size]["value"]
        line = next(line for line in first.stdout.splitlines()
                    if line.startswith("vae") and line.split()[1] == str(size))
        assert " 2 " in line and "±" in line
        shown = line.split()[3]
        decimals = len(shown.partition(".")[2])
        assert float(shown) == pytest.approx(round(values.mean(), decimals), abs=10 ** -decimals)
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "tables" / "mnist-smoke-test.tex").is_file()
    assert list((tmp_path / "report" / "figures").glob("*-mmd-vs-latent_dim.png"))

    second = runner.invoke(main, _sweep_args(tmp_path), catch_exceptions=False)
    assert second.exit_code == 0
    assert second.stderr.count("skipped") == 4 and "evaluating" not in second.stderr
    assert pd.read_csv(tmp_path / "results.csv").equals(frame)


def test_interrupted_sweep_finishes_every_cell_exactly_once(tmp_path):
    """Kill the sweep process once its first cell is done, re-run it: all 4 cells, once each."""
    command = [sys.executable, "-m", "genbench.cli", *_sweep_args(tmp_path)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list(tmp_path.glob("mnist/vae/*/metrics.json")):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = len(list(tmp_path.glob("mnist/vae/*/metrics.json")))
    assert finished_before < 4, "the sweep finished before it could be interrupted"

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stderr.count("skipped") >= finished_before
    frame = pd.read_csv(tmp_path / "results.csv")
    for metric in ("mmd", "kl"):
        rows = frame[frame["metric"] == metric]
        assert len(rows) == 4 and rows["run_id"].is_unique
    runs = frame.drop_duplicates("run_id")
    assert sorted(zip(runs["latent_dim"], runs["seed"])) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    for config in tmp_path.glob("mnist/vae/*/config.json"):
        assert json.loads(config.read_text())["status"] == "complete"


def test_parallel_jobs_give_the_same_cells(tmp_path):
    result = CliRunner().invoke(main, [*_sweep_args(tmp_path), "--jobs", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "results.csv")
    assert frame[frame["metric"] == "mmd"]["run_id"].nunique() == 4
