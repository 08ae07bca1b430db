"""Labelled folders: accuracy, per-class precision/recall, confusion matrix, and the report pictures."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from infer.atomic import atomic_path
from infer.output import unescape_path

MAX_SHEET = 200  # misclassified images kept for the contact sheet
FULL_TABLE_FROM = 20  # fewer labelled images get one accuracy line and the list of misreads, not a 10x10 table
MAX_LISTED = 10  # misreads listed one per line on stderr in a small run


class LabelsError(Exception):
    """A --labels file that cannot be read."""


def folder_labeller(labels: Sequence[str]) -> "FolderLabeller":
    """The label of an image is the name of its parent folder, when that is one of the labels."""
    return FolderLabeller(labels)


class FolderLabeller:
    """label_of(path) from the parent folder's name, with a bulk form for a batch of paths."""

    def __init__(self, labels: Sequence[str]):
        self.known = frozenset(labels)

    def __call__(self, path: str) -> str | None:
        parent = os.path.basename(os.path.dirname(path))
        return parent if parent in self.known else None

    def many(self, paths: Sequence[str]) -> list[str | None]:
        """Labels of a batch of paths: one lookup per folder, not per file."""
        cache: dict[str, str | None] = {}
        out = []
        for path in paths:
            folder = path.rpartition(os.sep)[0]
            try:
                out.append(cache[folder])
            except KeyError:
                cache[folder] = label = self(path)
                out.append(label)
        return out


def file_labeller(labels_file: str, labels: Sequence[str]) -> Callable[[str], str | None]:
    """Labels from a CSV of `path,label` (paths as given on the command line, or bare file names).

    Paths may use mnist-infer's escape for bytes that are not UTF-8 (`\\xNN`, `\\\\`), so an output
    CSV with its `label` column filled in is a labels file; raw bytes in the file work too."""
    known = set(labels)
    table: dict[str, str] = {}
    try:
        with open(labels_file, newline="", encoding="utf-8", errors="surrogateescape") as f:
            header = None
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].startswith("#"):
                    continue
                if n == 1 and row[0].strip().lower() == "path":
                    header = [c.strip().lower() for c in row]
                    continue
                col = header.index("label") if header and "label" in header else 1
                value = row[col].strip() if len(row) > col else ""
                if value == "" and header:
                    continue  # an output CSV used as a labels file: rows without a label are not labelled
                if value not in known:
                    raise LabelsError(f"{labels_file}:{n}: expected 'path,label' with a label in {sorted(known)}")
                table[os.path.normpath(unescape_path(row[0].strip()))] = value
    except OSError as exc:
        raise LabelsError(f"{labels_file}: {exc.strerror}") from None

    def label_of(path: str) -> str | None:
        return table.get(os.path.normpath(path)) or table.get(os.path.basename(path))

    return label_of


