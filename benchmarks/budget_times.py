"""Measure the wall time of each model at a budget: training, evaluation and the whole command.

    python benchmarks/budget_times.py --budget standard --models gan,wgan,vae,gvae,deepsim,ppca

Each model runs in its own ``genbench run`` process, one after another (nothing else should run
on the machine meanwhile), into a fresh output folder. Prints a table and writes it as CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="smoke")
    parser.add_argument("--models", default="gan,wgan,vae,gvae,deepsim,ppca")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    parser.add_argument("--csv", default="results/bench/budget_times.csv")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="genbench-budgets-"))
    rows = []
    for model in args.models.split(","):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "genbench.cli", "run", "--models", model,
                        "--dataset", args.dataset, "--budget", args.budget, "--out", str(out),
                        "--no-progress", "--fresh"], check=True)
        wall = time.perf_counter() - started
        run = next((out / args.dataset / model).glob(f"{args.budget}-seed0-*"))
        config = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
        rows.append({"model": model, "budget": args.budget, "steps": config["train"]["steps"],
                     "images": config["train"]["steps"] * config["train"]["batch_size"],
                     "train_s": round(config["train_time_s"], 1),
                     "eval_s": round(metrics["seconds"], 1), "wall_s": round(wall, 1),
                     "images_per_s": config["images_per_s"], "threads": config["torch_threads"],
                     "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                     "samples": str(run / "samples.png")})
        print(rows[-1], flush=True)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0] if k != "samples"}
    print("  ".join(k.ljust(w) for k, w in widths.items()))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in widths.items()))


if __name__ == "__main__":
    main()
