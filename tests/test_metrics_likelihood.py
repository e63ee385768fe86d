"""Likelihood estimators against exact answers: probabilistic PCA (a linear-Gaussian model whose
marginal log p(x) and posterior are known in closed form), Gaussian closed forms, hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from genbench.core.errors import UsageError
from genbench.metrics.likelihood import (
    bdmc,
    bits_per_dim,
    dequantize,
    elbo,
    kl,
    log_likelihood,
    rescale_log_likelihood,
    sigmoid_schedule,
)
from genbench.metrics.observation import GaussianObservation, select_sigma
from genbench.models import StepContext, get_model_class

IMAGE = (1, 3, 3)
NOISE = 0.3  # pixel noise of the synthetic data: posterior std ~0.2 against the prior's 1
WIDEN = 1.5  # std factor of the mismatched proposal
# KL(q || posterior) for q = the posterior with its covariance scaled by WIDEN^2, in 2 dims:
# 0.5 * (tr(s^2 I) - 2 - ln det(s^2 I)) = s^2 - 1 - 2 ln s. This is exactly log p(x) - E[ELBO].
WIDE_KL = WIDEN**2 - 1 - 2 * math.log(WIDEN)
# Var(w) / mean(w)^2 for that proposal: (E_q[(p/q)^2] - 1) with E_q[(p/q)^2] = (s / sqrt(2 - 1/s^2))^2
WIDE_RELATIVE_VARIANCE = (WIDEN / math.sqrt(2 - 1 / WIDEN**2)) ** 2 - 1


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds hand-off latency, which on a loaded
    two-core machine costs milliseconds per backward pass and thousands of them in AIS."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def low_rank_data(n: int, generator: torch.Generator) -> torch.Tensor:
    """``x = W z + NOISE * eps`` with a fixed ``W [9, 2]``: rank-2 structure in 3x3 images."""
    weight = torch.randn(9, 2, generator=torch.Generator().manual_seed(123)) * 0.5
    z = torch.randn(n, 2, generator=generator)
    return (z @ weight.T + 0.1 + NOISE * torch.randn(n, 9, generator=generator)).view(n, *IMAGE)


@pytest.fixture(scope="module")
def ppca():
    cls = get_model_class("ppca")
    model = cls(cls.config_class(latent_dim=2), IMAGE)
    ctx = StepContext(torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        model.train_step(low_rank_data(256, generator), step, ctx)
    return model


def held_out(n: int, seed: int = 1) -> torch.Tensor:
    return low_rank_data(n, torch.Generator().manual_seed(seed))


def exact_log_likelihood(model, x: torch.Tensor) -> torch.Tensor:
    return model.marginal().log_prob(x.flatten(1).double())


class Widened:
    """PPCA with a deliberately mismatched proposal: the exact posterior with its std times WIDEN."""

    def __init__(self, model):
        self.model = model

    def prior(self):
        return self.model.prior()

    def observation_model(self, z):
        return self.model.observation_model(z)

    def approximate_posterior(self, x):
        q = self.model.approximate_posterior(x)
        return D.MultivariateNormal(q.loc, scale_tril=q.scale_tril * WIDEN)


class Strict:
    """Passes calls through, failing if observation_model sees anything but z [B, latent_dim]."""

    def __init__(self, model, latent_dim: int):
        self.model, self.latent_dim, self.sizes = model, latent_dim, []

    def prior(self):
        return self.model.prior()

    def approximate_posterior(self, x):
        return self.model.approximate_posterior(x)

    def observation_model(self, z):
        assert z.dim() == 2 and z.shape[1] == self.latent_dim, f"observation_model got z {list(z.shape)}"
        self.sizes.append(z.shape[0])
        return self.model.observation_model(z)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- importance sampling -----------------------------------------------------------------------------
def test_is_with_the_exact_posterior_is_exact(ppca):
    x = held_out(16)
    exact = exact_log_likelihood(ppca, x)
    result = log_likelihood(ppca, x, num_samples=50, generator=seeded(0))
    # q(z|x) is the exact posterior, so every weight equals p(x): only float32 rounding of the
    # log-densities (~1e-6 of values ~10) separates the estimate from the exact value
    assert result.value.dtype == torch.float64 and result.value.shape == (16,)
    torch.testing.assert_close(result.value, exact, atol=1e-4, rtol=0)
    assert result.std_error.max() < 1e-4  # zero variance up to the same rounding
    assert result.settings["method"] == "is" and result.num_samples == 50


def test_is_chunking_pairs_each_z_with_its_own_example(ppca):
    x = held_out(7)
    exact = exact_log_likelihood(ppca, x)
    strict = Strict(ppca, 2)
    # 12 z's per call: 5 samples x 2 examples, then the last example alone; a mix-up of the
    # [k, B] -> [k * B] flattening would score z against another example's x and miss by nats
    result = log_likelihood(strict, x, num_samples=5, batch_size=12, generator=seeded(0))
    torch.testing.assert_close(result.value, exact, atol=1e-4, rtol=0)
    assert max(strict.sizes) <= 12 and sum(strict.sizes) == 7 * 5
    strict.sizes.clear()
    result = log_likelihood(strict, x, num_samples=30, batch_size=12, generator=seeded(0))
    torch.testing.assert_close(result.value, exact, atol=1e-4, rtol=0)
    assert strict.sizes[:3] == [12, 12, 6]  # one example, k split into chunks of 12


def test_is_with_a_mismatched_proposal_converges_to_exact(ppca):
    x = held_out(64)
    exact = exact_log_likelihood(ppca, x)
    errors = {}
    for k in (10, 100, 1000):
        result = log_likelihood(Widened(ppca), x, num_samples=k, generator=seeded(k))
        errors[k] = (result.value - exact).abs().mean().item()
        # the delta-method standard error against its exact value sqrt(Var(w) / mean(w)^2 / k):
        # 15% covers the spread of the per-example variance estimates averaged over 64 examples
        expected_se = math.sqrt(WIDE_RELATIVE_VARIANCE / k)
        assert result.std_error.mean().item() == pytest.approx(expected_se, rel=0.15)
    # the error shrinks like 1/sqrt(k): about 0.17, 0.053 and 0.017 nats
    assert errors[10] > 2 * errors[100] > 4 * errors[1000]
    assert errors[1000] < 0.03
    result = log_likelihood(Widened(ppca), x, num_samples=5000, generator=seeded(1))
    error = result.value - exact
    # per example within 4.5 standard errors (largest of 64 normal deviates rarely exceeds 3.5)
    assert (error.abs() < 4.5 * result.std_error).all()


def test_is_rises_towards_exact_with_more_samples(ppca):
    x = held_out(512, seed=2)
    exact_mean = exact_log_likelihood(ppca, x).mean().item()
    means = [log_likelihood(Widened(ppca), x, num_samples=k, generator=seeded(k)).mean()
             for k in (1, 4, 64)]
    # expected gaps below exact: 0.44 (the KL), ~0.06, ~0.004 nats; the mean over 512 examples
    # has a noise of 0.055, 0.015, 0.004 nats, so each step up is over 3 noise widths
    assert means[0] < means[1] < means[2] < exact_mean + 0.015
    assert exact_mean - means[0] == pytest.approx(WIDE_KL, abs=0.2)


def test_is_needs_an_encoder(ppca):
    generator_only = GaussianObservation(lambda z: z.sum(1).view(-1, 1, 1, 1).expand(-1, *IMAGE),
                                         0.1, prior=ppca.prior())
    with pytest.raises(UsageError, match="method='ais'"):
        log_likelihood(generator_only, held_out(2))


# --- ELBO and KL -------------------------------------------------------------------------------------
def test_elbo_is_below_exact_and_equal_with_the_exact_posterior(ppca):
    x = held_out(64)
    exact = exact_log_likelihood(ppca, x)
    tight = elbo(ppca, x, num_samples=4, generator=seeded(0))
    torch.testing.assert_close(tight.value, exact, atol=1e-4, rtol=0)  # log w = log p(x) exactly
    loose = elbo(Widened(ppca), x, num_samples=200, generator=seeded(0))
    assert (loose.value < exact).all()
    # the gap is KL(q || posterior), known exactly; the mean over 64 examples x 200 draws has a
    # standard error of about 0.011 nats
    gap = (exact - loose.value).mean().item()
    assert gap == pytest.approx(WIDE_KL, abs=0.04)
    assert elbo(Widened(ppca), x, num_samples=1, generator=seeded(0)).std_error is None


def numpy_gaussian_kl(mean: np.ndarray, covariance: np.ndarray) -> float:
    """KL(N(mean, covariance) || N(0, I)) = (tr S + m'm - k - ln det S) / 2."""
    k = mean.shape[0]
    _, logdet = np.linalg.slogdet(covariance)
    return 0.5 * (np.trace(covariance) + mean @ mean - k - logdet)


def test_kl_full_covariance_posterior_against_numpy(ppca):
    x = held_out(8)
    q = ppca.approximate_posterior(x)
    expected = [numpy_gaussian_kl(q.loc[i].double().numpy(), q.covariance_matrix[i].double().numpy())
                for i in range(8)]
    result = kl(ppca, x)
    assert result.settings["form"] == "closed"  # MultivariateNormal against Independent(Normal)
    np.testing.assert_allclose(result.value.numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 q


class Transformed:
    """A diagonal Gaussian q written as an affine-transformed N(0, 1): torch has no KL registered."""

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale

    def prior(self):
        return D.Independent(D.Normal(torch.zeros(3), torch.ones(3)), 1)

    def approximate_posterior(self, x):
        base = D.Normal(torch.zeros_like(self.loc), torch.ones_like(self.loc))
        return D.Independent(D.TransformedDistribution(
            base, [D.transforms.AffineTransform(self.loc, self.scale)]), 1)


def test_kl_monte_carlo_fallback_against_closed_form():
    loc = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.3, -0.2]])
    scale = torch.tensor([[0.5, 1.5, 1.0], [0.2, 0.8, 1.1]])
    model = Transformed(loc, scale)
    result = kl(model, torch.zeros(2, 1, 2, 2), num_samples=4000, generator=seeded(0))
    assert result.settings["form"] == "monte_carlo" and result.num_samples == 4000
    expected = [numpy_gaussian_kl(m.numpy().astype(float), np.diag(s.numpy().astype(float) ** 2))
                for m, s in zip(loc, scale)]
    # a Monte Carlo mean: within 4 of its own standard errors (~0.02 nats here)
    assert (torch.tensor(expected, dtype=torch.float64) - result.value).abs().lt(4 * result.std_error).all()


