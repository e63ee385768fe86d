"""Golden values: committed smoke-budget rows, regenerated from their saved configs, must come out
the same, so a change that silently shifts a metric fails here.

The rows live in ``tests/golden/mnist/<model>/<run>/`` (``config.json`` and ``metrics.json``,
written by ``python tests/golden/update.py``). Each is trained again from scratch with the torch
thread count it was made with and evaluated with the current code (``genbench rerun``).

Tolerance: 1e-4 relative (with the same absolute floor). On the CPU that wrote them the rerun is
bit-identical; the margin is for float32 rounding on other CPUs and builds, which 300 Adam steps
can grow from 1e-7 to about 1e-5. A real change of estimator, seeding or training moves these
numbers by percents (the new seeding of evaluation chunks moved MMD by 3% and the importance-
sampling log-likelihood by 0.01 nats on a smoke VAE), so it cannot hide inside the margin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from genbench.experiments.rerun import comparison_rows, rerun
from genbench.reporting.summary import format_table

GOLDEN = Path(__file__).parent / "golden"
TOLERANCE = 1e-4
RUNS = sorted(p.parent for p in GOLDEN.glob("mnist/*/*/metrics.json"))


def test_golden_rows_exist():
    assert {run.parent.name for run in RUNS} == {"vae", "ppca"}


@pytest.mark.parametrize("run_dir", RUNS, ids=[run.parent.name for run in RUNS])
def test_golden_row_regenerates_its_committed_numbers(run_dir, tmp_path):
    result = rerun(run_dir, tmp_path, tolerance=TOLERANCE, device="cpu", progress=False)
    table = format_table(["metric", "committed", "regenerated", "difference", "agrees"],
                         comparison_rows(result))
    assert len(result.comparisons) >= 2
    assert result.agrees, f"{run_dir.name} no longer reproduces its committed numbers:\n{table}"
