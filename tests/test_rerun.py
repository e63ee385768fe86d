"""``genbench rerun``: a run regenerated from its saved config.json gives the saved numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_faults import ENV, cli_run, run_folder


def genbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbench.cli", *args], env=ENV,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    subprocess.run(cli_run(out, 30), env=ENV, check=True, capture_output=True)
    return run_folder(out)


def test_rerun_from_the_saved_config_reproduces_the_saved_metrics(saved_run, tmp_path):
    result = genbench("rerun", str(saved_run), "--out", str(tmp_path), "--tolerance", "0",
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for metric in ("mmd", "kl", "log_likelihood"):  # the metrics the saved run has
        saved, regenerated, difference, agrees = lines[metric][1:]
        assert saved == regenerated and float(difference) == 0.0 and agrees == "yes"
    # The same spec gives the same run id, in the other folder.
    assert (tmp_path / "mnist" / "vae" / saved_run.name / "metrics.json").is_file()


def test_rerun_reports_a_changed_number_and_exits_1(saved_run, tmp_path):
    copy = tmp_path / "tampered" / saved_run.name
    copy.mkdir(parents=True)
    for name in ("config.json", "metrics.json"):
        (copy / name).write_bytes((saved_run / name).read_bytes())
    document = json.loads((copy / "metrics.json").read_text())
    document["metrics"]["mmd"]["value"] *= 1.01
    (copy / "metrics.json").write_text(json.dumps(document))
    result = genbench("rerun", str(copy), "--out", str(tmp_path / "again"), "--metrics", "mmd",
                      "--tolerance", "1e-3", "--no-progress")
    assert result.returncode == 1
    assert "NO" in result.stdout and "differ by more than the tolerance 0.001" in result.stderr


def test_rerun_refuses_a_folder_without_a_run_and_its_own_results_folder(saved_run, tmp_path):
    from click.testing import CliRunner

    from genbench.cli import main

    def usage_error(*args: str) -> str:
        result = CliRunner().invoke(main, ["rerun", *args])
        assert result.exit_code == 2, result.output
        return result.output

    assert "not a genbench run folder" in usage_error(str(tmp_path), "--out", str(tmp_path / "x"))
    assert "--out must differ" in usage_error(str(saved_run), "--out", str(saved_run.parents[2]))
    assert "no saved value for fid" in usage_error(str(saved_run), "--out", str(tmp_path / "y"),
                                                   "--metrics", "fid")


def test_rerun_of_a_run_resumed_with_other_thread_counts_says_exact_agreement_is_not_expected(
        saved_run, tmp_path):
    copy = tmp_path / "resumed" / saved_run.name
    copy.mkdir(parents=True)
    for name in ("config.json", "metrics.json"):
        (copy / name).write_bytes((saved_run / name).read_bytes())
    config = json.loads((copy / "config.json").read_text())
    config["thread_history"] = [{"from_step": 0, "torch_threads": 2},
                                {"from_step": 10, "torch_threads": config["torch_threads"]}]
    (copy / "config.json").write_text(json.dumps(config))
    result = genbench("rerun", str(copy), "--out", str(tmp_path / "again"), "--metrics", "mmd",
                      "--no-progress")
    assert f"resumed with other torch thread counts (2 from step 0, {config['torch_threads']} " \
           "from step 10)" in result.stderr
    # The saved run itself trained with one count throughout: no such note.
    plain = genbench("rerun", str(saved_run), "--out", str(tmp_path / "plain"), "--metrics", "mmd",
                     "--no-progress")
    assert plain.returncode == 0 and "thread counts" not in plain.stderr
