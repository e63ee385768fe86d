"""The kernel and MS-SSIM benchmark runs and returns well-formed rows (no speed assertion: figures
belong in `nox -s bench`, not in unit tests)."""

from __future__ import annotations

import math

import pytest


@pytest.mark.benchmark
def test_kernel_benchmark_rows_are_well_formed():
    from benchmarks import bench_kernels

    rows = bench_kernels.rows(quick=True)
    items = [r["item"] for r in rows]
    assert sum(item.startswith("MMD^2 1,000 x 1,000") for item in items) == 6
    assert sum(item.startswith("MS-SSIM diversity") for item in items) == 4
    for row in rows:
        assert set(row) == {"item", "genbench", "comparison", "ratio", "unit", "target", "met", "note"}
        assert isinstance(row["item"], str) and row["unit"] and row["target"] and row["note"]
        assert isinstance(row["genbench"], float) and math.isfinite(row["genbench"])
        assert isinstance(row["comparison"], float) and math.isfinite(row["comparison"])
        if row["unit"] in ("s", "MiB"):
            # Times and memory: ratio = comparison / genbench, so > 1 means genbench is better.
            assert row["genbench"] >= 0 and row["ratio"] == pytest.approx(row["comparison"] / row["genbench"])
            assert "ratio = " in row["note"]
        else:
            assert row["ratio"] is None  # value checks, not speed figures
        assert row["met"] is None if row["target"] == "-" else isinstance(row["met"], bool)
    # The correctness rows must hold even at the quick sizes: same kernel and bandwidth as the naive
    # MMD^2, same pairs and setting as pytorch-msssim.
    assert all(r["met"] for r in rows if r["ratio"] is None)
