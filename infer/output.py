"""Rows out: CSV or JSON Lines, streamed as batches finish."""
from __future__ import annotations

import csv
import json
from typing import TextIO

from infer.pipeline import Prediction

FORMATS = ("csv", "jsonl")


class RowWriter:
    """Writes Predictions as CSV (path, prediction, confidence, [alternatives], label, error) or JSONL.

    `label` is the true label when known (a parent folder named 0-9, or --labels), else empty.
    """

    def __init__(self, stream: TextIO, fmt: str, top_k: int):
        self.stream, self.fmt, self.top_k = stream, fmt, top_k
        self.csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        self.started = False

    def _header(self) -> None:
        # Written with the first row: a run that fails before any image (no CUDA, bad model) prints nothing.
        self.started = True
        if self.csv is not None:
            alternatives = ["alternatives"] if self.top_k > 1 else []
            self.csv.writerow(["path", "prediction", "confidence", *alternatives, "label", "error"])

    def write(self, p: Prediction) -> None:
        if not self.started:
            self._header()
        if self.fmt == "jsonl":
            row = {"path": p.path, "prediction": p.label,
                   "confidence": None if p.confidence is None else round(p.confidence, 6)}
            if self.top_k > 1:
                row["top_k"] = None if p.top_k is None else [{"label": l, "p": round(c, 6)} for l, c in p.top_k]
            row["label"] = p.true_label
            row["error"] = p.error
            self.stream.write(json.dumps(row) + "\n")
            return
        row = [p.path, p.label or "", "" if p.confidence is None else f"{p.confidence:.6f}"]
        if self.top_k > 1:
            row.append(" ".join(f"{l}:{c:.6f}" for l, c in (p.top_k or [])[1:]))
        self.csv.writerow(row + [p.true_label or "", p.error or ""])
