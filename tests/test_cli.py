"""The command line: the run command end to end at a tiny size, and every error it names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from genbench.cli import main

TINY_RUN = ["--set", "steps=4", "--set", "log_every=2", "--set", "checkpoint_every=2",
            "--set", "sample_every=4", "--set", "batch_size=8", "--set", "base_width=4",
            "--set", "latent_dim=4", "--limit", "32", "--no-progress", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_models_and_datasets():
    models = invoke("list", "models")
    assert models.exit_code == 0
    names = [line.split()[0] for line in models.output.splitlines()]
    assert names == ["acgan", "biggan", "cgan", "cppn", "deepsim", "deepsim-inversion", "gan", "gvae",
                     "infogan", "logan", "pix2pix", "ppca", "sagan", "srgan", "stackgan", "unet-gan",
                     "vae", "wgan"]
    assert all(len(line.split(maxsplit=1)) == 2 for line in models.output.splitlines())
    datasets = invoke("list", "datasets")
    assert {"mnist", "fashion-mnist", "cifar10"} <= {row.split()[0] for row in datasets.output.splitlines()}


def test_run_evaluates_each_run_when_training_ends(tmp_path):
    result = invoke("run", "--models", "vae", "--out", str(tmp_path), *TINY_RUN)
    assert result.exit_code == 0, result.output
    metrics = json.loads(next(tmp_path.glob("mnist/vae/*/metrics.json")).read_text())["metrics"]
    assert metrics["log_likelihood"]["status"] == "ok" and metrics["fid"]["status"] == "ok"
    assert "MMD²" in result.stdout and "FID ↓" in result.stdout


def test_run_writes_folders_prints_table_and_skips_on_rerun(tmp_path):
    args = ["run", "--models", "gvae,vae", "--dataset", "mnist", "--out", str(tmp_path), "--no-eval",
            *TINY_RUN]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    folders = sorted(p.relative_to(tmp_path).parts[:2] for p in tmp_path.glob("*/*/*/config.json"))
    assert folders == [("mnist", "gvae"), ("mnist", "vae")]
    assert "trained" in first.stdout and "gvae" in first.stdout
    for config in tmp_path.glob("*/*/*/config.json"):
        values = json.loads(config.read_text())
        assert values["model_config"]["latent_dim"] == 4 and values["train"]["steps"] == 4
    second = invoke(*args)
    assert second.exit_code == 0
    assert second.stdout.count("skipped") == 2


def test_seeds_give_one_folder_each(tmp_path):
    result = invoke("run", "--models", "vae", "--seeds", "0,1", "--out", str(tmp_path), "--no-eval",
                    *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("mnist/vae/*seed0-*"))) == 1
    assert len(list(tmp_path.glob("mnist/vae/*seed1-*"))) == 1


@pytest.mark.parametrize("args, exit_code, message", [
    (["run", "--models", "gvea"], 2, "unknown model 'gvea'; did you mean 'gvae'?"),
    (["run", "--models", "vae", "--set", "latnt_dim=3"], 2, "did you mean 'latent_dim'?"),
    (["run", "--models", "vae", "--set", "latent_dim=many"], 2, "not a valid int"),
    (["run", "--models", "vae", "--set", "latent_dim"], 2, "expects key=value"),
    (["run", "--models", "vae", "--set", "gan.latent_dim=3"], 2, "not one of the models run"),
    (["run", "--models", "vae", "--seed", "1", "--seeds", "1,2"], 2, "not both"),
    (["run", "--models", "vae", "--seeds", "a,b"], 2, "comma-separated integers"),
    (["run", "--models", "vae", "--dataset", "mnsit"], 2, "did you mean 'mnist'?"),
    (["run", "--models", "vae", "--image-size", "4"], 2, "outside 8..256"),
    (["run", "--models", "vae", "--limit", "0"], 2, "--limit must be at least 1"),
    (["run", "--models", "vae", "--set", "steps=0"], 2, "steps must be >= 1"),
    (["run", "--models", "ppca", "--set", "latent_dim=784"], 2, "latent_dim must be in 1..783"),
    (["run", "--models", "vae", "--device", "tpu"], 2, "unknown device 'tpu'"),
])
def test_usage_errors_are_one_line_with_exit_status(args, exit_code, message, tmp_path):
    result = invoke(*args, "--out", str(tmp_path))
    assert result.exit_code == exit_code
    assert message in result.stderr
    assert result.stderr.startswith("genbench: error:") and result.stderr.count("\n") == 1


def test_missing_dataset_offline_is_one_line_and_exit_1(tmp_path):
    result = invoke("run", "--models", "vae", "--dataset", "fashion-mnist", "--no-download",
                    "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "dataset 'fashion-mnist' not found" in result.stderr
    assert "train-images-idx3-ubyte.gz" in result.stderr and result.stderr.count("\n") == 1


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("run", "--models", "vae", "--out", str(blocker / "results"), *TINY_RUN)
    assert result.exit_code == 1
    assert "cannot write to output folder" in result.stderr


def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = invoke("run", "--models", "vae", "--device", "cuda", "--out", str(tmp_path))
    assert result.exit_code == 1 and "no CUDA GPU" in result.stderr


def test_console_script_help_shows_an_example():
    out = subprocess.run([sys.executable, "-m", "genbench.cli", "run", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "genbench run --models gvae,vae --dataset mnist" in out
