"""The reproductions of Burda et al. 2016 Table 1 and Wu et al. 2017 Table 2: their schedules,
architectures, data splits and observation variances against the papers' closed forms, the
resumable training loop, and each reproduction end to end at its smoke schedule."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import distributions as D
from torch import nn

from genbench.core.errors import UsageError
from genbench.reproductions import REPRODUCTIONS, run_reproduction
from genbench.reproductions import iwae_table1 as iwae
from genbench.reproductions import wu2017_table2 as wu
from genbench.reproductions.common import published, train_resumable


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


# --- Burda et al.: schedule and model -------------------------------------------------------------
def test_iwae_learning_rate_is_the_papers_closed_form():
    for stage in range(8):
        assert iwae.learning_rate(stage) == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-12)
    assert iwae.learning_rate(0) == pytest.approx(1e-3, rel=1e-12)
    assert iwae.learning_rate(7) == pytest.approx(1e-4, rel=1e-12)  # a decade over the 8 stages
    # the authors' code rounds 10^(1 - i/7) to one decimal (x 1e-4): 7.2e-4 for 7.197e-4 ...
    for stage in range(8):
        rounded = 1e-4 * round(10.0 ** (1 - stage / 7), 1)
        # one decimal of 10^(1 - i/7) in [1, 10]: at most 1.6% off (i = 5: 1.931 -> 1.9)
        assert iwae.learning_rate(stage) == pytest.approx(rounded, rel=0.017)


def test_iwae_epoch_counts_of_each_schedule():
    assert [iwae.stage_epochs(i) for i in range(8)] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert iwae.total_epochs(iwae.SCHEDULES["short"].stages) == 121 == (3**5 - 1) // 2
    assert iwae.total_epochs(iwae.SCHEDULES["full"].stages) == 3280 == (3**8 - 1) // 2
    # stage boundaries: epoch 0 | 1-3 | 4-12 | 13-39 | 40-120
    epochs = (0, 1, 3, 4, 12, 13, 39, 40, 120)
    assert [iwae.stage_of_epoch(e, 5) for e in epochs] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError):
        iwae.stage_of_epoch(121, 5)


def test_iwae_architecture_is_784_200_200_50():
    model = iwae.BurdaVAE()
    assert linear_shapes(model.encoder) == [(784, 200), (200, 200)]
    assert linear_shapes(model.encoder_mean) == [(200, 50)]
    assert linear_shapes(model.encoder_log_std) == [(200, 50)]
    assert linear_shapes(model.decoder) == [(50, 200), (200, 200), (200, 784)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 4
    weights = 784 * 200 + 200 * 200 + 2 * 200 * 50 + 50 * 200 + 200 * 200 + 200 * 784
    biases = 200 + 200 + 50 + 50 + 200 + 200 + 784
    assert sum(p.numel() for p in model.parameters()) == weights + biases


def test_iwae_output_bias_is_the_logit_of_the_clipped_training_mean():
    mean = torch.tensor([0.0, 0.0005, 0.25, 0.5, 0.9995, 1.0]).repeat(131)[:784]
    model = iwae.BurdaVAE(train_mean=mean)
    clipped = np.clip(mean.numpy().astype(np.float64), 0.001, 0.999)
    expected = np.log(clipped / (1 - clipped))  # the code's -log(1/p - 1)
    np.testing.assert_allclose(model.decoder[-1].bias.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_iwae_log_weight_matches_torch_distributions():
    torch.manual_seed(0)
    model = iwae.BurdaVAE()
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    torch.manual_seed(1)
    ours = model.log_weight(x)
    torch.manual_seed(1)  # the same noise draw
    q = model.approximate_posterior(x.view(5, 1, 28, 28))
    z = q.base_dist.loc + q.base_dist.scale * torch.randn(5, 50)
    expected = (model.observation_model(z).log_prob(x.view(5, 1, 28, 28)) + model.prior().log_prob(z)
                - q.log_prob(z))
    # float32 sums of ~800 terms of size ~1: agreement to 1e-3 nats
    torch.testing.assert_close(ours, expected, atol=1e-3, rtol=0)


# --- Wu et al.: architecture, split, variance -------------------------------------------------------
def test_wu_decoder_is_10_64_256_256_1024_784_tanh_sigmoid():
    decoder = wu.WuDecoder()
    assert linear_shapes(decoder) == [(10, 64), (64, 256), (256, 256), (256, 1024), (1024, 784)]
    activations = [type(m) for m in decoder.net if not isinstance(m, nn.Linear)]
    assert activations == [nn.Tanh] * 4 + [nn.Sigmoid]
    out = decoder(torch.randn(3, 10))
    assert out.shape == (3, 1, 28, 28) and 0 <= out.min() and out.max() <= 1
    assert linear_shapes(wu.WuVAE().encoder) == [(784, 256), (256, 64), (64, 20)]
    assert linear_shapes(wu.WuDiscriminator()) == [(784, 512), (512, 256), (256, 1)]  # assumed


def test_wu_split_is_the_authors_permutation():
    split = wu.split_indices()
    assert {k: len(v) for k, v in split.items()} == {"train": 50_000, "validation": 5_000, "test": 5_000}
    # the authors' load_mnist: RandomState(2919).permutation of each official set, then slices
    train_order = np.random.RandomState(2919).permutation(60_000)
    test_order = np.random.RandomState(2919).permutation(10_000)
    np.testing.assert_array_equal(split["train"], train_order[:50_000])  # first 50,000
    np.testing.assert_array_equal(split["validation"], test_order[:5_000])  # first 5,000 test
    np.testing.assert_array_equal(split["test"], test_order[5_000:])  # last 5,000 test
    assert len(np.unique(split["train"])) == 50_000 and split["train"].max() < 60_000
    together = np.concatenate([split["validation"], split["test"]])
    np.testing.assert_array_equal(np.sort(together), np.arange(10_000))  # disjoint, all of test
    chosen = wu.evaluation_indices(100)
    np.testing.assert_array_equal(chosen, np.random.RandomState(2919).permutation(5_000)[:100])


def test_wu_observation_uses_the_published_variances():
    assert wu.OBSERVATION_VARIANCE == {"VAE-10": 0.03, "GAN-10": 0.025, "VAE-50": 0.005, "GAN-50": 0.01}
    torch.manual_seed(0)
    decoder = wu.WuDecoder().requires_grad_(False)
    z, x = torch.randn(4, 10), torch.rand(4, 1, 28, 28)
    for kind in ("VAE-10", "GAN-10"):
        variance = wu.OBSERVATION_VARIANCE[kind]
        model = wu.observation(decoder, variance)
        assert model.sigma == pytest.approx(math.sqrt(variance), rel=1e-12)  # sigma is the std
        ours = model.observation_model(z).log_prob(x).double()
        # the authors' formula, sigma being the variance: -|x-g|^2/(2 sigma) - k/2 log 2pi - k/2 log sigma
        g = decoder(z).double().flatten(1).numpy()
        k = 784
        expected = (-((g - x.double().flatten(1).numpy()) ** 2).sum(1) / (2 * variance)
                    - k / 2 * np.log(2 * np.pi) - k / 2 * np.log(variance))
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)  # float32 sum of 784 terms


def test_wu_vae_negative_elbo_matches_torch_distributions():
    torch.manual_seed(0)
    vae = wu.WuVAE()
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    ours = vae.negative_elbo(x)
    torch.manual_seed(1)
    mean, log_var = vae.encoder(x.flatten(1)).chunk(2, dim=1)
    q = D.Independent(D.Normal(mean, (0.5 * log_var).exp()), 1)
    z = mean + (0.5 * log_var).exp() * torch.randn(3, 10)
    p_x = D.Independent(D.Normal(vae.decoder(z), math.sqrt(0.03)), 3)
    expected = D.kl_divergence(q, wu.standard_normal_prior()) - p_x.log_prob(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-2)  # float32, terms ~1e4 nats


# --- shared machinery ---------------------------------------------------------------------------
def test_published_numbers_come_from_the_baselines_csv():
    from genbench.reporting.report import DEFAULT_BASELINES

    with open(DEFAULT_BASELINES) as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    by_model = {(r["model"], r["source"]): r for r in rows}
    for model, source in ((iwae.PUBLISHED_MODEL, iwae.SOURCE), ("VAE-10", wu.SOURCE), ("GAN-10", wu.SOURCE)):
        number = published(model, source)
        assert number.value == float(by_model[(model, source)]["value"])
    assert published("GAN-10", wu.SOURCE).std == float(by_model[("GAN-10", wu.SOURCE)]["std"])


def test_unknown_names_fail_with_the_known_ones(tmp_path):
    with pytest.raises(UsageError, match="iwae-table1"):
        run_reproduction("iwae-tabel1", "smoke", tmp_path, torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown schedule"):
        run_reproduction("iwae-table1", "long", tmp_path, torch.device("cpu"))
    assert set(REPRODUCTIONS.names()) >= {"iwae-table1", "wu2017-table2"}


def _toy_training(folder, total_steps: int):
    torch.manual_seed(0)
    layer = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)

    def step(index: int) -> dict[str, float]:
        x = torch.randn(4, 3)  # the global RNG: restored from the checkpoint on resume
        loss = (layer(x) - index).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    record = train_resumable(folder, "toy", {"layer": layer}, {"adam": optimizer}, total_steps, step,
                             "toy", progress=False, log_every=5)
    return layer, record


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight, record = _toy_training(tmp_path / "straight", 20)
    assert record.resumed_from == 0 and len(record.losses) == 4
    _toy_training(tmp_path / "resumed", 10)  # "interrupted" after 10 steps, checkpoint written
    resumed, record = _toy_training(tmp_path / "resumed", 20)
    assert record.resumed_from == 10 and [r["step"] for r in record.losses] == [5, 10, 15, 20]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # bit for bit on CPU


# --- end to end -------------------------------------------------------------------------------
def _read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_iwae_smoke_reproduction_writes_its_table(tmp_path):
    from genbench.cli import main

    result = CliRunner().invoke(main, ["reproduce", "iwae-table1", "--schedule", "smoke", "--out",
                                       str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "smoke"
    rows = _read_csv(folder / "table.csv")
    assert len(rows) == 1
    row = rows[0]
    assert float(row["published"]) == 86.76  # NLL, from the baselines' log-likelihood -86.76
    assert float(row["difference"]) == pytest.approx(float(row["ours"]) - 86.76, abs=1e-9)
    assert 86.76 < float(row["ours"]) < 784 * math.log(2)  # a few steps: worse than the paper, finite
    config = json.loads((folder / "config.json").read_text())
    assert config["schedule"] == "smoke" and config["train_steps"] == 40  # 4 epochs x 10 batches of 20
    assert config["compute_s"] == pytest.approx(config["train_time_s"] + config["evaluation"]["seconds"],
                                                abs=0.2)  # both rounded to 0.1 s
    assert "| VAE 1 stochastic layer k=1 |" in (folder / "table.md").read_text()
    assert r"\toprule" in (folder / "table.tex").read_text()
    # a second run resumes: no training step is redone and the cached evaluation is reused
    again = CliRunner().invoke(main, ["reproduce", "iwae-table1", "--schedule", "smoke", "--out",
                                      str(tmp_path), "--no-progress"])
    assert again.exit_code == 0, again.output
    config = json.loads((folder / "config.json").read_text())
    assert config["resumed_from_step"] == 40
    assert _read_csv(folder / "table.csv")[0]["ours"] == row["ours"]


def test_wu_smoke_reproduction_writes_its_table(tmp_path):
    report, files = run_reproduction("wu2017-table2", "smoke", tmp_path, torch.device("cpu"), progress=False)
    assert [f.name for f in files] == ["table.md", "table.csv", "table.tex", "config.json"]
    rows = _read_csv(tmp_path / "smoke" / "table.csv")
    by_key = {(r["model"], r["estimate"]): r for r in rows}
    vae = by_key[("VAE-10", "AIS log p(x), 20 steps")]
    gan = by_key[("GAN-10", "AIS log p(x), 20 steps")]
    assert float(vae["published"]) == 705.4 and float(gan["published"]) == 328.8
    assert by_key[("VAE-10", "AIS log p(x), 10 steps")]["published"] == ""  # only the longest AIS
    difference = by_key[("VAE-10 − GAN-10", "AIS log p(x), 20 steps")]
    assert float(difference["ours"]) == pytest.approx(float(vae["ours"]) - float(gan["ours"]), abs=1e-9)
    assert float(difference["published"]) == pytest.approx(705.4 - 328.8, abs=1e-9)
    assert {("VAE-10", "BDMC gap, 20 steps"), ("GAN-10", "BDMC gap, 20 steps")} <= set(by_key)
    config = json.loads((tmp_path / "smoke" / "config.json").read_text())
    assert config["models"]["VAE-10"]["train_steps"] == 5  # 1 epoch of 500 images, batches of 100
    assert config["settings"]["observation_variance"]["GAN-10"] == 0.025
    short_difference = by_key[("VAE-10 − GAN-10", "AIS log p(x), 10 steps")]
    assert config["vae_above_gan"] == {"10": float(short_difference["ours"]) > 0,
                                       "20": float(difference["ours"]) > 0}
