"""MNIST as in-memory float tensors, found through ``torchvision.datasets.MNIST`` (import on call)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MNIST_FILES", "Mnist", "default_cache_dir", "resolve_data_root", "load_mnist",
           "iterate_batches"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
"""The four IDX files torchvision expects under ``ROOT/MNIST/raw/`` (each also as ``.gz``)."""


@dataclass(frozen=True)
class Mnist:
    """MNIST images scaled to [0, 1] as ``(N, 1, 28, 28)`` float32, labels as int64.

    Attributes:
        train_x: Training images.
        train_y: Training labels.
        test_x: Test images.
        test_y: Test labels.
        root: The data root the files were read from.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    root: Path

    def to(self, device: str | torch.device) -> Mnist:
        """The same data on ``device``."""
        return Mnist(self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                     self.test_y.to(device), self.root)

    def __repr__(self) -> str:
        return (f"Mnist(train={len(self.train_y)}, test={len(self.test_y)}, "
                f"root={str(self.root)!r})")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gradwatch``, else ``~/.cache/gradwatch``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradwatch"


def _has(raw: Path, suffix: str) -> bool:
    return all((raw / (name + suffix)).is_file() for name in MNIST_FILES)


def _writable(path: Path) -> bool:
    """Write access by permission bits too: root passes ``os.access`` on a ``r-x`` folder."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK) and bool(probe.stat().st_mode & stat.S_IWUSR)


def resolve_data_root(data_dir: str | os.PathLike[str] | None = None, *,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The root to hand torchvision: ``data_dir``, else ``$GRADWATCH_DATA``, else the cache.

    A read-only root that holds only the ``.gz`` files (torchvision unpacks beside them) is
    mirrored into ``cache_dir/MNIST/raw`` by symbolic links (copies where links fail), and the
    cache is returned instead.

    Args:
        data_dir: A folder containing ``MNIST/raw/``.
        cache_dir: Writable fallback (default `default_cache_dir`).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if data_dir is None:
        data_dir = os.environ.get("GRADWATCH_DATA") or cache
    root = Path(data_dir).expanduser()
    raw = root / "MNIST" / "raw"
    if _has(raw, "") or not _has(raw, ".gz") or _writable(raw):
        return root
    mirror = cache / "MNIST" / "raw"
    if mirror.resolve() == raw.resolve():
        return root
    mirror.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        src, dst = raw / (name + ".gz"), mirror / (name + ".gz")
        if dst.is_file():
            continue
        if dst.is_symlink():  # a dangling link from an older run
            dst.unlink()
        try:
            dst.symlink_to(src.resolve())
        except OSError:
            dst.write_bytes(src.read_bytes())
    return cache


def _missing_message(root: Path, err: Exception) -> str:
    return (f"MNIST is not under {str(root / 'MNIST' / 'raw')!r} and could not be downloaded "
            f"({type(err).__name__}: {err}). Put the four files {', '.join(f + '.gz' for f in MNIST_FILES)} "
            f"in DATA/MNIST/raw/ and pass `data_dir=DATA` (bench: `--data-dir DATA`) or set "
            f"GRADWATCH_DATA=DATA.")


def load_mnist(data_dir: str | os.PathLike[str] | None = None, *, train_limit: int | None = None,
               test_limit: int | None = None, download: bool = True,
               cache_dir: str | os.PathLike[str] | None = None) -> Mnist:
    """Loads MNIST into memory once: images as floats in [0, 1], labels as int64.

    Args:
        data_dir: Root containing ``MNIST/raw/`` (see `resolve_data_root` for the fallbacks).
        train_limit: Keep only the first ``train_limit`` training images (all when ``None``).
        test_limit: Keep only the first ``test_limit`` test images (all when ``None``).
        download: Let torchvision fetch missing files.
        cache_dir: Writable fallback for a read-only ``data_dir``.

    Raises:
        FileNotFoundError: The files are missing and could not be downloaded.
        ValueError: A limit is not a positive int, or a split's image and label counts differ.
    """
    for name, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"Expected `{name}` to be a positive int or None, but got {value!r}.")
    try:
        from torchvision.datasets import MNIST
    except ImportError as err:
        raise ImportError("gradwatch.bench.data needs torchvision: pip install torchvision "
                          "matplotlib (or pip install -e '.[bench]' in a gradwatch "
                          "checkout).") from err
    root = resolve_data_root(data_dir, cache_dir=cache_dir)
    splits = []
    for train, limit in ((True, train_limit), (False, test_limit)):
        try:
            ds = MNIST(str(root), train=train, download=download)
        except (RuntimeError, OSError) as err:
            raise FileNotFoundError(_missing_message(root, err)) from err
        if len(ds.data) != len(ds.targets):  # torchvision loads mismatched files silently
            split = "train" if train else "t10k"
            raise ValueError(f"MNIST under {str(root / 'MNIST' / 'raw')!r}: the {split} files "
                             f"hold {len(ds.data)} images but {len(ds.targets)} labels; replace "
                             f"them with the four files of one download.")
        images, labels = ds.data[:limit], ds.targets[:limit]
        splits += [images.unsqueeze(1).to(torch.float32).div_(255.0), labels.to(torch.int64)]
    return Mnist(*splits, root=root)


def iterate_batches(x: Tensor, y: Tensor, batch_size: int, *,
                    generator: torch.Generator | None = None, shuffle: bool = True):
    """Yields ``(x, y)`` minibatches of one epoch (the last one may be smaller).

    Args:
        x: Inputs, first dimension is the sample.
        y: Targets, same first dimension.
        batch_size: Samples per batch.
        generator: Random generator for the shuffle.
        shuffle: Draw a random permutation (else keep the order).
    """
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int, but got {batch_size!r}.")
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(x.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]
