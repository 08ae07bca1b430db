"""MNIST on disk -> validated uint8 tensors in memory."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import sys
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


def cache_dir() -> Path:
    """The per-user cache folder MNIST is downloaded into: $XDG_CACHE_HOME/mnist-toolkit or ~/.cache/mnist-toolkit."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mnist-toolkit"


def default_data_dir() -> Path:
    """`$MNIST_DATA`, else the per-user cache folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return cache_dir()


def named_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path, str] | None:
    """(folder, how the user named it) for --data-dir, else $MNIST_DATA; None when neither is given
    (the user cache, the one place that may lack MNIST)."""
    if data_dir is not None:
        return Path(data_dir), "--data-dir"
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    return None


def check_mnist_folder(root: str | os.PathLike) -> Path:
    """The raw/ folder holding MNIST under `root` (the torchvision root, its MNIST/ or raw/ itself), every
    file's header and size checked (no pixels are read: milliseconds).

    For a folder the user named, so that a typo or a wrong folder is refused before any work.
    Raises DataError in one line: no such folder, not a folder, which files are missing, which is
    truncated or of the wrong kind.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder")
    raw = _raw_dir(root)
    missing = [name for name in MNIST_FILES if not (raw / name).exists()]
    if missing:
        which = f" ({', '.join(missing)} missing)" if len(missing) < len(MNIST_FILES) else ""
        raise DataError(f"MNIST not found in {raw}{which}. {_put_files_here(raw)}")
    for name, (magic, dims, count) in MNIST_FILES.items():
        validate_idx(raw / name, magic, dims, count)
    return raw


def _raw_dir(root: Path) -> Path:
    """Accept the torchvision root, its MNIST/ folder or the raw/ folder itself."""
    for candidate in (root / "MNIST" / "raw", root / "raw", root):
        if (candidate / "train-images-idx3-ubyte").exists() or (candidate / "t10k-images-idx3-ubyte").exists():
            return candidate
    return root / "MNIST" / "raw"


def _put_files_here(raw: Path) -> str:
    return (f"Put the four files {', '.join(MNIST_FILES)} (uncompressed) in {raw}, "
            f"or point --data-dir / ${ENV_VAR} at a folder holding MNIST/raw/")


def _in_words(exc: BaseException) -> str:
    """A download failure as a phrase a user can act on (no exception class names)."""
    from urllib.error import HTTPError, URLError

    if isinstance(exc, HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, URLError) else exc
    if isinstance(reason, socket.gaierror):
        return "no network: the download server's name could not be resolved"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (offline, or a proxy that is not running?)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "the connection timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[0].lower() + reason.strerror[1:]
    return str(reason).strip() or "unknown error"


def _download(raw: Path) -> None:
    """Fetch the four files from torchvision's MNIST mirrors into raw/ (verified by MD5, then unpacked).

    On failure everything this attempt created (files and folders) is removed again and DataError
    says why in words.
    """
    from urllib.error import URLError

    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_and_extract_archive

    created = next((p for p in (*reversed(raw.parents), raw) if not p.exists()), None)  # the topmost new folder
    before = set(raw.iterdir()) if raw.is_dir() else set()
    try:
        # torchvision narrates the download on stdout; our stdout is for results.
        with contextlib.redirect_stdout(sys.stderr):
            for filename, md5 in MNIST.resources:
                for mirror in MNIST.mirrors:
                    try:
                        download_and_extract_archive(mirror + filename, raw, filename=filename, md5=md5,
                                                     remove_finished=True)
                        break
                    except (URLError, OSError, RuntimeError) as exc:  # RuntimeError: MD5 mismatch
                        failure = exc
                else:
                    raise DataError(f"MNIST is not in {raw} and could not be downloaded: {_in_words(failure)}. "
                                    f"{_put_files_here(raw)}.")
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif raw.is_dir():
            for leftover in set(raw.iterdir()) - before:
                leftover.unlink(missing_ok=True)
        raise


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
    """Read MNIST from data_dir (else $MNIST_DATA, else the user cache); validate every file before trusting it.

    Only the user cache is ever written: MNIST missing there is downloaded (unless `download` is
    False). A folder the user named (--data-dir, $MNIST_DATA) is only read, so a typo creates nothing.
    Raises DataError with what is missing or wrong and where.
    """
    explicit = data_dir is not None or bool(os.environ.get(ENV_VAR))
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = _raw_dir(root)
    missing = [name for name in MNIST_FILES if not (raw / name).exists()]
    if missing:
        where = f"MNIST not found in {raw} ({', '.join(missing)} missing)"
        if explicit:
            hint = "" if download else " (and --no-download was given)"
            raise DataError(f"{where}. {_put_files_here(raw)}; leave out --data-dir and ${ENV_VAR} to download "
                            f"MNIST into the user cache {cache_dir()}{hint}.")
        if not download:
            raise DataError(f"{where}, and --no-download forbids fetching it. {_put_files_here(raw)}.")
        _download(raw)
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
