"""The GPU benchmark section: its code runs on the CPU with tiny sizes and returns well-formed rows
(no speed assertion, and no GPU figures: those come from `nox -s bench` on a CUDA machine), and
`python -m benchmarks.bench` skips the section with one line where there is no CUDA GPU."""

from __future__ import annotations

import math
import sys

import pytest


@pytest.mark.benchmark
def test_gpu_benchmark_rows_are_well_formed_on_cpu():
    from benchmarks import bench_gpu

    rows = bench_gpu.rows(quick=True, device="cpu")
    items = [r["item"] for r in rows]
    assert items[:2] == ["GPU: matmul peak, float32", "GPU: matmul peak, float16"]
    assert {"GPU: IS throughput, k=100", "GPU: IS throughput, k=5000",
            "GPU: IS decoder FLOP/s / matmul peak"} <= set(items)
    assert sum(item.startswith("GPU: MMD^2 500 x 500 x 784") for item in items) == 2
    harness = [item for item in items if item.startswith("GPU: harness")]
    # mixed precision is CUDA only: no AMP rows on the CPU
    assert [item.split(" ")[2] for item in harness] == ["gan", "vae"]
    assert not any("AMP" in item for item in items)
    for row in rows:
        assert set(row) == {"item", "genbench", "comparison", "ratio", "unit", "target", "met", "note"}
        assert row["item"].startswith("GPU: ") and row["unit"] and row["note"].endswith(
            "on cpu (no GPU: a code check, not GPU figures)")
        assert isinstance(row["genbench"], float) and math.isfinite(row["genbench"])
        if row["unit"] == "MiB":  # resident-set high-water on the CPU: may be 0 at these sizes
            assert row["genbench"] >= 0 and row["comparison"] >= 0
        else:
            assert row["genbench"] > 0
        if row["comparison"] is not None:
            assert math.isfinite(row["comparison"])
        if row["ratio"] is not None:
            if row["unit"] in ("s", "MiB"):  # as in the kernels section: comparison / genbench
                assert row["ratio"] == pytest.approx(row["comparison"] / row["genbench"])
            else:
                assert row["ratio"] == pytest.approx(row["genbench"] / row["comparison"])
        assert row["met"] is None if row["target"] in ("", "-") else isinstance(row["met"], bool)


def test_bench_skips_the_gpu_section_without_cuda(monkeypatch, capsys, tmp_path):
    import torch

    from benchmarks import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    csv = tmp_path / "bench.csv"
    monkeypatch.setattr(sys, "argv", ["bench", "--quick", "--only", "gpu", "--csv", str(csv)])
    bench.main()
    out = capsys.readouterr().out
    assert bench.GPU_SKIPPED in out.splitlines()
    assert "GPU:" not in out
    assert not csv.exists()  # nothing measured: an earlier table is not overwritten
