"""Which files to classify: a deterministic, streamed, loop-safe walk of files and folders."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

from PIL import Image


def image_extensions() -> frozenset[str]:
    """Every file extension Pillow can open (.png, .jpg, .bmp, .gif, .tif, .webp, .pgm, ...)."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass(frozen=True)
class Listed:
    """One entry of the walk: a file to classify, or something skipped and why."""

    path: str
    skipped: str | None = None


def _key(entry: os.DirEntry) -> str:
    return entry.name


def walk_images(paths: Iterable[str], recursive: bool = True) -> Iterator[Listed]:
    """Yield image files under `paths` in sorted order; folders are walked, symlinks followed once.

    Files named on the command line are always tried, whatever their extension; inside folders,
    hidden entries are skipped and files without an image extension are reported as skipped.
    A symlink loop (or two links to one folder) is visited once.
    """
    extensions = image_extensions()
    seen_dirs: set[tuple[int, int]] = set()

    def walk(folder: str) -> Iterator[Listed]:
        try:
            st = os.stat(folder)
        except OSError as exc:
            yield Listed(folder, f"cannot open folder: {exc.strerror}")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return  # a loop or a second link to a folder already walked
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_key)
        except OSError as exc:
            yield Listed(folder, f"cannot list folder: {exc.strerror}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(folder, entry.name)
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if recursive:
                    yield from walk(path)
            elif is_file:
                if os.path.splitext(entry.name)[1].lower() in extensions:
                    yield Listed(path)
                else:
                    yield Listed(path, "not an image file (extension)")
            elif entry.is_symlink():
                yield Listed(path, "broken symbolic link")

    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            yield from walk(path)
        else:
            yield Listed(path)  # named explicitly: try it, and report it if it is not an image
