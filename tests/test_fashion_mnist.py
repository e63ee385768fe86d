"""Class-conditional models on Fashion-MNIST from the offline copy in ``../shared/data`` (the
original IDX files with their labels): labels reach training and per-class evaluation."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from genbench.cli import main
from tests.test_cli import TINY_RUN

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED_DATA / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file(),
                                reason="needs ../shared/data/fashion-mnist")


def test_conditional_model_trains_and_is_evaluated_per_class_on_fashion_mnist(tmp_path):
    result = CliRunner().invoke(main, [
        "run", "--models", "cgan", "--dataset", "fashion-mnist", "--data-dir", str(SHARED_DATA),
        "--no-download", "--metrics", "ms_ssim_per_class", "--out", str(tmp_path), *TINY_RUN],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.glob("fashion-mnist/cgan/*")
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "fashion-mnist" and config["data_origin"] == "data-dir"
    rows = list(csv.DictReader((run / "losses.csv").open()))
    assert math.isfinite(float(rows[-1]["d_loss"]))
    metric = json.loads((run / "metrics.json").read_text())["metrics"]["ms_ssim_per_class"]
    # Ten classes, each with its own diversity (Fashion-MNIST has 1,000 test images per class).
    assert metric["status"] == "ok" and len(metric["settings"]["per_class"]) == 10
