"""Shared fixtures: an isolated user cache per test session, tiny model configs."""

from __future__ import annotations

import os

# Before numpy is imported: small BLAS calls are much slower with two OpenBLAS threads here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

TINY = {"base_width": 8, "latent_dim": 8, "comparator_width": 8}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tests run tiny models, whose many small ops are about ten times slower with two OpenMP
    threads than with one on a 2-core machine (measured: an AIS run took 34 s vs 3.3 s)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the tests away from the user's cache and data settings."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    old = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "GENBENCH_DATA")}
    os.environ["XDG_CACHE_HOME"] = str(cache)
    os.environ.pop("GENBENCH_DATA", None)
    yield cache
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def tiny_config(model_name: str):
    """The model's default config shrunk to a few thousand parameters, for fast tests."""
    from genbench.models import get_model_class

    cls = get_model_class(model_name)
    fields = cls.config_class.field_names()
    return cls.config_class().with_overrides({k: v for k, v in TINY.items() if k in fields})
