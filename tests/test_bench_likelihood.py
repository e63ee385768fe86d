"""The likelihood benchmark runs and returns well-formed rows (no speed assertion: figures belong in
`nox -s bench`, not in unit tests)."""

from __future__ import annotations

import math

import pytest


@pytest.mark.benchmark
def test_likelihood_benchmark_rows_are_well_formed():
    from benchmarks import bench_likelihood

    rows = bench_likelihood.rows(quick=True)
    items = [r["item"] for r in rows]
    assert items[0] == "matmul peak, float32"
    assert {"IS throughput, k=100", "IS throughput, k=5000", "IS decoder FLOP/s / matmul peak",
            "AIS time per chain-step per example"} <= set(items)
    # each number of distributions with the defaults, all but the longest with a larger first step
    steps = bench_likelihood.QUICK.ais_steps
    assert sum(item.startswith("AIS estimate") for item in items) == 2 * len(steps) - 1
    for row in rows:
        assert set(row) == {"item", "genbench", "comparison", "ratio", "unit", "target", "met", "note"}
        assert isinstance(row["item"], str) and row["unit"] and row["note"]
        assert isinstance(row["genbench"], float) and math.isfinite(row["genbench"])
        if row["unit"] != "nats":  # rates, times and fractions are positive; log-likelihoods are not
            assert row["genbench"] > 0
        if row["comparison"] is not None:
            assert math.isfinite(row["comparison"])
        if row["ratio"] is not None:
            assert row["ratio"] == pytest.approx(row["genbench"] / row["comparison"])
        assert row["met"] is None if not row["target"] else isinstance(row["met"], bool)
