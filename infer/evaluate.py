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
from infer.pipeline import Prediction

MAX_SHEET = 200  # misclassified images kept for the contact sheet


class LabelsError(Exception):
    """A --labels file that cannot be read."""


def folder_labeller(labels: Sequence[str]) -> Callable[[str], str | None]:
    """The label of an image is the name of its parent folder, when that is one of the labels."""
    known = set(labels)

    def label_of(path: str) -> str | None:
        parent = os.path.basename(os.path.dirname(path))
        return parent if parent in known else None

    return label_of


def file_labeller(labels_file: str, labels: Sequence[str]) -> Callable[[str], str | None]:
    """Labels from a CSV of `path,label` (paths as given on the command line, or bare file names)."""
    known = set(labels)
    table: dict[str, str] = {}
    try:
        with open(labels_file, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or row[0].startswith("#") or (n == 1 and row[0].strip().lower() == "path"):
                    continue
                if len(row) < 2 or row[1].strip() not in known:
                    raise LabelsError(f"{labels_file}:{n}: expected 'path,label' with a label in {sorted(known)}")
                table[os.path.normpath(row[0].strip())] = row[1].strip()
    except OSError as exc:
        raise LabelsError(f"{labels_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LabelsError(f"{labels_file}: not a text CSV file") from None

    def label_of(path: str) -> str | None:
        return table.get(os.path.normpath(path)) or table.get(os.path.basename(path))

    return label_of


@dataclass
class Evaluation:
    """Running tally of labelled predictions."""

    labels: Sequence[str]
    confusion: np.ndarray = field(init=False)
    misclassified: list[tuple[np.ndarray, str]] = field(default_factory=list)
    unlabelled: int = 0

    def __post_init__(self):
        self.confusion = np.zeros((len(self.labels), len(self.labels)), np.int64)
        self.index = {label: i for i, label in enumerate(self.labels)}

    def add(self, p: Prediction) -> None:
        if p.error is not None:
            return
        if p.true_label is None:
            self.unlabelled += 1
            return
        t, q = self.index[p.true_label], self.index[p.label]
        self.confusion[t, q] += 1
        if t != q and p.pixels is not None and len(self.misclassified) < MAX_SHEET:
            self.misclassified.append((p.pixels.astype(np.float32) / 255.0,
                                       f"{p.true_label}->{p.label} {p.confidence:.2f}"))

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
        m = self.metrics()
        lines = [f"accuracy {100 * m['accuracy']:.2f}% ({m['correct']}/{m['labelled']} labelled images)",
                 "class  precision  recall  support"]
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
        from infer.report import render_confusion, render_contact_sheet

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
            render_contact_sheet(self.misclassified).save(tmp, format="PNG")
        written.append(folder / "misclassified.png")
        return written