# --- AIS and BDMC ------------------------------------------------------------------------------------
def test_sigmoid_schedule_runs_from_zero_to_one():
    betas = sigmoid_schedule(1000)
    assert betas.shape == (1001,) and betas[0] == 0 and betas[-1] == 1
    steps = betas.diff()
    assert (steps > 0).all() and steps[0] < steps[500] / 10  # slow at the ends, as Wu et al.


def test_ais_with_default_settings_matches_exact(ppca):
    x = held_out(8, seed=3)
    exact = exact_log_likelihood(ppca, x)
    result = log_likelihood(ppca, x, method="ais", generator=seeded(0))
    assert result.settings["chains"] == 16 and result.settings["steps"] == 1000
    error = result.value - exact
    # measured on 256 examples of this problem: default AIS scatters by ~0.12 nats per example
    # (0.045 at 5000 steps) with no detectable bias, and std_error tracks that scatter; 0.5 nats
    # per example is 4 such widths, 0.15 for the mean of 8 is over 3
    assert error.abs().max() < 0.5
    assert abs(error.mean().item()) < 0.15
    assert 0.03 < result.std_error.mean().item() < 0.3


def test_ais_works_without_an_encoder_and_agrees_with_exact():
    weight = torch.randn(9, 2, generator=seeded(5)) * 0.5
    prior = D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)
    model = GaussianObservation(lambda z: (z @ weight.T).view(-1, *IMAGE), 0.4, prior=prior)
    # the linear-Gaussian marginal N(0, W W' + sigma^2 I), computed independently of the model
    marginal = D.MultivariateNormal(torch.zeros(9, dtype=torch.float64),
                                    (weight @ weight.T).double() + 0.16 * torch.eye(9, dtype=torch.float64))
    generator = seeded(6)
    z = torch.randn(6, 2, generator=generator)
    x = (z @ weight.T).view(-1, *IMAGE) + 0.4 * torch.randn(6, *IMAGE, generator=generator)
    result = log_likelihood(model, x, method="ais", generator=seeded(0))
    # measured on 64 examples of this problem: default AIS scatters by ~0.1 nats per example
    # (0.36 at 300 steps, 0.05 at 3000), so 0.4 is 4 such widths
    assert (result.value - marginal.log_prob(x.flatten(1).double())).abs().max() < 0.4


