"""What evaluating one run (or one file of outside samples) needs: the model if there is one, the
dataset, and the tensors several metrics share, computed once."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from genbench.core.errors import GenbenchError
from genbench.data import get_dataset, load_images, to_model_range
from genbench.evaluation.registry import NotApplicable
from genbench.evaluation.settings import EvalSettings
from genbench.training.checkpoint import CorruptCheckpoint
from genbench.training.checkpoint import decode as decode_checkpoint
from genbench.training.distributed import SINGLE, Ranks, chunk_seed, chunk_slices
from genbench.training.harness import build_model
from genbench.training.rundir import RunDir
from genbench.training.spec import RunSpec

SAMPLE_CHUNK = 500  # samples per model.sample call, each chunk seeded by its index
SAMPLES_STREAM = 1  # the evaluation seed's stream for generated samples (chunk_seed(seed, 1, i))


def load_trained_model(run_dir: RunDir, device: torch.device):
    """The model of a run folder with the weights of its final checkpoint, in eval mode."""
    config = run_dir.read_config()
    if config is None:
        raise GenbenchError(f"{run_dir.path} is not a run folder (no readable config.json)")
    spec, image_shape = _run_spec(run_dir, config)
    if not run_dir.checkpoint_path.is_file():
        raise GenbenchError(f"{run_dir.path} has no checkpoint.pt; train it first")
    model = build_model(spec, image_shape).to(device)
    try:
        state, run_id = decode_checkpoint(run_dir.checkpoint_path.read_bytes(), device)
    except CorruptCheckpoint as error:
        raise GenbenchError(f"{run_dir.checkpoint_path} is unusable ({error}); re-run the run's "
                            "training command to rebuild it from the previous checkpoint") from None
    if run_id is not None and run_id != spec.run_id:
        raise GenbenchError(f"{run_dir.checkpoint_path} belongs to run {run_id}, not "
                            f"{spec.run_id} (the config.json beside it)")
    if config.get("status") != "complete" or state["step"] != spec.train.steps:
        raise GenbenchError(f"{run_dir.path} is not finished (step {state['step']} of "
                            f"{spec.train.steps}); re-run its training command to finish it")
    model.load_state_dict(state["model"])
    model.eval()
    return spec, model, config, state["step"]


def _run_spec(run_dir: RunDir, config) -> tuple[RunSpec, tuple[int, int, int]]:
    """The run's spec and image shape from its config.json, or a one-line error when the file is
    JSON but not a genbench run config (another tool's config.json, a hand-edited one)."""
    try:
        spec = RunSpec.from_dict(config)
        channels, height, width = (int(v) for v in config["image_shape"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = (f"missing key {error}" if isinstance(error, KeyError)
                  else "not a JSON object" if not isinstance(config, dict)
                  else str(error).splitlines()[0])
        raise GenbenchError(f"{run_dir.path} is not a run folder: its config.json is not a genbench "
                            f"run config ({reason}); give a folder written by genbench run") from None
    return spec, (channels, height, width)


class EvalContext:
    """Lazily computed tensors shared by the metrics of one evaluation.

    Either ``model`` is a trained model (samples are drawn from it) or ``samples`` holds outside
    images ``[N, C, H, W]`` in ``[-1, 1]`` at the dataset's native size; metrics that need a model
    raise :class:`NotApplicable` for the latter.

    ``ranks``: the processes that share this evaluation (every rank builds the same context and
    computes every metric in the same order); samples, features, importance sampling and MMD
    are computed in shares and gathered, so every rank holds the numbers one process would.
    """

    def __init__(self, dataset: str, settings: EvalSettings, split: str, device: torch.device,
                 model=None, image_size: int | None = None, samples: torch.Tensor | None = None,
                 output_dir: Path | None = None, data_dir: str | Path | None = None,
                 allow_download: bool = True, feature_extractor: str = "classifier",
                 ranks: Ranks = SINGLE):
        self.dataset, self.settings, self.split, self.device = dataset, settings, split, device
        self.ranks = ranks
        self.model, self.image_size, self.output_dir = model, image_size, output_dir
        self.data_dir, self.allow_download = data_dir, allow_download
        self.feature_extractor = feature_extractor
        self.info = get_dataset(dataset)
        self.native_size = self.info.native_size
        self.model_size = model.image_shape[-1] if model is not None else self.native_size
        self._external_samples = samples
        self.cache: dict = {}  # tensors shared by several metrics (sigma choice, features...)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.settings.seed + offset)

    def require_model(self, *methods: str):
        """The model, if it has all ``methods``; else :class:`NotApplicable`."""
        if self.model is None:
            raise NotApplicable("needs a model, not only samples")
        missing = [f"{m}()" for m in methods if not callable(getattr(self.model, m, None))]
        if missing:
            raise NotApplicable(f"the model has no {', '.join(missing)}")
        return self.model

    def images(self, split: str, size: int | None = None) -> torch.Tensor:
        """``uint8 [N, C, H, W]`` images of ``split`` (``size`` None: native)."""
        return load_images(self.dataset, split, image_size=size, data_dir=self.data_dir,
                           allow_download=self.allow_download).images

    @functools.cached_property
    def real_native(self) -> torch.Tensor:
        """The evaluation split at native size, ``uint8 [N, C, H, W]``."""
        return self.images(self.split)

    def real_at_model_size(self, split: str | None = None) -> torch.Tensor:
        """Images of ``split`` at the size the model was trained on, ``uint8``."""
        return self.images(split or self.split, self.image_size)

    @property
    def resized(self) -> bool:
        return self.model_size != self.native_size

    @property
    def samples_native(self) -> torch.Tensor:
        """The ``num_generated`` samples of MMD and MS-SSIM (see :meth:`samples`)."""
        return self.samples(self.settings.num_generated)

    def samples(self, n: int) -> torch.Tensor:
        """``n`` samples, float ``[n, C, H, W]`` in ``[-1, 1]`` at native size (resized with
        antialiasing when the model was trained at another size), or the first ``n`` outside images.

        Drawn once per ``n`` in chunks of ``SAMPLE_CHUNK``; chunk ``i`` is drawn with a generator
        (and a global RNG, for models that draw from it) seeded by (evaluation seed, samples stream,
        ``i``), so it is the same whichever rank draws it: the ranks draw a share of the chunks each
        and gather them in order."""
        if self._external_samples is not None:
            return self._external_samples[:n]
        key = ("samples", n)
        if key not in self.cache:
            model = self.require_model("sample")
            if not getattr(model, "can_sample", True):
                raise NotApplicable("the model does not sample from a prior")
            chunks = chunk_slices(n, SAMPLE_CHUNK)
            mine = [self._sample_chunk(model, index, rows.stop - rows.start)
                    for index, rows in enumerate(chunks) if index in self.ranks.owned_chunks(len(chunks))]
            local = torch.cat(mine) if mine else None
            self.cache[key] = self.ranks.gather_rows(local)
        return self.cache[key]

    def _sample_chunk(self, model, index: int, count: int) -> torch.Tensor:
        """Chunk ``index`` of the samples: ``count`` images ``[count, C, H, W]`` at native size."""
        seed = chunk_seed(self.settings.seed, SAMPLES_STREAM, index)
        cuda = self.device.type == "cuda"
        forked = (torch.random.fork_rng(devices=[self.device], device_type="cuda") if cuda
                  else torch.random.fork_rng(devices=[]))
        with forked:
            torch.manual_seed(seed)  # for models that also draw from the global RNG
            samples = model.sample(count, generator=torch.Generator().manual_seed(seed)).float().cpu()
        if self.resized:
            samples = F.interpolate(samples, size=(self.native_size,) * 2, mode="bilinear",
                                    antialias=True, align_corners=False).clamp(-1, 1)
        return samples

    def real_subset(self, n: int, offset: int = 0) -> torch.Tensor:
        """The first ``n`` real images after ``offset`` at native size, float in ``[-1, 1]``."""
        return to_model_range(self.real_native[offset : offset + n])
