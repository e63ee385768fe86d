"""A small CNN classifier per dataset, used as the feature extractor of sample-quality metrics
(FID, KID, the Inception-style score ``isc``, precision/recall) when no ImageNet weights exist.

Input: images ``[B, C, H, W]`` in ``[-1, 1]`` at the dataset's native size (28 px for MNIST).
``features(x)`` is the 128-d penultimate layer (after ReLU) that FID/KID/PRC compare;
``forward(x)`` gives the class logits ``[B, num_classes]`` that ``isc`` and label histograms use.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 128


class DatasetClassifier(nn.Module):
    """Two conv blocks (32, 64 channels, 3x3, batch norm, ReLU, 2x2 max pooling), average pooling
    to 3x3, dropout 0.25, a 128-unit hidden layer (the feature layer) and a linear classifier:
    about 94 k parameters (under 0.4 MB in float32) for any input size."""

    def __init__(self, channels: int = 1, size: int = 28, num_classes: int = 10):
        super().__init__()
        self.channels, self.size, self.num_classes = channels, size, num_classes
        self.trunk = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Dropout(0.25),
        )
        self.hidden = nn.Sequential(nn.Linear(64 * 3 * 3, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in ``[-1, 1]`` → ``[B, 128]`` penultimate activations."""
        return self.hidden(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in ``[-1, 1]`` → logits ``[B, num_classes]``."""
        return self.head(self.features(x))
