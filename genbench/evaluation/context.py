"""What evaluating one run needs: the trained model, its data and the tensors metrics share."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from genbench.core.errors import GenbenchError
from genbench.data import get_dataset, load_images, to_model_range
from genbench.evaluation.settings import EvalSettings
from genbench.training.harness import build_model
from genbench.training.rundir import RunDir
from genbench.training.spec import RunSpec


def load_trained_model(run_dir: RunDir, device: torch.device):
    """The model of a run folder with the weights of its final checkpoint, in eval mode."""
    config = run_dir.read_config()
    if config is None:
        raise GenbenchError(f"{run_dir.path} is not a run folder (no readable config.json)")
    if not run_dir.checkpoint_path.is_file():
        raise GenbenchError(f"{run_dir.path} has no checkpoint.pt; train it first")
    spec = RunSpec.from_dict(config)
    model = build_model(spec, tuple(config["image_shape"])).to(device)
    state = torch.load(run_dir.checkpoint_path, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return spec, model, config, state["step"]


class EvalContext:
    """Lazily computed tensors shared by the metrics of one evaluation."""

    def __init__(self, run_dir: RunDir, spec: RunSpec, model, settings: EvalSettings, split: str,
                 device: torch.device, data_dir: str | Path | None = None,
                 allow_download: bool = True):
        self.run_dir, self.spec, self.model = run_dir, spec, model
        self.settings, self.split, self.device = settings, split, device
        self.data_dir, self.allow_download = data_dir, allow_download
        self.info = get_dataset(spec.data.dataset)
        self.model_size = model.image_shape[-1]
        self.native_size = self.info.native_size
        self.cache: dict = {}  # tensors shared by several metrics (sigma choice, reconstructions)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.settings.seed + offset)

    @functools.cached_property
    def real_native(self) -> torch.Tensor:
        """The split's images at the dataset's native size, ``uint8 [N, C, H, W]``."""
        return load_images(self.spec.data.dataset, self.split, data_dir=self.data_dir,
                           allow_download=self.allow_download).images

    @functools.cached_property
    def real_labels(self) -> torch.Tensor:
        return load_images(self.spec.data.dataset, self.split, data_dir=self.data_dir,
                           allow_download=self.allow_download).labels

    def real_at_model_size(self, split: str | None = None) -> torch.Tensor:
        """Images of ``split`` at the size the model was trained on, ``uint8``."""
        return load_images(self.spec.data.dataset, split or self.split,
                           image_size=self.spec.data.image_size, data_dir=self.data_dir,
                           allow_download=self.allow_download).images

    @property
    def resized(self) -> bool:
        return self.model_size != self.native_size

    @functools.cached_property
    def samples_native(self) -> torch.Tensor:
        """``num_generated`` samples, float ``[N, C, H, W]`` in ``[-1, 1]`` at native size
        (resized with antialiasing when the model was trained at another size)."""
        if not getattr(self.model, "can_sample", True):
            from genbench.evaluation.registry import NotApplicable

            raise NotApplicable("the model does not sample from a prior")
        generator = self.generator(1)
        chunks = []
        remaining = self.settings.num_generated
        while remaining:
            n = min(remaining, 500)
            chunks.append(self.model.sample(n, generator=generator).float().cpu())
            remaining -= n
        samples = torch.cat(chunks)
        if self.resized:
            samples = F.interpolate(samples, size=(self.native_size,) * 2, mode="bilinear",
                                    antialias=True, align_corners=False).clamp(-1, 1)
        return samples

    def real_subset(self, n: int, offset: int = 0) -> torch.Tensor:
        """The first ``n`` real images after ``offset`` at native size, float in ``[-1, 1]``."""
        return to_model_range(self.real_native[offset : offset + n])
