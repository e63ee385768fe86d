"""Throughput of the likelihood estimators on a Burda-style MLP VAE (issue 8, ``nox -s bench``).

    python benchmarks/bench_likelihood.py [--quick] [--threads N]

Rows (every figure is the best of a few timed repeats after a warm-up, on the CPU, with torch's
default thread count unless ``--threads`` says otherwise; the notes state it). Run it on a quiet
machine: with two threads, a core busy elsewhere stalls every parallel region.

- the machine's float32 matrix-multiply peak, FLOP/s, from one large square matmul;
- the decoder's forward pass alone as a fraction of that peak (the ceiling for what follows);
- importance sampling, ``log_likelihood(model, x, method="is", num_samples=k)``, in examples x
  samples per second with the Bernoulli log-probability included, against a plain loop over
  examples that evaluates each example's ``k`` samples in one batch, at ``k = 100`` and ``5000``,
  and (a diagnostic) against the same loop scoring with genbench's fused Bernoulli log-probability,
  which leaves batching as the only difference;
- the decoder FLOP/s that importance sampling achieves, as a fraction of the matmul peak;
- AIS: milliseconds per chain-step per example (one HMC transition of each of the example's
  chains) with the default ``AISOptions``;
- AIS estimates (nats) at a few numbers of intermediate distributions, with the default first step
  size and with the larger one genbench's evaluation uses, beside importance sampling with 5000
  samples on the same images, to pick ``steps``.

The model is the one-stochastic-layer VAE of Burda et al. 2016 (latent 50, MLPs 784-200-200-2x50
and 50-200-200-784, tanh), trained for a few seconds so the estimates mean something; throughput
does not depend on the weights. Data: binarized MNIST test images ({0, 1}, ``[N, 1, 28, 28]``),
or random binary images where MNIST is not available (the notes say which).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import distributions as D
from torch import nn

from genbench.metrics.likelihood import AISOptions, _Observation, log_likelihood

LATENT, HIDDEN, PIXELS = 50, 200, 784
IMAGE = (1, 28, 28)
# FLOPs of one decoder forward pass per latent sample: 2 per multiply-add of the three matmuls.
DECODER_FLOPS = 2 * (LATENT * HIDDEN + HIDDEN * HIDDEN + HIDDEN * PIXELS)
IS_TARGET_RATIO = 3.0  # against the per-example loop at k = 100 (and >= 1 at k = 5000)
PEAK_TARGET = 1 / 3  # decoder FLOP/s of importance sampling as a fraction of the matmul peak
SHORT_RUN_STEP_SIZE = 0.1  # AIS initial_step_size of genbench's evaluation (AIS_INITIAL_STEP_SIZE)


@dataclass(frozen=True)
class Sizes:
    """How much work each row times; ``quick`` is a smoke test, not a measurement."""

    matmul: int  # side of the square matmul
    samples: int  # examples x samples per importance-sampling timing
    repeats: int  # timed repeats per figure (best of)
    train_steps: int  # Adam steps of 100 images before the estimates
    ais_timing: tuple[int, int]  # (examples, intermediate distributions) of the AIS timing
    ais_examples: int  # images of the AIS-against-IS estimates
    ais_steps: tuple[int, ...]  # intermediate distributions of the AIS estimates
    is_reference: int  # importance samples of the reference estimate


FULL = Sizes(matmul=2048, samples=2**18, repeats=3, train_steps=2000, ais_timing=(64, 9),
             ais_examples=8, ais_steps=(50, 200, 1000), is_reference=5000)
QUICK = Sizes(matmul=512, samples=2**12, repeats=1, train_steps=20, ais_timing=(4, 3),
              ais_examples=2, ais_steps=(5, 20), is_reference=200)


class MLPVAE(nn.Module):
    """The likelihood protocol on binary images ``x [N, 1, 28, 28]`` in ``{0, 1}``.

    ``prior()`` is N(0, I) over 50 dimensions, ``approximate_posterior(x)`` a diagonal Gaussian and
    ``observation_model(z)`` independent Bernoullis on the decoder's logits, built as genbench's VAE
    builds them (``Independent(Bernoulli(logits=...), 3)``, torch's default argument validation).
    """

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(PIXELS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
            nn.Linear(HIDDEN, 2 * LATENT))
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(),
            nn.Linear(HIDDEN, PIXELS), nn.Unflatten(1, IMAGE))

    def prior(self) -> D.Distribution:
        zeros = torch.zeros(LATENT, device=self.decoder[0].weight.device)  # on the model's device
        return D.Independent(D.Normal(zeros, torch.ones_like(zeros)), 1)

    def approximate_posterior(self, x: torch.Tensor) -> D.Distribution:
        mean, log_var = self.encoder(x).chunk(2, dim=1)  # [B, 784] -> [B, 50] each
        return D.Independent(D.Normal(mean, torch.exp(0.5 * log_var)), 1)

    def observation_model(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Bernoulli(logits=self.decoder(z)), 3)  # [B, 50] -> [B, 1, 28, 28]


def binary_images(split: str, n: int, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """``n`` stochastically binarized MNIST images ``[n, 1, 28, 28]`` in {0, 1}, and their source."""
    from genbench.core.errors import GenbenchError
    from genbench.data import load_images

    try:  # genbench ships MNIST; a broken install still gets its timings
        pixels = load_images("mnist", split, limit=n, allow_download=False).images.float() / 255
        source = f"binarized MNIST {split}"
    except GenbenchError:  # no MNIST here: the timings do not depend on the pixels
        pixels = torch.full((n, *IMAGE), 0.13)
        source = "random binary images (MNIST not available)"
    repeats = -(-n // pixels.shape[0])  # MNIST's test split may hold fewer than n images
    return torch.bernoulli(pixels.repeat(repeats, 1, 1, 1)[:n], generator=generator), source


def train(model: MLPVAE, x: torch.Tensor, steps: int, generator: torch.Generator) -> None:
    """A few Adam steps on the ELBO, batch 100: enough for estimates that resemble a real model's.

    Untimed set-up, on one thread: its thousands of small ops gain nothing from a second one, and
    on a machine with a busy core each would wait for it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _adam_steps(model, x, steps, generator)
    finally:
        torch.set_num_threads(threads)
    model.requires_grad_(False)  # AIS needs gradients with respect to z only


def _adam_steps(model: MLPVAE, x: torch.Tensor, steps: int, generator: torch.Generator) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = x[torch.randint(x.shape[0], (100,), generator=generator)]
        q = model.approximate_posterior(batch)
        z = q.rsample()
        elbo = model.observation_model(z).log_prob(batch) + model.prior().log_prob(z) - q.log_prob(z)
        optimizer.zero_grad(set_to_none=True)
        (-elbo.mean()).backward()
        optimizer.step()


def synchronize(device: str | torch.device = "cpu") -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: str | torch.device = "cpu") -> float:
    """Seconds of the fastest of ``repeats`` calls, after one untimed warm-up call; on a CUDA
    ``device`` the clock is read only after ``torch.cuda.synchronize``."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_peak(n: int, repeats: int, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of ``[n, n] @ [n, n]`` in ``dtype`` on ``device``: ``2 n^3`` FLOPs over the best time."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, max(repeats, 5), device)


def per_example_loop(
    model: MLPVAE, x: torch.Tensor, k: int, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The comparison: importance sampling one example at a time, its ``k`` samples in one batch.

    Written as a user would with the protocol (the model's own distributions and ``log_prob``), in
    inference mode, float32 with float64 only in the log-sum-exp, and the same outputs as genbench:
    ``log mean w`` and ``log sum w^2`` (for the standard error), ``[N]`` each. ``fused`` scores
    ``log p(x|z)`` with genbench's own scorer instead, which leaves batching as the only difference.
    """
    log_mean = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    log_sum_sq = torch.empty_like(log_mean)
    scorer = _Observation(model)
    with torch.inference_mode():
        prior = model.prior()
        for i in range(x.shape[0]):
            x_i = x[i : i + 1]  # [1, 1, 28, 28]
            q = model.approximate_posterior(x_i)
            z = q.sample((k,)).view(k, LATENT)  # [k, 1, 50] -> [k, 50]
            if fused:
                log_px_z = scorer.examples(x_i)(z)
            else:
                log_px_z = model.observation_model(z).log_prob(x_i.expand(k, *IMAGE))  # [k]
            log_w = log_px_z.double() + (prior.log_prob(z) - q.log_prob(z)).double()
            log_mean[i] = torch.logsumexp(log_w, 0) - math.log(k)
            log_sum_sq[i] = torch.logsumexp(2 * log_w, 0)
    return log_mean, log_sum_sq


