"""genbench: a benchmarking and evaluation suite for generative image models.

``genbench.run``, ``genbench.sweep`` and ``genbench.report`` mirror the command line
(see :mod:`genbench.api`); they are imported on first use so ``import genbench`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["run", "sweep", "report", "__version__"]


def __getattr__(name: str):
    if name in ("run", "sweep", "report"):
        from genbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'genbench' has no attribute '{name}'")
