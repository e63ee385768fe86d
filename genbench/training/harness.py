"""The one training loop every model goes through.

A model supplies its networks, optimizers and one step; the loop supplies the rest: device and
mixed precision, seeds, the batch order, checkpoints and exact resume, the progress bar,
``losses.csv``, sample grids and the checks for diverged losses.

Resume is exact because everything random is either restored from the checkpoint (python, numpy
and torch generator states; optimizer and batch-norm state) or a pure function of the seed and step
(the batch order: one permutation per epoch, seeded by ``(seed, epoch)``).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from genbench.core.errors import GenbenchError, UsageError
from genbench.core.io import atomic_write, write_bytes
from genbench.core.locking import run_lock
from genbench.data import load_images, to_model_range
from genbench.models.base import GenerativeModel, StepContext
from genbench.models.registry import get_model_class
from genbench.training.checkpoint import CheckpointStore
from genbench.training.distributed import (
    average_losses,
    barrier,
    check_batch_size,
    gather_objects,
    init_process_group,
    rank_seed,
    ranks_from_environment,
    shard,
    sync_batch_norm,
)
from genbench.training.environment import (
    provenance,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from genbench.training.rundir import STATUS_COMPLETE, STATUS_FAILED, STATUS_RUNNING, RunDir
from genbench.training.spec import RunSpec

CHECKPOINT_VERSION = 1
STOP_KEY = "_stop"  # in the losses all-reduced across ranks: a rank received SIGINT/SIGTERM


@dataclass
class FitResult:
    run_dir: RunDir
    status: str  # "trained", "resumed" or "skipped"
    steps: int
    train_time_s: float
    final_losses: dict[str, float] = field(default_factory=dict)
    parameters: int = 0


def build_model(spec: RunSpec, image_shape: tuple[int, int, int]) -> GenerativeModel:
    cls = get_model_class(spec.model)
    config = cls.config_class.from_dict(spec.model_config)
    return cls(config, image_shape)


class BatchStream:
    """Batches as a pure function of the step: the training images concatenated epoch after
    epoch, each epoch in its own seeded order. ``batch(step)`` is ``[B, C, H, W]`` in ``[-1, 1]``;
    ``labels(step)`` the class labels ``[B]`` (int64) of the same images."""

    def __init__(self, images_uint8: torch.Tensor, batch_size: int, seed: int,
                 labels: torch.Tensor | None = None):
        self.images = images_uint8
        self.all_labels = labels
        self.batch_size = batch_size
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.images), generator=generator)}
        return self._orders[epoch]

    def batch(self, step: int) -> torch.Tensor:
        return to_model_range(self.images[self._indices(step)])

    def labels(self, step: int) -> torch.Tensor:
        return self.all_labels[self._indices(step)].long()

    def _indices(self, step: int) -> torch.Tensor:
        n = len(self.images)
        start = step * self.batch_size
        pieces, remaining = [], self.batch_size
        while remaining:
            epoch, offset = divmod(start, n)
            take = min(remaining, n - offset)
            pieces.append(self._order(epoch)[offset : offset + take])
            start, remaining = start + take, remaining - take
        return torch.cat(pieces).to(self.images.device)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None) -> None:
    """Save ``[N, C, H, W]`` images in ``[-1, 1]`` as one PNG grid (atomically)."""
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    with atomic_write(path) as handle:
        save_image(images.float().cpu(), handle, nrow=nrow, normalize=True, value_range=(-1, 1),
                   format="png")


def _thread_history(earlier: dict, start_step: int, threads: int) -> list[dict[str, int]]:
    """Every stretch of training with its torch thread count, ``[{"from_step", "torch_threads"}]``.

    Thread count changes float32 reduction order, so a run resumed with another count is correct
    but not bit-identical to an uninterrupted one; the history lets ``genbench rerun`` say so.
    Folders written before the history existed recorded only their latest count, taken here as
    the count from step 0.
    """
    history = list(earlier.get("thread_history") or [])
    if not history and earlier.get("torch_threads") is not None:
        history = [{"from_step": 0, "torch_threads": int(earlier["torch_threads"])}]
    if not history or history[-1]["torch_threads"] != threads:
        history.append({"from_step": start_step, "torch_threads": threads})
    return history


class _Interval:
    """Means of each loss over one logging interval."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.counts[name] for name in self.sums}


