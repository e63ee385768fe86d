"""Where genbench keeps its user cache (downloads, decoded tensors)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/genbench``, else ``~/.cache/genbench``. Created on first write, not here."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "genbench"
