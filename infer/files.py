"""Which files to classify: a deterministic, streamed, loop-safe walk of files and folders."""
from __future__ import annotations

import functools
import importlib.util
import operator
import os
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

# Formats Pillow itself cannot open: the package that reads them, and the extra that installs it.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
HEIF_EXTRA = "pip install 'mnist-toolkit[heic]'"


@functools.lru_cache(maxsize=1)
def heif_available() -> bool:
    """pillow-heif is installed (found without importing it: `import infer` stays light)."""
    try:
        return importlib.util.find_spec("pillow_heif") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """Every file extension this tool reads: what Pillow opens (.png, .jpg, .bmp, .gif, .tif, .webp,
    .pgm, .avif where Pillow has AVIF, ...), and .heic/.heif when pillow-heif is installed."""
    from PIL import Image

    Image.init()
    known = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    return known | HEIF_EXTENSIONS if heif_available() else known


# Extensions every Pillow reads (its built-in PNG, JPEG, BMP, GIF and TIFF plugins): a file with one is
# listed without loading Pillow's registry of formats, which imports every plugin (~40 ms at start).
COMMON_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    """Whether a file name has an extension this tool reads (`image_extensions`, case-insensitive)."""
    dot = name.rfind(".")
    if dot <= 0:
        return False
    ext = name[dot:]
    if ext in COMMON_EXTENSIONS:
        return True
    ext = ext.lower()
    return ext in COMMON_EXTENSIONS or ext in image_extensions()


def missing_reader_hint(extension: str) -> str | None:
    """How to read files of `extension` that this installation skips, or None when no one can."""
    if extension in HEIF_EXTENSIONS:
        return HEIF_EXTRA
    if extension in (".avif", ".avifs"):
        return "a Pillow built with AVIF support (Pillow >= 11.3 wheels)"
    return None


@dataclass(frozen=True)
class Listed:
    """One entry of the walk: a file to classify, or something skipped and why."""

    path: str
    skipped: str | None = None


NOT_AN_IMAGE = "not an image file (extension)"
_NAME = operator.attrgetter("name")


def list_images(paths: Iterable[str | os.PathLike], recursive: bool = True,
                on_skip: Callable[[Listed], None] | None = None) -> Iterator[str]:
    """Yield the image files under `paths` in sorted order, as plain strings; report the rest to `on_skip`.

    Folders are walked (sorted by name, hidden entries skipped, symlinks followed, a loop or a second
    link to a folder visited once); inside folders, files without an image extension are skipped. A
    folder reached through a symbolic link is walked after the real folders of the same argument, so a
    folder reachable both ways is listed under its real path, once.
    Anything named in `paths` that is not a folder is yielded as is, whatever its extension, and even
    if it does not exist: the decoder says what is wrong with it, as an error row.
    """
    if isinstance(paths, (str, bytes, os.PathLike)):  # one path, not its characters
        paths = [paths]
    seen_dirs: set[tuple[int, int]] = set()
    skip = on_skip or (lambda item: None)
    linked: list[str] = []  # folders reached through a symlink, walked after the real ones

    def walk(folder: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
        except OSError as exc:
            skip(Listed(folder, f"cannot open folder: {exc.strerror}"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return  # a loop or a second link to a folder already walked
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_NAME)
        except OSError as exc:
            skip(Listed(folder, f"cannot list folder: {exc.strerror}"))
            return
        files: list[str] = []  # a run of images, yielded together (lists a large folder twice as fast)
        for entry in entries:
            name = entry.name
            if name[0] == ".":
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_file:
                if is_image_name(name):
                    files.append(entry.path)
                    if len(files) >= 4096:
                        yield from files
                        files.clear()
                    continue
            yield from files  # the images before this entry, before what is said of it
            files.clear()
            if is_file:
                skip(Listed(entry.path, NOT_AN_IMAGE))
            elif is_dir:
                if recursive:
                    if entry.is_symlink():
                        linked.append(entry.path)
                    else:
                        yield from walk(entry.path)
            elif entry.is_symlink():
                if is_image_name(name):  # an image's name: its row says the file is gone
                    files.append(entry.path)
                else:
                    skip(Listed(entry.path, "broken symbolic link"))
        yield from files

    for path in paths:
        path = os.fsdecode(os.fspath(path))  # bytes, as the OS gives names, too
        if os.path.isdir(path):
            yield from walk(path)
            while linked:  # each may link to more; those not already walked under their real path
                yield from walk(linked.pop(0))
        else:
            yield path  # named explicitly: try it, and report it if it is not an image (or not there)


def walk_images(paths: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[Listed]:
    """`list_images` as one stream of Listed entries, skipped ones in their place in the order."""
    skipped: deque[Listed] = deque()
    for path in list_images(paths, recursive, skipped.append):
        while skipped:
            yield skipped.popleft()
        yield Listed(path)
    yield from skipped


PATH_MAX = 4096  # Linux: no path in a list is longer, so a list holds a separator within its first PATH_MAX + 1 bytes


def read_path_list(stream: BinaryIO) -> Iterator[str]:
    """Paths from a list (`find ... | mnist-infer -`, `--files-from FILE`), streamed: one per line, or
    separated by NUL bytes when the list holds any (`find -print0`, `git ls-files -z`: names with
    newlines), as xargs -0 reads them.

    Paths are bytes, decoded as the OS decodes file names (so names that are not UTF-8 work). In a
    list of lines, a trailing carriage return (a list written on Windows) and empty lines are ignored.
    """
    read = getattr(stream, "read1", stream.read)  # what a pipe has now: paths stream as find prints them
    buf, sep = b"", None
    while True:
        chunk = read(65536)
        if chunk:
            buf += chunk
        if sep is None:
            if b"\0" in buf:
                sep = b"\0"
            elif len(buf) > PATH_MAX or not chunk:
                sep = b"\n"
            else:
                continue
        *items, buf = buf.split(sep)
        if not chunk:
            items.append(buf)
        for item in items:
            if sep == b"\n" and item.endswith(b"\r"):
                item = item[:-1]
            elif sep == b"\0" and not chunk and item == b"\n" and item is items[-1]:
                continue  # `printf 'a\0b\0\n'`: the list's own last line end, not a path
            if item:
                yield os.fsdecode(item)
        if not chunk:
            return
