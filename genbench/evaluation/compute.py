"""One entry per metric: how a trained run becomes the tensors a metric function takes.

Each function takes an :class:`EvalContext` and returns ``value`` (and where it applies ``std``,
``ci_low``, ``ci_high``, ``num_samples``, ``settings``), or raises :class:`NotApplicable`.

In a process group (``genbench run --nproc N``, ``torchrun ... -m genbench evaluate``) every rank
runs every metric in the same order, and the work that grows with the number of samples is shared
out in chunks whose random numbers follow the chunk index, then gathered (see
``genbench.training.distributed``): the generated samples, the classifier features, importance
sampling and AIS log-likelihoods (AIS only above one chunk of ``batch_size // chains`` examples),
MMD's rows of kernel blocks and the FID/KID/precision/recall bootstrap resamples. The rest is cheap
and computed whole on every rank from the same inputs (MS-SSIM diversity, ELBO, KL, active units,
reconstructions, the Gaussian sigma choice, label entropy, memorisation, torch-fidelity's
arithmetic on the gathered features): every rank ends with the numbers of one process, and rank 0
writes them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genbench.evaluation.context import EvalContext
from genbench.evaluation.references import dataset_references
from genbench.evaluation.registry import NotApplicable, register_metric
from genbench.metrics.result import PerExampleResult, ScalarResult

LN2 = math.log(2.0)
# The AIS default (0.01, as the reference code) adapts too slowly for the short schedules of the
# smoke and standard budgets: on PPCA, 100 steps at 0.01 were 3 nats short, at 0.1 0.26 nats.
AIS_INITIAL_STEP_SIZE = 0.1


def _scalar(result: ScalarResult, **settings) -> dict[str, Any]:
    out = result.to_dict()
    out["settings"] = {**result.settings, **settings}
    return out


def _per_example(result: PerExampleResult, **settings) -> dict[str, Any]:
    """Mean over examples; ``std`` is the standard error of that mean over examples."""
    values = result.value.double()
    n = values.numel()
    mean = float(values.mean())
    sem = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    out = {"value": mean, "std": sem, "num_samples": n,
           "ci_low": mean - 1.96 * sem if sem is not None else None,
           "ci_high": mean + 1.96 * sem if sem is not None else None,
           "settings": {**result.settings, **settings, "std_is": "standard error over examples"}}
    if result.std_error is not None:
        out["settings"]["mean_estimator_std_error"] = float(result.std_error.double().mean())
    return out


def _references(ctx: EvalContext) -> dict[str, Any]:
    s = ctx.settings
    return dataset_references(ctx.dataset, s.num_generated, s.ms_ssim_pairs, s.seed,
                              ctx.data_dir, ctx.allow_download)


def _sample_settings(ctx: EvalContext) -> dict[str, Any]:
    return {"split": ctx.split, "resolution": ctx.native_size,
            "resized_from": ctx.model_size if ctx.resized else None}


@register_metric("mmd", "lower", "squared MMD",
                 "Unbiased MMD^2 between generated and real images (Gaussian kernel, pixels in "
                 "[-1, 1], bandwidth fixed per dataset)")
def compute_mmd(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics import mmd

    samples = ctx.samples_native
    references = _references(ctx)
    real = ctx.real_subset(len(samples))
    result = mmd(samples, real, kernel="gaussian", bandwidth=references["mmd_bandwidth"],
                 shard=ctx.ranks)
    return _scalar(result, kernel="gaussian", bandwidth=references["mmd_bandwidth"],
                   num_real=len(real), real_reference=references["mmd_real"],
                   **_sample_settings(ctx))


@register_metric("ms_ssim_diversity", "lower", "MS-SSIM",
                 "Mean MS-SSIM over random pairs of generated images (lower is more diverse; "
                 "compare with the real data's value)")
def compute_ms_ssim_diversity(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics import ms_ssim_diversity

    samples = ctx.samples_native
    result = ms_ssim_diversity(samples, num_pairs=ctx.settings.ms_ssim_pairs, seed=ctx.settings.seed)
    references = _references(ctx)
    return _scalar(result, real_reference=references["ms_ssim_diversity_real"],
                   **_sample_settings(ctx))


# --- likelihoods ---------------------------------------------------------------------------------

def _has_encoder(model) -> bool:
    if not hasattr(model, "approximate_posterior"):
        return False
    return getattr(getattr(model, "config", None), "variational", True)


def _require_encoder(ctx: EvalContext):
    """The model, if it has a variational encoder q(z|x); else :class:`NotApplicable` saying why."""
    model = ctx.require_model()
    if not callable(getattr(model, "approximate_posterior", None)):
        raise NotApplicable("no encoder: the model has no approximate_posterior(x)")
    if not _has_encoder(model):
        raise NotApplicable("no encoder: the model's encoder is not variational")
    return model


def likelihood_problem(ctx: EvalContext) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """``(protocol model, first is_examples images of the split in the model's data space,
    description)``. Cached: choosing sigma is the expensive part, shared by several metrics."""
    if "likelihood_model" not in ctx.cache:
        ctx.cache["likelihood_model"] = _likelihood_model(ctx)
    model, description = ctx.cache["likelihood_model"]
    return model, likelihood_data(ctx, ctx.split, ctx.settings.is_examples), description


def likelihood_data(ctx: EvalContext, split: str, n: int) -> torch.Tensor:
    """The first ``n`` images of ``split`` in the space the likelihood is measured in.

    - Bernoulli models: binarized once with a fixed seed, ``{0, 1}``.
    - Continuous models: uniformly dequantized, ``x01 = (k + u) / 256``, mapped to the model's
      ``x = 2 x01 - 1``; the density on ``[0, 1]`` data adds ``D ln 2`` nats (``shift_nats``).
    """
    from genbench.metrics import dequantize

    key = ("likelihood_data", split, n)
    if key not in ctx.cache:
        images = ctx.real_at_model_size(split)[:n]
        offset = {"train": 10, "validation": 20, "test": 30}[split]
        if getattr(ctx.model, "observation_space", "continuous") == "binary":
            data = torch.bernoulli(images.double() / 255, generator=ctx.generator(offset)).float()
        else:
            data = dequantize(images, generator=ctx.generator(offset)) * 2 - 1
        ctx.cache[key] = data
    return ctx.cache[key]


def _likelihood_model(ctx: EvalContext) -> tuple[Any, dict[str, Any]]:
    """The protocol object to score and how: the model itself when it has a pixel likelihood;
    for models without one (GANs, GVAE, DeePSiM) a Gaussian observation model ``N(G(z), sigma^2 I)``
    with one ``sigma`` chosen on validation images from a fixed grid (Wu et al. 2017)."""
    from genbench.metrics import GaussianObservation, select_sigma

    model, s = ctx.require_model(), ctx.settings
    if not callable(getattr(model, "prior", None)):
        raise NotApplicable("the model has no prior(); log p(x) needs prior() and "
                            "observation_model(z) or generate(z) (see genbench.metrics.protocol)")
    if not getattr(model, "can_sample", True):
        raise NotApplicable("the model has no latent prior to integrate over")
    if getattr(model, "observation_space", "continuous") == "binary":
        return model, {"data_space": "binarized {0,1}", "observation": "bernoulli",
                       "shift_nats": 0.0}
    dims = model.image_shape[0] * model.image_shape[1] * model.image_shape[2]
    description = {"data_space": "dequantized [0,1]", "shift_nats": dims * LN2,
                   "shift_note": "density on [0,1] data: model's [-1,1] density + D ln 2"}
    if hasattr(model, "observation_model"):
        return model, description | {"observation": "model's own (continuous)"}
    if not callable(getattr(model, "generate", None)):
        raise NotApplicable("the model has neither observation_model(z) nor generate(z); log p(x) "
                            "needs one of them (see genbench.metrics.protocol)")
    validation = likelihood_data(ctx, "validation", s.sigma_examples).to(ctx.device)
    if _has_encoder(GaussianObservation(model, s.sigma_grid[0])):
        # The reported value is importance sampling with q(z|x): choose sigma with that same
        # estimator. A cheaper or different one (short AIS) falls short by different amounts at
        # different sigma, and picked values hundreds of nats apart from near ties.
        selection = f"importance sampling with q(z|x), k = {s.is_samples}"
        sigma, table = select_sigma(model, validation, grid=s.sigma_grid, method="is",
                                    num_samples=s.is_samples, generator=ctx.generator(7))
    else:
        # Without an encoder: AIS at a quarter of the test length, as the grid costs one run per
        # sigma (this leans to wide sigma when two nearly tie: see the README).
        steps = max(s.ais_steps // 4, 10)
        selection = f"AIS, {s.ais_chains} chains x {steps} steps"
        sigma, table = select_sigma(model, validation, grid=s.sigma_grid, method="ais",
                                    generator=ctx.generator(7), chains=s.ais_chains, steps=steps,
                                    initial_step_size=AIS_INITIAL_STEP_SIZE)
    return GaussianObservation(model, sigma), description | {
        "observation": f"gaussian, sigma={sigma:g} chosen on {len(validation)} validation images",
        "sigma": sigma, "sigma_selection": selection,
        "sigma_grid": {str(k): v for k, v in dict(table).items()}}


def split_log_likelihood(ctx: EvalContext, split: str) -> tuple[PerExampleResult, dict[str, Any]]:
    """Per-example log p(x) (nats, shifted to the reported data space) on ``split``: exact where
    the model has a closed form, importance sampling with an encoder, AIS otherwise."""
    from genbench.metrics import log_likelihood

    key = ("log_likelihood", split)
    if key in ctx.cache:
        return ctx.cache[key]
    likelihood_problem(ctx)
    model, description = ctx.cache["likelihood_model"]
    s = ctx.settings
    # The training split only serves the memorisation gap: a quarter of the images is enough.
    share = 1 if split == ctx.split else 4
    is_examples, ais_examples = max(s.is_examples // share, 2), max(s.ais_examples // share, 2)
    if hasattr(model, "marginal"):  # exact, e.g. probabilistic PCA
        data = likelihood_data(ctx, split, is_examples).to(ctx.device)
        with torch.no_grad():
            exact = model.marginal().log_prob(data.flatten(1).double()).cpu()
        result = PerExampleResult(exact, None, len(exact), {"method": "exact"})
    elif _has_encoder(model):
        data = likelihood_data(ctx, split, is_examples).to(ctx.device)
        result = log_likelihood(model, data, num_samples=s.is_samples, method="is",
                                generator=ctx.generator(4), shard=ctx.ranks)
    else:
        data = likelihood_data(ctx, split, ais_examples).to(ctx.device)
        # One chunk of batch_size // chains examples at the smoke and standard budgets (8 and 16
        # images): AIS is sharded over ranks only when it has more examples than that (paper).
        result = log_likelihood(model, data, method="ais", chains=s.ais_chains, steps=s.ais_steps,
                                generator=ctx.generator(4), initial_step_size=AIS_INITIAL_STEP_SIZE,
                                shard=ctx.ranks)
    shifted = PerExampleResult(result.value.double().cpu() + description["shift_nats"],
                               result.std_error, result.num_samples, result.settings)
    ctx.cache[key] = (shifted, description)
    return ctx.cache[key]


@register_metric("log_likelihood", "higher", "nats",
                 "log p(x) per test image: importance sampling with q(z|x), or AIS without an "
                 "encoder; the data space and observation model are stated")
def compute_log_likelihood(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics import bits_per_dim

    result, description = split_log_likelihood(ctx, ctx.split)
    out = _per_example(result, **description, split=ctx.split)
    dims = int(torch.tensor(ctx.model.image_shape).prod())
    out["settings"]["bits_per_dim"] = float(bits_per_dim(result.value.mean(), dims))
    return out


@register_metric("log_likelihood_gap", "none", "nats",
                 "Memorisation check: mean log p(x) on training images (a quarter as many) minus "
                 "on the evaluation split, same estimator")
def compute_log_likelihood_gap(ctx: EvalContext) -> dict[str, Any]:
    train, description = split_log_likelihood(ctx, "train")
    held_out, _ = split_log_likelihood(ctx, ctx.split)
    # Different images on each side: the standard errors of the two means add in quadrature.
    value = float(train.value.mean() - held_out.value.mean())
    sem = math.sqrt(float(train.value.var() / len(train.value) + held_out.value.var() / len(held_out.value)))
    return {"value": value, "std": sem, "ci_low": value - 1.96 * sem, "ci_high": value + 1.96 * sem,
            "num_samples": len(train.value) + len(held_out.value),
            "settings": {**description, "train": float(train.value.mean()),
                         "num_train": len(train.value), "num_held_out": len(held_out.value),
                                                  "held_out": float(held_out.value.mean()),
                                                  "held_out_split": ctx.split,
                                                  "std_is": "standard error of the difference"}}


@register_metric("active_units", "none", "units",
                 "Latent units with Cov_x(E_q[z_j]) > 0.01 (Burda et al. 2016); n/a without an "
                 "encoder")
def compute_active_units(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.diagnostics import active_units

    _require_encoder(ctx)
    model, data, _ = likelihood_problem(ctx)
    means = torch.cat([model.approximate_posterior(chunk.to(ctx.device)).mean.detach().cpu()
                       for chunk in data.split(500)])
    return _scalar(active_units(means), split=ctx.split)


@register_metric("elbo", "higher", "nats",
                 "Evidence lower bound per test image (one sample from q); n/a without an encoder")
def compute_elbo(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics import elbo

    _require_encoder(ctx)
    model, data, description = likelihood_problem(ctx)
    result = elbo(model, data.to(ctx.device), num_samples=1, generator=ctx.generator(5))
    shifted = PerExampleResult(result.value.double().cpu() + description["shift_nats"],
                               result.std_error, result.num_samples, result.settings)
    return _per_example(shifted, **description, split=ctx.split)


@register_metric("kl", "none", "nats", "KL(q(z|x) || p(z)) per test image; n/a without an encoder")
def compute_kl(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics import kl

    _require_encoder(ctx)
    model, data, description = likelihood_problem(ctx)
    result = kl(model, data.to(ctx.device))
    return _per_example(result, split=ctx.split, data_space=description["data_space"])


@register_metric("reconstruction_mse", "lower", "MSE per pixel",
                 "Mean squared error per pixel of G(E(x)) against x in [-1, 1]; n/a without an "
                 "encoder")
def compute_reconstruction_mse(ctx: EvalContext) -> dict[str, Any]:
    x, reconstruction = _reconstructions(ctx)
    per_example = (reconstruction - x).pow(2).flatten(1).mean(1).double()
    return _per_example(PerExampleResult(per_example, None, len(per_example), {}),
                        split=ctx.split, space="[-1,1]", resolution=ctx.model_size)


@register_metric("reconstruction_error_normalized", "lower", "ratio",
                 "DeePSiM's normalised Euclidean error: ||G(E(x)) - x|| divided by the mean "
                 "distance between different test images")
def compute_normalized_error(ctx: EvalContext) -> dict[str, Any]:
    x, reconstruction = _reconstructions(ctx)
    flat = x.flatten(1).double()
    generator = ctx.generator(6)
    i = torch.randint(len(flat), (4000,), generator=generator)
    j = torch.randint(len(flat), (4000,), generator=generator)
    keep = i != j
    normaliser = float((flat[i[keep]] - flat[j[keep]]).norm(dim=1).mean())
    errors = (reconstruction.flatten(1).double() - flat).norm(dim=1) / normaliser
    return _per_example(PerExampleResult(errors, None, len(errors), {}), split=ctx.split,
                        normaliser=normaliser, space="[-1,1]", resolution=ctx.model_size)


def _reconstructions(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    from genbench.data import to_model_range

    if "reconstructions" not in ctx.cache:
        ctx.require_model("reconstruct")
        images = to_model_range(ctx.real_at_model_size()[: ctx.settings.reconstruction_examples])
        outputs = [ctx.model.reconstruct(chunk.to(ctx.device)).float().cpu()
                   for chunk in images.split(500)]
        ctx.cache["reconstructions"] = (images, torch.cat(outputs))
    return ctx.cache["reconstructions"]
