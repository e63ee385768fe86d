"""The contract every registered model keeps, plus registry behaviour."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import distributions as D

from genbench.core.errors import UsageError
from genbench.models import MODELS, StepContext, get_model_class, model_names, register_model
from genbench.models.layers import ConvEncoder, ConvGenerator, plan_resolution
from tests.conftest import tiny_config

ALL_MODELS = model_names()
CPU = StepContext(torch.device("cpu"))


def make(name: str, image_shape=(1, 28, 28)):
    torch.manual_seed(0)
    model = get_model_class(name)(tiny_config(name), image_shape)
    model.build_optimizers()
    return model


def batch(image_shape=(1, 28, 28), n=16, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *image_shape, generator=generator) * 2 - 1


def test_reference_models_are_registered():
    assert {"gan", "wgan", "vae", "gvae", "deepsim", "ppca"} <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)])
def test_model_contract(name, image_shape):
    model = make(name, image_shape)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = {}
    for step in range(model.config.critic_steps if name == "wgan" else 2):
        losses |= model.train_step(batch(image_shape, seed=step), step, CPU)
    # Finite losses, named as the model declares them (they become losses.csv columns).
    assert losses and set(losses) <= set(model.loss_names)
    assert all(math.isfinite(v) for v in losses.values()), losses
    # The step changed the model: a backward pass and an update happened.
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed
    # sample(n): [n, C, H, W] in [-1, 1].
    samples = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (5, *image_shape)
    assert samples.min() >= -1 and samples.max() <= 1 and torch.isfinite(samples).all()
    # Save -> load into a fresh model gives identical samples for a fixed seed.
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizers": model.optimizer_state()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    clone = get_model_class(name)(tiny_config(name), image_shape)
    clone.build_optimizers()
    clone.load_state_dict(state["model"])
    clone.load_optimizer_state(state["optimizers"])
    again = clone.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(samples, again)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_likelihood_protocol_shapes(name):
    model = make(name)
    model.train_step(batch(), 0, CPU)
    if not hasattr(model, "prior"):
        pytest.skip(f"{name} has no latent prior")
    prior = model.prior()
    assert isinstance(prior, D.Distribution)
    assert prior.event_shape == (model.config.latent_dim,)
    z = prior.sample((4,))
    assert z.shape == (4, model.config.latent_dim)
    if hasattr(model, "observation_model"):
        observation = model.observation_model(z)
        assert observation.event_shape == (1, 28, 28)
        x = observation.sample()
        assert observation.log_prob(x).shape == (4,)
    if hasattr(model, "approximate_posterior") and getattr(model.config, "variational", True):
        posterior = model.approximate_posterior(batch(n=4))
        assert posterior.event_shape == (model.config.latent_dim,)
        assert posterior.batch_shape == (4,)


def test_ppca_matches_closed_form_fit():
    """PPCA's fit equals Tipping & Bishop's solution computed independently with numpy."""
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    data = torch.randn(400, 1, 4, 4, generator=generator) * torch.linspace(0.1, 1, 16).view(1, 1, 4, 4)
    model = get_model_class("ppca")(get_model_class("ppca").config_class(latent_dim=3), (1, 4, 4))
    for step, chunk in enumerate(data.split(64)):
        model.train_step(chunk, step, CPU)
    x = data.flatten(1).double().numpy()
    covariance = np.cov(x, rowvar=False, bias=True)
    eigenvalues = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    sigma2 = eigenvalues[3:].mean()
    marginal = model.marginal()
    # Eigenvalues of W W^T + sigma^2 I are the top 3 sample eigenvalues, then sigma^2 (exact up
    # to float32 storage of W: 1e-5 relative).
    fitted = np.sort(np.linalg.eigvalsh(marginal.covariance_matrix.numpy()))[::-1]
    expected = np.concatenate([eigenvalues[:3], np.full(13, sigma2)])
    np.testing.assert_allclose(fitted, expected, rtol=1e-5)
    np.testing.assert_allclose(marginal.mean.numpy(), x.mean(0), atol=1e-6)


def test_unknown_model_lists_known_names():
    with pytest.raises(UsageError) as error:
        get_model_class("gvea")
    assert "did you mean 'gvae'" in str(error.value)
    assert ", ".join(model_names()) in str(error.value)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        register_model("vae")(type("Other", (), {}))


def test_entry_point_plugins_are_registered(monkeypatch):
    from importlib.metadata import EntryPoint

    import genbench.models.registry as registry

    entry = EntryPoint("plugin-vae", "genbench.models.vae:VAE", registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [entry])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin-vae" in model_names()
        assert get_model_class("plugin-vae").__name__ == "VAE"
    finally:
        MODELS._entries.pop("plugin-vae", None)


def test_config_overrides_are_typed_and_checked():
    cls = get_model_class("wgan").config_class
    config = cls().with_overrides({"gradient_penalty": "true", "latent_dim": "100"})
    assert config.gradient_penalty is True and config.latent_dim == 100
    with pytest.raises(UsageError, match="did you mean 'latent_dim'"):
        cls().with_overrides({"latnt_dim": "3"})
    with pytest.raises(UsageError, match="not a valid int"):
        cls().with_overrides({"latent_dim": "many"})
    vae = get_model_class("vae").config_class
    with pytest.raises(UsageError, match="not one of: bernoulli, gaussian"):
        vae().with_overrides({"observation": "poisson"})


@pytest.mark.parametrize("size", [28, 32, 64, 100, 256])
@pytest.mark.parametrize("channels", [1, 3])
def test_networks_cover_28_to_256_pixels(size, channels):
    start, doublings = plan_resolution(size)
    assert 4 <= start <= 7 and start * 2**doublings >= size
    generator = ConvGenerator(16, (channels, size, size), base_width=4)
    image = generator(torch.randn(2, 16))
    assert image.shape == (2, channels, size, size)
    encoder = ConvEncoder((channels, size, size), base_width=4, out_features=3)
    assert encoder(image).shape == (2, 3)


@pytest.mark.parametrize("latent_dim", [100, 500, 1000])
def test_gvae_latent_sizes_of_the_article_train(latent_dim):
    cls = get_model_class("gvae")
    model = cls(cls.config_class(base_width=8, latent_dim=latent_dim), (1, 28, 28))
    model.build_optimizers()
    losses = model.train_step(batch(), 0, CPU)
    assert all(math.isfinite(v) for v in losses.values())
    assert model.sample(2).shape == (2, 1, 28, 28)
