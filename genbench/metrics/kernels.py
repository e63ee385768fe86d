"""Kernel two-sample statistics: unbiased MMD^2 (Gretton et al. 2012) and KID (Binkowski et al. 2018).

Both are pure functions on tensors ``[N, ...]`` (flattened per example). The kernel matrix is never
held whole: the pooled sample is walked in ``block_size x block_size`` blocks (upper triangle only,
the kernel is symmetric), each block is reduced against weight vectors and the sums are accumulated
in float64. The same weight-vector reduction gives the observed statistic, every permutation of the
permutation test and every bootstrap resample in one pass over the kernel.

Speed: a block is one matrix product of precomputed factor rows (the squared norms and the
bandwidth are folded into them, see ``_factors``) in the inputs' dtype, then a clamp and an ``exp``
(Gaussian) or a cube (polynomial) in place in a reused buffer; only the reduction is float64. On 2
CPU cores, MMD^2 of 10k x 10k samples of 784 dims takes about 2 s in float32 and ~200 MB
(``benchmarks/bench_kernels.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from genbench.core.errors import UsageError
from genbench.metrics.checks import check_finite
from genbench.metrics.result import ScalarResult

Kernel = Literal["gaussian", "polynomial"]
KERNELS = ("gaussian", "polynomial")


def _as_features(t: torch.Tensor, name: str) -> torch.Tensor:
    """``[N, ...]`` -> ``[N, D]`` floating point, float64 kept, anything else float32."""
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"{name} must be a torch.Tensor of shape [N, ...], got {type(t).__name__}")
    if t.dim() < 1 or t.shape[0] < 2:
        raise UsageError(f"{name} needs at least 2 examples along dim 0, got shape {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1)
    if t.dtype != torch.float64:
        t = t.float()
    return check_finite(t, name, "MMD needs finite features")


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise UsageError(f"x and y must have the same number of features per example, "
                         f"got {x.shape[1]} and {y.shape[1]}")
    # One dtype and one device for both: float64 if either input is float64.
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def median_pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None, max_points: int = 2000,
                             seed: int = 0) -> float:
    """Median Euclidean distance between distinct points of the pooled sample (the median heuristic).

    Args:
        x: ``[N, ...]``, flattened per example; ``y``: optional ``[M, ...]`` pooled with ``x``.
        max_points: the median is taken over all pairs ``i < j`` of a random subset of at most this
            many pooled points (drawn with a ``torch.Generator`` seeded by ``seed``), so the cost stays
            ``O(max_points^2 * D)`` whatever the sample size.

    Returns:
        The distance in the units of the inputs (e.g. pixels in ``[-1, 1]``), as a Python float.
        With an even number of pairs it is the mean of the two middle distances, as ``numpy.median``.
    """
    if max_points < 2:
        raise UsageError(f"max_points must be at least 2, got {max_points}")
    if y is None:
        z = _as_features(x, "x")
    else:
        z = torch.cat(_pair(x, y))
    if z.shape[0] > max_points:
        generator = torch.Generator().manual_seed(seed)
        z = z[torch.randperm(z.shape[0], generator=generator)[:max_points].to(z.device)]
    # float64: the heuristic is computed once per dataset and must not depend on rounding.
    z = z.double()
    n = z.shape[0]
    rows, cols = torch.triu_indices(n, n, offset=1, device=z.device)
    distances = torch.cdist(z, z)[rows, cols]  # [n (n - 1) / 2]
    m = distances.numel()
    # The two middle order statistics (1-based ranks): a selection, 3x faster than a full sort.
    lower = distances.kthvalue((m - 1) // 2 + 1).values
    upper = lower if m % 2 else distances.kthvalue(m // 2 + 1).values
    return float((lower + upper) / 2)


def _bandwidths(bandwidth) -> list[float]:
    """A number, or a list / array / tensor of them -> a list of positive finite floats."""
    try:
        values = np.asarray(bandwidth, dtype=np.float64).ravel().tolist()
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(b) and b > 0 for b in values):
        raise UsageError(f"bandwidth must be a positive number or a non-empty list of them, "
                         f"got {bandwidth!r}")
    return values


def _factors(x: torch.Tensor, y: torch.Tensor, kernel: str,
             bandwidths: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right factors ``[n, D']`` of the pooled sample ``z = [x; y]`` (``n = N + M`` rows):
    the product of a left and a right row is the kernel's argument, so a kernel block is one matrix
    product and one elementwise pass. ``z`` itself is never built.

    Gaussian (``D' = D + 2``): ``z`` is centred (distances do not change, and float32 keeps more of
    them for small ``|z|``) and scaled by ``s = 1 / bandwidth`` (``s = 1`` for a list of bandwidths);
    with ``q = |s z|^2`` (float64, then rounded), ``[s z, -q/2, 1] . [s z', 1, -q'/2] = -s^2 ||z -
    z'||^2 / 2``, the exponent. Polynomial (``D' = D + 1``): ``[z, 1] . [z' / D, 1] = z.z' / D + 1``,
    the base of the cube.
    """
    (n_x, d), n = x.shape, x.shape[0] + y.shape[0]
    if kernel == "polynomial":
        left, right = x.new_ones(n, d + 1), x.new_ones(n, d + 1)
        for rows, part in ((slice(0, n_x), x), (slice(n_x, n), y)):
            left[rows, :d] = part
            torch.div(part, d, out=right[rows, :d])
        return left, right
    left, right = x.new_empty(n, d + 2), x.new_empty(n, d + 2)
    scale = 1 / bandwidths[0] if len(bandwidths) == 1 else 1.0
    mean = ((x.sum(0, dtype=torch.float64) + y.sum(0, dtype=torch.float64)) / n).to(x.dtype)  # [D]
    torch.sub(x, mean, out=left[:n_x, :d])
    torch.sub(y, mean, out=left[n_x:, :d])
    left[:, :d] *= scale
    half_sq = torch.linalg.vector_norm(left[:, :d], dim=1, dtype=torch.float64).square_().mul_(-0.5)
    right[:, :d] = left[:, :d]
    left[:, d], left[:, d + 1] = half_sq, 1
    right[:, d], right[:, d + 1] = 1, half_sq
    return left, right


