"""The dataset registry. A new dataset is one :class:`DatasetInfo` entry here."""

from __future__ import annotations

from dataclasses import dataclass, field

from genbench.core.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """What genbench knows about one dataset.

    ``idx_files`` maps a role (``train-images``...) to ``(file name, MD5)`` for datasets stored as
    gzip IDX files (MNIST and its drop-ins); ``torchvision_class`` names the torchvision dataset
    class whose folder layout and downloader genbench uses.
    """

    name: str
    description: str
    channels: int
    native_size: int
    num_classes: int
    torchvision_class: str
    idx_files: dict[str, tuple[str, str]] = field(default_factory=dict)
    shipped: bool = False  # a copy lives inside the package (MNIST only)


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def get_dataset(name: str) -> DatasetInfo:
    return DATASETS.get(name)


def _add(info: DatasetInfo) -> None:
    DATASETS.add(info.name, info)


_add(
    DatasetInfo(
        name="mnist",
        description="MNIST handwritten digits, 28x28 grey, 60k train / 10k test (shipped offline)",
        channels=1,
        native_size=28,
        num_classes=10,
        torchvision_class="MNIST",
        idx_files={
            "train-images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        shipped=True,
    )
)
_add(
    DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST clothing articles, 28x28 grey, 60k train / 10k test",
        channels=1,
        native_size=28,
        num_classes=10,
        torchvision_class="FashionMNIST",
        idx_files={
            "train-images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train-labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            "test-images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "test-labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
    )
)
_add(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10 natural images, 32x32 RGB, 50k train / 10k test (torchvision files)",
        channels=3,
        native_size=32,
        num_classes=10,
        torchvision_class="CIFAR10",
    )
)