def test_bdmc_sandwiches_the_exact_log_likelihood(ppca):
    result = bdmc(ppca, 64, generator=seeded(0), steps=200, chains=8)
    exact = exact_log_likelihood(ppca, result.x)
    assert result.x.shape == (64, *IMAGE)
    assert result.lower.settings["direction"] == "forward" and result.upper.settings["direction"] == "reverse"
    # a short schedule, so a loose sandwich: measured lower - exact = -0.23 +- 0.10 and
    # upper - exact = +0.11 +- 0.04 (means over the 64 examples), both over 2 noise widths from 0
    # (at 1000 steps and 16 chains the gap closes to 0.03 nats)
    assert result.lower.value.mean() < exact.mean() < result.upper.value.mean()
    assert 0.1 < result.gap() < 1.0
    # per example the bounds are single noisy draws (with 8 chains the std_error of heavy-tailed
    # weights is itself unreliable), so only a sanity bound: measured sd 0.84 and 0.33, largest
    # misses 3.6 (a log-mean-exp has a long lower tail) and 1.1
    assert (result.lower.value - exact).abs().max() < 6 and (result.upper.value - exact).abs().max() < 2


def test_observation_model_only_sees_two_dimensional_z(ppca):
    strict = Strict(ppca, 2)
    x = held_out(5)
    elbo(strict, x, num_samples=7, batch_size=12)
    log_likelihood(strict, x, method="ais", steps=3, chains=3, batch_size=12)
    bdmc(strict, 3, steps=3, chains=2, batch_size=12)
    assert strict.sizes and max(strict.sizes) <= 12


