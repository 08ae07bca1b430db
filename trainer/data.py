"""MNIST on disk -> validated uint8 tensors in memory."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MNIST_FILES = {
    # name: (IDX magic, dims after the count, count)
    "train-images-idx3-ubyte": (0x00000803, (28, 28), 60000),
    "train-labels-idx1-ubyte": (0x00000801, (), 60000),
    "t10k-images-idx3-ubyte": (0x00000803, (28, 28), 10000),
    "t10k-labels-idx1-ubyte": (0x00000801, (), 10000),
}
ENV_VAR = "MNIST_DATA"


class DataError(Exception):
    """MNIST could not be found, fetched or read."""


@dataclass(frozen=True)
class MnistSplits:
    """The four MNIST arrays as uint8 images [N,28,28] and int64 labels [N], plus a fingerprint."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    fingerprint: str  # sha256 over the four arrays' bytes


def default_data_dir() -> Path:
    """`$MNIST_DATA`, else a per-user cache folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mnist-toolkit"


def _raw_dir(root: Path) -> Path:
    """Accept the torchvision root, its MNIST/ folder or the raw/ folder itself."""
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if (candidate / "train-images-idx3-ubyte").exists() or (candidate / "t10k-images-idx3-ubyte").exists():
            return candidate
    return root / "MNIST" / "raw"


def _missing_message(raw: Path) -> str:
    names = ", ".join(MNIST_FILES)
    return (
        f"MNIST not found in {raw} and it could not be downloaded. Put the four files {names} "
        f"(uncompressed) in {raw}, or point --data-dir / ${ENV_VAR} at a folder holding MNIST/raw/."
    )


def _download(root: Path, raw: Path) -> None:
    from torchvision.datasets import MNIST

    try:
        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
    except Exception as exc:  # offline: URLError, OSError, RuntimeError from torchvision's mirrors
        raise DataError(f"{_missing_message(raw)} (download failed: {type(exc).__name__})") from None


def validate_idx(path: Path, magic: int, dims: tuple[int, ...], count: int) -> None:
    """Check an IDX file's magic number, dimensions and length; raise DataError with what is wrong."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(4 + 4 * (1 + len(dims)))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if len(header) < 8:
        raise DataError(f"{path} is truncated ({size} bytes): not an MNIST IDX file")
    got_magic = int.from_bytes(header[:4], "big")
    if got_magic != magic:
        raise DataError(f"{path} has IDX magic 0x{got_magic:08x}, expected 0x{magic:08x}: wrong or corrupt file")
    values = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(1 + len(dims))]
    if values[0] != count or tuple(values[1:]) != dims:
        raise DataError(f"{path} holds {values[0]} items of shape {tuple(values[1:])}, expected {count} of {dims}")
    expected = len(header) + count * (dims[0] * dims[1] if dims else 1)
    if size != expected:
        raise DataError(f"{path} is {size} bytes, expected {expected}: truncated or corrupt")


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> MnistSplits:
    """Read (and, when allowed, download) MNIST; validate every file before trusting it."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = _raw_dir(root)
    if not all((raw / name).exists() for name in MNIST_FILES):
        if not download:
            raise DataError(_missing_message(raw) + " (--no-download was given)")
        _download(root, raw)
        raw = _raw_dir(root)
    for name, (magic, dims, count) in MNIST_FILES.items():
        validate_idx(raw / name, magic, dims, count)

    # Read the validated IDX files directly: importing torchvision's reader costs ~1.7 s of start-up.
    arrays = [_read_idx(raw / name, dims, count) for name, (_, dims, count) in MNIST_FILES.items()]
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(a.tobytes())
    train_images, train_labels, test_images, test_labels = (torch.from_numpy(a) for a in arrays)
    return MnistSplits(
        train_images, train_labels.long(), test_images, test_labels.long(), fingerprint=digest.hexdigest()
    )


def _read_idx(path: Path, dims: tuple[int, ...], count: int) -> np.ndarray:
    header = 4 + 4 * (1 + len(dims))
    return np.fromfile(path, dtype=np.uint8, offset=header).reshape(count, *dims)


def split_validation(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into (train indices, validation indices)."""
    if not 0 <= val_size < n:
        raise ValueError(f"validation size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values