@dataclass
class Evaluation:
    """Running tally of labelled predictions."""

    labels: Sequence[str]
    confusion: np.ndarray = field(init=False)
    # (pixels uint8 [28,28], path, true label, prediction, confidence) of misread images, for the sheet
    misclassified: list[tuple[np.ndarray, str, str, str, float]] = field(default_factory=list)
    misread: list[tuple[str, str, str, float]] = field(default_factory=list)  # (path, true, predicted, conf)
    unlabelled: int = 0
    numbers: int = 0  # labelled images read as a number of several digits (--multi-digit): not in the matrix

    def __post_init__(self):
        self.confusion = np.zeros((len(self.labels), len(self.labels)), np.int64)
        self.index = {label: i for i, label in enumerate(self.labels)}

    def add_batch(self, batch, stop: int | None = None) -> None:
        """Tally rows [0, stop) of a ResultBatch."""
        n = len(batch) if stop is None else stop
        true = np.array([self.index.get(l, -1) if l is not None else -1 for l in batch.label[:n]], np.int64)
        ok = (batch.counts[:n] > 0)
        self.unlabelled += int((ok & (true < 0)).sum())
        labelled = ok & (true >= 0)
        self.numbers += int((labelled & (batch.counts[:n] > 1)).sum())
        single = labelled & (batch.counts[:n] == 1)
        predicted = batch.top_index[:n, 0].astype(np.int64)
        np.add.at(self.confusion, (true[single], predicted[single]), 1)
        for i in np.flatnonzero(single & (true != predicted)).tolist():
            self._misread(batch.paths[i], batch.label[i], batch.prediction[i], float(batch.confidence[i]),
                          batch.pixels[i] if batch.pixels is not None else None)

    def add(self, path: str, label: str | None, prediction: str | None, confidence: float | None) -> None:
        """Tally one row (rows read back from an earlier run's output, for --resume)."""
        if prediction is None:
            return
        if label not in self.index:
            self.unlabelled += 1
        elif prediction not in self.index:
            self.numbers += 1
        else:
            self.confusion[self.index[label], self.index[prediction]] += 1
            if label != prediction:
                self._misread(path, label, prediction, confidence or 0.0, None)

    def _misread(self, path, label, prediction, confidence, pixels) -> None:
        if len(self.misread) < MAX_SHEET:
            self.misread.append((path, label, prediction, confidence))
        if pixels is not None and len(self.misclassified) < MAX_SHEET:
            self.misclassified.append((pixels, path, label, prediction, confidence))

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    def metrics(self) -> dict:
        c = self.confusion
        tp = np.diag(c).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(c.sum(0) > 0, tp / c.sum(0), np.nan)
            recall = np.where(c.sum(1) > 0, tp / c.sum(1), np.nan)
        return {
            "labelled": self.total,
            "correct": int(tp.sum()),
            "accuracy": float(tp.sum() / self.total) if self.total else None,
            "per_class": {
                label: {"precision": None if np.isnan(precision[i]) else round(float(precision[i]), 4),
                        "recall": None if np.isnan(recall[i]) else round(float(recall[i]), 4),
                        "support": int(c[i].sum())}
                for i, label in enumerate(self.labels)
            },
            "confusion": c.tolist(),
        }

    def table(self) -> str:
        """The stderr summary, in proportion: one line and the misreads for a few images, else the full table."""
        m = self.metrics()
        noun = "image" if m["labelled"] == 1 else "images"
        lines = [f"accuracy {100 * m['accuracy']:.2f}% ({m['correct']}/{m['labelled']} labelled {noun})"]
        if self.numbers:
            lines[0] += f"; {self.numbers} more read as numbers of several digits (not counted)"
        if m["labelled"] < FULL_TABLE_FROM:
            for path, label, prediction, confidence in self.misread[:MAX_LISTED]:
                lines.append(f"misread: {path}: true {label}, predicted {prediction} (confidence {confidence:.2f})")
            return "\n".join(lines)
        lines.append("class  precision  recall  support")
        for label, s in m["per_class"].items():
            fmt = lambda v: "     -" if v is None else f"{100 * v:6.2f}%"  # noqa: E731
            lines.append(f"{label:>5}  {fmt(s['precision']):>9}  {fmt(s['recall']):>6}  {s['support']:>7}")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        lines.append("      " + " ".join(f"{l:>5}" for l in self.labels))
        for label, row in zip(self.labels, self.confusion):
            lines.append(f"{label:>5} " + " ".join(f"{v:>5}" for v in row))
        return "\n".join(lines)

    def write_report(self, folder: str | os.PathLike) -> list[Path]:
        """confusion.png, misclassified.png (contact sheet) and metrics.json in `folder`."""
        from infer.report import render_confusion, render_misclassified

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        m = self.metrics()
        written = []
        with atomic_path(folder / "metrics.json") as tmp:
            tmp.write_text(json.dumps(m, indent=2) + "\n")
        written.append(folder / "metrics.json")
        title = f"{100 * m['accuracy']:.2f}% of {m['labelled']} labelled images" if m["labelled"] else "no labels"
        with atomic_path(folder / "confusion.png") as tmp:
            render_confusion(self.confusion, list(self.labels), title).save(tmp, format="PNG")
        written.append(folder / "confusion.png")
        with atomic_path(folder / "misclassified.png") as tmp:
            render_misclassified(self.misclassified, m["labelled"]).save(tmp, format="PNG")
        written.append(folder / "misclassified.png")
        return written
