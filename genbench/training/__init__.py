"""The shared training harness."""

from genbench.training.harness import FitResult, build_model, fit
from genbench.training.rundir import RunDir
from genbench.training.spec import DataConfig, RunSpec, TrainConfig

__all__ = ["FitResult", "RunDir", "RunSpec", "DataConfig", "TrainConfig", "build_model", "fit"]
