"""The harness benchmark runs and returns well-formed rows (no speed assertion: figures belong in
`nox -s bench`, not in unit tests)."""

from __future__ import annotations

import math

import pytest


@pytest.mark.benchmark
def test_harness_benchmark_rows_are_well_formed():
    from benchmarks import bench_harness

    rows = bench_harness.rows(quick=True)
    assert [r["item"].split(" ")[1] for r in rows[:2]] == ["gan", "vae"]
    assert rows[2]["item"].startswith("deterministic algorithms")
    for row in rows:
        assert {"item", "genbench", "comparison", "ratio", "unit", "target", "met", "note"} <= row.keys()
        assert math.isfinite(row["genbench"]) and row["genbench"] > 0
        if row["ratio"] is not None:
            assert row["ratio"] == pytest.approx(row["genbench"] / row["comparison"])
