"""Where a training run writes: the checkpoint and its side files, named after it, checked before training."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infer.atomic import atomic_path

SIDE_FILES = ("metrics.json", "curves.png", "weights.png", "confusion.png")


class OutputError(Exception):
    """The output location cannot be used (a folder that cannot be made, a folder that cannot be written)."""


@dataclass(frozen=True)
class OutputPaths:
    """A checkpoint NAME.pt and its side files beside it: NAME.metrics.json, NAME.curves.png,
    NAME.weights.png, NAME.confusion.png, so runs sharing a folder never overwrite each other's."""

    model: Path
    summary: Path
    curves: Path | None = None
    weights: Path | None = None
    confusion: Path | None = None

    @classmethod
    def beside(cls, model: Path, plots: bool = True) -> "OutputPaths":
        side = {name: model.with_name(f"{model.stem}.{name}") for name in SIDE_FILES}
        return cls(
            model=model,
            summary=side["metrics.json"],
            curves=side["curves.png"] if plots else None,
            weights=side["weights.png"] if plots else None,
            confusion=side["confusion.png"] if plots else None,
        )

    def all(self) -> list[Path]:
        return [p for p in (self.model, self.summary, self.curves, self.weights, self.confusion) if p is not None]

    def write_summary(self, summary: dict) -> None:
        """NAME.metrics.json, written atomically."""
        with atomic_path(self.summary) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")


def claim_output_folder(model: Path) -> list[Path]:
    """Make sure the checkpoint's folder exists and can be written; returns the folders made (top first).

    Raises OutputError naming the folder and the reason: a file where a folder should be, no
    permission, a place where folders cannot be made (e.g. /proc).
    """
    folder = model.parent
    missing = []
    existing = folder
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"cannot put {model} there: {existing} is a file, not a folder")
    made: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            made.append(path)
    except OSError as exc:
        release_output_folder(made)
        raise OutputError(f"cannot create the folder {path}: {_in_words(exc)}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{model.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        release_output_folder(made)
        raise OutputError(f"cannot write in {folder}: {_in_words(exc)}") from None
    return made


def _in_words(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:  # the parent exists, yet mkdir says it does not: e.g. inside /proc
        return "this place does not allow new folders"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return (exc.strerror or str(exc)).lower()


def release_output_folder(made: list[Path]) -> None:
    """Remove the folders claim_output_folder made, deepest first, as long as they are empty."""
    for path in reversed(made):
        try:
            os.rmdir(path)
        except OSError:
            return