def test_results_are_reproducible_under_a_generator_and_leave_the_global_rng_alone(ppca):
    x = held_out(3)
    state = torch.get_rng_state()
    first = log_likelihood(Widened(ppca), x, num_samples=20, generator=seeded(7))
    second = log_likelihood(Widened(ppca), x, num_samples=20, generator=seeded(7))
    ais = [log_likelihood(ppca, x, method="ais", steps=5, chains=2, generator=seeded(7)).value
           for _ in range(2)]
    simulated = [bdmc(ppca, 2, steps=5, chains=2, generator=seeded(7)).x for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.value, second.value) and torch.equal(ais[0], ais[1])
    assert torch.equal(simulated[0], simulated[1])
    other = log_likelihood(Widened(ppca), x, num_samples=20, generator=seeded(8))
    assert not torch.equal(first.value, other.value)


def test_usage_errors_name_the_fix(ppca):
    x = held_out(2)
    with pytest.raises(UsageError, match="did you mean 'chains'"):
        log_likelihood(ppca, x, method="ais", chain=4)
    with pytest.raises(UsageError, match="chains="):
        log_likelihood(ppca, x, method="ais", num_samples=16)
    with pytest.raises(UsageError, match="method='ais' only"):
        log_likelihood(ppca, x, steps=10)
    with pytest.raises(UsageError, match="'is' or 'ais'"):
        log_likelihood(ppca, x, method="exact")
    with pytest.raises(UsageError, match="NaN or infinite"):
        log_likelihood(ppca, torch.full((1, *IMAGE), math.nan))
    with pytest.raises(UsageError, match="target_acceptance"):
        log_likelihood(ppca, x, method="ais", target_acceptance=1.5)


# --- the VAE: ELBO below the importance-sampled log-likelihood ---------------------------------------
@pytest.mark.parametrize("observation", ["bernoulli", "gaussian"])
def test_vae_elbo_is_below_importance_sampling(observation):
    cls = get_model_class("vae")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = cls(cls.config_class(latent_dim=4, base_width=4, observation=observation), (1, 8, 8))
        model.build_optimizers()
        ctx = StepContext(torch.device("cpu"))
        for step in range(20):
            model.train_step(torch.rand(32, 1, 8, 8) * 2 - 1, step, ctx)
    x = model.observed(torch.rand(8, 1, 8, 8, generator=seeded(1)) * 2 - 1, seeded(2))
    lower = elbo(model, x, num_samples=200, generator=seeded(3))
    estimate = log_likelihood(model, x, num_samples=2000, generator=seeded(4))
    noise = torch.sqrt(lower.std_error**2 + estimate.std_error**2)
    assert (lower.value <= estimate.value + 3 * noise).all()
    assert (estimate.value - lower.value).mean() > 0
    # the KL is closed form for its diagonal Gaussian q; check it against the numpy formula
    q = model.approximate_posterior(x)
    mean, std = q.base_dist.loc.detach().double().numpy(), q.base_dist.scale.detach().double().numpy()
    expected = 0.5 * (std**2 + mean**2 - 1 - 2 * np.log(std)).sum(1)
    np.testing.assert_allclose(kl(model, x).value.numpy(), expected, rtol=1e-5, atol=1e-5)


