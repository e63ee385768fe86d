"""Training harness overhead and end-to-end runs.

- Images/s of a GAN and a VAE trained through the harness (``fit``: batch stream, loss logging,
  checkpoints, sample grids, NaN checks) against the same networks and optimizers driven by a
  minimal hand-written loop (the whole training set as one float tensor, a random batch per step,
  losses read every ``log_every`` steps). Both at batch 64 on the same threads and under the same
  global settings (the harness seeds torch and, on CPU, asks for deterministic algorithms; the
  hand loop gets the same, so the ratio is the harness's machinery alone). ``repeats`` pairs run
  back to back and the row shows the pair with the median ratio: a pair shares the machine's
  momentary speed, so its ratio is steadier than a ratio of best times.
- What those deterministic algorithms cost: the hand loop with them on vs off, paired the same way.
- Wall time and peak resident memory of whole ``genbench run`` commands, each in its own process.

    python benchmarks/bench_harness.py [--quick]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from unittest import mock

import torch
import torch.nn.functional as F
from torch import distributions as D

from genbench.data import load_images, to_model_range
from genbench.models.base import StepContext
from genbench.training import DataConfig, RunSpec, fit
from genbench.training.budgets import train_config_for
from genbench.training.environment import seed_everything
from genbench.training.harness import build_model

TARGET_RATIO = 0.95


def _spec(model: str, steps: int) -> RunSpec:
    """The model's default (``standard``) networks; checkpoints and grids at the standard
    intervals scaled into ``steps``, so the harness pays for one of each."""
    from genbench.models import get_model_class

    train = train_config_for("standard")
    train = train.with_overrides({"steps": steps, "checkpoint_every": steps - steps % train.log_every,
                                  "sample_every": steps})
    config = get_model_class(model).config_class()
    return RunSpec(model, config.to_dict(), DataConfig("mnist"), train, "standard", seed=0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _SynchronizedClock:
    """``time`` for the harness module, its ``perf_counter`` reading the clock only after
    ``torch.cuda.synchronize``: the harness's own training clock then counts queued GPU work."""

    def __init__(self, device: torch.device):
        self.device = device

    def perf_counter(self) -> float:
        _synchronize(self.device)
        return time.perf_counter()

    def __getattr__(self, name):
        return getattr(time, name)


def _harness_images_per_s(spec: RunSpec, device: str = "cpu", amp: bool = False) -> float:
    """Images/s of ``fit`` by its own training clock (checkpoint writes excluded). On CUDA, with
    ``amp`` as ``fit``'s mixed precision, torch's default (non-deterministic) algorithms, as a fresh
    CLI process has them, and the clock read after ``torch.cuda.synchronize``."""
    from genbench.training import harness

    torch_device = torch.device(device)
    clock = contextlib.nullcontext()
    if torch_device.type == "cuda":
        torch.use_deterministic_algorithms(False)  # a CPU fit earlier in this process turned them on
        clock = mock.patch.object(harness, "time", _SynchronizedClock(torch_device))
    with tempfile.TemporaryDirectory() as out, clock:
        result = fit(spec, out, device=device, progress=False, allow_download=False, amp=amp)
    return spec.train.steps * spec.train.batch_size / result.train_time_s