def _kernel_block(a: torch.Tensor, b: torch.Tensor, kernel: str, bandwidths: list[float],
                  out: torch.Tensor) -> torch.Tensor:
    """``k(a_i, b_j)`` for factor rows ``a [p, D']``, ``b [q, D']`` (:func:`_factors`) -> ``[p, q]``.

    ``out`` is a buffer of at least ``p * q`` elements of the factors' dtype, reused across blocks so
    that no block pays for fresh pages.
    """
    block = torch.mm(a, b.T, out=out[: a.shape[0] * b.shape[0]].view(a.shape[0], b.shape[0]))  # [p, q]
    if kernel == "polynomial":
        return block.pow_(3)
    # The exponent is -||a - b||^2 / (2 bandwidth^2) <= 0; rounding makes it slightly positive for
    # a ~ b, which the clamp removes (k <= 1).
    block.clamp_max_(0)
    if len(bandwidths) == 1:
        return block.exp_()  # the bandwidth is folded into the factors
    exponent = block.clone()  # -||a - b||^2 / 2
    torch.exp(exponent * (1 / bandwidths[0] ** 2), out=block)
    for bw in bandwidths[1:]:
        block += torch.exp(exponent * (1 / bw**2))
    return block


@torch.inference_mode()
def _weighted_sums(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, kernel: str, bandwidths: list[float],
                   block_size: int, split: int | None = None, shard=None) -> tuple[torch.Tensor, ...]:
    """Weighted kernel sums over the pooled sample ``z = [x; y]`` (``[n, D]``), one per column of ``w``.

    ``w = [wx | wy]`` is ``[n, 2R]``: non-negative integer weights, ``wx`` and ``wy`` with disjoint
    supports (0/1 for a split of the pool, counts for a bootstrap resample). Returns three float64
    ``[R]`` tensors: ``sum_{i != j} wx_i wx_j k_ij``, the same for ``wy``, and ``sum_{i, j} wx_i wy_j
    k_ij``. Pairs ``i == j`` (a point with itself, or two copies of one resampled point) are left out.
    ``split = N`` says that ``w`` is the observed split alone (``R = 1``, ``wx`` is 1 on the first ``N``
    rows, ``wy`` on the rest), which lets each block be reduced by row sums instead of a product.

    Precision: kernel blocks are computed in the inputs' dtype (float32 unless the inputs are float64),
    then copied to float64 and reduced there. MMD^2's three terms cancel ~1000-fold for close
    samples, so sums must be float64: float32 row sums (by a product with the weights, or pairwise)
    moved MMD^2 by 4e-6 to 2e-5 relative on 2 x 6000 points, against 6e-8 for float64 ones.

    Each row of blocks (``i0``) is summed on its own, then the rows' sums are added in row order.
    ``shard`` (a :class:`genbench.training.distributed.Ranks`) gives each rank a contiguous run of
    rows balanced by their number of blocks and gathers the rows' sums, so every rank adds the
    same numbers in the same order as one process: the result is bit-identical.
    """
    n, num_cols = w.shape[0], w.shape[1] // 2
    left, right = _factors(x, y, kernel, bandwidths)
    side = min(block_size, n)
    buffer = x.new_empty(side * side)  # one kernel block, reused
    if x.dtype != torch.float64:
        buffer64 = torch.empty(side * side, dtype=torch.float64, device=x.device)  # the block, in float64
    w64 = w.double()
    starts = list(range(0, n, block_size))
    owned = (range(len(starts)) if shard is None
             else shard.owned_chunks(len(starts), costs=[len(starts) - i for i in range(len(starts))]))
    rows = torch.zeros(len(owned), 3, num_cols, dtype=torch.float64, device=x.device)  # per block row
    for row, i0 in zip(rows, (starts[i] for i in owned)):
        s_xx, s_yy, s_xy = row  # views: this row of blocks' three sums
        i1 = min(i0 + block_size, n)
        w_i = w64[i0:i1]
        wx_i, wy_i = w_i[:, :num_cols], w_i[:, num_cols:]
        # Upper triangle only: the kernel is symmetric, so block (j, i) is the transpose of (i, j).
        for j0 in range(i0, n, block_size):
            j1 = min(j0 + block_size, n)
            block = _kernel_block(left[i0:i1], right[j0:j1], kernel, bandwidths, buffer)  # [bi, bj]
            if i0 == j0:
                block.fill_diagonal_(0)  # the U-statistic leaves out k(x_i, x_i)
            if block.dtype != torch.float64:
                block = buffer64[: block.numel()].view(block.shape).copy_(block)  # float64 from here
            if split is None:
                reduced = block @ w64[j0:j1]  # [bi, 2R]
            else:
                # Columns j0..j1 are x up to the split, y after it: this is block @ w[j0:j1].
                m = min(max(split - j0, 0), j1 - j0)
                reduced = torch.stack([block[:, :m].sum(1), block[:, m:].sum(1)], 1)  # [bi, 2]
            xx = (wx_i * reduced[:, :num_cols]).sum(0)
            yy = (wy_i * reduced[:, num_cols:]).sum(0)
            if i0 == j0:
                s_xx += xx
                s_yy += yy
                s_xy += (wx_i * reduced[:, num_cols:]).sum(0)
            else:
                s_xx += 2 * xx
                s_yy += 2 * yy
                # x in block i with y in block j, plus y in block i with x in block j (the transpose).
                s_xy += (wx_i * reduced[:, num_cols:]).sum(0) + (wy_i * reduced[:, :num_cols]).sum(0)
    if shard is not None:
        rows = shard.gather_rows(rows)  # [row blocks, 3, R], in row order
    total = torch.zeros(3, num_cols, dtype=torch.float64, device=x.device)
    for row in rows:  # in row order, one addition at a time: the same sum for any sharding
        total += row
    return total[0], total[1], total[2]


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: Kernel = "gaussian",
        bandwidth: float | Sequence[float] | None = None, block_size: int = 1024, permutations: int = 0,
        bootstrap: int = 0, seed: int = 0, shard=None) -> ScalarResult:
    """Unbiased squared maximum mean discrepancy MMD^2_u (Gretton et al. 2012, Eq. 3).

    ``MMD^2_u = sum_{i != j} k(x_i, x_j) / (N (N-1)) + sum_{i != j} k(y_i, y_j) / (M (M-1))
    - 2 sum_{i, j} k(x_i, y_j) / (N M)``; it can be slightly negative when the distributions agree.

    Args:
        x: ``[N, ...]``, y: ``[M, ...]`` finite tensors, flattened per example to ``D`` features
            (``N, M >= 2``). Float64 inputs give float64 kernel blocks, anything else float32.
        kernel: ``"gaussian"``, ``k(a, b) = exp(-||a - b||^2 / (2 bandwidth^2))`` (a list of bandwidths
            sums the kernels), or ``"polynomial"``, KID's ``(a.b / D + 1)^3`` (no bandwidth).
        bandwidth: in the units of the inputs; ``None`` uses :func:`median_pairwise_distance` of the
            pooled sample (subset of 2000 points, seeded by ``seed``). Pass a fixed value to compare
            several models against the same data.
        block_size: side of the kernel blocks; memory is ``O(block_size^2 + (N+M) * (D + R))`` with
            ``R = 1 + permutations + bootstrap``, never ``O((N+M)^2)``. Results do not depend on it
            beyond float rounding. 1024 ran ~7% faster than 2048 on 2 CPU cores: diagonal blocks
            are computed whole, which wastes 1/21 of the work at 1024 and 1/11 at 2048 for 20k points.
        permutations: if ``K > 0``, a permutation test of ``p = q``: ``settings["p_value"] =
            (1 + #{permuted MMD^2_u >= observed}) / (1 + K)``.
        bootstrap: if ``B > 0``, resample ``x`` and ``y`` with replacement ``B`` times: ``ci_low``,
            ``ci_high`` are the 2.5 and 97.5 percentiles and ``std`` the standard deviation (ddof=1)
            of the resampled MMD^2_u. Otherwise those fields are ``None``. On a resample the
            statistic leaves out pairs of copies of the same example (normalising by the pairs it
            keeps): counting them would add ``k(x, x)`` terms and bias every resample upward by
            ``O(1/N)``, the order of MMD^2 itself for close distributions.
        seed: seeds the median-heuristic subset, the permutations and the resamples (CPU generator,
            so results do not depend on the device).
        shard: inside a process group, a :class:`genbench.training.distributed.Ranks`: every rank
            passes the same ``x`` and ``y``, computes a share of the rows of kernel blocks, and gets
            the same result as one process, bit for bit (see :func:`_weighted_sums`).

    Returns:
        :class:`ScalarResult` with ``value`` MMD^2_u (squared kernel units), ``num_samples = N + M``
        and ``settings`` recording the kernel, the bandwidth used and how it was chosen.
    """
    x, y = _pair(x, y)
    if kernel not in KERNELS:
        raise UsageError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    for name, value, low in (("block_size", block_size, 1), ("permutations", permutations, 0),
                             ("bootstrap", bootstrap, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    block_size, permutations, bootstrap = int(block_size), int(permutations), int(bootstrap)
    n_x, n_y = x.shape[0], y.shape[0]
    settings: dict = {"kernel": kernel, "num_x": n_x, "num_y": n_y, "features": x.shape[1]}
    bandwidths: list[float] = []
    if kernel == "gaussian":
        if bandwidth is None:
            median = median_pairwise_distance(x, y, max_points=2000, seed=seed)
            if median == 0:
                raise UsageError("the median pairwise distance is 0 (mostly identical points); "
                                 "pass bandwidth= explicitly")
            bandwidths, settings["bandwidth_source"] = [median], "median pairwise distance (2000 points)"
        else:
            bandwidths, settings["bandwidth_source"] = _bandwidths(bandwidth), "given"
        settings["bandwidth"] = bandwidths[0] if len(bandwidths) == 1 else bandwidths
    elif bandwidth is not None:
        raise UsageError("bandwidth applies to the gaussian kernel only; drop it for kernel='polynomial'")

    # Column 0 is the observed split; then permutations of the pool; then bootstrap resamples.
    n = n_x + n_y
    generator = torch.Generator().manual_seed(seed)
    num_cols = 1 + permutations + bootstrap
    w = torch.zeros(n, 2 * num_cols)  # [wx | wy], [N + M, 2R]
    wx, wy = w[:, :num_cols], w[:, num_cols:]  # views
    wx[:n_x, 0], wy[n_x:, 0] = 1, 1
    for r in range(1, 1 + permutations):
        order = torch.randperm(n, generator=generator)
        wx[order[:n_x], r], wy[order[n_x:], r] = 1, 1
    for r in range(1 + permutations, num_cols):
        wx[:n_x, r] = torch.bincount(torch.randint(n_x, (n_x,), generator=generator), minlength=n_x).float()
        wy[n_x:, r] = torch.bincount(torch.randint(n_y, (n_y,), generator=generator), minlength=n_y).float()

    s_xx, s_yy, s_xy = _weighted_sums(x, y, w.to(x.device), kernel, bandwidths, block_size,
                                      split=n_x if num_cols == 1 else None, shard=shard)
    # Normalise by the number of pairs each sum holds: N (N-1), M (M-1), N M for a split of the pool;
    # (sum w)^2 - sum w^2 pairs of distinct examples for a resample.
    wx, wy = w[:, :num_cols].double(), w[:, num_cols:].double()
    pairs_xx = wx.sum(0) ** 2 - (wx * wx).sum(0)
    pairs_yy = wy.sum(0) ** 2 - (wy * wy).sum(0)
    pairs_xy = wx.sum(0) * wy.sum(0)
    stats = (s_xx.cpu() / pairs_xx + s_yy.cpu() / pairs_yy - 2 * s_xy.cpu() / pairs_xy).numpy()
    value = float(stats[0])

    std = ci_low = ci_high = None
    if permutations:
        permuted = stats[1 : 1 + permutations]
        settings["p_value"] = float((1 + np.sum(permuted >= value)) / (1 + permutations))
        settings["permutations"] = permutations
    if bootstrap:
        resampled = stats[1 + permutations :]
        # A resample that puts every x (or y) on one example has no pair of distinct examples (0/0);
        # possible only for tiny N or M, and left out rather than counted as a number.
        resampled = resampled[np.isfinite(resampled)]
        settings["bootstrap_usable"] = int(resampled.size)
        if resampled.size:
            std = float(np.std(resampled, ddof=1)) if resampled.size > 1 else None
            ci_low, ci_high = (float(v) for v in np.percentile(resampled, [2.5, 97.5]))
        settings["bootstrap"] = bootstrap
    if permutations or bootstrap or bandwidth is None:
        settings["seed"] = seed
    return ScalarResult(value=value, std=std, ci_low=ci_low, ci_high=ci_high, num_samples=n,
                        settings=settings)


def kid(features_x: torch.Tensor, features_y: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> ScalarResult:
    """Kernel Inception Distance (Binkowski et al. 2018), computed as torch-fidelity computes it.

    For each of ``subsets`` rounds, draws ``subset_size`` rows of each input without replacement
    with ``numpy.random.RandomState(seed)`` (x first, then y, as ``torch_fidelity.metric_kid``) and
    takes the unbiased MMD^2 with the cubic polynomial kernel ``(a.b / D + 1)^3``. The defaults are
    torch-fidelity's (100 subsets of 1000, ``rng_seed=2020``), so the numbers match its KID on the
    same features up to float rounding (it sums float32 kernels in float32; we sum in float64).

    Args:
        features_x: ``[N, D]`` (or ``[N, ...]``, flattened), e.g. Inception pool features of the
            generated images; features_y: ``[M, D]`` of the real images. ``N, M >= subset_size``.

    Returns:
        :class:`ScalarResult`: ``value`` the mean over subsets (squared kernel units, often reported
        x1000), ``std`` their standard deviation (ddof=0, as torch-fidelity), ``num_samples`` the
        number of subsets.
    """
    x, y = _pair(features_x, features_y)
    if not isinstance(subsets, (int, np.integer)) or subsets < 1:
        raise UsageError(f"subsets must be a positive integer, got {subsets!r}")
    if not isinstance(subset_size, (int, np.integer)) or subset_size < 2:
        raise UsageError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    subsets, subset_size = int(subsets), int(subset_size)
    if subset_size > min(len(x), len(y)):
        raise UsageError(f"subset_size {subset_size} is larger than the samples ({len(x)} and {len(y)}); "
                         f"lower subset_size or pass more features")
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for s in range(subsets):
        # Same draw order as torch-fidelity: one choice for x, then one for y, per subset.
        index_x = torch.from_numpy(rng.choice(len(x), subset_size, replace=False)).to(x.device)
        index_y = torch.from_numpy(rng.choice(len(y), subset_size, replace=False)).to(x.device)
        values[s] = mmd(x[index_x], y[index_y], kernel="polynomial").value
    return ScalarResult(value=float(np.mean(values)), std=float(np.std(values)), num_samples=subsets,
                        settings={"kernel": "polynomial (a.b / D + 1)^3", "subsets": subsets,
                                  "subset_size": subset_size, "seed": seed, "features": x.shape[1],
                                  "std_is": "standard deviation over subsets (ddof=0)"})
