"""A PNG grid of a trained run's samples, at any size for resolution-free models (``cppn``)."""

from __future__ import annotations

from pathlib import Path

import torch

from genbench.core.errors import UsageError
from genbench.evaluation.context import load_trained_model
from genbench.training.environment import resolve_device
from genbench.training.harness import save_grid
from genbench.training.rundir import RunDir

MAX_SIZE = 4096  # px a side; 16 samples of 4096^2 RGB pixels are 3 GiB of float32
SAMPLE_BATCH = 64  # images per sample() call for fixed-size models


def render_samples(run_dir: str | Path, size: int | None = None, num: int = 16, seed: int = 0,
                   out: str | Path | None = None, device: str = "auto") -> Path:
    """Draw ``num`` samples of the run's final model with a CPU generator seeded ``seed`` and save
    them as one PNG grid; returns its path (default ``<run>/samples_<size>px.png``).

    A model with ``render(z, size)`` (``z [n, latent_dim]`` from ``N(0, I)``, drawn as
    ``sample()`` draws it) is rendered at ``size`` pixels a side (default: its training size);
    any other model only at its training size.
    """
    if num < 1:
        raise UsageError(f"--num must be at least 1, got {num}")
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise UsageError(f"--size must be in 1..{MAX_SIZE} pixels, got {size}")
    run = RunDir(run_dir)
    spec, model, _, _ = load_trained_model(run, resolve_device(device))
    trained_size = model.image_shape[-1]
    size = size or trained_size
    generator = torch.Generator().manual_seed(seed)
    if callable(getattr(model, "render", None)):
        images = model.render(model.randn(num, model.config.latent_dim, generator=generator), size)
    elif size != trained_size:
        raise UsageError(f"{spec.model} renders only at {trained_size} px; resolution-free models "
                         "(cppn) take --size")
    else:
        images = torch.cat([model.sample(min(SAMPLE_BATCH, num - start), generator=generator).cpu()
                            for start in range(0, num, SAMPLE_BATCH)])
    path = Path(out) if out is not None else run.path / f"samples_{size}px.png"
    save_grid(images, path)
    return path
