"""The ``genbench`` command line: parse, build run specs, call down. Heavy imports stay inside
commands so ``genbench --help`` is fast."""

from __future__ import annotations

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
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got '{pair}'")
        overrides[key.strip()] = value.strip()
    return overrides


def build_specs(models, dataset, budget, seeds, overrides, image_size, limit):
    """One :class:`RunSpec` per model and seed, with typed, validated overrides.

    A key applies to every model whose config has it (``model.key`` scopes it to one model) and
    to the harness settings (``steps``, ``batch_size``...). A key that nothing has is an error.
    """
    from genbench.core.registry import closest
    from genbench.data import get_dataset
    from genbench.models import get_model_class
    from genbench.training import DataConfig, RunSpec
    from genbench.training.budgets import train_config_for

    info = get_dataset(dataset)
    classes = {name: get_model_class(name) for name in models}
    train_base = train_config_for(budget)
    train_keys = set(train_base.field_names())
    known = set(train_keys)
    for name, cls in classes.items():
        known |= set(cls.config_class.field_names())
        known |= {f"{name}.{key}" for key in cls.config_class.field_names()}
    for key in overrides:
        scope, dot, bare = key.rpartition(".")
        if dot and scope not in classes:
            raise UsageError(f"--set {key}: '{scope}' is not one of the models run ({', '.join(models)})")
        if key not in known:
            raise UsageError(f"--set: unknown config key '{key}'{closest(key, sorted(known))}")

    train_overrides = {k: v for k, v in overrides.items() if k in train_keys}
    train = train_base.with_overrides(train_overrides)
    train.validate()
    size = image_size or info.native_size
    image_shape = (info.channels, size, size)
    specs = []
    for name, cls in classes.items():
        fields = set(cls.config_class.field_names())
        mine = {k: v for k, v in overrides.items() if k in fields}
        mine |= {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith(f"{name}.")}
        config = cls.config_class().with_overrides(mine)
        config.validate(image_shape)
        for seed in seeds:
            specs.append(RunSpec(
                model=name, model_config=config.to_dict(),
                data=DataConfig(dataset=dataset, image_size=image_size, limit=limit),
                train=train, budget=budget, seed=seed,
            ))
    return specs


@main.command()
@click.option("--models", required=True, help="Comma-separated model names, e.g. gvae,vae.")
@click.option("--dataset", default="mnist", show_default=True, help="A registered dataset.")
@click.option("--budget", type=click.Choice(["smoke", "standard", "paper"]), default="smoke",
              show_default=True, help="Fixed step counts: smoke (minutes), standard, paper (GPU).")
@click.option("--seed", type=int, default=None, help="One seed (default 0).")
@click.option("--seeds", default=None, help="Several seeds, e.g. 0,1,2.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Typed config override, repeatable (latent_dim=500, gvae.dropout=0.2, steps=50).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the dataset's files (never written to).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--image-size", type=int, default=None, help="Square side in pixels (default: native).")
@click.option("--limit", type=int, default=None, help="Train on the first N training images only.")
@click.option("--fresh", is_flag=True, help="Delete existing run folders of these runs and start over.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="Download missing datasets into the user cache.")
@click.option("--tensorboard", is_flag=True, help="Also log losses to TensorBoard.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True,
              help="Evaluate each run when its training ends (metrics.json).")
def run(models, dataset, budget, seed, seeds, overrides, out, data_dir, device, image_size, limit,
        fresh, download, tensorboard, progress, evaluate):
    """Train models and write one run folder each under OUT/<dataset>/<model>/<run-id>/.

    Re-running the same command resumes unfinished runs and skips finished ones.

    \b
    Example:
      genbench run --models gvae,vae --dataset mnist --budget smoke
      genbench run --models wgan --set gradient_penalty=true --seeds 0,1,2
    """
    from genbench.evaluation import evaluate_run
    from genbench.reporting.summary import print_run_table
    from genbench.training import fit

    if seed is not None and seeds is not None:
        raise UsageError("give --seed or --seeds, not both")
    try:
        seed_list = [int(s) for s in _split_list(seeds)] if seeds is not None else [seed or 0]
    except ValueError:
        raise UsageError(f"--seeds expects comma-separated integers, got '{seeds}'") from None
    model_list = _split_list(models)
    if not model_list:
        raise UsageError("--models needs at least one model name")
    specs = build_specs(model_list, dataset, budget, seed_list, parse_overrides(overrides),
                        image_size, limit)
    _check_writable(Path(out))
    results = []
    for spec in specs:
        result = fit(spec, out, device=device, fresh=fresh, progress=progress,
                     tensorboard=tensorboard, data_dir=data_dir, allow_download=download)
        if result.status == "skipped":
            click.echo(f"skipped {spec.model} seed {spec.seed}: already complete in "
                       f"{result.run_dir.path}", err=True)
        if evaluate and not (result.run_dir.path / "metrics.json").is_file():
            click.echo(f"evaluating {spec.model} seed {spec.seed} ({budget} settings)", err=True)
            evaluate_run(result.run_dir, device=device, data_dir=data_dir,
                         allow_download=download)
        results.append((spec, result))
    print_run_table(results)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".genbench-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise GenbenchError(f"cannot write to output folder {out}: {error.strerror}") from None


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
        documents.append(evaluate_run(run_dir, names, split, num_samples, device, data_dir,
                                      download, budget, feature_extractor=feature_extractor,
                                      fid_vs_n=fid_vs_n))
    print_metrics_table(documents)


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