# --- Bernoulli observation models: genbench's fused log-probability against torch's -----------------
class OwnBernoulli(D.Bernoulli):
    """torch's Bernoulli under another class: genbench scores it with its own ``log_prob`` (torch's)."""


class LinearBernoulli:
    """A float64 toy with the likelihood protocol: logits ``scale * z W`` over ``image`` pixels.

    ``scale`` drives the logits to hundreds, where softplus must not overflow or cancel badly."""

    def __init__(self, image, bernoulli=D.Bernoulli, scale=1.0, validate=None):
        pixels = math.prod(image)
        weights = torch.Generator().manual_seed(7)
        self.weight = torch.randn(2, pixels, generator=weights, dtype=torch.float64)
        self.encoder = torch.randn(pixels, 2, generator=weights, dtype=torch.float64) / pixels
        self.image, self.bernoulli, self.scale, self.validate = image, bernoulli, scale, validate

    def prior(self):
        zeros = torch.zeros(2, dtype=torch.float64)
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)

    def approximate_posterior(self, x):
        mean = x.flatten(1) @ self.encoder
        return D.Independent(D.Normal(mean, torch.full_like(mean, 0.8)), 1)

    def observation_model(self, z):
        logits = (self.scale * z @ self.weight).view(-1, *self.image)
        return D.Independent(self.bernoulli(logits=logits, validate_args=self.validate), 3)


@pytest.mark.parametrize("image", [(1, 3, 5), (2, 8, 10)])  # 15 and 160 pixels: groups of 64 and rest
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_bernoulli_fused_log_prob_gives_torchs_estimates(image, scale):
    x = torch.bernoulli(torch.full((6, *image), 0.3, dtype=torch.float64), generator=seeded(0))
    fused, reference = LinearBernoulli(image, scale=scale), LinearBernoulli(image, OwnBernoulli, scale)
    # the same draws go through both paths, so in float64 only rounding (~1e-12 nats) separates them
    for estimate in (lambda m: log_likelihood(m, x, num_samples=50, batch_size=64, generator=seeded(1)),
                     lambda m: elbo(m, x, num_samples=7, generator=seeded(1)),
                     lambda m: log_likelihood(m, x, method="ais", chains=3, steps=6, generator=seeded(1))):
        torch.testing.assert_close(estimate(fused).value, estimate(reference).value, atol=1e-8, rtol=1e-10)
    # fractional x is a cross-entropy, which torch scores when validation is off; genbench too
    soft = torch.rand(6, *image, dtype=torch.float64, generator=seeded(2))
    fused = LinearBernoulli(image, validate=False)
    reference = LinearBernoulli(image, OwnBernoulli, validate=False)
    torch.testing.assert_close(log_likelihood(fused, soft, num_samples=20, generator=seeded(3)).value,
                               log_likelihood(reference, soft, num_samples=20, generator=seeded(3)).value)
    with pytest.raises(ValueError, match="support"):  # torch's own error for a validating distribution
        log_likelihood(LinearBernoulli(image), soft, num_samples=20)


def test_bernoulli_fused_log_prob_in_float32_rounds_like_torch():
    """784 pixels, float32 logits up to +-40: both float32 sums miss float64 by ~1e-4 nats."""
    logits = torch.randn(64, 1, 28, 28, generator=seeded(0)) * 10
    x = torch.bernoulli(torch.full((1, 1, 28, 28), 0.2), generator=seeded(1))
    model = LinearBernoulli((1, 28, 28))
    model.observation_model = lambda z: D.Independent(D.Bernoulli(logits=logits), 3)
    exact = D.Independent(D.Bernoulli(logits=logits.double()), 3).log_prob(x.double())
    torchs = D.Independent(D.Bernoulli(logits=logits), 3).log_prob(x).double()
    from genbench.metrics.likelihood import _Observation  # the scorer behind every estimator

    fused = _Observation(model).examples(x)(torch.zeros(64, 2)).double()
    assert (fused - exact).abs().max() <= 2 * (torchs - exact).abs().max() + 1e-4


