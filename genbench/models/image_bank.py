"""The first training images a model sees, kept in its state dict for what it shows without a prior.

Models with no prior to sample from (the paired translators, ``deepsim-inversion``) show what
they do to training images instead; keeping those images in buffers means a checkpoint shows the
same ones.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainingImageBank:
    """Keeps the first ``capacity`` training images ``[C, H, W]`` in ``[-1, 1]`` that
    :meth:`add` is given, in two buffers of ``owner`` named by the caller (they are checkpoint
    keys): ``images`` ``[capacity, C, H, W]`` and ``count``, an int64 scalar.

    ``dtype=torch.uint8`` stores each value as the code ``round((x + 1) * 127.5)`` in ``0..255``
    (the datasets' own resolution, a quarter of float32's memory); a float dtype (None: the
    default one) stores the images as given. Not a module: as a submodule, its buffers would
    move to other state-dict keys.
    """

    def __init__(self, owner: nn.Module, images: str, count: str, capacity: int,
                 image_shape: tuple[int, ...], dtype: torch.dtype | None = None):
        owner.register_buffer(images, torch.zeros(capacity, *image_shape, dtype=dtype))
        owner.register_buffer(count, torch.zeros((), dtype=torch.long))
        # Names, not tensors: moving the owner to a device replaces its buffers.
        self._owner, self._images, self._count = owner, images, count
        self._full = False  # saves a device sync per step once the bank is full

    @property
    def images(self) -> torch.Tensor:
        """The whole buffer ``[capacity, C, H, W]``, as stored (zeros where nothing is kept yet)."""
        return getattr(self._owner, self._images)

    def __len__(self) -> int:
        """How many images are kept (a device sync)."""
        return int(getattr(self._owner, self._count))

    @torch.no_grad()
    def add(self, batch: torch.Tensor) -> None:
        """Keep the first images of ``batch`` (``[B, C, H, W]`` in ``[-1, 1]``) while there is room."""
        if self._full:
            return
        bank, filled = self.images, len(self)
        take = batch[: len(bank) - filled].detach().float()
        if len(take):
            if bank.dtype == torch.uint8:
                take = ((take + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            bank[filled : filled + len(take)] = take.to(bank.device)
            getattr(self._owner, self._count).add_(len(take))
        self._full = filled + len(take) >= len(bank)

    def kept(self) -> torch.Tensor:
        """The kept images, float ``[K, C, H, W]`` in ``[-1, 1]`` (``K`` up to ``capacity``)."""
        images = self.images[: len(self)]
        if images.dtype == torch.uint8:
            return images.float() / 127.5 - 1
        return images.float()