def row(item, genbench, comparison=None, ratio=None, unit="", target="", met=None, note="") -> dict:
    return {"item": item, "genbench": float(genbench),
            "comparison": None if comparison is None else float(comparison),
            "ratio": None if ratio is None else float(ratio), "unit": unit, "target": target,
            "met": met, "note": note}


def importance_sampling_rows(model, x, sizes: Sizes, peak: float, threads: str,
                             device: str | torch.device = "cpu") -> list[dict]:
    """IS rows for ``model`` and ``x`` on ``device`` (both already there); ``threads`` ends every
    note (the thread count, or the device)."""
    rows, fractions = [], {}
    for k, target in ((100, IS_TARGET_RATIO), (5000, 1.0)):
        n = max(2, sizes.samples // k)
        x_n = x[:n]
        generator = torch.Generator().manual_seed(k)
        genbench = n * k / best_time(
            lambda: log_likelihood(model, x_n, method="is", num_samples=k, generator=generator),  # noqa: B023
            sizes.repeats, device)
        loop = n * k / best_time(lambda: per_example_loop(model, x_n, k), sizes.repeats, device)  # noqa: B023
        ratio = genbench / loop
        fractions[k] = genbench * DECODER_FLOPS / peak
        rows.append(row(
            f"IS throughput, k={k}", genbench, loop, ratio, "examples*samples/s", f">= {target:g}x",
            ratio >= target,
            f"{n} examples x {k} samples, log p(x|z) included (genbench: its fused Bernoulli "
            f"log-probability); comparison: a loop over examples, each example's {k} samples in "
            f"one batch through the model's own log_prob (torch's binary_cross_entropy_with_logits); "
            f"ratio = genbench / loop (> 1: genbench faster); {threads}"))
        if k == 100:  # the same loop scoring with genbench's fused log-probability: batching alone
            fused = n * k / best_time(lambda: per_example_loop(model, x_n, k, fused=True),  # noqa: B023
                                      sizes.repeats, device)
            rows.append(row(
                f"IS throughput, k={k}, loop with genbench's log p(x|z)", genbench, fused,
                genbench / fused, "examples*samples/s",
                note="diagnostic: the loop above scoring log p(x|z) with genbench's fused Bernoulli "
                "log-probability, so the ratio (> 1: genbench faster) is what batching examples "
                f"together gains; {threads}"))
    rows.append(row(
        "IS decoder FLOP/s / matmul peak", fractions[5000], None, None, "fraction of peak",
        f">= {PEAK_TARGET:.2f}", fractions[5000] >= PEAK_TARGET,
        f"k=5000; {DECODER_FLOPS} decoder FLOPs per sample x samples/s over the peak row; the "
        f"sampling, prior, q and Bernoulli log-probabilities count as overhead; k=100: "
        f"{fractions[100]:.2f}; {threads}"))
    return rows


def ais_rows(model, x, sizes: Sizes, peak: float, threads: str) -> list[dict]:
    options = AISOptions()
    n, steps = sizes.ais_timing
    seconds = best_time(lambda: log_likelihood(model, x[:n], method="ais", steps=steps,
                                               generator=torch.Generator().manual_seed(0)),
                        sizes.repeats)
    per_step = seconds / (n * (steps - 1))  # steps - 1 HMC transitions of every chain
    evaluations = options.chains * options.leapfrog_steps  # decoder forward + backward per step
    fraction = evaluations * 2 * DECODER_FLOPS / per_step / peak
    rows = [row(
        "AIS time per chain-step per example", per_step * 1e3, unit="ms",
        note=f"default AISOptions: {options.chains} chains x {options.leapfrog_steps} leapfrog "
        f"steps (each a decoder forward and input-gradient backward) per example per intermediate "
        f"distribution; {n} examples x {steps} distributions timed; "
        f"{per_step * 1e3 / options.chains:.3f} ms per chain; "
        f"{per_step * options.steps:.1f} s per example at the default {options.steps} "
        f"distributions; decoder FLOP/s ~{fraction:.2f} of peak (forward + backward = 2x forward "
        f"FLOPs); {threads}")]
    x_e = x[:sizes.ais_examples]
    reference = log_likelihood(model, x_e, method="is", num_samples=sizes.is_reference,
                               generator=torch.Generator().manual_seed(1))
    # the defaults, then the larger first step size genbench's evaluation uses for short schedules
    settings = [(steps, AISOptions.initial_step_size) for steps in sizes.ais_steps]
    settings += [(steps, SHORT_RUN_STEP_SIZE) for steps in sizes.ais_steps[:-1]]
    for steps, step_size in settings:
        started = time.perf_counter()
        result = log_likelihood(model, x_e, method="ais", steps=steps, initial_step_size=step_size,
                                generator=torch.Generator().manual_seed(2))
        seconds = time.perf_counter() - started
        default = step_size == AISOptions.initial_step_size
        rows.append(row(
            f"AIS estimate, {steps} distributions" + ("" if default else f", initial step {step_size:g}"),
            result.mean(), reference.mean(), unit="nats",
            note=f"mean log p(x) over {x_e.shape[0]} images, AISOptions defaults but steps"
            + ("" if default else f" and initial_step_size (genbench's evaluation uses {step_size:g})")
            + f" (took {seconds:.1f} s); comparison: IS with k={sizes.is_reference} on the same images; "
            f"AIS - IS = {result.mean() - reference.mean():+.2f} nats (both stochastic lower bounds: "
            "higher is tighter)"))
    return rows


def rows(quick: bool = False, threads: int | None = None) -> list[dict]:
    """The benchmark table: one dict per figure (see the module docstring).

    ``threads``: torch's intra-op threads for the run (restored afterwards); by default torch's
    current setting, or 1 for ``quick``, a smoke test that should not depend on a busy machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads or (1 if quick else before))
    try:
        return _table(QUICK if quick else FULL)
    finally:
        torch.set_num_threads(before)


def _table(sizes: Sizes) -> list[dict]:
    quick = sizes is QUICK
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    threads = f"{torch.get_num_threads()} torch threads"
    peak = matmul_peak(sizes.matmul, sizes.repeats)
    table = [row("matmul peak, float32", peak / 1e9, unit="GFLOP/s",
                 note=f"best of [{sizes.matmul}, {sizes.matmul}] @ [{sizes.matmul}, {sizes.matmul}]; "
                 f"{threads}")]
    model = MLPVAE()
    x_train, _ = binary_images("train", 10_000 if not quick else 500, generator)
    train(model, x_train, sizes.train_steps, generator)
    x, source = binary_images("test", max(sizes.samples // 100, sizes.ais_examples), generator)
    threads = f"{threads}; {source}"
    z = torch.randn(4096, LATENT)
    with torch.inference_mode():
        forward = 4096 * DECODER_FLOPS / best_time(lambda: model.decoder(z), sizes.repeats)
    table.append(row("decoder forward alone / matmul peak", forward / peak, unit="fraction of peak",
                     note=f"4096 latent samples, no log-probability: the ceiling for IS; {threads}"))
    for section in (importance_sampling_rows, ais_rows):
        for new in section(model, x, sizes, peak, threads):
            print(f"  {new['item']}: {new['genbench']:.4g} {new['unit']}", file=sys.stderr, flush=True)
            table.append(new)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test with tiny sizes")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own; 1 with --quick)")
    args = parser.parse_args()
    table = rows(quick=args.quick, threads=args.threads)

    def cell(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    columns = ["item", "genbench", "comparison", "ratio", "unit", "target", "met"]
    widths = {c: max(len(c), *(len(cell(r[c])) for r in table)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in table:
        print("  ".join(cell(r[c]).ljust(widths[c]) for c in columns))
    print()
    for r in table:
        print(f"{r['item']}: {r['note']}")


if __name__ == "__main__":
    main()