def _diverged(what: str, step: int, last_checkpoint: int, run_dir: RunDir) -> GenbenchError:
    kept = (f"last good checkpoint (step {last_checkpoint}) kept"
            if last_checkpoint else "no checkpoint was written yet")
    return GenbenchError(f"{run_dir.path}: {what} at step {step + 1}; training stopped, {kept}; "
                         "lower the learning rate (--set learning_rate=...) and re-run with --fresh")


def _check_finite(losses: dict[str, float], step: int, last_checkpoint: int, run_dir: RunDir):
    for name, value in losses.items():
        if not math.isfinite(value):
            raise _diverged(f"loss '{name}' is {value}", step, last_checkpoint, run_dir)


def _diverged_step(error: Exception, model: torch.nn.Module, step: int, last_checkpoint: int,
                   run_dir: RunDir) -> GenbenchError | None:
    """A step that raised because the weights, or activations computed from huge weights, became
    NaN or infinite (torch's distributions reject such parameters: "found invalid values") reads
    as the diverged loss it is; any other error is a bug to show."""
    if all(torch.isfinite(p).all() for p in model.parameters()) and "invalid values" not in str(error):
        return None
    return _diverged("the weights or activations became NaN or infinite", step, last_checkpoint,
                     run_dir)


def fit(
    spec: RunSpec,
    out: str | Path,
    device: str = "auto",
    fresh: bool = False,
    progress: bool = True,
    tensorboard: bool = False,
    data_dir: str | Path | None = None,
    allow_download: bool = True,
    amp: bool = True,
    stop_after: int | None = None,
) -> FitResult:
    """Train ``spec`` into ``<out>/<dataset>/<model>/<run-id>/``, resuming or skipping as needed.

    ``stop_after`` ends the process's work after that many steps as if it were interrupted
    (checkpoint written, status left ``running``): resume tests use it.
    """
    spec.train.validate()
    run_dir = RunDir.for_spec(out, spec)
    with run_lock(run_dir.path):
        return _fit_locked(spec, run_dir, device, fresh, progress, tensorboard, data_dir,
                           allow_download, amp, stop_after)


class RunInterrupted(GenbenchError):
    """SIGINT or SIGTERM during training: a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self):  # picklable, so it comes back from a --jobs worker process
        return type(self), (str(self), self.signum)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[list[int]]:
    """While training, SIGINT and SIGTERM only set a flag: the loop finishes its step, writes a
    checkpoint and stops. A second signal acts at once (the default behaviour)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        for number, previous in saved.items():
            signal.signal(number, previous)

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in saved:
        signal.signal(number, handler)
    try:
        yield received
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous)


# Free space asked for before training: checkpoint, previous checkpoint and a temporary copy
# being written (weights plus optimizer state, about 3x the weights for Adam), plus sample grids.
DISK_MARGIN_BYTES = 20 * 2**20


def _check_disk_space(run_dir: RunDir, model: torch.nn.Module) -> None:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    needed = 3 * 4 * weights + DISK_MARGIN_BYTES
    free = shutil.disk_usage(run_dir.path.parent).free
    if free < needed:
        raise GenbenchError(f"not enough free disk space in {run_dir.path.parent}: a run of this "
                            f"model needs about {needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")


