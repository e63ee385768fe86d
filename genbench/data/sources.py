"""Where a dataset's files come from. First match wins:

1. ``--data-dir`` (``data_dir`` argument),
2. ``$GENBENCH_DATA``,
3. the user cache (``$XDG_CACHE_HOME/genbench`` or ``~/.cache/genbench``), where downloads land,
4. for MNIST only, the copy shipped inside the package.

A folder may hold the gzip IDX files flat (``<root>/train-images-idx3-ubyte.gz`` or
``<root>/mnist/train-images-idx3-ubyte.gz``) or in torchvision's layout
(``<root>/MNIST/raw/train-images-idx3-ubyte[.gz]``). Nothing is ever written into a folder the user
gave: downloads go to the user cache.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from genbench.core.errors import GenbenchError, UsageError
from genbench.core.io import file_digest
from genbench.core.paths import cache_dir
from genbench.data.registry import DatasetInfo

SHIPPED_ROOT = Path(__file__).parent / "shipped"
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class ResolvedFiles:
    """The files of one dataset found in one place; ``checksums`` keys the tensor cache."""

    origin: str  # "data-dir", "GENBENCH_DATA", "cache", "shipped"
    root: Path
    paths: dict[str, Path]
    checksums: dict[str, str]


def candidate_roots(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("data-dir", Path(data_dir)))
    if os.environ.get("GENBENCH_DATA"):
        roots.append(("GENBENCH_DATA", Path(os.environ["GENBENCH_DATA"])))
    roots.append(("cache", cache_dir() / "data"))
    return roots


def _idx_candidates(info: DatasetInfo, root: Path, file_name: str) -> list[Path]:
    """Places one IDX file may stand under ``root``, gzip first, then torchvision's decompressed."""
    folders = [root, root / info.name, root / info.torchvision_class / "raw"]
    plain = file_name.removesuffix(".gz")
    return [folder / name for folder in folders for name in (file_name, plain)]


def _find_idx(info: DatasetInfo, origin: str, root: Path) -> ResolvedFiles | None:
    paths: dict[str, Path] = {}
    for role, (file_name, _md5) in info.idx_files.items():
        found = next((p for p in _idx_candidates(info, root, file_name) if p.is_file()), None)
        if found is None:
            return None
        paths[role] = found
    checksums = {}
    for role, path in paths.items():
        file_name, expected = info.idx_files[role]
        actual = file_digest(path, "md5")
        if path.suffix == ".gz" and actual != expected:
            raise GenbenchError(
                f"{info.name}: checksum mismatch for {path} (MD5 {actual}, expected {expected}); "
                "the file is corrupt or not the original: delete it and download it again"
            )
        checksums[role] = actual
    return ResolvedFiles(origin, root, paths, checksums)


CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _find_torchvision(info: DatasetInfo, origin: str, root: Path) -> ResolvedFiles | None:
    if info.name == "cifar10" and (root / "cifar-10-batches-py").is_dir():
        folder = root / "cifar-10-batches-py"
        missing = [name for name in CIFAR10_BATCHES if not (folder / name).is_file()]
        if missing:
            raise GenbenchError(
                f"cifar10: {folder} lacks {', '.join(missing)}; it needs data_batch_1 to "
                "data_batch_5 and test_batch: delete the folder and download it again"
            )
        batches = [folder / name for name in CIFAR10_BATCHES]
        checksums = {p.name: file_digest(p, "md5") for p in batches}
        return ResolvedFiles(origin, root, {p.name: p for p in batches}, checksums)
    return None


def _find_in(info: DatasetInfo, origin: str, root: Path) -> ResolvedFiles | None:
    if not root.is_dir():
        return None
    if info.idx_files:
        return _find_idx(info, origin, root)
    return _find_torchvision(info, origin, root)


def expected_files(info: DatasetInfo) -> str:
    if info.idx_files:
        return ", ".join(name for name, _ in info.idx_files.values())
    return {"cifar10": "cifar-10-batches-py/"}.get(info.name, info.torchvision_class)


def _layouts(info: DatasetInfo) -> str:
    if info.idx_files:
        return f"flat, in <dir>/{info.name}/ or in torchvision's <dir>/{info.torchvision_class}/raw/"
    return "torchvision's layout, directly in <dir>"


def _download(info: DatasetInfo) -> None:
    """Download through torchvision's downloader (MD5-checked) into the user cache."""
    import torchvision.datasets as tvd

    dataset_class = getattr(tvd, info.torchvision_class)
    root = cache_dir() / "data"
    root.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        print(f"genbench: downloading {info.name} into {root}", file=sys.stderr)
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def resolve(
    info: DatasetInfo, data_dir: str | os.PathLike | None = None, allow_download: bool = True
) -> ResolvedFiles:
    """Find the dataset's files (see module docstring), downloading into the cache if allowed.

    A ``data_dir`` that is not a folder is a usage error: falling back to the cache or a download
    would silently use other files than the ones the user pointed at.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        problem = "is a file, not a folder" if Path(data_dir).exists() else "does not exist"
        raise UsageError(f"--data-dir {data_dir} {problem}; give the folder that holds the "
                         f"{info.name} files ({expected_files(info)})")
    roots = candidate_roots(data_dir)
    for origin, root in roots:
        found = _find_in(info, origin, root)
        if found is not None:
            return found
    if info.shipped:
        found = _find_in(info, "shipped", SHIPPED_ROOT)
        if found is not None:
            return found
    if allow_download:
        try:
            _download(info)
        except Exception as error:  # offline, DNS failure, bad checksum: all end the same way
            print(f"genbench: download of {info.name} failed: {error}", file=sys.stderr)
        else:
            found = _find_in(info, "cache", cache_dir() / "data")
            if found is not None:
                return found
    searched = ", ".join(str(root) for _, root in roots)
    raise GenbenchError(
        f"dataset '{info.name}' not found: expected {expected_files(info)} in one of {searched} "
        f"({_layouts(info)}); "
        "put them there or pass --data-dir DIR"
    )
