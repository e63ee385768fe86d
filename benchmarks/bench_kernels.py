"""Speed and peak memory of genbench's MMD^2 and MS-SSIM diversity against torch-fidelity's KID, a
naive full-matrix MMD^2 and pytorch-msssim (issue 8, ``nox -s bench``).

    python benchmarks/bench_kernels.py           # 10,000 x 10,000 samples, 10,000 pairs: ~3 min on 2 cores
    python benchmarks/bench_kernels.py --quick   # 1,000 x 1,000 samples, 1,000 pairs: ~20 s

Every measured call runs in a fresh Python process (this file with ``--worker``), so that thread
counts are set before numpy and torch load, and peak memory is honest: the process's high-water RSS
while the calls run minus its RSS once imports are done, the inputs exist and one small call has
paged in the libraries (``VmHWM`` after a reset through ``/proc/self/clear_refs``; ``ru_maxrss``
where there is no ``/proc``), with glibc's mmap threshold fixed so that freed blocks leave the RSS.
tracemalloc does not see torch's allocations. A time is the best of ``REPEATS`` calls in that process.

``rows()`` returns one dict per table row. For times and memory ``ratio`` is comparison / genbench,
so > 1 means genbench is faster (or smaller); rows that check a value against the comparison's have
``ratio`` None.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 2
DIM = 784  # MNIST-sized feature vectors (28 x 28 pixels)
SEED = 0


# --- the measured calls (run inside a worker process) ---------------------------------------------

def _features(n: int, dtype: str):
    """Two samples ``[n, DIM]`` of random features in [-1, 1]; y is 5% narrower, so MMD^2 > 0."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    x = torch.rand(n, DIM, generator=generator).mul_(2).sub_(1)
    y = torch.rand(n, DIM, generator=generator).mul_(1.9).sub_(0.95)
    return x.to(getattr(torch, dtype)), y.to(getattr(torch, dtype))


def naive_mmd(x, y, bandwidth: float) -> float:
    """Textbook MMD^2_u with the Gaussian kernel: the three full kernel matrices (``[N, N]``, ``[M, M]``,
    ``[N, M]``, from ``cdist`` and ``exp``), then their sums; row sums in the inputs' dtype, then float64."""
    import torch

    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2))

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)

    def total(k):
        return float(k.sum(1).double().sum())

    return ((total(k_xx) - float(k_xx.diagonal().double().sum())) / (n * (n - 1))
            + (total(k_yy) - float(k_yy.diagonal().double().sum())) / (m * (m - 1))
            - 2 * total(k_xy) / (n * m))


def _images(count: int, size: int):
    """MNIST-like images ``[count, 1, size, size]`` in [-1, 1]: 7 x 7 noise, bicubic to 28 px (blobs
    and strokes at MNIST's scale), then bilinear to ``size`` when it is not 28."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(SEED)
    low = torch.rand(count, 1, 7, 7, generator=generator)
    images = F.interpolate(low, size=(28, 28), mode="bicubic", align_corners=False).clamp(0, 1) * 2 - 1
    if size != 28:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return images


def _pairs(n: int, num_pairs: int, seed: int):
    """The ordered pairs of distinct images that ``ms_ssim_diversity(seed=seed)`` draws (same draws,
    same order; the value agreement rows check that they are the same pairs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (num_pairs,), generator=generator)
    second = (first + torch.randint(1, n, (num_pairs,), generator=generator)) % n
    return first, second


def reference_ms_ssim(a, b, setting: dict):
    """MS-SSIM ``[B]`` of images in [0, 1] by pytorch-msssim, in the setting genbench uses for their size.

    Above 160 px: ``pytorch_msssim.ms_ssim`` as published (5 scales, 11-px window, sigma 1.5, standard
    weights). Smaller images, which ``ms_ssim`` refuses (it asserts a side > (window - 1) * 16 = 96 px
    for a 7-px window, whatever the number of scales): pytorch-msssim's own per-scale ``_ssim`` and
    window with genbench's small-image setting (7-px window, 3 scales at 28 px, renormalised weights),
    assembled exactly as ``ms_ssim`` assembles its scales.
    """
    import pytorch_msssim
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    if setting["window"] == 11 and setting["scales"] == 5:
        return pytorch_msssim.ms_ssim(a, b, data_range=1, size_average=False)
    window = _fspecial_gauss_1d(setting["window"], setting["sigma"]).repeat(a.shape[1], 1, 1, 1)
    factors = []
    for scale in range(setting["scales"]):
        ssim, cs = _ssim(a, b, data_range=1, win=window, size_average=False)
        if scale < setting["scales"] - 1:
            factors.append(torch.relu(cs))
            padding = [s % 2 for s in a.shape[2:]]
            a, b = F.avg_pool2d(a, 2, padding=padding), F.avg_pool2d(b, 2, padding=padding)
    factors.append(torch.relu(ssim))
    weights = torch.tensor(setting["weights"], dtype=a.dtype)
    return torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0).mean(1)


