"""Likelihood estimators for any model with the likelihood protocol: IS, AIS (and BDMC), ELBO, KL.

Every log-likelihood here is in nats per example, ``[N]``, for ``x`` exactly as passed: the
estimators do not binarize, rescale or dequantize. Convert afterwards with :func:`bits_per_dim`
and :func:`rescale_log_likelihood`, and prepare data with :func:`dequantize`.

Models need ``prior()`` (event shape ``[latent_dim]``) and ``observation_model(z)`` (event shape
``[C, H, W]``, called only with 2-D ``z [B, latent_dim]``); importance sampling, the ELBO and the KL
also need ``approximate_posterior(x)``. A generator without a pixel likelihood (a GAN) gets one from
:class:`genbench.metrics.observation.GaussianObservation`. An observation model that is torch's
``Independent(Bernoulli(logits=...), 3)`` is scored by a fused log-probability (torch's values,
several times cheaper on a CPU); any other by its own ``log_prob``.

References: Burda et al. 2016 (importance-weighted bounds); Neal 2001 (annealed importance sampling);
Wu et al. 2017, "On the quantitative analysis of decoder-based models" (AIS with HMC on a sigmoid
schedule, and BDMC of Grosse et al. 2015 on simulated data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import distributions as D

from genbench.core.errors import UsageError
from genbench.core.registry import closest
from genbench.metrics.checks import check_finite
from genbench.metrics.result import PerExampleResult

DEFAULT_BATCH_SIZE = 4096  # latent samples per observation_model call
DEFAULT_NUM_SAMPLES = 5000  # importance samples per example (Burda et al. use 5000)
# Step-size adaptation of Wu et al. (after the Theano HMC tutorial): a running mean of the
# acceptance probability with this decay, and the step size multiplied or divided by this factor.
ACCEPTANCE_DECAY = 0.9
STEP_SIZE_FACTOR = 1.02
STEP_SIZE_RANGE = (1e-8, 10.0)  # a guard against runaway adaptation, far outside normal use
SCHEDULE_RADIUS = 4.0  # sigmoid schedule over [-4, 4], as in Wu et al.'s code


# --- helpers: checks, random numbers, log-mean-exp ------------------------------------------------
def _check_data(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UsageError(f"x must be a tensor [N, C, H, W] (one row per example), got {got}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())  # integer pixels keep their values
    return check_finite(x, "x", "the likelihood is only defined for finite x")


def _require(model, names: tuple[str, ...], hint: str) -> None:
    missing = [f"{name}()" for name in names if not callable(getattr(model, name, None))]
    if missing:
        raise UsageError(f"{type(model).__name__} has no {', '.join(missing)}; {hint}")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _no_reseed(chunk: int, stream: int = 0) -> None:
    return None


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device) -> Iterator[Callable[..., None]]:
    """Draw from the global RNG seeded by ``generator`` and restore it afterwards.

    ``torch.distributions`` sample from the global RNG only; seeding a forked copy makes every draw
    (``q.sample``, momenta, acceptance tests) reproducible without disturbing the caller's RNG.

    Yields ``start_chunk(chunk, stream=0)``, which reseeds the global RNG from (the seed drawn from
    ``generator``, ``stream``, ``chunk``): the estimators call it before each chunk of examples, so a
    chunk's draws do not depend on the chunks before it, and any process of a sharded evaluation
    computes any chunk with the same numbers. Without ``generator`` nothing is seeded.
    """
    if generator is None:
        yield _no_reseed
        return
    from genbench.training.distributed import chunk_seed

    seed = int(torch.randint(2**62, (1,), generator=generator))

    def reseed(value: int) -> None:
        torch.random.default_generator.manual_seed(value)
        if device.type == "cuda":
            torch.cuda.manual_seed(value)

    def start_chunk(chunk: int, stream: int = 0) -> None:
        reseed(chunk_seed(seed, stream, chunk))

    cuda = device.type == "cuda"
    forked = (torch.random.fork_rng(devices=[device], device_type="cuda") if cuda
              else torch.random.fork_rng(devices=[]))
    with forked, torch.cuda.device(device) if cuda else contextlib.nullcontext():
        reseed(seed)
        yield start_chunk


def _owned_rows(num_examples: int, chunk: int, shard) -> tuple[slice, int]:
    """``(rows of x this process scores, index of their first chunk)``: whole chunks of ``chunk``
    examples, the run ``shard.owned_chunks`` gives this rank (all of them without ``shard``)."""
    if shard is None:
        return slice(0, num_examples), 0
    owned = shard.owned_chunks(-(-num_examples // chunk))
    return slice(min(owned.start * chunk, num_examples), min(owned.stop * chunk, num_examples)), owned.start


def _gathered(result: PerExampleResult, shard) -> PerExampleResult:
    """The per-example values of every rank's chunks, in chunk order (see :func:`log_likelihood`)."""
    if shard is None:
        return result
    value = shard.gather_rows(result.value)
    std_error = None if result.std_error is None else shard.gather_rows(result.std_error)
    return PerExampleResult(value, std_error, result.num_samples, result.settings)


