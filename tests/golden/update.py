"""Regenerate the golden run folders that ``tests/test_golden.py`` checks.

    python tests/golden/update.py

Trains and evaluates the golden rows at the ``smoke`` budget (seed 0) in a temporary folder and
keeps each run's ``config.json`` and ``metrics.json`` here. Run it only when a change of numbers is
intended (a new estimator, a fixed bug), and say why in the commit message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# (model, metrics): cheap enough for the default test run, and covering the estimators whose
# numbers the tables print: kernels, MS-SSIM, importance sampling, ELBO/KL, reconstructions,
# classifier features, and the closed-form likelihood of PPCA.
ROWS = [
    ("vae", "mmd,ms_ssim_diversity,log_likelihood,elbo,kl,reconstruction_mse,fid,label_entropy"),
    ("ppca", "log_likelihood,mmd"),
]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for model, metrics in ROWS:
            subprocess.run([sys.executable, "-m", "genbench.cli", "run", "--models", model,
                            "--budget", "smoke", "--seed", "0", "--metrics", metrics, "--out",
                            scratch, "--no-progress", "--no-report", "--device", "cpu"], check=True)
        target = HERE / "mnist"
        shutil.rmtree(target, ignore_errors=True)
        for config in sorted(Path(scratch).glob("mnist/*/*/config.json")):
            folder = target / config.parent.relative_to(Path(scratch) / "mnist")
            folder.mkdir(parents=True)
            for name in ("config.json", "metrics.json"):
                shutil.copy(config.parent / name, folder / name)
            print(f"wrote {folder}")


if __name__ == "__main__":
    main()
