"""Evaluation of run folders: metrics.json, n/a handling, the CLI around it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from genbench.cli import main
from genbench.evaluation import METRICS, evaluate_run
from genbench.training import fit
from tests.test_harness import spec_for


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return {name: fit(spec_for(name), out, device="cpu", progress=False, allow_download=False)
            for name in ("vae", "gan", "ppca")}


def test_metrics_json_for_an_encoder_model(trained):
    document = evaluate_run(trained["vae"].run_dir, device="cpu", allow_download=False,
                            verbose=False, num_samples=200)
    saved = json.loads((trained["vae"].run_dir.path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(document))
    assert saved["schema_version"] == 1 and saved["evaluation_settings"]["num_generated"] == 200
    metrics = saved["metrics"]
    assert set(metrics) == set(METRICS.names())
    for name in ("mmd", "ms_ssim_diversity", "log_likelihood", "elbo", "kl",
                 "reconstruction_mse", "reconstruction_error_normalized"):
        entry = metrics[name]
        assert entry["status"] == "ok", (name, entry)
        assert entry["split"] == "test" and entry["num_samples"] and entry["unit"]
        assert entry["direction"] in ("higher", "lower", "none")
    ll = metrics["log_likelihood"]
    assert ll["settings"]["data_space"] == "binarized {0,1}" and ll["settings"]["method"] == "is"
    # The ELBO is a lower bound of the importance-sampled log-likelihood (same test images).
    assert metrics["elbo"]["value"] <= ll["value"]
    # Real-data reference values travel with the sample metrics.
    assert "real_reference" in metrics["mmd"]["settings"]
    assert metrics["mmd"]["settings"]["bandwidth"] > 0


def test_metrics_that_do_not_apply_are_na_not_zero(trained):
    document = evaluate_run(trained["gan"].run_dir, metrics=["elbo", "kl", "reconstruction_mse"],
                            device="cpu", allow_download=False, verbose=False)
    for name in ("elbo", "kl", "reconstruction_mse"):
        assert document["metrics"][name]["value"] is None
        assert document["metrics"][name]["status"] == "n/a"


def test_gan_likelihood_uses_ais_with_a_gaussian_observation(trained):
    document = evaluate_run(trained["gan"].run_dir, metrics=["log_likelihood"], device="cpu",
                            allow_download=False, verbose=False)
    entry = document["metrics"]["log_likelihood"]
    assert entry["status"] == "ok"
    assert entry["settings"]["method"] == "ais"
    assert entry["settings"]["observation"].startswith("gaussian, sigma=")
    assert entry["settings"]["data_space"] == "dequantized [0,1]"


def test_ppca_likelihood_is_exact(trained):
    document = evaluate_run(trained["ppca"].run_dir, metrics=["log_likelihood", "elbo"],
                            device="cpu", allow_download=False, verbose=False)
    ll, elbo = document["metrics"]["log_likelihood"], document["metrics"]["elbo"]
    assert ll["settings"]["method"] == "exact"
    # PPCA's q(z|x) is the exact posterior, so its one-sample ELBO is unbiased for log p(x):
    # the two agree within a few standard errors of the ELBO's mean over 100 examples.
    assert abs(elbo["value"] - ll["value"]) < 4 * elbo["std"] + 1e-6


def test_evaluate_and_list_metrics_cli(trained):
    runner = CliRunner()
    listed = runner.invoke(main, ["list", "metrics"])
    assert listed.exit_code == 0 and "log_likelihood" in listed.output
    assert "higher is better" in listed.output and "nats" in listed.output
    bad = runner.invoke(main, ["evaluate", str(trained["vae"].run_dir.path), "--metrics", "fid2"])
    assert bad.exit_code == 2 and "unknown metric 'fid2'" in bad.stderr
    good = runner.invoke(main, ["evaluate", str(trained["vae"].run_dir.path), "--metrics", "kl",
                                "--device", "cpu", "--no-download"])
    assert good.exit_code == 0, good.output
    assert "kl" in good.stdout