def _fit_locked(spec, run_dir, device, fresh, progress, tensorboard, data_dir, allow_download, amp,
                stop_after) -> FitResult:
    ranks = ranks_from_environment()
    if fresh and run_dir.path.exists() and ranks.is_main:
        shutil.rmtree(run_dir.path)
    store = CheckpointStore(run_dir.checkpoint_path, spec.run_id)
    if run_dir.is_complete():
        if store.verify():
            config = run_dir.read_config() or {}
            return FitResult(run_dir, "skipped", spec.train.steps, config.get("train_time_s", 0.0),
                             config.get("final_losses", {}), config.get("parameters", 0))
        print(f"genbench: warning: {run_dir.checkpoint_path} of a finished run is missing or "
              "corrupt; redoing its last steps from the previous checkpoint", file=sys.stderr)

    torch_device = resolve_device(device)
    if ranks.distributed:
        if torch_device.type == "cuda":
            torch_device = torch.device("cuda", ranks.local_rank)
        init_process_group(ranks, torch_device)
        check_batch_size(spec.train.batch_size, ranks)
        barrier(ranks)  # rank 0 has removed the folder of a --fresh run
    seed_everything(spec.seed, torch_device)  # the same initial weights on every rank
    data = load_images(spec.data.dataset, "train", spec.data.image_size, spec.data.limit,
                       data_dir=data_dir, allow_download=allow_download)
    image_shape = tuple(data.images.shape[1:])
    model = build_model(spec, image_shape)
    per_rank_batch_norm = sync_batch_norm(model, torch_device, ranks)
    model = model.to(torch_device)
    model.build_optimizers()
    if ranks.distributed and not type(model).trains_by_gradient:
        raise UsageError(f"{spec.model} is fitted in closed form, not by gradient steps: train it "
                         "in one process (without --nproc)")
    if ranks.is_main:
        run_dir.path.parent.mkdir(parents=True, exist_ok=True)
        _check_disk_space(run_dir, model)
    use_amp = amp and torch_device.type == "cuda"
    scaler = torch.amp.GradScaler(torch_device.type, enabled=use_amp)
    ctx = StepContext(torch_device, scaler if use_amp else None, ranks)
    stream = BatchStream(data.images.to(torch_device), spec.train.batch_size, spec.seed,
                         data.labels.to(torch_device) if model.conditional else None)
    if ranks.distributed and ranks.rank > 0:  # rank 0 keeps the single-process random stream
        seed_everything(rank_seed(spec.seed, ranks.rank), torch_device)

    start_step, train_time, rows = 0, 0.0, []
    interval = _Interval()
    status = "trained"
    state = store.load(torch_device)
    if state is not None:
        model.load_state_dict(state["model"])
        model.load_optimizer_state(state["optimizers"])
        scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_ranks") or [state["rng"]]
        if len(per_rank) == ranks.world_size:
            set_rng_state(per_rank[ranks.rank])
        else:  # another number of processes: correct, but not bit-identical, continuation
            seed_everything(rank_seed(spec.seed * 7 + state["step"], ranks.rank), torch_device)
        start_step, train_time = state["step"], state["train_time_s"]
        rows = [r for r in run_dir.read_losses() if int(r["step"]) <= start_step]
        interval.sums, interval.counts = state["interval"]
        status = "resumed"

    earlier = run_dir.read_config() or {}
    info = spec.to_dict() | provenance(torch_device) | {
        "run_id": spec.run_id,
        "status": STATUS_RUNNING,
        "processes": ranks.world_size,  # training processes (data-parallel ranks)
        "parameters": count_parameters(model),
        "image_shape": list(image_shape),
        "data_origin": data.origin,
        "data_checksums": data.checksums,
        "mixed_precision": use_amp,
    }
    if per_rank_batch_norm:
        info["batch_norm"] = (f"per-rank statistics over {spec.train.batch_size // ranks.world_size} "
                              "images (SyncBatchNorm needs CUDA)")
    info["thread_history"] = _thread_history(earlier if status == "resumed" else {}, start_step,
                                             info["torch_threads"])
    if status == "resumed" and earlier.get("torch_threads") not in (None, info["torch_threads"]):
        print(f"genbench: warning: resuming {spec.model} seed {spec.seed} with "
              f"{info['torch_threads']} torch threads, not the {earlier['torch_threads']} it started "
              "with: the result will be correct but not bit-identical to an uninterrupted run",
              file=sys.stderr)
    main = ranks.is_main  # only rank 0 writes files and shows progress
    if main:
        run_dir.write_config(info)
    writer = _tensorboard_writer(run_dir) if tensorboard and main else None
    columns = ["step", "images", "time_s", *model.loss_names]

    def checkpoint(step: int) -> None:
        per_rank_rng = gather_objects(rng_state(), ranks)  # every rank takes part
        if not main:
            return
        run_dir.write_losses(columns, rows)
        store.save({
            "version": CHECKPOINT_VERSION,
            "step": step,
            "train_time_s": train_time,
            "model": model.state_dict(),
            "optimizers": model.optimizer_state(),
            "scaler": scaler.state_dict(),
            "rng": per_rank_rng[0],
            "rng_ranks": per_rank_rng,
            "interval": (interval.sums, interval.counts),
        })

    def grid(path: Path) -> None:
        generator = torch.Generator().manual_seed(spec.train.grid_seed)
        save_grid(model.sample(spec.train.grid_size, generator=generator), path)

    total = spec.train.steps
    end = total if stop_after is None else min(total, start_step + stop_after)
    bar = _progress_bar(spec, start_step, total, progress and main)
    last_checkpoint, losses = start_step, {}
    model.train()
    tick = time.perf_counter()
    try:
        with _deferred_signals() as received:
            for step in range(start_step, end):
                batch = shard(stream.batch(step), ranks)
                try:
                    if model.conditional:  # class-conditional models also get the labels
                        losses = model.train_step(batch, step, ctx, labels=shard(stream.labels(step), ranks))
                    else:
                        losses = model.train_step(batch, step, ctx)
                except (RuntimeError, ValueError) as error:
                    diverged = _diverged_step(error, model, step, last_checkpoint, run_dir)
                    if diverged is None:
                        raise
                    raise diverged from None
                if use_amp:
                    scaler.update()
                if ranks.distributed:  # the global batch's losses, and a signal seen by any rank
                    losses = average_losses(losses | {STOP_KEY: float(bool(received))}, ranks)
                    if losses.pop(STOP_KEY) > 0 and not received:
                        received.append(signal.SIGTERM)
                _check_finite(losses, step, last_checkpoint, run_dir)
                interval.add(losses)
                done = step + 1
                if done % spec.train.log_every == 0 or done == total:
                    now = time.perf_counter()
                    train_time += now - tick
                    tick = now
                    row = {"step": done, "images": done * spec.train.batch_size,
                           "time_s": round(train_time, 3), **interval.means()}
                    rows.append(row)
                    interval = _Interval()
                    if writer is not None:
                        for name, value in row.items():
                            if name not in ("step", "images", "time_s"):
                                writer.add_scalar(f"loss/{name}", value, done)
                    if bar is not None:
                        bar.set_postfix(_postfix(row, spec.train.batch_size, bar), refresh=False)
                if bar is not None:
                    bar.update(1)
                if main and (done % spec.train.sample_every == 0 or done == total):
                    grid(run_dir.samples_dir / f"step_{done:07d}.png")
                if received or done % spec.train.checkpoint_every == 0 or done in (total, end):
                    train_time += time.perf_counter() - tick
                    tick = time.perf_counter()
                    checkpoint(done)
                    last_checkpoint = done
                if received and done < total:
                    name = signal.Signals(received[0]).name
                    raise RunInterrupted(f"{name} at step {done} of {total}: checkpoint saved in "
                                         f"{run_dir.path}; re-run the same command to resume",
                                         received[0])
    except GenbenchError as error:
        if not isinstance(error, RunInterrupted) and main:
            info["status"] = STATUS_FAILED
            run_dir.write_config(info)
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()

    if end < total:  # stopped early on purpose: resumable, not complete
        return FitResult(run_dir, status, end, train_time, losses, info["parameters"])
    if not main:
        barrier(ranks)  # rank 0 is writing the final files
        return FitResult(run_dir, status, total, train_time, {}, info["parameters"])
    write_bytes(run_dir.samples_path, (run_dir.samples_dir / f"step_{total:07d}.png").read_bytes())
    write_figures = getattr(model, "write_figures", None)
    if callable(write_figures):  # a model's own figures (e.g. InfoGAN's codes), for the report
        generator = torch.Generator().manual_seed(spec.train.grid_seed)
        write_figures(run_dir.figures_dir, generator)
    final = {k: v for k, v in (rows[-1] if rows else {}).items()
             if k not in ("step", "images", "time_s") and v not in ("", None)}
    final = {k: float(v) for k, v in final.items()}
    info |= {
        "status": STATUS_COMPLETE,
        "train_time_s": round(train_time, 3),
        "images_per_s": round(total * spec.train.batch_size / max(train_time, 1e-9), 1),
        "final_losses": final,
    }
    run_dir.write_config(info)
    barrier(ranks)
    return FitResult(run_dir, status, total, train_time, final, info["parameters"])


def _postfix(row: dict[str, Any], batch_size: int, bar) -> dict[str, str]:
    shown = {k: f"{v:.3g}" for k, v in row.items() if k not in ("step", "images", "time_s")}
    rate = bar.format_dict.get("rate")
    if rate:
        shown["img/s"] = f"{rate * batch_size:.0f}"
    return shown


def _progress_bar(spec: RunSpec, start: int, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # Redrawn twice a second on a terminal; in a log file (CI, cluster jobs) one line a minute.
    interval = 0.5 if sys.stderr.isatty() else 60
    return tqdm(total=total, initial=start, desc=f"{spec.model} seed {spec.seed}", unit="step",
                file=sys.stderr, dynamic_ncols=True, mininterval=interval, leave=True)


def _tensorboard_writer(run_dir: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GenbenchError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir.path / "tensorboard"))
