"""Metrics of class-conditional models (``conditional = True`` with ``per_class_samples``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genbench.evaluation.context import EvalContext
from genbench.evaluation.references import dataset_references
from genbench.evaluation.registry import NotApplicable, register_metric

SAMPLE_OFFSET = 11  # the evaluation seed's offset for these samples (ctx.generator(offset))


def class_samples(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [K * n, C, H, W] in [-1, 1] at native size, labels int64 [K * n])``: ``n =
    num_generated // K`` (at least 2) samples of each of the model's ``K`` classes, drawn once with
    the evaluation seed; NotApplicable for models that are not class-conditional."""
    model = ctx.require_model()
    if not getattr(model, "conditional", False) or not callable(getattr(model, "per_class_samples", None)):
        raise NotApplicable("not a class-conditional model (needs conditional = True and "
                            "per_class_samples(n_per_class, generator))")
    if "class_samples" not in ctx.cache:
        n = max(ctx.settings.num_generated // model.config.num_classes, 2)
        with torch.no_grad():
            per_class = model.per_class_samples(n, ctx.generator(SAMPLE_OFFSET))
        classes = sorted(per_class)
        images = torch.cat([per_class[k].float().cpu() for k in classes])
        labels = torch.cat([torch.full((len(per_class[k]),), k, dtype=torch.long) for k in classes])
        if ctx.resized:
            images = F.interpolate(images, size=(ctx.native_size,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False).clamp(-1, 1)
        ctx.cache["class_samples"] = (images, labels)
    return ctx.cache["class_samples"]


@register_metric("ms_ssim_per_class", direction="lower", unit="MS-SSIM",
                 description="Mean over classes of the MS-SSIM of random pairs of samples of one "
                             "class (Odena et al. 2017: lower is more diverse within a class); n/a "
                             "for models that are not class-conditional")
def compute_ms_ssim_per_class(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.ssim import ms_ssim_diversity

    images, labels = class_samples(ctx)
    s = ctx.settings
    result = ms_ssim_diversity(images, num_pairs=s.ms_ssim_pairs, seed=s.seed, labels=labels)
    per_class = result.settings["per_class"]  # {class: mean MS-SSIM over num_pairs pairs}
    value = sum(per_class.values()) / len(per_class)
    real = dataset_references(ctx.dataset, s.num_generated, s.ms_ssim_pairs, s.seed, ctx.data_dir,
                              ctx.allow_download)["ms_ssim_diversity_real_per_class"]
    return {
        "value": value, "std": None, "ci_low": None, "ci_high": None, "num_samples": len(images),
        "settings": {
            "per_class": {str(k): v for k, v in per_class.items()},
            "num_per_class": int((labels == labels[0]).sum()),
            "pairs_per_class": s.ms_ssim_pairs,
            "across_classes": result.value,  # all samples pooled: includes between-class pairs
            "ms_ssim": result.settings["ms_ssim"],
            "seed": s.seed,
            "real_reference": sum(real.values()) / len(real) if real else None,
            "real_reference_per_class": real,
            "split": ctx.split, "resolution": ctx.native_size,
            "resized_from": ctx.model_size if ctx.resized else None,
        },
    }
