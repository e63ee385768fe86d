"""Faults: SIGKILL at random moments, SIGTERM, corrupt or foreign checkpoints, a second process on
the same run, a full disk. After each, the same command finishes with the same weights and
metrics as a run that never failed."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genbench.core.errors import GenbenchError
from genbench.core.locking import run_lock
from genbench.training import DataConfig, RunSpec, TrainConfig, fit
from genbench.training.checkpoint import CheckpointStore, load_checkpoint
from tests.conftest import tiny_config

# Same processes and threads for every run compared: bit-identical results on CPU depend on both.
ENV = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
METRICS = "mmd,kl,log_likelihood"  # log_likelihood: the seeded estimator must agree too


def cli_run(out: Path, steps: int, metrics: str = METRICS) -> list[str]:
    return [sys.executable, "-m", "genbench.cli", "run", "--models", "vae", "--out", str(out),
            "--set", f"steps={steps}", "--set", "log_every=5", "--set", "checkpoint_every=10",
            "--set", "sample_every=50", "--set", "batch_size=8", "--set", "base_width=4",
            "--set", "latent_dim=4", "--limit", "256", "--no-progress", "--device", "cpu",
            "--metrics", metrics, "--no-report"]


def run_folder(out: Path) -> Path:
    [folder] = list(out.glob("mnist/vae/*/"))
    return folder


def final_state(out: Path) -> tuple[dict, dict]:
    folder = run_folder(out)
    weights = load_checkpoint(folder / "checkpoint.pt")["model"]
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    numbers = {name: {k: entry.get(k) for k in ("value", "std", "ci_low", "ci_high", "num_samples")}
               for name, entry in metrics.items()}
    return weights, numbers


def assert_identical(a: Path, b: Path) -> None:
    weights_a, metrics_a = final_state(a)
    weights_b, metrics_b = final_state(b)
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert metrics_a == metrics_b
    losses = lambda out: [r.split(",")[:2] + r.split(",")[3:] for r in  # noqa: E731  (time_s differs)
                          (run_folder(out) / "losses.csv").read_text().splitlines()]
    assert losses(a) == losses(b)


def checkpoint_step(out: Path) -> int:
    found = list(out.glob("mnist/vae/*/checkpoint.pt"))
    return load_checkpoint(found[0])["step"] if found else 0


def kill_and_resume(tmp_path: Path, kills: int, steps: int, seed: int, during_training,
                    metrics: str = METRICS) -> list[int]:
    """Kill the same command ``kills`` times with SIGKILL, then let it finish; compare with an
    uninterrupted run. A kill moment is uniform over the expected remaining time of the process
    (start-up, training left, evaluation) or, where ``during_training(i)`` is true for kill ``i``,
    a random part of its share of the training left once the process has written a checkpoint
    (start-up takes most
    of a tiny run's time, so kills anywhere mostly miss training). Returns the checkpoint step after
    each kill."""
    reference = tmp_path / "reference"
    started = time.monotonic()
    subprocess.run(cli_run(reference, steps, metrics), env=ENV, check=True, capture_output=True, timeout=600)
    duration = time.monotonic() - started
    train_time = json.loads((run_folder(reference) / "config.json").read_text())["train_time_s"]
    overhead = max(duration - train_time, 0.0)  # start-up and evaluation
    rng = random.Random(seed)
    out = tmp_path / "killed"
    reached = []
    for kill in range(kills):
        step = checkpoint_step(out)
        train_left = train_time * (steps - step) / steps
        process = subprocess.Popen(cli_run(out, steps, metrics), env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if during_training(kill) and step < steps:
            deadline = time.monotonic() + 120
            while checkpoint_step(out) == step and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            # A part of this kill's share of the training left, so that this kill lands in
            # training on a slower or faster machine too, and later kills still find some.
            time.sleep(rng.uniform(0.1, 0.6) * train_left / (kills - kill))
        else:
            time.sleep(rng.uniform(0.0, overhead + train_left))
        process.send_signal(signal.SIGKILL)
        process.wait()
        reached.append(checkpoint_step(out))
    print(f"checkpoint step after each of {kills} kills: {reached} (of {steps})")
    finished = subprocess.run(cli_run(out, steps, metrics), env=ENV, capture_output=True, text=True,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert_identical(reference, out)
    return reached


def test_sigkill_during_training_then_resume_is_bit_identical(tmp_path):
    reached = kill_and_resume(tmp_path, kills=2, steps=800, seed=0, during_training=lambda kill: True,
                              metrics="mmd,kl")  # the slow test below checks log_likelihood too
    assert all(0 < step < 800 for step in reached), reached  # both cut training short


@pytest.mark.slow
def test_sigkill_ten_times_then_resume_is_bit_identical(tmp_path):
    # Even kills anywhere in the process (start-up, training, evaluation), odd ones in training.
    reached = kill_and_resume(tmp_path, kills=10, steps=3000, seed=1,
                              during_training=lambda kill: kill % 2 == 1)
    assert sum(0 < step < 3000 for step in reached) >= 3, reached


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_finishes_identically(tmp_path):
    subprocess.run(cli_run(tmp_path / "reference", 400), env=ENV, check=True, capture_output=True)
    out = tmp_path / "stopped"
    process = subprocess.Popen(cli_run(out, 400), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("mnist/vae/*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert process.returncode == 128 + signal.SIGTERM
    assert "SIGTERM at step" in stderr and "re-run the same command to resume" in stderr
    assert "Traceback" not in stderr
    step = load_checkpoint(run_folder(out) / "checkpoint.pt")["step"]
    assert 0 < step < 400
    assert json.loads((run_folder(out) / "config.json").read_text())["status"] == "running"
    subprocess.run(cli_run(out, 400), env=ENV, check=True, capture_output=True)
    assert_identical(tmp_path / "reference", out)


def test_sigterm_in_process_checkpoints_and_resumes_identically(tmp_path):
    import threading

    from genbench.training.harness import RunInterrupted

    whole = fit(spec(steps=200), tmp_path / "whole", device="cpu", progress=False, allow_download=False)
    folder = tmp_path / "stopped" / "mnist" / "vae" / spec(steps=200).run_id

    def terminate_after_first_checkpoint():
        deadline = time.monotonic() + 60
        while not (folder / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_first_checkpoint, daemon=True).start()
    with pytest.raises(RunInterrupted, match="SIGTERM at step .* re-run the same command") as stopped:
        fit(spec(steps=200), tmp_path / "stopped", device="cpu", progress=False, allow_download=False)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored
    step = load_checkpoint(folder / "checkpoint.pt")["step"]
    assert 0 < step < 200
    resumed = fit(spec(steps=200), tmp_path / "stopped", device="cpu", progress=False, allow_download=False)
    assert resumed.status == "resumed"
    threads = torch.get_num_threads()
    assert json.loads((folder / "config.json").read_text())["thread_history"] == [
        {"from_step": 0, "torch_threads": threads}]  # one count throughout: one stretch
    a, b = load_checkpoint(whole.run_dir.checkpoint_path), load_checkpoint(folder / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def spec(steps=20) -> RunSpec:
    train = TrainConfig(steps=steps, batch_size=8, log_every=2, checkpoint_every=4, sample_every=20)
    return RunSpec("vae", tiny_config("vae").to_dict(), DataConfig("mnist", limit=64), train, "smoke", 0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(damage, tmp_path, capsys):
    whole = fit(spec(), tmp_path / "whole", device="cpu", progress=False, allow_download=False)
    part = fit(spec(), tmp_path / "part", device="cpu", progress=False, allow_download=False, stop_after=10)
    path = part.run_dir.checkpoint_path
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "flip": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
               "empty": b"", "garbage": b"not a checkpoint at all"}[damage]
    path.write_bytes(damaged)
    capsys.readouterr()
    resumed = fit(spec(), tmp_path / "part", device="cpu", progress=False, allow_download=False)
    warning = capsys.readouterr().err
    assert "checkpoint.pt is unusable" in warning and "step 8" in warning
    assert warning.count("\n") == 2  # one line for the damage, one for the fallback
    assert resumed.status == "resumed"
    a, b = load_checkpoint(whole.run_dir.checkpoint_path), load_checkpoint(path)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_finished_run_with_a_damaged_final_checkpoint_redoes_its_last_steps(tmp_path, capsys):
    first = fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False)
    reference = load_checkpoint(first.run_dir.checkpoint_path)["model"]
    first.run_dir.checkpoint_path.write_bytes(b"")
    again = fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False)
    assert again.status == "resumed" and "finished run is missing or corrupt" in capsys.readouterr().err
    rebuilt = load_checkpoint(first.run_dir.checkpoint_path)["model"]
    assert all(torch.equal(reference[k], rebuilt[k]) for k in reference)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    other = fit(spec(steps=8), tmp_path / "other", device="cpu", progress=False, allow_download=False)
    mine = spec(steps=12)
    folder = tmp_path / "mine" / "mnist" / "vae" / mine.run_id
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(other.run_dir.checkpoint_path.read_bytes())
    with pytest.raises(GenbenchError, match=f"belongs to run {other.run_dir.path.name}, not {mine.run_id}"):
        fit(mine, tmp_path / "mine", device="cpu", progress=False, allow_download=False)


def test_checkpoints_written_before_checksums_still_load(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "step": 3}
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    loaded = CheckpointStore(path, "any").load()
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_second_process_waits_for_the_run_lock(tmp_path):
    run = tmp_path / "mnist" / "vae" / "smoke-seed0-x"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from genbench.core.locking import run_lock\n"
        f"with run_lock({str(run)!r}):\n"
        "    print('held', flush=True); time.sleep(1.5)\n")], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    messages = []
    started = time.monotonic()
    with run_lock(run, log=messages.append):
        waited = time.monotonic() - started
        with run_lock(run):  # re-entrant within one process
            pass
    holder.wait()
    assert waited > 0.3 and len(messages) == 1 and f"pid {holder.pid}" in messages[0]


def test_not_enough_disk_space_fails_before_training(tmp_path, monkeypatch):
    import shutil

    from genbench.training import harness

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(harness.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    (tmp_path / "earlier.txt").write_text("earlier results")
    with pytest.raises(GenbenchError, match="not enough free disk space .* MiB free"):
        fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False)
    assert not (tmp_path / "mnist" / "vae" / spec().run_id).exists()
    assert (tmp_path / "earlier.txt").read_text() == "earlier results"


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from genbench.training import checkpoint

    fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False, stop_after=8)
    real = checkpoint.write_bytes

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_bytes", full)
    with pytest.raises(GenbenchError, match="disk full while writing .*previous checkpoint"):
        fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False)
    monkeypatch.setattr(checkpoint, "write_bytes", real)
    folder = tmp_path / "mnist" / "vae" / spec().run_id
    assert load_checkpoint(folder / "checkpoint.prev.pt")["step"] == 8
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    finished = fit(spec(), tmp_path, device="cpu", progress=False, allow_download=False)
    assert finished.status == "resumed" and finished.run_dir.is_complete()


def test_two_processes_running_the_same_command_train_once(tmp_path):
    command = cli_run(tmp_path, 300, "mmd")
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    run_rows = [line.split() for out, _ in outputs for line in out.splitlines()]
    statuses = sorted(row[2] for row in run_rows
                      if len(row) > 2 and row[2] in ("trained", "resumed", "skipped"))
    assert statuses == ["skipped", "trained"], outputs
    assert any("waiting for" in err for _, err in outputs)
    assert json.loads((run_folder(tmp_path) / "config.json").read_text())["status"] == "complete"
    assert not list(tmp_path.rglob("*.lock")) and not list(tmp_path.rglob("*.tmp"))


def test_sigterm_to_a_parallel_run_reaches_its_workers_and_leaves_no_orphans(tmp_path):
    # The parent alone gets the signal (its own session, as from `kill` or a batch system): it
    # must pass it on, so each worker checkpoints and stops instead of training on as an orphan.
    command = cli_run(tmp_path, 100000, metrics="mmd") + ["--seeds", "0,1", "--jobs", "2"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("mnist/vae/*/checkpoint.pt"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "re-run the same command to resume" in stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # every process of the session has exited
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("workers outlived the parent")
    for folder in tmp_path.glob("mnist/vae/*/"):
        assert 0 < load_checkpoint(folder / "checkpoint.pt")["step"] < 100000
        with run_lock(folder):  # released: the next command can resume the run
            pass