def _kernel_call(case: str, x, y):
    """The timed call of an MMD^2 / KID case on features ``x``, ``y``, as a function of nothing."""
    if case == "mmd":
        from genbench.metrics.kernels import mmd

        return lambda: mmd(x, y).value
    if case == "kid":
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

        # 100 subsets of N / 10 (torch-fidelity's defaults, 100 x 1000, at N = 10,000): 3 N^2 kernel
        # entries, as many as MMD^2 of two samples of N.
        return lambda: kid_features_to_metric(x, y, kid_subsets=100, kid_subset_size=len(x) // 10,
                                              verbose=False)[KEY_METRIC_KID_MEAN]
    from genbench.metrics.kernels import median_pairwise_distance

    # The bandwidth genbench's mmd(x, y) picks, computed before timing: the naive side is not charged
    # for the median heuristic (genbench is).
    bandwidth = median_pairwise_distance(x, y, max_points=2000, seed=0)
    return lambda: naive_mmd(x, y, bandwidth)


def _setup(spec: dict) -> dict:
    """Inputs and imports for one case: everything the timed call must not pay for."""
    case = spec["case"]
    if case in ("mmd", "kid", "naive"):
        x, y = _features(spec["n"], spec["dtype"])
        # One small call first, so that the memory baseline already holds the libraries' code pages and
        # thread pools that the first call brings in: the peak is then the computation's own.
        _kernel_call(case, x[:200], y[:200])()
        return {"fn": _kernel_call(case, x, y)}
    import torch

    from genbench.metrics.ssim import _BATCH_VALUES, ms_ssim_diversity, ms_ssim_setting

    images = _images(spec["images"], spec["size"])
    if case == "ms_ssim":
        return {"fn": lambda: ms_ssim_diversity(images, num_pairs=spec["pairs"], seed=SEED).value}
    first, second = _pairs(len(images), spec["pairs"], SEED)
    setting = ms_ssim_setting(spec["size"], spec["size"])
    batch = max(1, _BATCH_VALUES // images[0].numel())  # as many pairs per call as genbench

    def reference() -> float:
        values = []
        with torch.inference_mode():
            for start in range(0, len(first), batch):
                a = (images[first[start : start + batch]] + 1) / 2  # [-1, 1] -> [0, 1], as genbench
                b = (images[second[start : start + batch]] + 1) / 2
                values.append(reference_ms_ssim(a, b, setting).double())
        return float(torch.cat(values).mean())

    return {"fn": reference}


def _memory_mib() -> tuple[float, float]:
    """(current RSS, high-water RSS since the last reset) in MiB."""
    status = Path("/proc/self/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    return peak, peak


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError:
        pass  # ru_maxrss fallback: the baseline is then the peak so far, which may hide part of the call's


def _worker(specs: list[dict]) -> list[dict]:
    """Run the cases one after another in this process: best time (s), peak memory above the inputs
    (MiB; for the first case only, later ones may reuse memory freed by earlier ones), value."""
    import gc

    import torch

    results = []
    for spec in specs:
        torch.set_num_threads(spec["threads"])
        state = _setup(spec)
        gc.collect()
        _reset_peak()
        baseline, _ = _memory_mib()
        seconds, value = [], None
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            value = state["fn"]()
            seconds.append(time.perf_counter() - start)
        _, peak = _memory_mib()
        results.append({"seconds": min(seconds), "all_seconds": seconds, "peak_mib": peak - baseline,
                        "value": float(value)})
        del state
    return results


def measure(case: str, threads: int, blas_threads: int = 1, repeats: int = REPEATS, then: tuple = (),
            **spec) -> list[dict] | dict:
    """Run one case in a fresh process with ``threads`` torch threads and ``blas_threads`` OpenBLAS
    (numpy) threads; returns its best time (s), peak memory (MiB) and the computed value. ``then``
    names further cases with the same settings for the same process (one startup; their peak memory
    is not reported): a list of results comes back."""
    specs = [{"case": name, "threads": threads, "repeats": repeats, **spec} for name in (case, *then)]
    # A fixed mmap threshold keeps glibc from raising it after large frees and then serving (and
    # keeping) big blocks from its heap: freed memory goes back to the system and RSS tracks live memory.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(blas_threads), "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(specs)], env=env, check=True,
                          capture_output=True, text=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return results if then else results[0]


# --- the table ------------------------------------------------------------------------------------

def _row(item, genbench, comparison, unit, target, met, note, speed: bool = True) -> dict:
    """One table row; ``ratio`` = comparison / genbench for speed and memory rows, None for values."""
    ratio = comparison / genbench if speed and genbench else None
    return {"item": item, "genbench": genbench, "comparison": comparison, "ratio": ratio, "unit": unit,
            "target": target, "met": met, "note": note}


def _mmd_rows(quick: bool, threads: int) -> list[dict]:
    n = 1000 if quick else 10_000
    name = f"MMD^2 {n:,} x {n:,} x {DIM} float32"
    kid_target = "no slower than torch-fidelity's KID"
    counts = sorted({1, threads})
    # Each side at 1 and at all cores: genbench's torch threads, KID's (numpy) OpenBLAS threads.
    ours = {t: measure("mmd", t, n=n, dtype="float32") for t in counts}
    kid = {t: measure("kid", threads=1, blas_threads=t, n=n, dtype="float32") for t in counts}
    best = min(ours, key=lambda t: ours[t]["seconds"])  # genbench's faster torch thread count
    fast = min(kid, key=lambda t: kid[t]["seconds"])  # KID's faster OpenBLAS thread count
    naive = measure("naive", threads, n=n, dtype="float32")
    times = (", ".join(f"{ours[t]['seconds']:.2f} s with {t} torch thread(s)" for t in counts) + "; KID "
             + ", ".join(f"{kid[t]['seconds']:.2f} s with {t} OpenBLAS thread(s)" for t in counts))
    same_entries = (
        f"Same number of kernel entries: MMD^2 of {n:,} + {n:,} points has 3 x {n:,}^2 distinct ones "
        f"(x-x, y-y, x-y), KID 100 subsets x 3 x {n // 10:,}^2. The kernels differ (genbench: Gaussian, "
        f"its median-heuristic bandwidth included in the time; KID: cubic polynomial), so this compares "
        f"the cost of as many kernel entries, not the numbers. Random features in [-1, 1]."
    )
    rows = [
        _row(f"{name}: time vs torch-fidelity KID (defaults)", ours[best]["seconds"], kid[fast]["seconds"],
             "s", kid_target, ours[best]["seconds"] <= kid[fast]["seconds"],
             f"ratio = KID / genbench (> 1: genbench faster), each at its faster thread count: genbench "
             f"mmd(x, y) {times}. KID is torch-fidelity's kid_features_to_metric (numpy). Best of "
             f"{REPEATS} calls, a fresh process per measurement. {same_entries}"),
        _row(f"{name}: time at 1 thread each vs torch-fidelity KID", ours[1]["seconds"], kid[1]["seconds"],
             "s", kid_target, ours[1]["seconds"] <= kid[1]["seconds"],
             "ratio = KID / genbench. Equal threads: torch 1 thread for genbench, OpenBLAS 1 thread for KID "
             "(genbench's CLI sets OPENBLAS_NUM_THREADS=1). Otherwise as the row above."),
        _row(f"{name}: peak memory vs torch-fidelity KID", ours[threads]["peak_mib"], kid[fast]["peak_mib"],
             "MiB", "under 2 GB (2048 MiB)", ours[threads]["peak_mib"] < 2048,
             f"ratio = KID / genbench (> 1: genbench smaller). Peak RSS during the calls above the inputs "
             f"(genbench with {threads} torch threads). KID holds three subset-sized matrices at a time; "
             f"genbench the pooled sample's kernel factors [2N, D + 2] and one float32 and one float64 "
             f"block."),
        _row(f"{name}: time vs naive full-matrix MMD^2", ours[threads]["seconds"], naive["seconds"], "s", "-",
             None,
             f"ratio = naive / genbench (> 1: genbench faster), both with torch's {threads} threads. Naive: "
             f"the three full kernel matrices ({n:,} x {n:,}) by torch.cdist and exp, then their sums; it "
             f"is given the bandwidth, genbench pays for its median heuristic. Same kernel and entries."),
        _row(f"{name}: peak memory vs naive full-matrix MMD^2", ours[threads]["peak_mib"], naive["peak_mib"],
             "MiB", "under 2 GB (2048 MiB)", ours[threads]["peak_mib"] < 2048,
             "ratio = naive / genbench (> 1: genbench smaller). The naive peak grows as N^2: two "
             "finished matrices plus cdist's output and its square for the third."),
        _row(f"{name}: value vs naive (same kernel and bandwidth)", ours[threads]["value"], naive["value"],
             "MMD^2", "relative difference < 1e-4",
             abs(ours[threads]["value"] - naive["value"]) < 1e-4 * abs(naive["value"]),
             "A correctness check (ratio n/a): both are MMD^2_u with float32 kernel values; genbench sums "
             "them in float64, the naive one sums rows in float32 (~1e-6 relative after MMD^2's terms "
             "cancel ~1000-fold).", speed=False),
    ]
    if quick:
        return rows
    ours64 = measure("mmd", best, n=n, dtype="float64")
    kid64 = measure("kid", threads=1, blas_threads=fast, n=n, dtype="float64")
    rows.insert(2, _row(
        f"MMD^2 {n:,} x {n:,} x {DIM} float64: time vs torch-fidelity KID float64", ours64["seconds"],
        kid64["seconds"], "s", kid_target, ours64["seconds"] <= kid64["seconds"],
        f"ratio = KID / genbench. float64 features, so kernels and sums in float64 on both sides; torch "
        f"{best} thread(s) vs OpenBLAS {fast} thread(s), each side's faster float32 setting."))
    return rows


def _ms_ssim_rows(quick: bool, threads: int) -> list[dict]:
    from genbench.metrics.ssim import ms_ssim_setting

    rows = []
    for size, images, pairs in ((28, 10_000, 1000 if quick else 10_000),
                                (176, 200 if quick else 1000, 100 if quick else 1000)):
        ours, theirs = measure("ms_ssim", threads, then=("ms_ssim_reference",), size=size, images=images,
                               pairs=pairs)
        if size > 160:
            reference = ("pytorch_msssim.ms_ssim(a, b, data_range=1, size_average=False) as published, on "
                         "the 28-px images upsampled (bilinear) to 176 px, a size both accept")
        else:
            reference = ("pytorch-msssim's ms_ssim refuses 28 px (it asserts a side > 96 px for a 7-px "
                         "window), so its own per-scale _ssim and window, assembled as its ms_ssim does, "
                         "in genbench's setting")
        name = f"MS-SSIM diversity, {pairs:,} pairs of {size}-px images"
        rows.append(_row(
            f"{name}: time vs pytorch-msssim", ours["seconds"], theirs["seconds"], "s", "-", None,
            f"ratio = pytorch-msssim / genbench (> 1: genbench faster). genbench ms_ssim_diversity(images, "
            f"num_pairs={pairs}); reference: {reference}. The same pairs, gathered and mapped to [0, 1] "
            f"inside the timed call, in batches of the same size; torch's {threads} threads each, best of "
            f"{REPEATS}. Setting: {ms_ssim_setting(size, size)['name']}. {images:,} MNIST-like images "
            f"(smooth random blobs)."))
        difference = abs(ours["value"] - theirs["value"])
        rows.append(_row(
            f"{name}: mean MS-SSIM vs pytorch-msssim", ours["value"], theirs["value"], "MS-SSIM",
            "absolute difference < 1e-5", difference < 1e-5,
            f"A correctness check (ratio n/a): the means over the same pairs differ by {difference:.1e}; "
            f"float32 on both sides, rounded differently (genbench filters by banded-matrix products, "
            f"pytorch-msssim by convolutions).", speed=False))
    return rows


def rows(quick: bool = False) -> list[dict]:
    """The benchmark table: MMD^2 rows, then MS-SSIM rows (see the module docstring)."""
    threads = os.cpu_count() or 1  # torch's default on this machine
    return _mmd_rows(quick, threads) + _ms_ssim_rows(quick, threads)


def _print(table: list[dict]) -> None:
    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    for row in table:
        print(f"{row['item']}\n  genbench {fmt(row['genbench'])} {row['unit']} | comparison "
              f"{fmt(row['comparison'])} | ratio {fmt(row['ratio'])} | target: {row['target']} | "
              f"met: {fmt(row['met'])}\n  {row['note']}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 x 1,000 samples, 1,000 pairs (~20 s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    started = time.perf_counter()
    table = rows(quick=args.quick)
    _print(table)
    print(f"({time.perf_counter() - started:.0f} s; {os.cpu_count()} CPU cores, torch "
          f"{__import__('torch').__version__})")


if __name__ == "__main__":
    main()
