"""Training budgets: fixed step counts, the same for every model at a budget.

Measured wall times on 2 CPU cores are in the README; ``paper`` follows the source papers'
schedules in spirit (tens of epochs of MNIST) and is meant for a GPU.
"""

from __future__ import annotations

from genbench.core.errors import UsageError
from genbench.training.spec import TrainConfig

BUDGET_TRAIN_CONFIGS: dict[str, TrainConfig] = {
    "smoke": TrainConfig(steps=300, batch_size=64, log_every=10, checkpoint_every=100,
                         sample_every=100),
    "standard": TrainConfig(steps=2500, batch_size=64, log_every=10, checkpoint_every=500,
                            sample_every=500),
    "paper": TrainConfig(steps=50000, batch_size=64, log_every=50, checkpoint_every=2500,
                         sample_every=2500),
}


def train_config_for(budget: str) -> TrainConfig:
    if budget not in BUDGET_TRAIN_CONFIGS:
        raise UsageError(f"unknown budget '{budget}' (known: {', '.join(BUDGET_TRAIN_CONFIGS)})")
    return BUDGET_TRAIN_CONFIGS[budget]
