"""Diagnostics a reviewer asks for: mode collapse (label histogram entropy, active latent units)
and memorisation (nearest training neighbours in a feature space). Pure functions on tensors."""

from __future__ import annotations

import math

import torch

from genbench.core.errors import UsageError
from genbench.metrics.checks import check_finite
from genbench.metrics.result import ScalarResult


def label_histogram(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[num_classes]`` of integer labels ``[N]`` (e.g. a classifier's argmax)."""
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() == 0:
        raise UsageError("label_histogram needs at least one label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UsageError(f"labels must lie in 0..{num_classes - 1}")
    return torch.bincount(labels.cpu(), minlength=num_classes)


def label_entropy(labels: torch.Tensor, num_classes: int) -> ScalarResult:
    """Entropy in nats of the label histogram of a sample: ``-sum_c p_c ln p_c``.

    ``labels [N]`` are class indices (a classifier's argmax over generated images). A sample that
    covers all classes evenly scores ``ln(num_classes)`` (``ln 10 = 2.303`` nats for digits); a
    collapsed sample of one class scores 0. ``settings["histogram"]`` holds the counts.
    """
    counts = label_histogram(labels, num_classes).double()
    p = counts / counts.sum()
    nonzero = p[p > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return ScalarResult(entropy, num_samples=int(counts.sum()), settings={
        "histogram": [int(c) for c in counts], "max_entropy": math.log(num_classes),
        "units": "nats"})


def active_units(posterior_means: torch.Tensor, threshold: float = 0.01) -> ScalarResult:
    """Number of active latent units (Burda et al. 2016): unit ``j`` is active when
    ``Cov_x(E_q[z_j | x]) > threshold`` (0.01 in the paper).

    ``posterior_means [N, latent_dim]`` are the means of q(z|x) over ``N`` data points. Returns the
    count as ``value`` with the per-unit variances and the threshold in ``settings``.
    """
    means = check_finite(torch.as_tensor(posterior_means).double(), "posterior_means")
    if means.dim() != 2 or means.shape[0] < 2:
        raise UsageError(f"posterior_means must be [N >= 2, latent_dim], got {list(means.shape)}")
    variances = means.var(dim=0, unbiased=True)  # [latent_dim]
    active = int((variances > threshold).sum())
    return ScalarResult(float(active), num_samples=means.shape[0], settings={
        "threshold": threshold, "latent_dim": means.shape[1],
        "fraction_active": active / means.shape[1],
        "variances": [round(float(v), 6) for v in variances]})


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor,
                       block_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean nearest reference of each query: ``(distances [Q], indices [Q])``.

    Both are flattened per example (``[Q, ...]`` and ``[R, ...]``, e.g. classifier features);
    computed in blocks of ``block_size`` queries so ``Q x R`` distances are never held at once.
    """
    q = check_finite(torch.as_tensor(queries).flatten(1).double(), "queries")
    r = check_finite(torch.as_tensor(references).flatten(1).double(), "references")
    if q.shape[1] != r.shape[1]:
        raise UsageError(f"queries and references differ in size: {q.shape[1]} vs {r.shape[1]}")
    distances, indices = [], []
    for block in q.split(block_size):
        d = torch.cdist(block, r)  # [b, R]
        best = d.min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def memorisation_ratio(sample_features: torch.Tensor, train_features: torch.Tensor,
                       test_features: torch.Tensor) -> ScalarResult:
    """Mean distance from generated samples to their nearest training example, divided by the
    same for held-out test images (all in one feature space).

    About 1 when samples are as far from the training set as unseen real data is; well below 1
    means samples sit on top of training images (memorisation); above 1, samples are off the data.
    """
    sample_d, _ = nearest_neighbours(sample_features, train_features)
    test_d, _ = nearest_neighbours(test_features, train_features)
    ratio = float(sample_d.mean() / test_d.mean())
    return ScalarResult(ratio, num_samples=len(sample_d), settings={
        "mean_sample_to_train": float(sample_d.mean()), "mean_test_to_train": float(test_d.mean()),
        "num_test": len(test_d), "num_train": int(train_features.shape[0])})
