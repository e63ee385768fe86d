"""Device choice, seeding and the provenance recorded with every run."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genbench.core.errors import GenbenchError, UsageError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenbenchError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        return torch.device(name)
    raise UsageError(f"unknown device '{name}' (use auto, cpu or cuda)")


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed python, numpy and torch; on CPU also ask torch for deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit() -> str | None:
    """The commit of the genbench source tree, when it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def provenance(device: torch.device) -> dict[str, Any]:
    """Package and library versions, hardware and threads, for ``config.json``."""
    import genbench

    libraries = {"python": platform.python_version(), "torch": torch.__version__,
                 "numpy": np.__version__}
    for name in ("torchvision", "torch_fidelity", "pytorch_msssim", "scipy", "pandas"):
        try:
            module = __import__(name)
            libraries[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            pass
    hardware = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return {
        "genbench_version": genbench.__version__,
        "git_commit": git_commit(),
        "libraries": libraries,
        "hardware": hardware,
        "torch_threads": torch.get_num_threads(),
    }
