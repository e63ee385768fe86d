"""Every bad input gets one clear line (issue 7).

Through the real command line: the exit status (2 for a usage error, 1 for a failure), exactly one
``genbench: error:`` line on stderr naming what is wrong and how to fix it, no traceback, and
nothing half-written left in the output folder. Then the input checks of the metric functions,
called directly.

``tests/test_cli.py`` already covers ``run`` with an unknown model or dataset, ``--set latnt_dim``,
``--seed`` with ``--seeds``, ``--image-size 4`` and a missing Fashion-MNIST; the cases here are the
other commands and mistakes.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import distributions as D

from genbench.cli import main
from genbench.core.errors import UsageError
from genbench.data.sources import SHIPPED_ROOT
from genbench.models.base import GenerativeModel, ModelConfig

# Like TINY_RUN of test_cli.py, but logged and checkpointed every step (so a divergence leaves a
# known last checkpoint), and as a dict: a case that sets one of these keys itself keeps its value
# (``--set`` refuses a key given twice).
TINY_SETTINGS = {"steps": "4", "log_every": "1", "checkpoint_every": "1", "sample_every": "4",
                 "batch_size": "8", "base_width": "4", "latent_dim": "4"}
QUIET = ["--limit", "32", "--no-progress", "--device", "cpu", "--no-eval", "--no-report", "--no-download"]


def tiny(*args) -> list:
    """``args`` plus the tiny settings they do not mention: a case that wrongly starts training
    ends in a second instead of minutes."""
    given = {m.group(1) for a in args if (m := re.match(r"(?:\w+\.)?(\w+)=", str(a)))}
    settings = [x for key, value in TINY_SETTINGS.items() if key not in given
                for x in ("--set", f"{key}={value}")]
    return [*args, *settings, *QUIET]


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, exit_code: int, message: str) -> str:
    """The error contract; returns the line."""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("genbench: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert result.exit_code == exit_code, (result.exit_code, lines[0])
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else []


def assert_no_run_left(out: Path) -> None:
    """No run folder, no half-written file and no lock file (its holder removes it)."""
    left = files_under(out)
    assert left == [], left


# --- usage errors: caught before any work, nothing written ----------------------------------------

SWEEP = ["sweep", "latent_dim=4,8", "--models", "vae"]

USAGE_ERRORS = [
    # 1. unknown names, each with the closest valid one
    pytest.param([*SWEEP[:2], "--models", "vea"], "unknown model 'vea'; did you mean 'vae'?",
                 id="sweep-model"),
    pytest.param([*SWEEP, "--dataset", "fashon-mnist"], "did you mean 'fashion-mnist'?", id="sweep-dataset"),
    pytest.param(["run", "--models", "vae", "--metrics", "fdi"], "unknown metric 'fdi'; did you mean 'fid'?",
                 id="run-metric"),
    pytest.param([*SWEEP, "--metrics", "mmd,fdi"], "did you mean 'fid'?", id="sweep-metric"),
    pytest.param(["evaluate", "{out}", "--metrics", "fid,fdi"], "unknown metric 'fdi'; did you mean 'fid'?",
                 id="evaluate-metric"),
    pytest.param([*SWEEP, "--set", "latnt_dim=3"], "did you mean 'latent_dim'?", id="sweep-set-key"),
    pytest.param(["run", "--models", "vae", "--set", "vae.latnt_dim=3"], "did you mean 'vae.latent_dim'?",
                 id="run-scoped-key"),
    pytest.param(["sweep", "latnt_dim=4,8", "--models", "vae"], "did you mean 'latent_dim'?", id="sweep-key"),
    # 2. malformed sweep specs
    pytest.param(["sweep", "latent_dim=", "--models", "vae"], "empty value; write latent_dim=v1,v2",
                 id="spec-empty-value"),
    pytest.param(["sweep", "latent_dim=a,b", "--models", "vae"], "latent_dim='a' is not a valid int",
                 id="spec-not-int"),
    pytest.param(["sweep", "=1,2", "--models", "vae"], "is not a config key; write key=v1,v2",
                 id="spec-no-key"),
    pytest.param(["sweep", "latent_dim=1,2", "latent_dim=3", "--models", "vae"],
                 "given twice; list all its values in one spec", id="spec-key-twice"),
    pytest.param(["sweep", "latent_dim=100:10:x2", "--models", "vae"], "stop is below start",
                 id="spec-reversed-range"),
    # 3. out-of-range values
    pytest.param(["run", "--models", "vae", "--set", "latent_dim=-3"], "latent_dim must be >= 1, got -3",
                 id="negative-latent"),
    pytest.param(["sweep", "latent_dim=-1,4", "--models", "vae"], "latent_dim must be >= 1, got -1",
                 id="sweep-negative-latent"),
    pytest.param(["run", "--models", "vae", "--set", "batch_size=0"], "batch_size must be >= 1, got 0",
                 id="zero-batch"),
    pytest.param(["run", "--models", "vae", "--image-size", "300"], "--image-size 300 is outside 8..256",
                 id="run-image-size"),
    pytest.param([*SWEEP, "--seeds", "0", "--image-size", "4"], "--image-size 4 is outside 8..256",
                 id="sweep-image-size"),
    # 4. conflicting options
    pytest.param([*SWEEP, "--set", "latent_dim=3"], "both swept and set with --set; drop one",
                 id="swept-and-set"),
    pytest.param(["run", "--models", "vae", "--set", "latent_dim=3", "--set", "latent_dim=4"],
                 "--set latent_dim is given twice", id="set-twice"),
    pytest.param([*SWEEP, "--seed", "1", "--seeds", "1,2"], "not both", id="sweep-seed-and-seeds"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS)
def test_usage_errors_are_one_line_exit_2_and_write_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = [a.replace("{out}", str(out)) for a in args]
    result = invoke(*(args if args[0] == "evaluate" else tiny(*args, "--out", out)))
    assert_one_line_error(result, 2, message)
    assert files_under(out) == []


# A file where a folder belongs: click's own usage errors, reported as genbench's one line.


@pytest.mark.parametrize("option", ["--out", "--data-dir"])
def test_a_file_given_as_a_folder_is_one_line(option, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    args = {"--out": ["--out", blocker], "--data-dir": ["--out", out, "--data-dir", blocker]}[option]
    result = invoke(*tiny("run", "--models", "vae", *args))
    assert_one_line_error(result, 2, "is a file")
    assert files_under(out) == [] and blocker.read_text() == "not a folder"


def test_evaluate_a_missing_folder_is_one_line(tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path / "no-such-run"), 2, "does not exist")


def test_unwritable_output_folder_is_one_line_exit_1(tmp_path):
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: a 0o500 folder is still writable")
        result = invoke(*tiny("run", "--models", "vae", "--out", out))
        assert_one_line_error(result, 1, f"cannot write to output folder {out}")
        assert files_under(out) == []
    finally:
        out.chmod(0o700)


# --- data files ----------------------------------------------------------------------------------

def _mnist_copy(root: Path) -> Path:
    """The shipped MNIST gzip files, copied (writable) into ``root/mnist``; returns ``root``."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for path in (SHIPPED_ROOT / "mnist").glob("*.gz"):
        shutil.copyfile(path, folder / path.name)
    return root