def _gan_step(model, batch, precision: StepContext):
    g, d = model.generator, model.discriminator
    opt_g, opt_d = model.optimizers["generator"], model.optimizers["discriminator"]
    with precision.autocast():
        fake = g(torch.randn(batch.shape[0], model.config.latent_dim, device=batch.device))
        real_logits, fake_logits = d(batch), d(fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    opt_d.zero_grad(set_to_none=True)
    precision.backward(d_loss)
    precision.step(opt_d)
    with precision.autocast():
        gen_logits = d(fake)
        g_loss = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
    opt_g.zero_grad(set_to_none=True)
    precision.backward(g_loss, inputs=list(g.parameters()))
    precision.step(opt_g)
    return d_loss, g_loss


def _vae_step(model, batch, precision: StepContext):
    target = model.observed(batch)
    with precision.autocast():
        posterior = model._posterior(model._encoder_input(target))
        logits = model.decoder(posterior.rsample())
    with precision.full_precision():
        reconstruction = (F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum")
                          / batch.shape[0])
        kl = D.kl_divergence(posterior, model.prior()).mean()
        loss = reconstruction + kl
    optimizer = model.optimizers["adam"]
    optimizer.zero_grad(set_to_none=True)
    precision.backward(loss)
    precision.step(optimizer)
    return (loss,)


def _hand_loop_images_per_s(spec: RunSpec, deterministic: bool | None = None, device: str = "cpu",
                            amp: bool = False) -> float:
    """The same networks, optimizers and losses in the plainest loop a user would write, on
    ``device``, under the harness's global settings there (``deterministic``: None for the
    harness's, deterministic algorithms on the CPU only; False: torch's defaults). ``amp`` (CUDA
    only): float16 autocast and one GradScaler through the harness's own ``StepContext``, updated
    once per step as the harness does."""
    torch_device = torch.device(device)
    if amp and torch_device.type != "cuda":
        raise ValueError("the hand loop's mixed precision needs a CUDA device, as the harness's")
    seed_everything(spec.seed, torch_device)
    if deterministic is None:
        deterministic = torch_device.type == "cpu"
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    images = to_model_range(load_images("mnist", "train", allow_download=False).images).to(torch_device)
    model = build_model(spec, tuple(images.shape[1:])).to(torch_device)
    model.build_optimizers()
    model.train()
    step_fn = {"gan": _gan_step, "vae": _vae_step}[spec.model]
    precision = StepContext(torch_device, torch.amp.GradScaler("cuda") if amp else None)
    batch_size, log_every = spec.train.batch_size, spec.train.log_every
    _synchronize(torch_device)
    started = time.perf_counter()
    for step in range(spec.train.steps):
        batch = images[torch.randint(len(images), (batch_size,), device=torch_device)]
        losses = step_fn(model, batch, precision)
        if amp:
            precision.scaler.update()
        if (step + 1) % log_every == 0:
            [loss.item() for loss in losses]
    _synchronize(torch_device)
    images_per_s = spec.train.steps * batch_size / (time.perf_counter() - started)
    torch.use_deterministic_algorithms(False)
    return images_per_s


def _paired(first, second, repeats: int) -> tuple[float, float, float, list[float]]:
    """Run ``first()`` and ``second()`` back to back ``repeats`` (odd) times, alternating which
    goes first. Returns the pair with the median ratio second/first (its two figures and ratio)
    and all the ratios."""
    a, b = [], []
    for i in range(repeats):
        if i % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    ratios = [y / x for x, y in zip(a, b)]
    middle = ratios.index(statistics.median_low(ratios))
    return a[middle], b[middle], ratios[middle], ratios


def _listed(ratios: list[float]) -> str:
    return ", ".join(f"{r:.3f}" for r in ratios)


def harness_rows(quick: bool = False, repeats: int = 5) -> list[dict]:
    steps = 30 if quick else 300
    repeats = 1 if quick else repeats
    rows = []
    for model in ("gan", "vae"):
        spec = _spec(model, steps)
        hand, harness, ratio, ratios = _paired(lambda s=spec: _hand_loop_images_per_s(s),
                                               lambda s=spec: _harness_images_per_s(s), repeats)
        rows.append({
            "item": f"harness {model} training (batch 64, {steps} steps)",
            "genbench": harness, "comparison": hand, "ratio": ratio, "unit": "images/s",
            "target": f">= {TARGET_RATIO}", "met": ratio >= TARGET_RATIO,
            "note": f"vs a minimal hand-written loop, same networks and global settings; "
                    f"{torch.get_num_threads()} threads; the median of {repeats} back-to-back "
                    f"pairs by ratio (harness / hand loop; all: {_listed(ratios)})",
        })
    spec = _spec("gan", steps)
    free, fixed, ratio, ratios = _paired(lambda: _hand_loop_images_per_s(spec, deterministic=False),
                                         lambda: _hand_loop_images_per_s(spec), 1 if quick else 3)
    rows.append({
        "item": f"deterministic algorithms on CPU: gan hand loop (batch 64, {steps} steps)",
        "genbench": fixed, "comparison": free, "ratio": ratio, "unit": "images/s", "target": "",
        "met": None,
        "note": "what the harness's reproducibility setting costs: on vs torch's default, the "
                f"median of back-to-back pairs (all: {_listed(ratios)})",
    })
    return rows


def _measure_command(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one command in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace")
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def end_to_end_rows(quick: bool = False, standard: bool = True) -> list[dict]:
    genbench = [sys.executable, "-m", "genbench.cli", "run", "--dataset", "mnist", "--no-progress",
                "--no-report", "--fresh"]
    commands = [("genbench run --models gvae,vae --budget smoke",
                 ["--models", "gvae,vae", "--budget", "smoke"])]
    if standard and not quick:
        commands.append(("genbench run --models vae --budget standard",
                         ["--models", "vae", "--budget", "standard"]))
    if quick:  # a tiny stand-in that exercises the same path
        commands = [("genbench run --models vae (4 steps, quick)",
                     ["--models", "vae", "--set", "steps=4", "--set", "checkpoint_every=2",
                      "--set", "log_every=2", "--metrics", "mmd", "--limit", "64"])]
    rows = []
    for label, extra in commands:
        with tempfile.TemporaryDirectory() as out:
            wall, rss = _measure_command([*genbench, *extra, "--out", out])
        rows.append({"item": f"end to end: {label}", "genbench": wall, "comparison": None,
                     "ratio": None, "unit": "s wall", "target": "", "met": None,
                     "note": f"train + evaluate, one process; peak resident memory {rss:.0f} MiB"})
    return rows


def rows(quick: bool = False) -> list[dict]:
    return harness_rows(quick) + end_to_end_rows(quick)


if __name__ == "__main__":
    from benchmarks.bench import print_rows

    print_rows(rows("--quick" in sys.argv))
