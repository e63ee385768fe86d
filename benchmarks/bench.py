"""``nox -s bench``: every benchmark of genbench beside its comparison, measured in one run.

Prints one table (genbench's figure, the comparison's figure measured in the same run, their
ratio, the target) and writes it to ``results/bench/bench.csv`` with the machine it ran on.
Nothing else should run on the machine meanwhile: the figures are wall times. The ``gpu`` section
(``benchmarks/bench_gpu.py``) runs only where ``torch.cuda.is_available()``: elsewhere it is skipped
with one printed line.

    python -m benchmarks.bench [--quick] [--only likelihood,kernels,harness,gpu] [--no-standard]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the genbench CLI sets it

SECTIONS = ("likelihood", "kernels", "harness", "gpu")
GPU_SKIPPED = "gpu: skipped, no CUDA GPU here (torch.cuda.is_available() is False): no GPU rows"
COLUMNS = ["item", "genbench", "comparison", "ratio", "unit", "target", "met", "note"]


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"python {platform.python_version()}")


def _number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_rows(rows: list[dict]) -> None:
    from genbench.reporting.summary import format_table

    print(format_table(COLUMNS, [[_number(r.get(c)) for c in COLUMNS] for r in rows]))


def write_csv(rows: list[dict], path: Path, header: str) -> None:
    from genbench.core.io import write_text

    buffer = io.StringIO()
    buffer.write(f"# {header}\n")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in COLUMNS})
    write_text(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the code, not speed")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    parser.add_argument("--no-standard", action="store_true", help="skip the standard-budget run")
    parser.add_argument("--csv", default="results/bench/bench.csv")
    args = parser.parse_args()
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    rows: list[dict] = []
    started = time.perf_counter()

    def header() -> str:
        return (f"genbench benchmarks, {datetime.now(timezone.utc).isoformat(timespec='seconds')}, "
                f"{machine()}, {time.perf_counter() - started:.0f} s"
                + (" (--quick: not speed figures)" if args.quick else ""))

    for section in sections:
        print(f"--- {section}", file=sys.stderr, flush=True)
        if section == "gpu":
            import torch

            if not torch.cuda.is_available():
                print(GPU_SKIPPED, flush=True)
                continue
            from benchmarks import bench_gpu

            section_rows = bench_gpu.rows(args.quick, device="cuda")
        elif section == "harness":
            from benchmarks import bench_harness

            section_rows = bench_harness.harness_rows(args.quick)
            section_rows += bench_harness.end_to_end_rows(args.quick, standard=not args.no_standard)
        elif section == "likelihood":
            from benchmarks import bench_likelihood

            section_rows = bench_likelihood.rows(args.quick)
        else:
            from benchmarks import bench_kernels

            section_rows = bench_kernels.rows(args.quick)
        rows += section_rows
        # Each section's rows are shown and saved as soon as they exist: the whole run takes a
        # while, and an interrupted run keeps what it measured.
        print_rows(section_rows)
        write_csv(rows, Path(args.csv), header() + " (partial)")
    if not rows:  # every section asked for was skipped: keep the previous table
        print(f"no rows measured; {args.csv} left as it was")
        return
    print(header())
    print_rows(rows)
    write_csv(rows, Path(args.csv), header())
    print(f"wrote {args.csv}")

if __name__ == "__main__":
    main()