def _truncate_gz(root: Path) -> None:
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(root: Path) -> None:
    path = root / "mnist" / "train-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _plain_idx(root: Path, keep: int) -> None:
    """train-labels decompressed (as torchvision leaves it), cut to ``keep`` bytes."""
    gz = root / "mnist" / "train-labels-idx1-ubyte.gz"
    (root / "mnist" / "train-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes())[:keep])
    gz.unlink()


def _cifar(root: Path, batches: list[str]) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in batches:
        (folder / name).write_bytes(b"\x80\x04not a whole pickle")


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

DATA_ERRORS = [
    pytest.param("cifar10", lambda root: None, 1,
                 "dataset 'cifar10' not found: expected cifar-10-batches-py/", id="missing-offline"),
    pytest.param("mnist", _truncate_gz, 1, "checksum mismatch for ", id="truncated-gzip"),
    pytest.param("mnist", _flip_a_byte, 1, "the file is corrupt or not the original: delete it and download",
                 id="checksum-mismatch"),
    pytest.param("mnist", lambda root: _plain_idx(root, 60008 - 100), 1,
                 "is truncated or padded: 59900 bytes for shape (60000,)", id="truncated-plain-idx"),
    pytest.param("mnist", lambda root: _plain_idx(root, 3), 1, "bad header); delete it and download",
                 id="plain-idx-bad-header"),
    pytest.param("cifar10", lambda root: _cifar(root, CIFAR_BATCHES), 1, "is not a readable CIFAR-10 batch",
                 id="cifar-garbage"),
    pytest.param("cifar10", lambda root: _cifar(root, ["data_batch_1"]), 1, "lacks data_batch_2",
                 id="cifar-incomplete"),
]


@pytest.mark.parametrize("dataset, damage, exit_code, message", DATA_ERRORS)
def test_bad_data_files_are_one_line_and_leave_no_run(dataset, damage, exit_code, message, tmp_path):
    root = _mnist_copy(tmp_path / "data") if dataset == "mnist" else tmp_path / "data"
    root.mkdir(exist_ok=True)
    damage(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    out = tmp_path / "out"
    result = invoke(*tiny("run", "--models", "vae", "--dataset", dataset, "--data-dir", root, "--out", out))
    assert_one_line_error(result, exit_code, message)
    assert_no_run_left(out)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # never written to


def test_a_sweep_whose_cells_all_fail_ends_with_the_failure_count(tmp_path):
    """A sweep keeps going past a failed cell, so each failure gets its own line; the last line is
    the error that says how many failed."""
    (tmp_path / "data").mkdir()
    result = invoke(*tiny("sweep", "latent_dim=4,8", "--models", "vae", "--seeds", "0", "--dataset",
                          "cifar10", "--data-dir", tmp_path / "data", "--out", tmp_path / "out"))
    assert "Traceback" not in result.output
    *cells, last = result.stderr.splitlines()
    assert all("dataset 'cifar10' not found" in line for line in cells) and len(cells) >= 2
    assert last.startswith("genbench: error: 2 of 2 runs failed"), last
    assert result.exit_code == 1
    assert_no_run_left(tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncated", "not-gzip", "corrupt"])
def test_a_damaged_gzip_idx_file_is_one_line(damage, tmp_path):
    """``read_idx`` itself, for a .gz that no checksum guards (the dataset resolver checks MD5 first)."""
    from genbench.core.errors import GenbenchError
    from genbench.data.loading import read_idx

    data = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    damaged = {"truncated": data[: len(data) // 2], "not-gzip": b"\x00\x00\x08\x01plain",
               "corrupt": data[:12] + bytes(b ^ 0x5A for b in data[12:-8]) + data[-8:]}[damage]
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(damaged)
    with pytest.raises(GenbenchError, match="cannot be read .*; delete it and download it again") as error:
        read_idx(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_data_dir_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    result = invoke(*tiny("run", "--models", "vae", "--data-dir", tmp_path / "typo", "--out", out))
    assert_one_line_error(result, 2, f"--data-dir {tmp_path / 'typo'} does not exist")
    assert_no_run_left(out)


def test_data_dir_that_is_a_file_is_refused_not_skipped(tmp_path):
    """Through the Python API (the CLI's click type catches it first): never a silent fallback to
    the shipped copy or the cache."""
    from genbench.data import load_images

    blocker = tmp_path / "mnist.tar"
    blocker.write_bytes(b"")
    with pytest.raises(UsageError, match="is a file, not a folder") as error:
        load_images("mnist", "test", data_dir=blocker, allow_download=False)
    assert "\n" not in str(error.value)


# --- evaluate: not a run, bad sample files ------------------------------------------------------

def _not_a_run(folder: Path, kind: str) -> None:
    if kind == "not-json":
        (folder / "config.json").write_text("{'model': 'vae',")
    elif kind == "other-tool":  # a config.json of another library beside some weights
        (folder / "config.json").write_text(json.dumps({"architectures": ["UNet2DModel"]}))
        (folder / "checkpoint.pt").write_bytes(b"weights")
    elif kind == "json-list":
        (folder / "config.json").write_text("[]")
        (folder / "checkpoint.pt").write_bytes(b"weights")


@pytest.mark.parametrize("kind, message", [
    ("empty", "is not a run folder (no readable config.json)"),
    ("not-json", "is not a run folder (no readable config.json)"),
    ("other-tool", "not a genbench run config (missing key 'model'); give a folder written by genbench run"),
    ("json-list", "is not a genbench run config (not a JSON object)"),
])
def test_evaluate_a_folder_that_is_not_a_run(kind, message, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    _not_a_run(folder, kind)
    before = files_under(folder)
    result = invoke("evaluate", folder, "--device", "cpu", "--no-download")
    assert_one_line_error(result, 1, message)
    assert files_under(folder) == before  # no metrics.json


def _samples_file(path: Path, kind: str) -> Path:
    images = np.zeros((4, 1, 28, 28), dtype=np.float32)
    if kind == "nan":
        images[1, 0, 3, 3] = np.nan
    elif kind == "inf":
        images[0, 0, 0, 0] = np.inf
    elif kind == "video":
        images = np.zeros((2, 4, 1, 28, 28), dtype=np.uint8)
    elif kind == "one-image":
        images = images[:1]
    elif kind == "out-of-range":
        images[0, 0] = -3.0
        images[1, 0] = 3.0
    elif kind == "text":
        path.write_text("0 0 0 0\n")
        return path
    np.savez(path, samples=images)
    return path


@pytest.mark.parametrize("kind, message", [
    ("nan", "the array holds NaN or infinite values; images must be finite"),
    ("inf", "the array holds NaN or infinite values"),
    ("video", "expected [N, 1, H, W] or [N, H, W] images for mnist, got shape [2, 4, 1, 28, 28]"),
    ("one-image", "got shape [1, 1, 28, 28]"),
    ("out-of-range", "fall outside the 0-255 range (detected); rescale the images"),
    ("text", "cannot read it as .npz/.npy (not a NumPy array file"),
])
def test_evaluate_bad_samples_file(kind, message, tmp_path):
    path = _samples_file(tmp_path / "samples.npz", kind)
    out = tmp_path / "out"
    result = invoke("evaluate", "--samples", path, "--out", out, "--device", "cpu", "--no-download")
    assert_one_line_error(result, 2, message)
    assert files_under(out) == []


# --- a user model without the likelihood protocol -----------------------------------------------

class SamplesOnly(GenerativeModel):
    """A user's generator: ``sample`` only, no ``prior``, ``observation_model`` or encoder."""

    def __init__(self):
        super().__init__(ModelConfig(), (1, 28, 28))

    def sample(self, n, generator=None):
        return torch.zeros(n, *self.image_shape)


class PriorOnly(SamplesOnly):
    """A latent prior but no way from ``z`` to pixels."""

    def prior(self):
        return D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)


def _evaluate_in_memory(model, names):
    from genbench.evaluation.context import EvalContext
    from genbench.evaluation.evaluate import _compute
    from genbench.evaluation.settings import eval_settings_for

    ctx = EvalContext("mnist", eval_settings_for("smoke"), "test", torch.device("cpu"), model=model,
                      allow_download=False)
    return _compute(ctx, names, "user model", False, {})


@pytest.mark.parametrize("model, metric, reason", [
    (SamplesOnly(), "log_likelihood",
     "the model has no prior(); log p(x) needs prior() and observation_model(z) or generate(z)"),
    (PriorOnly(), "log_likelihood", "the model has neither observation_model(z) nor generate(z)"),
    (SamplesOnly(), "elbo", "no encoder: the model has no approximate_posterior(x)"),
    (SamplesOnly(), "kl", "no encoder: the model has no approximate_posterior(x)"),
])
def test_metrics_a_user_model_cannot_take_are_na_with_the_missing_method(model, metric, reason):
    result = _evaluate_in_memory(model, [metric])[metric]
    assert result["status"] == "n/a" and result["value"] is None
    assert reason in result["reason"] and "\n" not in result["reason"]


@pytest.mark.parametrize("estimator, model, missing", [
    ("log_likelihood", SamplesOnly(), "has no prior(), observation_model(); a generator without a pixel"),
    ("elbo", PriorOnly(), "has no observation_model(), approximate_posterior(); the ELBO needs an encoder"),
    ("kl", PriorOnly(), "has no approximate_posterior(); the KL needs an encoder"),
])
def test_estimators_name_the_missing_protocol_methods(estimator, model, missing):
    import genbench.metrics as metrics

    with pytest.raises(UsageError, match=re.escape(missing)) as error:
        getattr(metrics, estimator)(model, torch.zeros(2, 1, 28, 28))
    assert "\n" not in str(error.value)


# --- diverged training ---------------------------------------------------------------------------

def _run_dir(out: Path) -> Path:
    (config,) = out.glob("mnist/*/*/config.json")
    return config.parent


def test_a_diverged_run_stops_with_one_line_and_no_checkpoint(tmp_path):
    """With a learning rate of 1e30 the discriminator's first update makes the generator's loss of
    the same step non-finite."""
    result = invoke(*tiny("run", "--models", "gan", "--set", "learning_rate=1e30", "--out", tmp_path))
    line = assert_one_line_error(result, 1, "training stopped, no checkpoint was written yet")
    assert re.search(r"loss '\w+' is (nan|inf|-inf) at step 1;", line), line
    run = _run_dir(tmp_path)
    assert json.loads((run / "config.json").read_text())["status"] == "failed"
    assert not (run / "checkpoint.pt").exists()


def test_a_loss_that_turns_nan_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The loss is NaN from step 3 on: checkpoint and losses.csv end at step 2."""
    from genbench.models.gan import GAN

    real_step = GAN.train_step

    def diverging(self, batch, step, ctx):
        losses = real_step(self, batch, step, ctx)
        return losses | {"g_loss": math.nan} if step >= 2 else losses

    monkeypatch.setattr(GAN, "train_step", diverging)
    result = invoke(*tiny("run", "--models", "gan", "--out", tmp_path))
    assert_one_line_error(result, 1, "loss 'g_loss' is nan at step 3; training stopped, last good "
                                     "checkpoint (step 2) kept")
    run = _run_dir(tmp_path)
    assert (run / "checkpoint.pt").is_file()
    with open(run / "losses.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["status"] == "failed"


def test_a_diverged_vae_is_one_line_not_a_traceback(tmp_path):
    # Not invoke(): a ValueError escaping would otherwise end the test without the assertion.
    args = tiny("run", "--models", "vae", "--set", "learning_rate=1e30", "--out", tmp_path)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert_one_line_error(result, 1, "training stopped")


def test_a_diverged_run_says_how_to_fix_it(tmp_path):
    result = invoke(*tiny("run", "--models", "gan", "--set", "learning_rate=1e30", "--out", tmp_path))
    assert_one_line_error(result, 1, "learning_rate")


def test_ppca_refuses_an_image_size_it_cannot_hold():
    from genbench.models import get_model_class

    # validate only: building the model would try to allocate the 34 GB covariance.
    with pytest.raises(UsageError, match="image-size"):
        get_model_class("ppca").config_class().validate((1, 256, 256))


# --- metric functions: images outside [-1, 1], wrong shapes, NaN and infinity ------------------

GOOD = torch.zeros(4, 1, 28, 28)


def _with(value: float) -> torch.Tensor:
    x = GOOD.clone()
    x[1, 0, 5, 5] = value
    return x


def _fidelity(generated, real=GOOD):
    from genbench.metrics.fidelity import fidelity_metrics

    return fidelity_metrics(generated, real, extractor_name="inception", metrics=("fid",))


def _ms_ssim(x):
    from genbench.metrics import ms_ssim

    return ms_ssim(x, GOOD[: len(x)] if x.dim() == 4 else GOOD)


def _diversity(x):
    from genbench.metrics import ms_ssim_diversity

    return ms_ssim_diversity(x, num_pairs=4)


def _extract(x):
    from genbench.metrics.fidelity import extract_features

    return extract_features(x, "inception-v3-compat")


def _fid_vs_n(x):
    from genbench.metrics.fidelity import fid_vs_n

    return fid_vs_n(GOOD, x, sizes=(2,), extractor_name="inception")


IMAGE_FUNCTIONS = {"ms_ssim": _ms_ssim, "ms_ssim_diversity": _diversity, "fidelity_metrics": _fidelity,
                   "extract_features": _extract, "fid_vs_n": _fid_vs_n}
BAD_IMAGES = {
    "0-255": (GOOD + 255, "must be in [-1, 1], got values in [255, 255]"),
    "nan": (_with(math.nan), "contains NaN or infinite values"),
    "inf": (_with(math.inf), "contains NaN or infinite values"),
    "no-batch": (GOOD[0], "must be a 4-D tensor [N, C, H, W] in [-1, 1], got shape (1, 28, 28)"),
    "uint8": (GOOD.to(torch.uint8), "must be a float tensor [N, C, H, W] in [-1, 1], got torch.uint8"),
}


@pytest.mark.parametrize("bad", list(BAD_IMAGES))
@pytest.mark.parametrize("function", list(IMAGE_FUNCTIONS))
def test_image_metrics_refuse_bad_images_in_one_line(function, bad):
    images, message = BAD_IMAGES[bad]
    if function in ("fidelity_metrics", "extract_features", "fid_vs_n") and bad == "0-255":
        message += "; map uint8 images with genbench.data.to_model_range"
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        IMAGE_FUNCTIONS[function](images)
    assert "\n" not in str(error.value)


def test_fid_clips_a_small_overshoot_like_a_png_writer():
    """FID's inputs are rounded to 8 bits, so a [-1, 1] model's overshoot is clipped, not refused;
    MS-SSIM has no such rounding and refuses anything beyond the rounding slack."""
    from genbench.metrics import ms_ssim
    from genbench.metrics.fidelity import _check_images

    assert _check_images(_with(1.2), "generated") is not None
    with pytest.raises(UsageError, match=re.escape("must be in [-1, 1], got values in [0, 1.2]")):
        ms_ssim(_with(1.2), GOOD)
    assert torch.allclose(ms_ssim(_with(1 + 1e-7), GOOD), ms_ssim(_with(1.0), GOOD))


class LinearGaussian:
    """``z ~ N(0, I_2)``, ``x | z ~ N(W z, I)`` on ``[1, 2, 2]`` images, ``q(z|x) = N(0, I)``."""

    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]])

    def prior(self):
        return D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)

    def observation_model(self, z):
        loc = (z @ self.weight.T).view(-1, 1, 2, 2)
        return D.Independent(D.Normal(loc, torch.ones_like(loc)), 3)

    def approximate_posterior(self, x):
        zeros = torch.zeros(x.shape[0], 2)
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)


def _estimators():
    from genbench.metrics import elbo, kid, kl, log_likelihood, mmd

    model = LinearGaussian()
    return {
        "mmd": lambda x: mmd(x, torch.randn(6, 4), bandwidth=1.0),
        "mmd_y": lambda x: mmd(torch.randn(6, 4), x, bandwidth=1.0),
        "kid": lambda x: kid(x, torch.randn(6, 4), subsets=2, subset_size=4),
        "log_likelihood": lambda x: log_likelihood(model, x.view(-1, 1, 2, 2), num_samples=8, method="is"),
        "elbo": lambda x: elbo(model, x.view(-1, 1, 2, 2)),
        "kl": lambda x: kl(model, x.view(-1, 1, 2, 2)),
    }


@pytest.mark.parametrize("name", list(_estimators()))
def test_estimators_take_any_finite_tensor_and_refuse_nan_or_infinity(name):
    estimate = _estimators()[name]
    far = torch.linspace(-300.0, 300.0, 24).view(6, 4)  # finite, far outside [-1, 1]: accepted
    result = estimate(far)
    assert math.isfinite(float(torch.as_tensor(result.value).double().mean()))
    for value in (math.nan, math.inf, -math.inf):
        bad = far.clone()
        bad[2, 1] = value
        with pytest.raises(UsageError, match="contains NaN or infinite values") as error:
            estimate(bad)
        assert "\n" not in str(error.value)


def test_fidelity_features_must_be_finite():
    from genbench.metrics.fidelity import fidelity_metrics_from_features

    real = {"2048": torch.randn(8, 2048)}
    generated = {"2048": real["2048"].clone()}
    generated["2048"][3, 7] = math.nan
    with pytest.raises(UsageError, match=re.escape("features_generated['2048'] contains NaN or infinite")):
        fidelity_metrics_from_features(generated, real, "inception-v3-compat", metrics=("fid",))


# --- a checkpoint from another model or config ------------------------------------------------------

def test_a_checkpoint_of_another_run_is_one_line_and_left_alone(tmp_path):
    first = invoke(*tiny("run", "--models", "vae", "--out", tmp_path / "a"))
    assert first.exit_code == 0, first.output
    [theirs] = (tmp_path / "a").glob("mnist/vae/*/checkpoint.pt")
    # The folder of a run with another config (latent_dim 8): someone copied the checkpoint in.
    planned = invoke(*tiny("run", "--models", "vae", "--set", "latent_dim=8", "--set", "steps=1",
                           "--out", tmp_path / "b"))
    assert planned.exit_code == 0, planned.output
    [mine] = (tmp_path / "b").glob("mnist/vae/*/")
    shutil.rmtree(mine)
    mine.mkdir()
    shutil.copy(theirs, mine / "checkpoint.pt")
    before = (mine / "checkpoint.pt").read_bytes()
    result = invoke(*tiny("run", "--models", "vae", "--set", "latent_dim=8", "--set", "steps=1",
                          "--out", tmp_path / "b"))
    line = assert_one_line_error(result, 1, f"belongs to run {theirs.parent.name}, not {mine.name}")
    assert "--fresh" in line
    assert (mine / "checkpoint.pt").read_bytes() == before  # not overwritten


def test_evaluate_refuses_a_checkpoint_of_another_run(tmp_path):
    for latent in ("4", "8"):
        done = invoke(*tiny("run", "--models", "vae", "--set", f"latent_dim={latent}", "--out", tmp_path))
        assert done.exit_code == 0, done.output
    a, b = sorted(tmp_path.glob("mnist/vae/*/"))
    shutil.copy(a / "checkpoint.pt", b / "checkpoint.pt")
    result = invoke("evaluate", b, "--metrics", "mmd", "--device", "cpu")
    assert_one_line_error(result, 1, f"belongs to run {a.name}, not {b.name}")
    assert not (b / "metrics.json").exists()