def _log_mean_and_error(
    lse: torch.Tensor, lse_sq: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log mean(w)`` and the delta-method standard error of it, from ``log sum w`` and ``log sum w^2``.

    ``se = sqrt(Var(w) / k) / mean(w)`` with the unbiased variance; in log space
    ``Var(w) / mean(w)^2 = (exp(log mean w^2 - 2 log mean w) - 1) * k / (k - 1)``, which never
    overflows because ``mean(w^2) / mean(w)^2 <= k``.
    """
    log_mean = lse - math.log(k)
    if k < 2:
        return log_mean, None
    ratio = torch.expm1((lse_sq - math.log(k)) - 2 * log_mean).clamp_min(0)
    return log_mean, torch.sqrt(ratio / (k - 1))


def _latent_dim(prior: D.Distribution) -> int:
    if len(prior.event_shape) != 1:
        raise UsageError(
            f"prior() must have event shape [latent_dim], got {list(prior.event_shape)} "
            "(wrap a factorised prior in torch.distributions.Independent(..., 1))"
        )
    return prior.event_shape[0]


def _sum_log(p: torch.Tensor, group: int = 64) -> torch.Tensor:
    """``sum(log p)`` over the last dimension for ``p`` in ``[1/2, 1]``: ``[..., D] -> [...]``.

    The log of products of ``group`` values (at least ``2^-64``, far from underflow in float32):
    one log per group instead of one per value, which is the costliest pass on a CPU.
    """
    whole = p.shape[-1] - p.shape[-1] % group
    total = p[..., :whole].unflatten(-1, (whole // group, group)).prod(-1).log_().sum(-1)
    if whole < p.shape[-1]:
        total += p[..., whole:].prod(-1).log_()
    return total


class _BernoulliLogProb(torch.autograd.Function):
    """``sum_d log Bernoulli(x_d; logits l_d)`` for ``l [copies, B, D]`` and ``x [B, D]``: ``[copies, B]``.

    The value of torch's ``Bernoulli(logits=l).log_prob(x)`` summed over pixels, from
    ``x l - softplus(l) = (x - 1/2) l - |l| / 2 + log sigmoid(|l|)``; the first terms cancel exactly
    for ``x`` in {0, 1}, and ``sigmoid(|l|)`` lies in [1/2, 1], so its log never sees 0. On a CPU,
    torch's ``binary_cross_entropy_with_logits`` (through ``log1p``, which is not vectorised there)
    takes 1.4-2.4x the time of an MLP decoder's matmuls; this takes a sixth of it, with rounding like
    torch's (~1e-4 nats over 784 float32 pixels), and never repeats ``x``. The gradient, for AIS, is
    ``x - sigmoid(l)``, in one pass.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        # scratch [2, copies, B, D], reused across calls (see _Observation)
        magnitude = torch.abs(logits, out=scratch[0])
        log_prob = _sum_log(torch.sigmoid(magnitude, out=scratch[1]))
        linear = magnitude.mul_(-0.5).addcmul_(logits, x - 0.5)  # x [B, D] broadcast over the copies
        ctx.save_for_backward(logits, x)
        return log_prob.add_(linear.sum(-1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, x = ctx.saved_tensors
        # d/dl = x - sigmoid(l), in the sigmoid's own memory
        return torch.sigmoid(logits).sub_(x).mul_(grad.neg().unsqueeze(-1)), None, None


@contextlib.contextmanager
def _arguments_unchecked() -> Iterator[None]:
    """Distributions built inside skip torch's argument checks (restored on the way out)."""
    previous = D.Distribution._validate_args
    D.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        D.Distribution.set_default_validate_args(previous)


def _diagonal_normal(d: D.Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of torch's own ``Independent(Normal(loc, scale), 1)``, else None."""
    if (type(d) is D.Independent and type(d.base_dist) is D.Normal
            and d.reinterpreted_batch_ndims == 1):
        return d.base_dist.loc, d.base_dist.scale
    return None


class _GaussianLatents:
    """Draws ``z ~ q(z|x)`` and ``log p(z) - log q(z|x)`` ``[k, B]`` for a diagonal Gaussian ``q``
    and prior, from the standard normal draws ``eps`` themselves: ``log q(z|x) = sum(-eps^2 / 2 -
    log sigma) - L/2 log 2 pi`` and ``log p(z) = sum(-u^2 / 2 - log sigma_p) - L/2 log 2 pi`` with
    ``u = (z - mu_p) / sigma_p``, the constants cancelling. Four elementwise passes instead of the
    dozen of ``q.sample``, ``p.log_prob`` and ``q.log_prob`` (whose ``torch.normal`` also scans its
    arguments), which took a sixth of importance sampling's time with an MLP decoder on a CPU."""

    def __init__(self, q_parts: tuple[torch.Tensor, torch.Tensor],
                 prior_parts: tuple[torch.Tensor, torch.Tensor]):
        self.loc, self.scale = q_parts  # [B, L] each
        self.log_scale_sum = self.scale.log().sum(-1).double()  # [B]
        prior_loc, prior_scale = prior_parts  # [L] each
        self.standard = bool((prior_loc == 0).all() and (prior_scale == 1).all())
        self.prior_loc, self.prior_scale = prior_loc, prior_scale
        self.prior_log_scale_sum = prior_scale.log().sum().double()

    @classmethod
    def of(cls, q: D.Distribution, prior: D.Distribution, b: int, latent_dim: int
           ) -> _GaussianLatents | None:
        q_parts, prior_parts = _diagonal_normal(q), _diagonal_normal(prior)
        if q_parts is None or prior_parts is None:
            return None
        if (q_parts[0].shape != (b, latent_dim) or q_parts[1].shape != (b, latent_dim)
                or prior_parts[0].shape != (latent_dim,) or prior_parts[1].shape != (latent_dim,)
                or q_parts[0].dtype != prior_parts[0].dtype):
            return None  # the general path gives the usual shape errors
        return cls(q_parts, prior_parts)

    def draw(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [k, B, L]`` and ``log p(z) - log q(z|x)`` ``[k, B]`` in float64."""
        eps = torch.randn((k, *self.loc.shape), dtype=self.loc.dtype, device=self.loc.device)
        z = torch.addcmul(self.loc, self.scale, eps)
        u = z if self.standard else (z - self.prior_loc) / self.prior_scale
        half_difference = eps.square_().sub_(u.square()).sum(-1).double().mul_(0.5)  # eps used up
        log_ratio = half_difference + self.log_scale_sum
        if not self.standard:
            log_ratio -= self.prior_log_scale_sum
        return z, log_ratio


class _Observation:
    """``log p(x|z)`` of a batch of examples ``x [B, C, H, W]`` (set by :meth:`examples`) under
    ``z [copies * B, latent_dim]``, row ``copy * B + example`` (importance samples or AIS chains):
    ``[copies * B]``.

    ``Independent(Bernoulli(logits), 3)`` observation models, torch's own classes, are scored by
    :class:`_BernoulliLogProb` without repeating ``x`` (when they validate their arguments, ``x`` is
    checked once for ``{0, 1}``); every other distribution by its own ``log_prob`` on ``x`` repeated
    once per number of copies and kept for the next call.
    """

    def __init__(self, model):
        self.model = model
        # reused by every call and batch: on a CPU, fresh tensors this large are handed back to the
        # operating system when freed and page-faulted in again on the next call, which took a
        # third of the Bernoulli scoring time
        self._scratch = torch.empty(0)
        self.x = torch.empty(0)
        self._repeated: torch.Tensor | None = None  # x [copies * B, C, H, W]
        self._checked = False
        # Whether the model's distributions validate their arguments, seen on the first call, which
        # keeps torch's checks; later calls build them unchecked, because the check of a Bernoulli's
        # logits alone (a full pass over them for NaNs) cost 4% of importance sampling on a CPU.
        # A NaN that appears later still reaches the estimate, where it is reported.
        self._seen = False
        self._validates = False  # the model's Bernoulli checks its arguments (on the first call)

    def examples(self, x: torch.Tensor) -> _Observation:
        """Score ``x [B, C, H, W]`` from now on."""
        self.x, self._repeated, self._checked = x, None, False
        return self

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        b = self.x.shape[0]
        copies = z.shape[0] // b
        checked = not self._seen
        if checked:
            dist = self.model.observation_model(z)
            self._seen = True
        else:
            with _arguments_unchecked():
                dist = self.model.observation_model(z)
        logits = self._bernoulli_logits(dist, z.shape[0])
        if logits is not None:
            if checked:
                self._validates = bool(dist.base_dist._validate_args)
            self._check_support()
            logits = logits.reshape(copies, b, -1)  # [copies, B, D]
            return _BernoulliLogProb.apply(logits, self.x.reshape(b, -1), self._scratch_like(logits)).view(-1)
        if self._repeated is None or self._repeated.shape[0] != z.shape[0]:
            self._repeated = self.x.repeat(copies, *([1] * (self.x.dim() - 1)))  # [copies * B, C, H, W]
        log_prob = dist.log_prob(self._repeated)
        if log_prob.shape != (z.shape[0],):
            raise UsageError(
                f"observation_model(z).log_prob(x) must be one number per z ([{z.shape[0]}]), got "
                f"{list(log_prob.shape)}; give the distribution event shape [C, H, W] "
                "(torch.distributions.Independent(..., 3))"
            )
        return log_prob

    def _scratch_like(self, like: torch.Tensor) -> torch.Tensor:
        """``[2, *like.shape]`` in the memory of earlier calls where it fits."""
        size = 2 * like.numel()
        scratch = self._scratch
        if scratch.numel() < size or scratch.dtype != like.dtype or scratch.device != like.device:
            self._scratch = scratch = like.new_empty(size)
        return scratch[:size].view(2, *like.shape)

    def _bernoulli_logits(self, dist: D.Distribution, rows: int) -> torch.Tensor | None:
        """The logits ``[rows, C, H, W]`` of an independent Bernoulli over the pixels, else None."""
        if type(dist) is not D.Independent or type(dist.base_dist) is not D.Bernoulli:
            return None  # a subclass may score differently: its own log_prob decides
        logits = dist.base_dist.logits  # what torch's log_prob uses, also when built from probs
        if (dist.batch_shape != (rows,) or logits.shape != (rows, *self.x.shape[1:])
                or logits.dtype != self.x.dtype or logits.dtype not in (torch.float32, torch.float64)
                or self.x.requires_grad):
            return None  # the generic path gives torch's answer, or torch's error
        return logits

    def _check_support(self) -> None:
        if self._checked or not self._validates:
            return
        support = D.Bernoulli.support
        if not support.check(self.x).all():
            raise ValueError(
                f"Expected value argument ({type(self.x).__name__} of shape {tuple(self.x.shape)}) "
                f"to be within the support ({support!r}) of the distribution Bernoulli: "
                "pixels in {0, 1}"
            )
        self._checked = True


def _chunking(num_examples: int, k: int, batch_size: int) -> tuple[int, int]:
    """``(examples, samples)`` per observation_model call, about ``batch_size`` z's in all."""
    samples = min(k, batch_size)
    return max(1, min(num_examples, batch_size // samples)), samples


def _log_weights(model, x: torch.Tensor, k: int, batch_size: int,
                 on_batch: Callable[[int], None] = _no_reseed) -> Iterator[tuple[slice, torch.Tensor]]:
    """Importance log-weights ``log p(x|z) + log p(z) - log q(z|x)``, ``z ~ q(z|x)``, in float64.

    Yields ``(examples, log_w [k_chunk, B])`` chunks; each chunk sends ``k_chunk * B`` z's through
    the observation model in one call. ``on_batch(b)`` runs before batch ``b`` of examples draws.
    """
    prior = model.prior()
    latent_dim = _latent_dim(prior)
    per_batch, per_chunk = _chunking(x.shape[0], k, batch_size)
    observation = _Observation(model)
    for start in range(0, x.shape[0], per_batch):
        rows = slice(start, min(start + per_batch, x.shape[0]))
        x_b = x[rows]  # [B, C, H, W]
        b = x_b.shape[0]
        on_batch(start // per_batch)
        q = model.approximate_posterior(x_b)
        observation.examples(x_b)
        gaussian = _GaussianLatents.of(q, prior, b, latent_dim)
        for done in range(0, k, per_chunk):
            kc = min(per_chunk, k - done)
            if gaussian is not None:
                z, log_ratio = gaussian.draw(kc)  # [kc, B, latent_dim], [kc, B]
                log_px_z = observation(z.reshape(kc * b, latent_dim)).view(kc, b)
                yield rows, log_px_z.double() + log_ratio
                continue
            z = q.sample((kc,))  # [kc, B, latent_dim]
            if z.shape != (kc, b, latent_dim):
                raise UsageError(
                    f"approximate_posterior(x) for {b} examples must give z [{b}, {latent_dim}], "
                    f"got samples of shape {list(z.shape[1:])}"
                )
            log_px_z = observation(z.reshape(kc * b, latent_dim)).view(kc, b)
            # float32 terms [kc, B], summed in float64 for the log-sum-exp
            log_w = log_px_z.double() + prior.log_prob(z).double() - q.log_prob(z).double()
            yield rows, log_w


# --- importance sampling and the ELBO ------------------------------------------------------------
def _is_chunk(k: int, batch_size: int) -> int:
    """Examples per batch of importance sampling, which is also its unit of seeding and sharding;
    it depends on ``k`` and ``batch_size`` only, never on the number of processes."""
    return max(1, batch_size // min(k, batch_size))


def _importance_sampling(model, x, k, batch_size, start_chunk=_no_reseed, first_chunk=0) -> PerExampleResult:
    """Batch ``b`` of ``x`` is chunk ``first_chunk + b``, reseeded by ``start_chunk`` before it draws."""
    lse = x.new_empty(x.shape[0], dtype=torch.float64)
    lse_sq = torch.empty_like(lse)
    started = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    # inference mode inside only: the sums above stay ordinary tensors, and so does the result
    with torch.inference_mode():
        for rows, log_w in _log_weights(model, x, k, batch_size,
                                        lambda b: start_chunk(first_chunk + b)):
            chunk, chunk_sq = torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0)
            # the first chunk starts the sums: logaddexp(-inf, -inf) would give NaN
            first = started[rows]
            lse[rows] = torch.where(first, torch.logaddexp(lse[rows], chunk), chunk)
            lse_sq[rows] = torch.where(first, torch.logaddexp(lse_sq[rows], chunk_sq), chunk_sq)
            started[rows] = True
    value, std_error = _log_mean_and_error(lse, lse_sq, k)
    settings = {"method": "is", "num_samples": k, "proposal": "approximate_posterior", "units": "nats"}
    return PerExampleResult(value, std_error, k, settings)


def elbo(
    model, x: torch.Tensor, num_samples: int = 1, generator: torch.Generator | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PerExampleResult:
    """The evidence lower bound ``E_q[log p(x|z) + log p(z) - log q(z|x)] <= log p(x)``, nats, ``[N]``.

    The mean of ``num_samples`` importance log-weights per example, ``z ~ q(z|x)``; ``std_error`` is
    their standard deviation over ``sqrt(num_samples)`` (``None`` for one sample). ``x`` is
    ``[N, C, H, W]``, scored exactly as passed. Needs ``approximate_posterior``.
    """
    x = _check_data(x)
    k = _positive_int(num_samples, "num_samples")
    _require(model, ("prior", "observation_model", "approximate_posterior"),
             "the ELBO needs an encoder q(z|x)")
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    total_sq = torch.zeros_like(total)
    with torch.inference_mode(), _seeded(generator, x.device):
        for rows, log_w in _log_weights(model, x, k, _positive_int(batch_size, "batch_size")):
            total[rows] += log_w.sum(0)
            total_sq[rows] += log_w.square().sum(0)
    mean = total / k
    std_error = None
    if k > 1:
        variance = ((total_sq - k * mean.square()) / (k - 1)).clamp_min(0)
        std_error = torch.sqrt(variance / k)
    settings = {"method": "elbo", "num_samples": k, "proposal": "approximate_posterior", "units": "nats"}
    return PerExampleResult(mean, std_error, k, settings)


# --- closed-form or Monte Carlo KL ---------------------------------------------------------------
def _as_multivariate_normal(d: D.Distribution) -> D.Distribution:
    """A diagonal ``Independent(Normal, 1)`` as the equal ``MultivariateNormal``; others unchanged.

    torch registers KL(MultivariateNormal || MultivariateNormal) but not against
    ``Independent(Normal)``, the usual N(0, I) prior.
    """
    if (isinstance(d, D.Independent) and isinstance(d.base_dist, D.Normal)
            and d.reinterpreted_batch_ndims == 1):
        scale = d.base_dist.scale.expand(d.base_dist.batch_shape)
        return D.MultivariateNormal(d.base_dist.loc.expand_as(scale), scale_tril=torch.diag_embed(scale))
    return d


def _closed_form_kl(q: D.Distribution, p: D.Distribution) -> torch.Tensor | None:
    try:
        return D.kl_divergence(q, p)
    except NotImplementedError:
        pass
    if isinstance(q, D.MultivariateNormal) or isinstance(p, D.MultivariateNormal):
        try:
            return D.kl_divergence(_as_multivariate_normal(q), _as_multivariate_normal(p))
        except NotImplementedError:
            pass
    return None


def kl(
    model, x: torch.Tensor, num_samples: int = 100, generator: torch.Generator | None = None
) -> PerExampleResult:
    """``KL(q(z|x) || p(z))`` per example, nats, ``[N]``, for ``x [N, C, H, W]``.

    Closed form where torch registers the pair (Gaussian against Gaussian, including a full-covariance
    q against a diagonal prior); otherwise the Monte Carlo mean of ``log q(z|x) - log p(z)`` over
    ``num_samples`` draws from q, with its standard error. ``settings["form"]`` says which.
    """
    x = _check_data(x)
    k = _positive_int(num_samples, "num_samples")
    _require(model, ("prior", "approximate_posterior"), "the KL needs an encoder q(z|x)")
    with torch.no_grad(), _seeded(generator, x.device):
        q, p = model.approximate_posterior(x), model.prior()
        exact = _closed_form_kl(q, p)
        if exact is not None:
            value = exact.double().expand(x.shape[0]).clone()
            return PerExampleResult(value, None, None, {"form": "closed", "units": "nats"})
        z = q.sample((k,))  # [k, N, latent_dim]
        log_ratio = q.log_prob(z).double() - p.log_prob(z).double()  # [k, N]
    std_error = log_ratio.std(0) / math.sqrt(k) if k > 1 else None
    return PerExampleResult(log_ratio.mean(0), std_error, k,
                            {"form": "monte_carlo", "num_samples": k, "units": "nats"})


# --- annealed importance sampling ----------------------------------------------------------------
@dataclass(frozen=True)
class AISOptions:
    """AIS settings (the defaults of Wu et al. 2017 and their code): ``chains`` independent runs per
    example over ``steps`` intermediate distributions on a sigmoid schedule, each followed by one HMC
    transition of ``leapfrog_steps`` leapfrog steps, the step size adapted towards
    ``target_acceptance``."""

    chains: int = 16
    steps: int = 1000
    leapfrog_steps: int = 10
    initial_step_size: float = 0.01
    target_acceptance: float = 0.65

    @classmethod
    def from_options(cls, options: dict) -> AISOptions:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                raise UsageError(
                    f"unknown AIS option '{key}'{closest(key, names)} (known: {', '.join(names)})"
                )
        made = cls(**options)
        for name in ("chains", "steps", "leapfrog_steps"):
            _positive_int(getattr(made, name), name)
        if not made.initial_step_size > 0:
            raise UsageError(f"initial_step_size must be > 0, got {made.initial_step_size}")
        if not 0 < made.target_acceptance < 1:
            raise UsageError(f"target_acceptance must be in (0, 1), got {made.target_acceptance}")
        return made


def sigmoid_schedule(steps: int, radius: float = SCHEDULE_RADIUS) -> torch.Tensor:
    """Inverse temperatures ``beta_0 = 0 < ... < beta_steps = 1``, ``[steps + 1]`` float64.

    ``sigmoid`` of ``steps + 1`` evenly spaced points in ``[-radius, radius]``, rescaled to [0, 1]
    (Wu et al. 2017): small increments at both ends, where the log-weights change fastest.
    """
    s = torch.sigmoid(torch.linspace(-radius, radius, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


class _Chains:
    """The state of ``M = chains * B`` HMC chains on ``log p(z) + beta log p(x|z)``, row
    ``chain * B + example``.

    Keeps ``log p(z)`` and ``log p(x|z)`` and their gradients at the current ``z [M, latent_dim]``
    apart, so a new ``beta`` costs no model call. The step size is one per example, shared by its
    chains: a step size adapted on one chain's own acceptance follows that chain's state, which
    breaks the invariance AIS relies on; the mean over the example's chains dilutes that
    dependence while still following each example's posterior scale.
    """

    def __init__(self, prior, observation: _Observation, z, examples: int, options: AISOptions):
        self.prior, self.observation, self.examples = prior, observation, examples
        self.z, self.log_prior, self.log_lik, self.grad_prior, self.grad_lik = self.evaluate(z)
        self.step_size = torch.full((examples,), options.initial_step_size, device=z.device)  # [B]
        self.acceptance = torch.full((examples,), options.target_acceptance, device=z.device)  # running mean
        self.options = options

    def evaluate(self, z):
        """``(z, log p(z), log p(x|z), their gradients)`` at ``z [M, latent_dim]``."""
        # two leaves, so one backward pass gives both gradients apart
        z_prior, z_lik = z.detach().requires_grad_(True), z.detach().requires_grad_(True)
        with torch.enable_grad():
            log_prior = self.prior.log_prob(z_prior)
            log_lik = self.observation(z_lik)
            grad_prior, grad_lik = torch.autograd.grad((log_prior.sum(), log_lik.sum()), (z_prior, z_lik))
        return z.detach(), log_prior.detach(), log_lik.detach(), grad_prior, grad_lik

    def hmc(self, beta: float) -> None:
        """One HMC transition leaving ``p(z) p(x|z)^beta`` invariant, then step-size adaptation."""
        eps = self.step_size.repeat(self.z.shape[0] // self.examples).unsqueeze(1)  # [M, 1]
        momentum0 = torch.randn_like(self.z)
        energy0 = -(self.log_prior + beta * self.log_lik) + 0.5 * momentum0.square().sum(1)
        # leapfrog: half a momentum step, then full position and momentum steps, half a step last
        momentum = momentum0 + 0.5 * eps * (self.grad_prior + beta * self.grad_lik)
        z = self.z
        diverged = torch.zeros_like(self.log_lik, dtype=torch.bool)
        for i in range(self.options.leapfrog_steps):
            moved = z + eps * momentum
            # a chain that left the finite numbers stops and is rejected below, so the model
            # never sees NaN or infinite z
            diverged |= ~torch.isfinite(moved).all(1)
            z = torch.where(diverged.unsqueeze(1), z, moved)
            z, log_prior, log_lik, grad_prior, grad_lik = self.evaluate(z)
            last = i == self.options.leapfrog_steps - 1
            momentum = momentum + (0.5 if last else 1.0) * eps * (grad_prior + beta * grad_lik)
        energy1 = -(log_prior + beta * log_lik) + 0.5 * momentum.square().sum(1)
        log_accept = (energy0 - energy1).nan_to_num(nan=-math.inf).clamp_max(0)
        log_accept = torch.where(diverged, -math.inf, log_accept)
        accept = torch.rand_like(log_accept).log() < log_accept  # Metropolis test, [M]
        keep = accept.unsqueeze(1)
        self.z = torch.where(keep, z, self.z)
        self.log_prior = torch.where(accept, log_prior, self.log_prior)
        self.log_lik = torch.where(accept, log_lik, self.log_lik)
        self.grad_prior = torch.where(keep, grad_prior, self.grad_prior)
        self.grad_lik = torch.where(keep, grad_lik, self.grad_lik)
        # per-example multiplicative adaptation towards the target acceptance (Wu et al. 2017)
        accepted = log_accept.exp().view(-1, self.examples).mean(0)  # [B], mean over chains
        self.acceptance = ACCEPTANCE_DECAY * self.acceptance + (1 - ACCEPTANCE_DECAY) * accepted
        factor = torch.where(self.acceptance > self.options.target_acceptance,
                             STEP_SIZE_FACTOR, 1 / STEP_SIZE_FACTOR)
        self.step_size = (self.step_size * factor).clamp(*STEP_SIZE_RANGE)


def _ais_batch(model, x_b, betas, options: AISOptions, z_start=None) -> torch.Tensor:
    """AIS log-weights ``[chains, B]`` (float64) along ``betas`` for ``x_b [B, C, H, W]``.

    Starts from ``z ~ p(z)`` when ``betas`` rises from 0 (forward), or from ``z_start [chains, B,
    latent_dim]`` (an exact posterior sample: reverse AIS, whose weights estimate ``1 / p(x)``).
    """
    prior = model.prior()
    latent_dim = _latent_dim(prior)
    c, b = options.chains, x_b.shape[0]
    if z_start is None:
        z_start = prior.sample((c, b))  # [chains, B, latent_dim]
    observation = _Observation(model).examples(x_b)  # row = chain * B + example
    chains = _Chains(prior, observation, z_start.reshape(c * b, latent_dim), b, options)
    log_w = torch.zeros(c * b, dtype=torch.float64, device=chains.log_lik.device)
    for t in range(1, len(betas)):
        # weight update f_t(z) / f_{t-1}(z) at the current z, then a transition that keeps f_t
        log_w += (betas[t] - betas[t - 1]).item() * chains.log_lik.double()
        if t < len(betas) - 1:  # the last transition would not change the weight
            chains.hmc(float(betas[t]))
    return log_w.view(c, b)


def _ais_chunk(options: AISOptions, batch_size: int) -> int:
    """Examples per AIS batch, also its unit of seeding and sharding (see :func:`_is_chunk`)."""
    return max(1, batch_size // options.chains)


def _ais(model, x, options: AISOptions, batch_size: int, reverse_from=None, start_chunk=_no_reseed,
         first_chunk: int = 0) -> PerExampleResult:
    """Batch ``b`` of ``x`` is chunk ``first_chunk + b``, reseeded by ``start_chunk`` (stream 0
    forward, 1 reverse) before it draws."""
    betas = sigmoid_schedule(options.steps)
    if reverse_from is not None:
        betas = betas.flip(0)
    per_batch = _ais_chunk(options, batch_size)
    log_w = [torch.zeros(options.chains, 0, dtype=torch.float64, device=x.device)]  # no examples: [chains, 0]
    for start in range(0, x.shape[0], per_batch):
        rows = slice(start, start + per_batch)
        start_chunk(first_chunk + start // per_batch, int(reverse_from is not None))
        z_start = None
        if reverse_from is not None:  # every chain starts from the example's exact posterior sample
            z_start = reverse_from[rows].unsqueeze(0).expand(options.chains, *reverse_from[rows].shape)
        log_w.append(_ais_batch(model, x[rows], betas, options, z_start))
    log_w = torch.cat(log_w, 1)  # [chains, N]
    value, std_error = _log_mean_and_error(torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0),
                                           options.chains)
    settings = {"method": "ais", **dataclasses.asdict(options), "schedule": "sigmoid",
                "schedule_radius": SCHEDULE_RADIUS, "transition": "hmc",
                "step_size_adaptation": f"per example, x{STEP_SIZE_FACTOR} or /{STEP_SIZE_FACTOR}",
                "units": "nats"}
    return PerExampleResult(value, std_error, options.chains, settings)


# --- the public estimator ------------------------------------------------------------------------
def log_likelihood(
    model,
    x: torch.Tensor,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    method: Literal["is", "ais"] = "is",
    batch_size: int = DEFAULT_BATCH_SIZE,
    generator: torch.Generator | None = None,
    shard=None,
    **ais_options,
) -> PerExampleResult:
    """Per-example ``log p(x)`` in nats, ``[N]`` float64, for ``x [N, C, H, W]`` exactly as passed.

    ``method="is"``: importance sampling with ``q(z|x)`` as proposal and ``num_samples`` draws per
    example (Burda et al. 2016): ``log mean_k w_k``, a stochastic lower bound that tightens as
    ``num_samples`` grows; ``std_error`` is the delta-method standard error of that log-mean.
    Needs ``approximate_posterior``.

    ``method="ais"``: annealed importance sampling from the prior to the posterior (Neal 2001;
    Wu et al. 2017), for any model with ``prior()`` and ``observation_model()``, encoder or not.
    ``ais_options``: ``chains`` (16), ``steps`` (1000 distributions on a sigmoid schedule),
    ``leapfrog_steps`` (10), ``initial_step_size`` (0.01) and ``target_acceptance`` (0.65), towards
    which each example's HMC step size is adapted (multiplied by 1.02 or 0.98 after every transition,
    from the running mean acceptance of its chains); ``num_samples`` does not apply. The estimate is
    the log-mean-exp over chains, ``std_error`` the delta-method error from the chains' weights.
    Because the step size follows the chains' past, as in Wu et al., the weights are unbiased only
    up to that adaptation. With few steps (hundreds) the start of the schedule is spent growing the
    step size from ``initial_step_size``: raise it (to ~0.1) for short runs.

    ``batch_size`` bounds the number of latent samples per ``observation_model`` call (examples x
    samples or chains); lower it when memory is short. Memory: the model's activations for
    ``batch_size`` samples (for AIS also their gradients), plus two float tensors of ``batch_size``
    images for a Bernoulli model (25 MB at the default 4096 and 28x28 pixels) or one repeat of ``x``
    for any other. On a CPU, 1024 to 4096 differ by under 10% for an MLP decoder. ``generator``
    seeds every draw.

    Seeding and sharding: the examples are cut into chunks of the estimator's batch
    (``batch_size // min(num_samples, batch_size)`` examples for IS, ``batch_size // chains`` for
    AIS), and each chunk reseeds the random numbers from (a seed drawn from ``generator``, its
    index), so an example's estimate does not depend on which chunks were computed before it.
    ``shard`` (a :class:`genbench.training.distributed.Ranks` inside a process group, every rank
    calling with the same arguments) makes each rank score a contiguous run of whole chunks and
    gathers the values in chunk order: every rank returns the values one process would have,
    bit for bit on the CPU (the same arithmetic per chunk).
    """
    x = _check_data(x)
    batch_size = _positive_int(batch_size, "batch_size")
    _require(model, ("prior", "observation_model"),
             "a generator without a pixel likelihood needs genbench.metrics.observation.GaussianObservation")
    if method == "is":
        if ais_options:
            raise UsageError(f"{', '.join(ais_options)} apply to method='ais' only")
        _require(model, ("approximate_posterior",),
                 "importance sampling needs an encoder q(z|x); use method='ais'")
        k = _positive_int(num_samples, "num_samples")
        rows, first = _owned_rows(x.shape[0], _is_chunk(k, batch_size), shard)
        with torch.no_grad(), _seeded(generator, x.device) as start_chunk:
            result = _importance_sampling(model, x[rows], k, batch_size, start_chunk, first)
    elif method == "ais":
        if num_samples != DEFAULT_NUM_SAMPLES:
            raise UsageError("num_samples applies to method='is'; give AIS chains=... instead")
        options = AISOptions.from_options(ais_options)
        rows, first = _owned_rows(x.shape[0], _ais_chunk(options, batch_size), shard)
        with _seeded(generator, x.device) as start_chunk:
            result = _ais(model, x[rows], options, batch_size, start_chunk=start_chunk, first_chunk=first)
    else:
        raise UsageError(f"method must be 'is' or 'ais', got {method!r}")
    result = _gathered(result, shard)
    result.settings["batch_size"] = batch_size
    return result


@dataclass
class BDMCResult:
    """Bidirectional Monte Carlo on simulated data: ``lower <= log p(x) <= upper`` in expectation."""

    x: torch.Tensor  # [N, C, H, W], simulated from the model
    lower: PerExampleResult  # forward AIS, nats [N]
    upper: PerExampleResult  # reverse AIS from the exact posterior sample, nats [N]

    def gap(self) -> float:
        """Mean of ``upper - lower``, nats: bounds the error of forward AIS on data like this."""
        return float((self.upper.value - self.lower.value).mean())


def bdmc(
    model, num_examples: int, generator: torch.Generator | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, **ais_options,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse et al. 2015; Wu et al. 2017): sandwich ``log p(x)``.

    Simulates ``z ~ p(z)``, ``x ~ p(x|z)`` for ``num_examples`` examples; ``z`` is then an exact
    posterior sample for its ``x``. Forward AIS (prior to posterior) gives a stochastic lower bound;
    reverse AIS (the same schedule backwards, every chain starting at that ``z``) gives an unbiased
    estimate of ``1 / p(x)``, so minus its log-mean is a stochastic upper bound. Both in nats ``[N]``.
    ``ais_options`` as for :func:`log_likelihood`.
    """
    n = _positive_int(num_examples, "num_examples")
    batch_size = _positive_int(batch_size, "batch_size")
    _require(model, ("prior", "observation_model"), "BDMC needs a model that can simulate data")
    options = AISOptions.from_options(ais_options)
    prior = model.prior()
    _latent_dim(prior)
    with _seeded(generator, prior.mean.device) as start_chunk:
        with torch.no_grad():
            z = prior.sample((n,))  # [N, latent_dim]
            x = model.observation_model(z).sample()  # [N, C, H, W]
        lower = _ais(model, x, options, batch_size, start_chunk=start_chunk)
        reverse = _ais(model, x, options, batch_size, reverse_from=z, start_chunk=start_chunk)
    upper = PerExampleResult(-reverse.value, reverse.std_error, reverse.num_samples,
                             {**reverse.settings, "direction": "reverse"})
    lower.settings["direction"] = "forward"
    return BDMCResult(x, lower, upper)


# --- units and data conventions ------------------------------------------------------------------
def bits_per_dim(log_likelihood_nats, num_dims: int):
    """``-log p(x) / (D ln 2)``: nats per example (a float or a tensor ``[N]``) to bits per dimension."""
    return -log_likelihood_nats / (_positive_int(num_dims, "num_dims") * math.log(2))


def rescale_log_likelihood(log_likelihood_nats, num_dims: int, scale: float):
    """The log-density of the same data after an affine change of scale, nats.

    For data ``y = scale * x + shift`` in ``D = num_dims`` dimensions, ``p_y(y) = p_x(x) / |scale|^D``,
    so ``log p_y(y) = log p_x(x) - D ln|scale|`` (a shift changes nothing). A model working on
    ``x in [-1, 1]`` reported on ``y = (x + 1) / 2 in [0, 1]`` takes ``scale = 0.5``: ``+ D ln 2``,
    ``+543.4`` nats for 784-pixel MNIST. On the 0..255 scale use ``scale = 127.5``. Only for
    continuous (Gaussian-type) likelihoods; discrete likelihoods (Bernoulli) have no Jacobian.
    """
    if not math.isfinite(scale) or scale == 0:
        raise UsageError(f"scale must be finite and non-zero, got {scale}")
    return log_likelihood_nats - _positive_int(num_dims, "num_dims") * math.log(abs(scale))


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit images to continuous values in ``[0, 1)``, ``[N, C, H, W]``.

    Input: ``uint8`` (or integer) levels ``k`` in 0..255, or floats in ``[0, 1]`` read as ``k / 255``
    (the ``ToTensor`` convention). Output: ``(k + u) / 256`` with ``u ~ U[0, 1)``, so level ``k`` fills
    the bin ``[k / 256, (k + 1) / 256)``. For a density ``p`` on ``[0, 1)^D`` the discrete probability
    satisfies ``log P(k) >= E_u[log p((k + u) / 256)] - D ln 256`` (Theis et al. 2016): report
    ``bits/dim`` of the 256-level data as ``bits_per_dim(ll, D) + 8``.
    """
    if x.is_floating_point():
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise UsageError("float images to dequantize must lie in [0, 1] (k / 255); pass uint8 for 0..255")
        levels = torch.round(x * 255)
    else:
        if x.min() < 0 or x.max() > 255:
            raise UsageError("integer images to dequantize must hold levels 0..255")
        levels = x.to(torch.get_default_dtype())
    if generator is None:
        noise = torch.rand(x.shape, device=x.device)
    else:  # drawn on the generator's device (the CPU) and moved, as genbench does for noise
        noise = torch.rand(x.shape, generator=generator).to(x.device)
    return ((levels + noise) / 256).to(torch.get_default_dtype())
