"""Sample-quality metrics and diagnostics on classifier features: FID, KID, isc, precision/recall
(computed by torch-fidelity), label entropy, and nearest training neighbours (memorisation).

The feature extractor is the dataset's own classifier (shipped for MNIST and Fashion-MNIST,
trained and cached for others) unless ``--feature-extractor inception`` is given and its weights
are on disk. Every number records its extractor.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from genbench.data import to_model_range
from genbench.evaluation.context import EvalContext
from genbench.evaluation.references import _cached
from genbench.evaluation.registry import register_metric

CLASSIFIER_LAYERS = ("128", "logits")


def classifier(ctx: EvalContext):
    """``(DatasetClassifier, info, torch-fidelity name)`` of the dataset, loaded once."""
    if "classifier" not in ctx.cache:
        from genbench.features.registry import load_classifier
        from genbench.metrics.fidelity import register_classifier

        model, info = load_classifier(ctx.dataset, ctx.data_dir, ctx.allow_download, ctx.device)
        name = register_classifier(model, info["name"])
        ctx.cache["classifier"] = (model, info, name)
    return ctx.cache["classifier"]


def extractor_label(ctx: EvalContext) -> str:
    if ctx.feature_extractor == "inception":
        return "inception-v3-compat (torch-fidelity, ImageNet weights)"
    _, info, name = classifier(ctx)
    return (f"{name} (sha256 {info['sha256'][:12]}, test accuracy "
            f"{100 * info['test_accuracy']:.2f}%)")


def _extractor_name(ctx: EvalContext) -> str:
    if ctx.feature_extractor == "inception":
        from genbench.metrics.fidelity import resolve_extractor

        return resolve_extractor(extractor_name="inception")
    return classifier(ctx)[2]


def _features(ctx: EvalContext, key: str, images: torch.Tensor, extractor: str) -> dict:
    """torch-fidelity featuresdict of ``images`` (float ``[-1, 1]``), cached under ``key``."""
    from genbench.metrics.fidelity import extract_features, feature_layer

    cache_key = ("features", key, extractor)
    if cache_key not in ctx.cache:
        layers = sorted({feature_layer(extractor, m) for m in ("fid", "kid", "isc", "prc")})
        if extractor == classifier(ctx)[2]:
            layers = sorted(set(layers) | set(CLASSIFIER_LAYERS))
        ctx.cache[cache_key] = extract_features(images, extractor, layers, device=ctx.device,
                                                shard=ctx.ranks)
    return ctx.cache[cache_key]


def fid_samples(ctx: EvalContext) -> torch.Tensor:
    """The ``fid_samples`` generated images at native size, ``[N, C, H, W]`` in ``[-1, 1]``."""
    return ctx.samples(ctx.settings.fid_samples)


def _real_test(ctx: EvalContext) -> torch.Tensor:
    """The first ``fid_real_images`` real images of the split, float in ``[-1, 1]``."""
    return to_model_range(ctx.real_native[: ctx.settings.fid_real_images])


def quality_results(ctx: EvalContext) -> dict[str, Any]:
    """FID, KID, isc, precision and recall of the samples against the split, with bootstrap
    intervals over the generated features; computed once per evaluation."""
    if "quality" not in ctx.cache:
        from genbench.metrics.fidelity import fidelity_metrics_from_features

        extractor = _extractor_name(ctx)
        generated = _features(ctx, "generated", fid_samples(ctx), extractor)
        real = _features(ctx, f"real-{ctx.split}", _real_test(ctx), extractor)
        results = fidelity_metrics_from_features(
            generated, real, extractor, bootstrap=ctx.settings.fid_bootstrap, seed=ctx.settings.seed,
            shard=ctx.ranks)
        ctx.cache["quality"] = results
    return ctx.cache["quality"]


def quality_references(ctx: EvalContext) -> dict[str, Any]:
    """Real-data rows, cached per dataset and extractor: FID/KID/precision/recall of training
    images against the split, and the label entropy of real images."""
    from genbench.metrics.diagnostics import label_entropy
    from genbench.metrics.fidelity import fidelity_metrics_from_features

    extractor = _extractor_name(ctx)
    n = min(ctx.settings.fid_samples, ctx.settings.fid_real_images, len(ctx.real_native))
    info = classifier(ctx)[1]
    key = {"dataset": ctx.dataset, "kind": "quality", "extractor": extractor,
           "classifier_sha256": info["sha256"], "n": n, "split": ctx.split,
           "num_real": ctx.settings.fid_real_images,
           "seed": ctx.settings.seed, "v": 1}

    def compute() -> dict[str, Any]:
        train = to_model_range(ctx.images("train")[:n])
        generated = _features(ctx, f"train-{n}", train, extractor)
        real = _features(ctx, f"real-{ctx.split}", _real_test(ctx), extractor)
        results = fidelity_metrics_from_features(generated, real, extractor, seed=ctx.settings.seed)
        values = {name: r.value for name, r in results.items()}
        labels = _labels(ctx, f"real-{ctx.split}", _real_test(ctx))
        values["label_entropy"] = label_entropy(labels, ctx.info.num_classes).value
        values["num_train_images"] = n
        return values

    return _cached(key, compute, ctx.ranks)  # compute() extracts features: a collective


def _quality_metric(name: str):
    def compute(ctx: EvalContext) -> dict[str, Any]:
        result = quality_results(ctx)[name]
        out = result.to_dict()
        reference = quality_references(ctx).get(name)
        out["settings"] = {**result.settings, "feature_extractor": extractor_label(ctx),
                           "real_reference": reference,
                           "real_reference_is": "training images vs the split, same extractor",
                           "resized_from": ctx.model_size if ctx.resized else None}
        return out

    return compute


for _name, _direction, _unit, _description in (
    ("fid", "lower", "squared features", "Frechet distance between feature Gaussians of samples "
     "and real images (torch-fidelity), with a bootstrap interval"),
    ("kid", "lower", "squared kernel", "Kernel Inception-style distance on the same features "
     "(torch-fidelity; std over subsets)"),
    ("isc", "higher", "score", "Inception-style score exp(E KL(p(y|x) || p(y))) from the "
     "classifier's logits (torch-fidelity); 1 to the number of classes"),
    ("precision", "higher", "fraction", "Improved precision (Kynkaanniemi et al.): samples inside "
     "the real data's k-NN manifold"),
    ("recall", "higher", "fraction", "Improved recall: real images inside the samples' k-NN "
     "manifold"),
):
    register_metric(_name, _direction, _unit, _description)(_quality_metric(_name))


def _labels(ctx: EvalContext, key: str, images: torch.Tensor) -> torch.Tensor:
    """The dataset classifier's argmax labels ``[N]`` of ``images`` (always the classifier,
    whatever extractor FID uses: labels need a dataset classifier)."""
    name = classifier(ctx)[2]
    logits = _features(ctx, key, images, name)["logits"]
    return logits.argmax(dim=1)


@register_metric("label_entropy", "higher", "nats",
                 "Entropy of the classifier's label histogram over samples (mode collapse: "
                 "ln 10 = 2.303 is uniform over digits, 0 is one class)")
def compute_label_entropy(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.diagnostics import label_entropy

    result = label_entropy(_labels(ctx, "generated", fid_samples(ctx)), ctx.info.num_classes)
    out = result.to_dict()
    out["settings"] = {**result.settings, "classifier": extractor_label(ctx) if
                       ctx.feature_extractor != "inception" else classifier(ctx)[1]["name"],
                       "real_reference": quality_references(ctx)["label_entropy"]}
    return out


@register_metric("memorisation_nn_ratio", "none", "ratio",
                 "Mean classifier-feature distance of samples to their nearest training image, "
                 "over the same for held-out real images (about 1: no memorisation; << 1: copies)."
                 " Writes nearest_neighbours.png")
def compute_memorisation(ctx: EvalContext) -> dict[str, Any]:
    from genbench.metrics.diagnostics import memorisation_ratio, nearest_neighbours

    name = classifier(ctx)[2]
    n_train = min(ctx.settings.nn_train_images, len(ctx.images("train")))
    train_images = to_model_range(ctx.images("train")[:n_train])
    train = _features(ctx, f"train-{n_train}", train_images, name)["128"]
    samples = fid_samples(ctx)
    generated = _features(ctx, "generated", samples, name)["128"]
    n_test = min(len(generated), len(ctx.real_native))
    test = _features(ctx, f"real-{ctx.split}", _real_test(ctx), name)["128"][:n_test]
    result = memorisation_ratio(generated, train, test)
    out = result.to_dict()
    out["settings"] = {**result.settings, "feature_space": extractor_label(ctx)}
    if ctx.output_dir is not None:
        _, indices = nearest_neighbours(generated[:16], train)
        path = ctx.output_dir / "nearest_neighbours.png"
        save_neighbour_panel(samples[:16], train_images[indices], path)
        out["settings"]["panel"] = path.name
    return out


def save_neighbour_panel(samples: torch.Tensor, neighbours: torch.Tensor, path) -> None:
    """Two rows per pair: each generated sample above its nearest training image (PNG)."""
    from genbench.training.harness import save_grid

    rows = []
    per_row = int(math.ceil(len(samples) / 2))
    for start in range(0, len(samples), per_row):
        rows += [samples[start : start + per_row], neighbours[start : start + per_row]]
    save_grid(torch.cat(rows), path, nrow=per_row)