# --- the Gaussian observation model for generators ---------------------------------------------------
def test_gaussian_observation_log_prob_by_hand():
    cls = get_model_class("gan")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gan = cls(cls.config_class(latent_dim=4, base_width=4), (1, 8, 8))
    wrapped = GaussianObservation(gan, 0.25)
    z = torch.randn(3, 4, generator=seeded(0))
    x = torch.rand(3, 1, 8, 8, generator=seeded(1)) * 2 - 1
    mean = gan.generate(z).detach().double().numpy().reshape(3, -1)
    flat, d, sigma = x.double().numpy().reshape(3, -1), 64, 0.25
    # log N(x; G(z), sigma^2 I) = -|x - G(z)|^2 / (2 sigma^2) - D ln sigma - (D / 2) ln(2 pi)
    squares = (((flat - mean) / sigma) ** 2).sum(1)
    expected = -0.5 * squares - d * math.log(sigma) - d / 2 * math.log(2 * math.pi)
    np.testing.assert_allclose(wrapped.observation_model(z).log_prob(x).detach().numpy(), expected, rtol=1e-5)
    assert wrapped.prior().event_shape == (4,)
    with pytest.raises(UsageError, match="z \\[B, latent_dim\\]"):
        wrapped.observation_model(z.unsqueeze(0))
    with pytest.raises(UsageError, match="sigma"):
        GaussianObservation(gan, 0.0)


@pytest.mark.parametrize("method,options", [("is-prior", {"num_samples": 2000}),
                                            ("ais", {"steps": 100, "chains": 4})])
def test_select_sigma_recovers_the_true_noise(method, options):
    weight = torch.randn(9, 2, generator=seeded(5)) * 0.5
    prior = D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)
    generate = lambda z: (z @ weight.T).view(-1, *IMAGE)
    generator = seeded(6)
    z = torch.randn(24, 2, generator=generator)
    x = generate(z) + 0.2 * torch.randn(24, *IMAGE, generator=generator)  # true sigma: 0.2
    sigma, table = select_sigma(generate, x, grid=(0.05, 0.2, 0.8), method=method, prior=prior,
                                generator=seeded(0), **options)
    assert sigma == 0.2 and list(table) == [0.05, 0.2, 0.8]
    for s, estimate in table.items():
        covariance = (weight @ weight.T).double() + s**2 * torch.eye(9, dtype=torch.float64)
        exact = D.MultivariateNormal(torch.zeros(9, dtype=torch.float64), covariance).log_prob(
            x.flatten(1).double()).mean().item()
        # a stochastic lower bound; at sigma = 0.05 the posterior is narrow and the cheap settings
        # fall well short, which still ranks it last as it should
        assert estimate < exact + 0.1
        if method == "is-prior" and s >= 0.2:
            # 2000 prior draws in 2 latent dims: within 0.05 nats on average (measured 0.04, 0.02);
            # AIS with 100 steps falls short by ~1 nat at sigma = 0.2, yet ranks the grid right
            assert estimate == pytest.approx(exact, abs=0.1)


class _LinearGaussianWithEncoder:
    """``x = W z + noise`` with ``z ~ N(0, I)``, and as encoder the exact posterior of ``z`` under
    the noise ``true_sigma``: importance sampling with it is exact at that sigma, a bound elsewhere."""

    def __init__(self, weight: torch.Tensor, true_sigma: float):
        self.weight, self.true_sigma = weight, true_sigma

    def prior(self) -> D.Distribution:
        return D.Independent(D.Normal(torch.zeros(2), torch.ones(2)), 1)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T).view(-1, *IMAGE)

    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        # N(mean, cov): cov = (I + W^T W / s^2)^-1, mean = cov W^T x / s^2
        precision = torch.eye(2) + self.weight.T @ self.weight / self.true_sigma**2
        covariance = torch.linalg.inv(precision)
        mean = x.flatten(1) @ self.weight @ covariance / self.true_sigma**2  # [B, 2]
        return D.MultivariateNormal(mean, covariance.expand(len(x), 2, 2))


