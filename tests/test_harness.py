"""The training harness: exact resume, skipping, divergence, run folder contents."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass

import pytest
import torch

from genbench.core.errors import GenbenchError
from genbench.models import MODELS, GenerativeModel, ModelConfig, model_names
from genbench.training import DataConfig, RunSpec, TrainConfig, fit
from genbench.training.checkpoint import load_checkpoint
from tests.conftest import tiny_config

TRAIN = TrainConfig(steps=12, batch_size=16, log_every=2, checkpoint_every=4, sample_every=6,
                    grid_size=4)


def spec_for(model: str, train: TrainConfig = TRAIN, seed: int = 0) -> RunSpec:
    return RunSpec(model=model, model_config=tiny_config(model).to_dict(),
                   data=DataConfig("mnist", limit=40), train=train, budget="smoke", seed=seed)


def loss_rows(run_dir):
    with open(run_dir.losses_path) as handle:
        return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("model", model_names())
def test_interrupted_run_resumes_to_identical_weights(model, tmp_path):
    spec = spec_for(model)
    whole = fit(spec, tmp_path / "whole", device="cpu", progress=False, allow_download=False)
    # Interrupt at step 5 (between checkpoints and in a logging interval), then resume twice.
    part = fit(spec, tmp_path / "parts", device="cpu", progress=False, allow_download=False,
               stop_after=5)
    assert part.steps == 5 and not part.run_dir.is_complete()
    part = fit(spec, tmp_path / "parts", device="cpu", progress=False, allow_download=False,
               stop_after=4)
    assert part.status == "resumed" and part.steps == 9
    part = fit(spec, tmp_path / "parts", device="cpu", progress=False, allow_download=False)
    assert part.status == "resumed" and part.run_dir.is_complete()

    a = load_checkpoint(whole.run_dir.checkpoint_path)
    b = load_checkpoint(part.run_dir.checkpoint_path)
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert loss_rows(whole.run_dir) == loss_rows(part.run_dir)


def test_run_folder_contents_and_skip(tmp_path):
    spec = spec_for("vae")
    result = fit(spec, tmp_path, device="cpu", progress=False, allow_download=False)
    folder = tmp_path / "mnist" / "vae" / spec.run_id
    assert result.run_dir.path == folder
    for name in ("config.json", "checkpoint.pt", "losses.csv", "samples.png",
                 "samples/step_0000006.png", "samples/step_0000012.png"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["status"] == "complete" and config["run_id"] == spec.run_id
    assert RunSpec.from_dict(config) == spec  # any run can be rebuilt from its config
    for key in ("genbench_version", "git_commit", "libraries", "hardware", "torch_threads",
                "parameters", "train_time_s"):
        assert key in config, key
    rows = loss_rows(result.run_dir)
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert set(rows[0]) == {"step", "images", "loss", "reconstruction", "kl"}

    again = fit(spec, tmp_path, device="cpu", progress=False, allow_download=False)
    assert again.status == "skipped"
    fresh = fit(spec, tmp_path, device="cpu", progress=False, allow_download=False, fresh=True)
    assert fresh.status == "trained"


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a = fit(spec_for("gan"), tmp_path / "a", device="cpu", progress=False, allow_download=False)
    b = fit(spec_for("gan"), tmp_path / "b", device="cpu", progress=False, allow_download=False)
    c = fit(spec_for("gan", seed=1), tmp_path / "c", device="cpu", progress=False,
            allow_download=False)
    assert loss_rows(a.run_dir) == loss_rows(b.run_dir)
    assert loss_rows(a.run_dir) != loss_rows(c.run_dir)


@dataclass
class ExplodingConfig(ModelConfig):
    explode_at: int = 6


class Exploding(GenerativeModel):
    """Test model whose loss becomes NaN at a chosen step."""

    config_class = ExplodingConfig
    loss_names = ("loss",)

    def __init__(self, config, image_shape):
        super().__init__(config, image_shape)
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def build_optimizers(self):
        self.optimizers = {"sgd": torch.optim.SGD(self.parameters(), 0.1)}
        return self.optimizers

    def train_step(self, batch, step, ctx):
        loss = (self.weight - 1) ** 2 * (math.nan if step + 1 >= self.config.explode_at else 1)
        self.optimizers["sgd"].zero_grad()
        ctx.backward(loss)
        ctx.step(self.optimizers["sgd"])
        return {"loss": loss.item()}

    def sample(self, n, generator=None):
        return torch.zeros(n, *self.image_shape)


def test_nan_loss_stops_with_step_and_name_and_keeps_checkpoint(tmp_path):
    MODELS.add("exploding", Exploding)
    try:
        spec = RunSpec("exploding", {"explode_at": 6}, DataConfig("mnist", limit=40), TRAIN,
                       "smoke", 0)
        with pytest.raises(GenbenchError, match=r"loss 'loss' is nan at step 6.*step 4\) kept"):
            fit(spec, tmp_path, device="cpu", progress=False, allow_download=False)
        run = tmp_path / "mnist" / "exploding" / spec.run_id
        assert load_checkpoint(run / "checkpoint.pt")["step"] == 4
        assert json.loads((run / "config.json").read_text())["status"] == "failed"
    finally:
        MODELS._entries.pop("exploding")


def test_thread_history_adds_a_stretch_only_when_a_resume_changes_the_count():
    from genbench.training.harness import _thread_history

    assert _thread_history({}, 0, 2) == [{"from_step": 0, "torch_threads": 2}]
    started = {"torch_threads": 2, "thread_history": [{"from_step": 0, "torch_threads": 2}]}
    assert _thread_history(started, 150, 2) == started["thread_history"]
    changed = _thread_history(started, 150, 1)
    assert changed == [{"from_step": 0, "torch_threads": 2}, {"from_step": 150, "torch_threads": 1}]
    assert _thread_history({"torch_threads": 1, "thread_history": changed}, 900, 1) == changed
    # A folder from before the history: its one recorded count is taken as the count from step 0.
    assert _thread_history({"torch_threads": 2}, 40, 1) == [
        {"from_step": 0, "torch_threads": 2}, {"from_step": 40, "torch_threads": 1}]
