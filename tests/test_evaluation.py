"""Evaluation of run folders: metrics.json, n/a handling, the CLI around it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from genbench.cli import main
from genbench.data import to_model_range
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
    assert entry["settings"]["sigma_selection"].startswith("AIS, ")
    assert entry["settings"]["data_space"] == "dequantized [0,1]"


def test_gvae_chooses_sigma_with_the_estimator_that_reports_its_likelihood(tmp_path):
    # gvae's log p(x) is importance sampling with its encoder; a sigma chosen by another estimator
    # (short AIS) flipped between values that give test numbers hundreds of nats apart.
    run = fit(spec_for("gvae"), tmp_path, device="cpu", progress=False, allow_download=False)
    document = evaluate_run(run.run_dir, metrics=["log_likelihood"], device="cpu",
                            allow_download=False, verbose=False)
    settings = document["metrics"]["log_likelihood"]["settings"]
    assert settings["method"] == "is"
    assert settings["sigma_selection"] == "importance sampling with q(z|x), k = 100"  # smoke k
    grid = {float(k): v for k, v in settings["sigma_grid"].items()}
    assert settings["sigma"] == max(grid, key=grid.get)


def test_ppca_likelihood_is_exact(trained):
    document = evaluate_run(trained["ppca"].run_dir, metrics=["log_likelihood", "elbo"],
                            device="cpu", allow_download=False, verbose=False)
    ll, elbo = document["metrics"]["log_likelihood"], document["metrics"]["elbo"]
    assert ll["settings"]["method"] == "exact"
    # PPCA's q(z|x) is the exact posterior, so its one-sample ELBO is unbiased for log p(x):
    # the two agree within a few standard errors of the ELBO's mean over 100 examples.
    assert abs(elbo["value"] - ll["value"]) < 4 * elbo["std"] + 1e-6


def test_a_partial_reevaluation_replaces_only_its_metrics_share_of_the_evaluation_time(trained):
    run_dir = trained["ppca"].run_dir
    first = evaluate_run(run_dir, metrics=["mmd", "kl"], device="cpu", allow_download=False,
                         verbose=False)
    again = evaluate_run(run_dir, metrics=["kl"], device="cpu", allow_download=False, verbose=False)
    assert again["metrics"]["mmd"] == first["metrics"]["mmd"]  # kept, time included
    expected = first["seconds"] - first["metrics"]["kl"]["seconds"] + again["metrics"]["kl"]["seconds"]
    assert again["seconds"] == pytest.approx(expected, abs=0.02)  # each term rounded to 0.01 s
    assert again["seconds"] >= again["metrics"]["mmd"]["seconds"]


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


def _real_test_images(n=300):
    from genbench.data import load_images

    return load_images("mnist", "test", allow_download=False).images[-n:]


def test_samples_file_in_both_ranges_gives_the_same_numbers(tmp_path):
    import numpy as np

    from genbench.evaluation.evaluate import evaluate_samples

    uint8 = _real_test_images().numpy()  # [N, 1, 28, 28] in [0, 255]
    np.savez(tmp_path / "a.npz", samples=uint8[:, 0])  # [N, H, W]
    np.save(tmp_path / "b.npy", uint8.astype(np.float32) / 127.5 - 1)  # [N, C, H, W] in [-1, 1]
    documents = [evaluate_samples(tmp_path / name, "mnist", out=tmp_path / "out",
                                  metrics=["mmd", "ms_ssim_diversity", "elbo"], budget="smoke",
                                  device="cpu", allow_download=False, verbose=False)
                 for name in ("a.npz", "b.npy")]
    assert documents[0]["samples"]["detected_range"] == "0-255"
    assert documents[1]["samples"]["detected_range"] == "-1-1"
    for name in ("mmd", "ms_ssim_diversity"):
        a, b = (d["metrics"][name]["value"] for d in documents)
        assert a == pytest.approx(b, rel=1e-5), name  # float32 rounding of x / 127.5 - 1 only
    assert documents[0]["metrics"]["elbo"]["status"] == "n/a"
    assert (tmp_path / "out" / "mnist" / "samples").is_dir()


@pytest.mark.parametrize("array, message", [
    ("wrong_channels", "expected [N, 1, H, W] or [N, H, W]"),
    ("not_square", "must be square"),
    ("ambiguous", "could be [0, 1] or [-1, 1]"),
    ("nan", "NaN"),
])
def test_samples_file_rejects_bad_arrays_clearly(tmp_path, array, message):
    import numpy as np

    arrays = {
        "wrong_channels": np.zeros((4, 3, 28, 28), np.uint8),
        "not_square": np.zeros((4, 28, 20), np.uint8),
        "ambiguous": np.full((4, 28, 28), 0.5, np.float32),
        "nan": np.full((4, 28, 28), np.nan, np.float32),
    }
    np.savez(tmp_path / "bad.npz", samples=arrays[array])
    result = CliRunner().invoke(main, ["evaluate", "--samples", str(tmp_path / "bad.npz"),
                                       "--out", str(tmp_path), "--no-download"])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_active_units_of_a_vae_with_half_its_latents_unused(tmp_path):
    """Units whose posterior mean ignores x are inactive; the others, made to vary, are active."""
    import torch

    from genbench.data import load_images, to_model_range
    from genbench.metrics.diagnostics import active_units
    from genbench.models import get_model_class

    cls = get_model_class("vae")
    torch.manual_seed(0)
    model = cls(cls.config_class(latent_dim=8, base_width=4), (1, 28, 28))
    head = model.encoder.head  # outputs [mean (8) | log-variance (8)]
    with torch.no_grad():
        head.weight[4:8].zero_()
        head.bias[4:8].zero_()
        head.weight[:4] *= 50  # make the used units' means vary well above the 0.01 threshold
    x = to_model_range(load_images("mnist", "test", allow_download=False).images[:500])
    means = model.approximate_posterior(x * 0.5 + 0.5).mean.detach()  # bernoulli: {0,1}-space input
    result = active_units(means)
    assert result.value == 4
    assert all(v == 0 for v in result.settings["variances"][4:])


QUALITY = ["fid", "kid", "isc", "precision", "recall", "label_entropy", "memorisation_nn_ratio"]


def test_quality_metrics_name_their_extractor_and_write_the_panel(trained):
    document = evaluate_run(trained["vae"].run_dir, metrics=QUALITY, num_samples=300,
                            budget="smoke", device="cpu", allow_download=False, verbose=False)
    metrics = document["metrics"]
    for name in QUALITY:
        assert metrics[name]["status"] == "ok", (name, metrics[name])
    for name in ("fid", "kid", "isc", "precision", "recall"):
        settings = metrics[name]["settings"]
        assert settings["feature_extractor"].startswith("genbench-mnist-cnn (sha256 ")
        assert settings["real_reference"] is not None  # training images vs test, same extractor
    fid = metrics["fid"]
    assert fid["num_samples"] == 300 and fid["ci_low"] <= fid["ci_high"]
    assert 0 <= metrics["label_entropy"]["value"] <= math.log(10) + 1e-9
    assert sum(metrics["label_entropy"]["settings"]["histogram"]) == 300
    assert (trained["vae"].run_dir.path / "nearest_neighbours.png").is_file()


def test_real_test_set_labels_are_close_to_uniform():
    """The shipped classifier labels the MNIST test set with an entropy within 0.01 nats of the
    true label histogram's (2.3009 nats; ln 10 = 2.3026): it is over 99% accurate."""
    from genbench.data import load_images
    from genbench.features.registry import load_classifier
    from genbench.metrics.diagnostics import label_entropy

    data = load_images("mnist", "test", allow_download=False)
    classifier, info = load_classifier("mnist", allow_download=False)
    assert info["source"] == "shipped"
    with torch.no_grad():
        predicted = torch.cat([classifier(to_model_range(chunk)).argmax(1)
                               for chunk in data.images.split(2000)])
    truth = label_entropy(data.labels, 10).value
    assert truth == pytest.approx(math.log(10), abs=0.002)
    assert label_entropy(predicted, 10).value == pytest.approx(truth, abs=0.01)


def test_fid_vs_n_csv(trained, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(trained["gan"].run_dir.path), "--metrics",
                                       "fid", "--num-samples", "600", "--budget", "smoke",
                                       "--fid-vs-n", "--device", "cpu", "--no-download"])
    assert result.exit_code == 0, result.output
    rows = (trained["gan"].run_dir.path / "fid_vs_n.csv").read_text().splitlines()
    assert rows[0] == "n,fid,num_real,feature_extractor"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [250, 500, 600]
