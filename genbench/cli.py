"""The ``genbench`` command line: parse, build run specs, call down. Heavy imports stay inside
commands so ``genbench --help`` is fast."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

# numpy's OpenBLAS with two threads made one torch-fidelity KID 70x slower on a 2-core machine
# (0.97 s vs 0.013 s): its matrices are small. Set before numpy is first imported; a user's own
# setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from genbench.core.errors import GenbenchError, UsageError


class GenbenchGroup(click.Group):
    """Turns :class:`GenbenchError` into one line on stderr and its exit status."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GenbenchError as error:
            if ctx.meta.get("genbench.debug"):
                raise
            click.echo(f"genbench: error: {error}", err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:  # click's own (bad option value...): one line too
            if ctx.meta.get("genbench.debug"):
                raise
            where = f" (see genbench {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
            click.echo(f"genbench: error: {error.format_message()}{where}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("genbench: interrupted; re-run the same command to resume", err=True)
            sys.exit(130)


@click.group(cls=GenbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="genbench")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Benchmark and evaluate generative image models.

    \b
    Example:
      genbench run --models gvae,vae --dataset mnist --budget smoke
    """
    ctx.meta["genbench.debug"] = debug


def _split_list(value: str | None) -> list[str]:
    from genbench.experiments.plan import split_list

    return split_list(value)


def _seed_list(seed: int | None, seeds: str | None, default: list[int]) -> list[int]:
    from genbench.experiments.plan import parse_seeds

    if seed is not None and seeds is not None:
        raise UsageError("give --seed or --seeds, not both")
    if seed is not None:
        if seed < 0:
            raise UsageError(f"--seed must be >= 0, got {seed}")
        return [seed]
    return parse_seeds(seeds) if seeds is not None else default


def _shared_run_options(function):
    """Options common to ``run`` and ``sweep``."""
    options = [
        click.option("--models", required=True, help="Comma-separated model names, e.g. gvae,vae."),
        click.option("--dataset", default="mnist", show_default=True, help="A registered dataset."),
        click.option("--budget", type=click.Choice(["smoke", "standard", "paper"]), default="smoke",
                     show_default=True,
                     help="Fixed step counts: smoke (minutes), standard, paper (GPU)."),
        click.option("--seed", type=int, default=None, help="One seed."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Typed config override, repeatable (latent_dim=500, gvae.dropout=0.2, steps=50)."),
        click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Folder with the dataset's files (never written to)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--image-size", type=int, default=None,
                     help="Square side in pixels (default: native)."),
        click.option("--limit", type=int, default=None, help="Train on the first N training images only."),
        click.option("--fresh", is_flag=True,
                     help="Delete existing run folders of these runs and start over."),
        click.option("--download/--no-download", default=True, show_default=True,
                     help="Download missing datasets into the user cache."),
        click.option("--tensorboard", is_flag=True, help="Also log losses to TensorBoard."),
        click.option("--progress/--no-progress", default=True, help="Show progress bars."),
        click.option("--eval/--no-eval", "evaluate", default=True, show_default=True,
                     help="Evaluate each run when its training ends (metrics.json)."),
        click.option("--metrics", default=None,
                     help="Comma-separated metrics to evaluate (default: all that apply)."),
        click.option("--jobs", type=int, default=1, show_default=True,
                     help="Runs trained in parallel processes on this machine."),
        click.option("--report/--no-report", "write_report", default=True, show_default=True,
                     help="Rebuild OUT/results.csv and OUT/report/ at the end."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _print_outcomes(batch, out: str, group_by: list[str]) -> None:
    from genbench.reporting.report import comparison_text
    from genbench.reporting.summary import print_run_table

    print_run_table(batch.outcomes)
    if len(batch.failed) < len(batch.outcomes):
        click.echo("")
        click.echo(comparison_text(out, batch.run_ids, group_by))
    if batch.report is not None:
        click.echo(f"\nreport: {batch.report.index}  (table data: {batch.report.results_csv})")
    if batch.failed:
        for outcome in batch.failed:
            click.echo(f"genbench: failed: {outcome.spec.model} seed {outcome.spec.seed}: "
                       f"{outcome.error}", err=True)
        raise GenbenchError(f"{len(batch.failed)} of {len(batch.outcomes)} runs failed; fix the "
                            "cause and re-run the same command to finish them")


def _relaunch_with_torchrun(nproc: int) -> None:
    """``genbench run --nproc N ...`` is ``torchrun --nproc-per-node N -m genbench.cli run ...``."""
    import subprocess

    args = sys.argv[1:]
    cleaned, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        cleaned.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "genbench.cli", *cleaned]
    sys.exit(subprocess.call(command))


@main.command()
@_shared_run_options
@click.option("--seeds", default=None, help="Several seeds, e.g. 0,1,2 (default: 0).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel training processes per run (gloo on CPU, NCCL on GPUs), "
                   "launched with torchrun; batch_size is the global batch.")
def run(models, dataset, budget, seed, seeds, overrides, out, data_dir, device, image_size, limit,
        fresh, download, tensorboard, progress, evaluate, metrics, jobs, write_report, nproc):
    """Train models and write one run folder each under OUT/<dataset>/<model>/<run-id>/, evaluate
    them, print a comparison table and rebuild the report in OUT/report/.

    Re-running the same command resumes unfinished runs and skips finished ones.

    \b
    Example:
      genbench run --models gvae,vae --dataset mnist --budget smoke
      genbench run --models wgan --set gradient_penalty=true --seeds 0,1,2
    """
    from genbench import api
    from genbench.training.distributed import ranks_from_environment

    seed_list = _seed_list(seed, seeds, [0])
    ranks = ranks_from_environment()
    if nproc > 1 and not ranks.distributed:
        if jobs > 1:
            raise UsageError("give --nproc (processes per run) or --jobs (runs at once), not both")
        specs = api.build_specs(_split_list(models), dataset, budget, seed_list,
                                api.parse_overrides(overrides), image_size, limit)  # errors first
        from genbench.models import get_model_class

        for name in dict.fromkeys(spec.model for spec in specs):
            if not get_model_class(name).trains_by_gradient:
                raise UsageError(f"{name} is fitted in closed form, not by gradient steps: train it "
                                 "in one process (without --nproc)")
        _relaunch_with_torchrun(nproc)
    # Under torchrun every rank trains and evaluates (sharing the work); rank 0 alone writes
    # metrics.json, reports and prints.
    batch = api.run(models, dataset, budget, seed_list, overrides, out,
                    device=device, data_dir=data_dir, image_size=image_size, limit=limit,
                    download=download, evaluate=evaluate, metrics=metrics,
                    fresh=fresh, progress=progress, tensorboard=tensorboard, jobs=jobs,
                    report=write_report and ranks.is_main)
    if ranks.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if not ranks.is_main:
            return
    _print_outcomes(batch, out, ["model"])


@main.command()
@click.argument("specs", nargs=-1, required=True)
@_shared_run_options
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds per cell: 0,1,2 or 0:3.")
@click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default="local",
              show_default=True, help="Where cells run: this machine, Ray tasks or Slurm jobs.")
@click.option("--address", default=None, help="ray: address of a running cluster (default: start one).")
@click.option("--cpus-per-cell", type=float, default=1, show_default=True,
              help="ray/slurm: CPUs (and torch threads) each cell asks for.")
@click.option("--gpus-per-cell", type=float, default=0, show_default=True, help="ray: GPUs per cell.")
@click.option("--slurm-partition", default=None, help="slurm: the partition to submit to.")
@click.option("--slurm-time", type=int, default=60, show_default=True,
              help="slurm: time limit per job in minutes; a timed-out cell is requeued and resumes.")
@click.option("--slurm-gpus", type=int, default=0, show_default=True, help="slurm: GPUs per job.")
@click.pass_context
def sweep(ctx, specs, models, dataset, budget, seed, seeds, overrides, out, data_dir, device,
          image_size, limit, fresh, download, tensorboard, progress, evaluate, metrics, jobs,
          write_report, executor, address, cpus_per_cell, gpus_per_cell, slurm_partition, slurm_time,
          slurm_gpus):
    """Train the cartesian product of SPECS (key=v1,v2,...) x models x seeds, one ordinary run
    folder per cell; print the comparison table and rebuild the report.

    A spec lists values (latent_dim=100,500,1000) or a range: start:stop:xFACTOR
    (latent_dim=100:1000:x10 gives 100, 1000) or start:stop:+STEP (dropout=0.1:0.3:+0.1).
    Prefix a key with a model to sweep it for that model only (gvae.latent_dim=...).
    Re-running the same command skips finished cells and resumes unfinished ones.

    \b
    Example:
      genbench sweep latent_dim=100,500,1000 --models gvae,vae --dataset mnist
      genbench sweep latent_dim=100,500,1000 --models gvae --seeds 0,1 --budget smoke --jobs 2
      genbench sweep latent_dim=100,500 --models gvae --executor slurm --slurm-gpus 1 --out /shared/results
    """
    from genbench import api

    given = ctx.get_parameter_source("seeds") == click.core.ParameterSource.COMMANDLINE
    seed_list = _seed_list(seed, seeds if given or seed is None else None, [0, 1, 2])
    batch = api.sweep(list(specs), models, dataset, budget, seed_list, overrides, out,
                      device=device, data_dir=data_dir, image_size=image_size, limit=limit,
                      download=download, evaluate=evaluate, metrics=metrics, fresh=fresh,
                      progress=progress, tensorboard=tensorboard, jobs=jobs, report=write_report,
                      executor=executor,
                      executor_options={"address": address, "cpus_per_cell": cpus_per_cell,
                                        "gpus_per_cell": gpus_per_cell, "slurm_partition": slurm_partition,
                                        "slurm_time_min": slurm_time, "slurm_gpus": slurm_gpus})
    _print_outcomes(batch, out, ["model", *batch.parameters])


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False), default="results")
@click.option("--format", "formats", default="csv,latex,markdown", show_default=True,
              help="Table formats: csv, latex, markdown.")
@click.option("--group-by", default=None,
              help="Row keys, e.g. model,latent_dim (default: model and every swept parameter).")
@click.option("--split", type=click.Choice(["validation", "test"]), default="test", show_default=True)
@click.option("--metrics", default=None, help="Comma-separated metric columns (default: all present).")
@click.option("--spread", type=click.Choice(["std", "ci95"]), default="std", show_default=True,
              help="Cells show mean ± std over seeds, or mean [95% t-interval].")
@click.option("--baselines", default="default",
              help="CSV of published numbers joined as marked rows ('none' to leave out).")
@click.option("--figures/--no-figures", default=True, show_default=True)
def report(results_dir, formats, group_by, split, metrics, spread, baselines, figures):
    """Rebuild RESULTS_DIR/results.csv from the run folders and write comparison tables
    (CSV, LaTeX, Markdown), plots and an index RESULTS_DIR/report/report.md.

    \b
    Example:
      genbench report results --group-by model,latent_dim
    """
    from genbench import api
    from genbench.reporting import tables as render

    written = api.report(results_dir, formats, group_by, split, metrics, spread,
                         None if baselines.lower() == "none" else baselines, figures)
    for table in written.tables:
        click.echo(render.render_text(table, spread))
        click.echo("")
    click.echo(f"wrote {written.results_csv}, {written.index} and {len(written.files) - 1} "
               "tables and figures")


@main.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False, exists=True))
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Evaluate images made elsewhere: an .npz/.npy array [N, C, H, W] or [N, H, W].")
@click.option("--dataset", default="mnist", show_default=True,
              help="With --samples: the dataset the images imitate.")
@click.option("--samples-range", type=click.Choice(["auto", "0-255", "-1-1", "0-1"]),
              default="auto", show_default=True, help="With --samples: the value range.")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="With --samples: where its metrics.json goes.")
@click.option("--metrics", default=None, help="Comma-separated metric names (default: all).")
@click.option("--split", type=click.Choice(["validation", "test"]), default="test",
              show_default=True, help="Tune on validation, report on test.")
@click.option("--num-samples", type=int, default=None,
              help="Generated samples for sample-based metrics (default: the budget's).")
@click.option("--budget", type=click.Choice(["smoke", "standard", "paper"]), default=None,
              help="Evaluation settings (default: the run's own budget; standard for --samples).")
@click.option("--feature-extractor", type=click.Choice(["classifier", "inception"]),
              default="classifier", show_default=True,
              help="Features of FID/KID/isc/precision/recall: the dataset's own classifier (no "
                   "download), or Inception-v3 when its weights are on disk.")
@click.option("--fid-vs-n", is_flag=True, help="Also write fid_vs_n.csv: FID against sample count.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--download/--no-download", default=True, show_default=True)
def evaluate(run_dirs, samples_file, dataset, samples_range, out, metrics, split, num_samples,
             budget, feature_extractor, fid_vs_n, device, data_dir, download):
    """(Re)evaluate saved runs, or a file of outside samples; results are merged into each
    run's metrics.json.

    \b
    Example:
      genbench evaluate results/mnist/vae/* --metrics mmd,log_likelihood
      genbench evaluate --samples my_gan_samples.npz --dataset mnist
    """
    from genbench.core.locking import run_lock
    from genbench.evaluation import METRICS, evaluate_run
    from genbench.evaluation.evaluate import evaluate_samples
    from genbench.reporting.summary import print_metrics_table

    names = _split_list(metrics) or None
    for name in names or []:
        METRICS.get(name)  # unknown names fail before any work
    if num_samples is not None and num_samples < 2:
        raise UsageError(f"--num-samples must be at least 2, got {num_samples}")
    if not run_dirs and samples_file is None:
        raise UsageError("give run folders to evaluate, or --samples FILE")
    documents = []
    if samples_file is not None:
        documents.append(evaluate_samples(samples_file, dataset, out, names, split, num_samples,
                                          budget or "standard", samples_range, device, data_dir,
                                          download, feature_extractor=feature_extractor))
    for run_dir in run_dirs:
        # Not while another process trains or evaluates it (a folder that is no run gets no lock
        # file beside it: evaluate_run rejects it).
        guard = run_lock(run_dir) if (Path(run_dir) / "config.json").is_file() else contextlib.nullcontext()
        with guard:
            documents.append(evaluate_run(run_dir, names, split, num_samples, device, data_dir,
                                          download, budget, feature_extractor=feature_extractor,
                                          fid_vs_n=fid_vs_n))
    from genbench.training.distributed import ranks_from_environment

    if ranks_from_environment().distributed:  # torchrun: every rank evaluated, rank 0 prints
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if not ranks_from_environment().is_main:
            return
    print_metrics_table(documents)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--size", type=int, default=None,
              help="Side in pixels (default: the training size); only resolution-free models "
                   "(cppn) take other sizes.")
@click.option("--num", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latent draws.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="PNG file to write (default: RUN_DIR/samples_<size>px.png).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def sample(run_dir, size, num, seed, out_file, device):
    """Render NUM samples of a trained run as one PNG grid and print its path.

    \b
    Example:
      genbench sample results/mnist/cppn/<run> --size 1080 --num 4
    """
    from genbench.evaluation.render import render_samples

    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    click.echo(str(render_samples(run_dir, size, num, seed, out_file, device)))


@main.command()
@click.argument("name")
@click.option("--schedule", type=click.Choice(["smoke", "short", "full"]), default="short",
              show_default=True, help="smoke (seconds, for tests), short (CPU minutes), full (the paper's).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder of the tables and checkpoints (default: results/reproductions/NAME).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--download/--no-download", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--fresh", is_flag=True, help="Delete this schedule's folder and start over.")
def reproduce(name, schedule, out, seed, device, threads, data_dir, download, progress, fresh):
    """Reproduce a published table (iwae-table1, wu2017-table2): train its models with the paper's
    settings, evaluate them the paper's way and write table.{md,csv,tex} and config.json, ours
    beside the published numbers, into OUT/SCHEDULE/. Re-running resumes from the checkpoints.

    \b
    Example:
      genbench reproduce iwae-table1 --schedule short
      genbench reproduce wu2017-table2 --schedule smoke --out /tmp/wu
    """
    import torch

    from genbench.reproductions import REPRODUCTIONS, run_reproduction
    from genbench.training.environment import resolve_device

    REPRODUCTIONS.get(name)  # an unknown name fails before any work, listing the known ones
    if threads is not None:
        torch.set_num_threads(threads)
    report, files = run_reproduction(name, schedule, out, resolve_device(device), seed, data_dir,
                                     download, progress, fresh)
    click.echo(files[0].read_text())
    click.echo("wrote " + ", ".join(str(path) for path in files))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Where the regenerated run goes (not the original's results folder).")
@click.option("--metrics", default=None,
              help="Comma-separated metrics to compare (default: every one the run has a value for).")
@click.option("--tolerance", type=float, default=1e-6, show_default=True,
              help="Relative difference (with the same absolute floor) counted as agreement.")
@click.option("--device", default="cpu", show_default=True, help="cpu (bit-reproducible) or cuda.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--download/--no-download", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def rerun(run_dir, out, metrics, tolerance, device, data_dir, download, progress):
    """Train RUN_DIR's saved config.json again from scratch into OUT, evaluate the same metrics and
    print saved and regenerated values side by side; exit 1 if any differs beyond --tolerance.

    \b
    Example:
      genbench rerun results/mnist/gvae/standard-seed0-f07090ba91 --out /tmp/regenerated
    """
    from genbench.experiments.rerun import comparison_rows
    from genbench.experiments.rerun import rerun as rerun_run
    from genbench.reporting.summary import format_table

    if not tolerance >= 0:
        raise UsageError(f"--tolerance must be >= 0, got {tolerance}")
    result = rerun_run(run_dir, out, _split_list(metrics) or None, tolerance, device, data_dir,
                       download, progress)
    click.echo(f"saved: {result.original}\nregenerated: {result.regenerated}")
    for caveat in result.caveats:
        click.echo(f"genbench: note: {caveat}", err=True)
    click.echo(format_table(["metric", "saved", "regenerated", "difference", "agrees"],
                            comparison_rows(result)))
    if not result.agrees:
        click.echo(f"some metrics differ by more than the tolerance {tolerance:g}", err=True)
        raise SystemExit(1)


@main.command(name="list")
@click.argument("what", type=click.Choice(["models", "datasets", "metrics"]))
def list_(what):
    """List registered models, datasets or metrics with a one-line description.

    \b
    Example:
      genbench list models
    """
    if what == "models":
        from genbench.models import get_model_class, model_names

        for name in model_names():
            click.echo(f"{name:10s} {get_model_class(name).description()}")
    elif what == "metrics":
        from genbench.evaluation import METRICS

        arrows = {"higher": "higher is better", "lower": "lower is better", "none": "not ranked"}
        for name in METRICS.names():
            entry = METRICS.get(name)
            click.echo(f"{name:32s} {arrows[entry.direction]:17s} {entry.unit:14s} "
                       f"{entry.description}")
    else:
        from genbench.data import DATASETS

        for name in DATASETS.names():
            info = DATASETS.get(name)
            click.echo(f"{name:14s} {info.description}")


if __name__ == "__main__":
    main()
