"""GPU figures for ``nox -s bench`` (the ``gpu`` section): run on a CUDA machine, measured there only.

    python benchmarks/bench_gpu.py [--quick] [--device cuda]

Rows, each item prefixed ``GPU: `` and each note naming the device
(``torch.cuda.get_device_name``); every timing reads the clock after ``torch.cuda.synchronize()``,
after an untimed warm-up:

- matmul peak in float32 and in float16, FLOP/s of one large square matmul (the note states
  whether float32 matmuls may use TF32);
- importance sampling on the MLP VAE of the likelihood section, genbench's estimator against the
  per-example loop at ``k = 100`` and ``5000`` (the likelihood section's own functions, on the
  GPU), and the decoder FLOP/s it achieves as a fraction of the float32 peak;
- MMD^2 of 10,000 x 10,000 x 784 float32 features: time and peak GPU memory
  (``torch.cuda.max_memory_allocated`` above the inputs) of genbench's ``mmd`` against the naive
  full-matrix version (the kernels section's), both on the GPU; ratio = naive / genbench as in the
  kernels section (> 1: genbench faster or smaller);
- training images/s of the harness (``fit``) for ``gan`` and ``vae`` with mixed precision off and
  on (``fit(amp=...)``: float16 autocast and a GradScaler), each against the kernels of the
  harness section's hand loop run on the same device, with the same mixed precision; ratio =
  harness / hand loop.

``rows(quick=True, device="cpu")`` runs the same code with tiny sizes on the CPU, so that it can be
tested without a GPU: the figures then mean nothing, the mixed-precision rows are left out (the
harness uses mixed precision on CUDA only) and peak memory is the process's resident-set
high-water mark, indicative only.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, replace

import torch

from benchmarks import bench_harness, bench_kernels, bench_likelihood

HARNESS_TARGET = bench_harness.TARGET_RATIO


@dataclass(frozen=True)
class GpuSizes:
    matmul: int  # side of the square matmuls
    likelihood: bench_likelihood.Sizes  # the likelihood section's sizes (IS and training fields)
    mmd: int  # points per sample of the MMD^2 rows
    harness_steps: int  # training steps per harness / hand-loop run
    harness_repeats: int  # back-to-back pairs per harness row (the median pair is shown)


FULL = GpuSizes(matmul=8192, likelihood=replace(bench_likelihood.FULL, samples=2**18), mmd=10_000,
                harness_steps=300, harness_repeats=5)
QUICK = GpuSizes(matmul=256, likelihood=replace(bench_likelihood.QUICK, samples=2**11), mmd=500,
                 harness_steps=20, harness_repeats=1)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} (no GPU: a code check, not GPU figures)"


def tf32_state(device: torch.device) -> str:
    if device.type != "cuda":
        return "TF32 n/a on cpu"
    allowed = torch.backends.cuda.matmul.allow_tf32
    return (f"TF32 for float32 matmuls {'on' if allowed else 'off'} "
            f"(torch.backends.cuda.matmul.allow_tf32={allowed}, float32 matmul precision "
            f"'{torch.get_float32_matmul_precision()}')")


def _gpu(rows: list[dict], where: str) -> list[dict]:
    """Prefix each item with ``GPU: `` and end each note with the device."""
    return [r | {"item": f"GPU: {r['item']}", "note": f"{r['note']}; {where}"} for r in rows]


def matmul_rows(sizes: GpuSizes, device: torch.device) -> tuple[list[dict], float]:
    """float32 and float16 matmul peak rows, and the float32 peak (FLOP/s)."""
    n, row = sizes.matmul, bench_likelihood.row
    peaks = {dtype: bench_likelihood.matmul_peak(n, sizes.likelihood.repeats, device, dtype)
             for dtype in (torch.float32, torch.float16)}
    rows = [row(f"matmul peak, {str(dtype).removeprefix('torch.')}", peak / 1e9, unit="GFLOP/s",
                note=f"best of [{n}, {n}] @ [{n}, {n}] in {str(dtype).removeprefix('torch.')}, "
                f"synchronised; {tf32_state(device)}")
            for dtype, peak in peaks.items()]
    return rows, peaks[torch.float32]


def importance_sampling_rows(sizes: GpuSizes, device: torch.device, peak: float) -> list[dict]:
    """The likelihood section's IS rows, model and images on ``device``."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    quick = sizes is QUICK
    model = bench_likelihood.MLPVAE().to(device)
    x_train, _ = bench_likelihood.binary_images("train", 500 if quick else 10_000, generator)
    bench_likelihood.train(model, x_train.to(device), sizes.likelihood.train_steps, generator)
    x, source = bench_likelihood.binary_images("test", sizes.likelihood.samples // 100, generator)
    return bench_likelihood.importance_sampling_rows(
        model, x.to(device), sizes.likelihood, peak,
        f"{source}; the peak is the float32 row above; {tf32_state(device)}", device)


def _memory_peak(device: torch.device, fn) -> float:
    """Peak memory of one call of ``fn`` above what was allocated before (MiB):
    ``torch.cuda.max_memory_allocated`` on CUDA, the process's resident-set high-water mark
    elsewhere (indicative only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        bench_kernels._reset_peak()
        baseline, _ = bench_kernels._memory_mib()
    fn()
    bench_likelihood.synchronize(device)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    else:
        peak = bench_kernels._memory_mib()[1] - baseline
    return max(peak, 0.0)


def mmd_rows(sizes: GpuSizes, device: torch.device) -> list[dict]:
    n, dim = sizes.mmd, bench_kernels.DIM
    x, y = (t.to(device) for t in bench_kernels._features(n, "float32"))
    figures = {}
    for case in ("mmd", "naive"):
        bench_kernels._kernel_call(case, x[:200], y[:200])()  # warm-up: kernels loaded, caches made
        fn = bench_kernels._kernel_call(case, x, y)  # the naive side's bandwidth is computed here
        peak = _memory_peak(device, fn)  # the first full call
        figures[case] = bench_likelihood.best_time(fn, sizes.likelihood.repeats, device), peak
    (ours, ours_peak), (naive, naive_peak) = figures["mmd"], figures["naive"]
    memory = ("torch.cuda.max_memory_allocated during the call above the inputs" if device.type == "cuda"
              else "process RSS high-water above the inputs (cpu: indicative only)")
    name = f"MMD^2 {n:,} x {n:,} x {dim} float32"
    return [
        {"item": f"{name}: time vs naive full-matrix MMD^2", "genbench": ours, "comparison": naive,
         "ratio": naive / ours, "unit": "s", "target": "-", "met": None,
         "note": f"ratio = naive / genbench (> 1: genbench faster), as in the kernels section; genbench "
                 f"mmd(x, y) (its median-heuristic bandwidth included) vs the three full kernel "
                 f"matrices by torch.cdist and exp (given the bandwidth); best of "
                 f"{sizes.likelihood.repeats} synchronised calls after a warm-up, both on the device"},
        {"item": f"{name}: peak memory vs naive full-matrix MMD^2", "genbench": ours_peak,
         "comparison": naive_peak, "ratio": naive_peak / ours_peak if ours_peak > 0 else None,
         "unit": "MiB", "target": "-", "met": None,
         "note": f"ratio = naive / genbench (> 1: genbench smaller); {memory}; the naive peak grows "
                 f"as N^2"},
    ]


def harness_rows(sizes: GpuSizes, device: torch.device) -> list[dict]:
    """Harness vs hand loop on ``device``, mixed precision off, and on where the device is CUDA."""
    steps, repeats = sizes.harness_steps, sizes.harness_repeats
    algorithms = ("torch's default (non-deterministic) algorithms, as the harness leaves them on CUDA"
                  if device.type == "cuda" else "deterministic algorithms on both, as the harness on CPU")
    if device.type != "cuda":
        print("  GPU: harness AMP rows: n/a on cpu (the harness uses mixed precision on CUDA only)",
              file=sys.stderr, flush=True)
    rows = []
    for amp in (False, True) if device.type == "cuda" else (False,):
        for model in ("gan", "vae"):
            spec = bench_harness._spec(model, steps)
            hand, harness, ratio, ratios = bench_harness._paired(
                lambda s=spec, a=amp: bench_harness._hand_loop_images_per_s(s, device=str(device), amp=a),
                lambda s=spec, a=amp: bench_harness._harness_images_per_s(s, device=str(device), amp=a),
                repeats)
            precision = ("mixed precision (fit(amp=True): float16 autocast + GradScaler; hand loop: "
                         "torch.autocast(device_type='cuda', dtype=torch.float16) and one GradScaler, "
                         "as StepContext)") if amp else "float32 (fit(amp=False))"
            rows.append({
                "item": f"harness {model} training, {'AMP' if amp else 'float32'} "
                        f"(batch 64, {steps} steps)",
                "genbench": harness, "comparison": hand, "ratio": ratio, "unit": "images/s",
                "target": f">= {HARNESS_TARGET}", "met": ratio >= HARNESS_TARGET,
                "note": f"{precision}; vs the harness section's hand loop on the same device, same "
                        f"networks; {algorithms}; synchronised clocks; the median of {repeats} "
                        f"back-to-back pairs by ratio (harness / hand loop; all: "
                        f"{bench_harness._listed(ratios)})",
            })
    return rows


def rows(quick: bool = False, device: str = "cuda") -> list[dict]:
    """The ``gpu`` section's rows (see the module docstring); ``device="cpu"`` checks the code."""
    torch_device = torch.device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    sizes = QUICK if quick else FULL
    where = f"on {device_name(torch_device)}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if quick else threads)  # CPU threads: the host side of the GPU work
    table: list[dict] = []

    def add(new_rows: list[dict]) -> None:
        for new in _gpu(new_rows, where):
            print(f"  {new['item']}: {new['genbench']:.4g} {new['unit']}", file=sys.stderr, flush=True)
            table.append(new)

    try:
        new, peak = matmul_rows(sizes, torch_device)
        add(new)
        add(importance_sampling_rows(sizes, torch_device, peak))
        add(mmd_rows(sizes, torch_device))
        add(harness_rows(sizes, torch_device))
        return table
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    import argparse

    from benchmarks.bench import print_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not speed")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the code")
    args = parser.parse_args()
    print_rows(rows(args.quick, args.device))


if __name__ == "__main__":
    main()
