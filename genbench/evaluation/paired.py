"""Metrics of paired (image-to-image) models: PSNR and SSIM of their translations.

A paired model (:class:`genbench.models.paired.PairedModel`: ``degrade``, ``translate``,
``baseline``) is scored on the first ``reconstruction_examples`` images ``x`` of the evaluation
split at the model's training size: source ``s = degrade(x)``, output ``translate(s)`` (drawn with
the evaluation seed where it is stochastic), target ``x``. Each metric also states, in its
settings, the same number for the model's trivial ``baseline(s)`` (bicubic upsampling for
``srgan``, the edge map for ``pix2pix``), so a reader can tell whether the model beats it. Other
models get n/a.
"""

from __future__ import annotations

from typing import Any

import torch

from genbench.data import to_model_range
from genbench.evaluation.compute import _per_example
from genbench.evaluation.context import EvalContext
from genbench.evaluation.registry import NotApplicable, register_metric
from genbench.metrics.result import PerExampleResult

SAMPLE_OFFSET = 13  # the evaluation seed's offset for stochastic translations (ctx.generator)
PANEL_IMAGES = 16  # pairs shown in translations.png


def paired_model(ctx: EvalContext):
    """The model, if it is a paired model; else :class:`NotApplicable` saying why."""
    model = ctx.require_model()
    missing = [f"{m}()" for m in ("degrade", "translate", "baseline")
               if not callable(getattr(model, m, None))]
    if missing:
        raise NotApplicable(f"not a paired image-to-image model (no {', '.join(missing)}): PSNR "
                            "and SSIM compare a translation with its target")
    return model


def translations(ctx: EvalContext) -> dict[str, torch.Tensor]:
    """``{"target", "source", "output", "baseline"}``, float on the CPU, computed once: targets
    ``[N, C, H, W]`` in ``[-1, 1]`` at the model's size, their sources, the model's translations
    and the baseline's, ``N = reconstruction_examples``."""
    if "paired" not in ctx.cache:
        model = paired_model(ctx)
        targets = to_model_range(ctx.real_at_model_size()[: ctx.settings.reconstruction_examples])
        generator = ctx.generator(SAMPLE_OFFSET)
        sources, outputs, baselines = [], [], []
        with torch.no_grad():
            for chunk in targets.split(500):
                source = model.degrade(chunk.to(ctx.device))
                sources.append(source.float().cpu())
                outputs.append(model.translate(source, generator=generator).float().cpu())
                baselines.append(model.baseline(source).float().cpu())
        ctx.cache["paired"] = {"target": targets, "source": torch.cat(sources),
                               "output": torch.cat(outputs), "baseline": torch.cat(baselines)}
        if ctx.output_dir is not None:
            save_translation_panel(ctx.cache["paired"], ctx.output_dir / "translations.png")
    return ctx.cache["paired"]


def _settings(ctx: EvalContext, model, baseline_value: float) -> dict[str, Any]:
    baselines = {"srgan": "bicubic upsampling of the source", "pix2pix": "the edge map itself"}
    return {"split": ctx.split, "resolution": ctx.model_size, "task": type(model).__name__,
            "baseline": baseline_value,
            "baseline_is": baselines.get(getattr(model, "name", ""), "the model's baseline()"),
            "space": "[0,1] (images in [-1,1] mapped), data_range 1",
            "panel": "translations.png" if ctx.output_dir is not None else None}


def _paired_metric(ctx: EvalContext, function, **extra) -> dict[str, Any]:
    model = paired_model(ctx)
    pairs = translations(ctx)
    values = function(pairs["output"], pairs["target"]).double()
    baseline = float(function(pairs["baseline"], pairs["target"]).double().mean())
    return _per_example(PerExampleResult(values, None, len(values), {}),
                        **_settings(ctx, model, baseline), **extra)


@register_metric("psnr", "higher", "dB",
                 "Peak signal-to-noise ratio of a paired model's translation against its target "
                 "(images in [0, 1], peak 1), mean over images; the trivial baseline's value is in "
                 "the settings; n/a for other models")
def compute_psnr(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.paired import MSE_FLOOR, psnr

    return _paired_metric(ctx, psnr, mse_floor=MSE_FLOOR)


@register_metric("ssim", "higher", "SSIM",
                 "Structural similarity (pytorch_msssim, data range 1, Gaussian window sigma 1.5: "
                 "7 px up to 160 px, else 11 px) of a paired model's translation against its "
                 "target, mean over images; the baseline's value is in the settings")
def compute_ssim(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.paired import ssim, ssim_setting

    size = ctx.model_size
    return _paired_metric(ctx, ssim, ssim=ssim_setting(size, size))


def save_translation_panel(pairs: dict[str, torch.Tensor], path) -> None:
    """Three rows of ``PANEL_IMAGES``: the sources (nearest-neighbour enlarged to the target size),
    the model's translations, the targets (PNG)."""
    import torch.nn.functional as F

    from genbench.training.harness import save_grid

    n = min(PANEL_IMAGES, len(pairs["target"]))
    target = pairs["target"][:n]
    source = F.interpolate(pairs["source"][:n], size=target.shape[-2:], mode="nearest")
    save_grid(torch.cat([source, pairs["output"][:n], target]), path, nrow=n)