def test_select_sigma_with_the_models_own_encoder_is_exact_where_the_encoder_is():
    weight = torch.randn(9, 2, generator=seeded(5)) * 0.5
    model = _LinearGaussianWithEncoder(weight, true_sigma=0.2)
    generator = seeded(6)
    x = model.generate(torch.randn(24, 2, generator=generator)) + 0.2 * torch.randn(24, *IMAGE,
                                                                                    generator=generator)
    sigma, table = select_sigma(model, x, grid=(0.05, 0.2, 0.8), method="is", num_samples=50,
                                generator=seeded(0))
    assert sigma == 0.2
    for s, estimate in table.items():
        covariance = (weight @ weight.T).double() + s**2 * torch.eye(9, dtype=torch.float64)
        exact = D.MultivariateNormal(torch.zeros(9, dtype=torch.float64), covariance).log_prob(
            x.flatten(1).double()).mean().item()
        if s == 0.2:
            # q is the exact posterior here, so every importance weight equals p(x): float32 rounding only
            assert estimate == pytest.approx(exact, abs=1e-3)
        else:
            # a stochastic lower bound: below exact in expectation; 50 draws from a proposal
            # narrower than the posterior land within 0.01 nats above it (measured 0.005 at 0.8)
            assert estimate < exact + 0.05
    assert table[0.05] < table[0.8] < table[0.2]
    with pytest.raises(UsageError, match="encoder"):
        select_sigma(model.generate, x, grid=(0.2,), method="is", prior=model.prior())
    with pytest.raises(UsageError, match="apply to method='ais' only"):
        select_sigma(model, x, grid=(0.2,), method="is", steps=10)


# --- units and data conventions ---------------------------------------------------------------------
def test_bits_per_dim_and_the_scale_shift():
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(1.0)
    torch.testing.assert_close(bits_per_dim(torch.tensor([-2 * 784 * math.log(2)]), 784),
                               torch.tensor([2.0]))
    # [-1, 1] -> [0, 1]: x01 = (x + 1) / 2 gains D ln 2 = 543.43 nats at 784 dims
    assert rescale_log_likelihood(0.0, 784, 0.5) == pytest.approx(543.4273, abs=1e-4)
    # the change of variables on a real density: y = x / 2 with x ~ N(0, I) is N(0, I / 4)
    x = torch.randn(5, 784, generator=seeded(0), dtype=torch.float64)
    log_px = D.Normal(0.0, 1.0).log_prob(x).sum(1)
    log_py = D.Normal(0.0, 0.5).log_prob(x / 2).sum(1)
    torch.testing.assert_close(rescale_log_likelihood(log_px, 784, 0.5), log_py)
    with pytest.raises(UsageError):
        rescale_log_likelihood(0.0, 784, 0.0)


def test_dequantize_fills_each_level_bin():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = dequantize(levels, seeded(0))
    assert y.dtype == torch.float32 and y.min() >= 0 and y.max() < 1
    assert torch.equal(torch.floor(y.double() * 256).to(torch.uint8), levels)  # (k + u) / 256 in bin k
    from_floats = dequantize(levels.float() / 255, seeded(0))
    assert torch.equal(from_floats, y)  # k / 255 floats are read as level k
    assert not torch.equal(dequantize(levels, seeded(1)), y)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        dequantize(torch.tensor([1.5]))


@pytest.mark.parametrize("standard_prior", [True, False])
def test_gaussian_latents_fast_path_equals_torchs_log_probs(standard_prior):
    from genbench.metrics.likelihood import _GaussianLatents

    torch.manual_seed(0)
    b, latent = 5, 7
    q = D.Independent(D.Normal(torch.randn(b, latent), torch.rand(b, latent) + 0.1), 1)
    if standard_prior:
        prior = D.Independent(D.Normal(torch.zeros(latent), torch.ones(latent)), 1)
    else:
        prior = D.Independent(D.Normal(torch.randn(latent), torch.rand(latent) + 0.5), 1)
    gaussian = _GaussianLatents.of(q, prior, b, latent)
    assert gaussian is not None and gaussian.standard == standard_prior
    z, log_ratio = gaussian.draw(11)
    assert z.shape == (11, b, latent) and log_ratio.dtype == torch.float64
    expected = prior.log_prob(z).double() - q.log_prob(z).double()
    # float32 terms of size ~10 nats: agreement to float32 rounding
    torch.testing.assert_close(log_ratio, expected, rtol=0, atol=1e-4)
    # Anything else (another family, mismatched shapes) takes torch's general path.
    laplace = D.Independent(D.Laplace(torch.zeros(b, latent), torch.ones(b, latent)), 1)
    assert _GaussianLatents.of(laplace, prior, b, latent) is None
    assert _GaussianLatents.of(q, prior, b + 1, latent) is None
