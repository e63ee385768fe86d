"""Data-parallel training on CPU with gloo: two processes train like one with the same global
batch, and a checkpoint written by two resumes in one."""

from __future__ import annotations

import csv
import socket
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp

from genbench.models import MODELS, GenerativeModel, ModelConfig
from genbench.training import DataConfig, RunSpec, TrainConfig, fit
from genbench.training.checkpoint import load_checkpoint

STEPS = 12
TRAIN = TrainConfig(steps=STEPS, batch_size=16, log_every=1, checkpoint_every=2, sample_every=STEPS)
# Two processes sum the same per-example gradients in another order and average two half-batch
# means: float32 rounding, about 1e-7 relative per step, compounded by Adam over 12 steps.
TOLERANCE = 1e-4


@dataclass
class AutoencoderConfig(ModelConfig):
    hidden: int = 16


class DeterministicAutoencoder(GenerativeModel):
    """No batch norm and no random numbers in the step: the one- and two-process losses may
    differ only by float rounding."""

    config_class = AutoencoderConfig
    loss_names = ("loss",)

    def __init__(self, config, image_shape):
        super().__init__(config, image_shape)
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(pixels, config.hidden),
                                           torch.nn.Tanh())
        self.decoder = torch.nn.Linear(config.hidden, pixels)

    def build_optimizers(self):
        self.optimizers = {"adam": torch.optim.Adam(self.parameters(), 1e-3)}
        return self.optimizers

    def train_step(self, batch, step, ctx):
        loss = ((self.decoder(self.encoder(batch)) - batch.flatten(1)) ** 2).mean()
        self.optimizers["adam"].zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step(self.optimizers["adam"])
        return {"loss": loss.item()}

    def sample(self, n, generator=None):
        z = torch.randn(n, self.config.hidden, generator=generator)
        return self.decoder(z).clamp(-1, 1).view(n, *self.image_shape)


def spec() -> RunSpec:
    return RunSpec("autoencoder", {}, DataConfig("mnist", limit=128), TRAIN, "smoke", 0)


def _worker(rank: int, world: int, port: int, out: str, stop_after) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    MODELS.add("autoencoder", DeterministicAutoencoder)
    fit(spec(), out, device="cpu", progress=False, allow_download=False, stop_after=stop_after)
    torch.distributed.destroy_process_group()


def train_in_processes(world: int, out, stop_after=None) -> None:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(world, port, str(out), stop_after), nprocs=world, join=True)


@pytest.fixture
def registered():
    MODELS.add("autoencoder", DeterministicAutoencoder)
    yield
    MODELS._entries.pop("autoencoder")


def losses(out) -> list[float]:
    [path] = out.glob("mnist/autoencoder/*/losses.csv")
    with open(path, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def weights(out) -> dict[str, torch.Tensor]:
    [path] = out.glob("mnist/autoencoder/*/checkpoint.pt")
    return load_checkpoint(path)["model"]


def test_two_processes_follow_the_one_process_loss_trajectory(tmp_path, registered):
    fit(spec(), tmp_path / "one", device="cpu", progress=False, allow_download=False)
    train_in_processes(2, tmp_path / "two")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, rel=TOLERANCE)
    assert one[-1] < one[0]  # it trained
    for key, value in weights(tmp_path / "one").items():
        assert torch.allclose(weights(tmp_path / "two")[key], value, rtol=TOLERANCE, atol=1e-6), key
    [config] = (tmp_path / "two").glob("mnist/autoencoder/*/config.json")
    assert '"processes": 2' in config.read_text() and "batch_norm" not in config.read_text()


def test_a_checkpoint_of_two_processes_resumes_in_one(tmp_path, registered):
    fit(spec(), tmp_path / "one", device="cpu", progress=False, allow_download=False)
    train_in_processes(2, tmp_path / "mixed", stop_after=STEPS // 2)
    [run] = (tmp_path / "mixed").glob("mnist/autoencoder/*/")
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == STEPS // 2 and len(state["rng_ranks"]) == 2
    resumed = fit(spec(), tmp_path / "mixed", device="cpu", progress=False, allow_download=False)
    assert resumed.status == "resumed" and resumed.run_dir.is_complete()
    assert losses(tmp_path / "mixed") == pytest.approx(losses(tmp_path / "one"), rel=TOLERANCE)


def test_nproc_launches_torchrun_and_records_the_processes(tmp_path):
    import json
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "genbench", "run", "--models", "vae", "--nproc", "2",
               "--out", str(tmp_path), "--set", "steps=4", "--set", "log_every=2",
               "--set", "checkpoint_every=2", "--set", "sample_every=4", "--set", "batch_size=8",
               "--set", "base_width=4", "--set", "latent_dim=4", "--limit", "32", "--no-progress",
               "--device", "cpu", "--no-eval", "--no-report"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained") == 1  # rank 0 alone prints
    [config] = tmp_path.glob("mnist/vae/*/config.json")
    values = json.loads(config.read_text())
    assert values["processes"] == 2 and values["status"] == "complete"
    assert "per-rank statistics over 4 images" in values["batch_norm"]


def test_ppca_refuses_several_processes(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "genbench", "run", "--models", "ppca", "--nproc", "2",
                           "--out", str(tmp_path), "--limit", "32", "--no-progress", "--device", "cpu",
                           "--no-eval", "--no-report"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "fitted in closed form" in done.stderr
    assert done.stderr.count("\n") == 1  # refused before torchrun starts
