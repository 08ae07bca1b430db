"""Rows out: CSV or JSON Lines, streamed as batches finish."""
from __future__ import annotations

import csv
import json
from typing import TextIO

from infer.pipeline import Prediction

FORMATS = ("csv", "jsonl")


class RowWriter:
    """Writes Predictions as CSV (path, prediction, confidence, alternatives, [label], error) or JSONL."""

    def __init__(self, stream: TextIO, fmt: str, top_k: int, with_labels: bool):
        self.stream, self.fmt, self.top_k, self.with_labels = stream, fmt, top_k, with_labels
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            header = ["path", "prediction", "confidence"]
            if top_k > 1:
                header.append("alternatives")
            if with_labels:
                header.append("label")
            self.csv.writerow(header + ["error"])

    def write(self, p: Prediction) -> None:
        if self.fmt == "jsonl":
            row = {"path": p.path, "prediction": p.label,
                   "confidence": None if p.confidence is None else round(p.confidence, 6)}
            if self.top_k > 1:
                row["top_k"] = None if p.top_k is None else [{"label": l, "p": round(c, 6)} for l, c in p.top_k]
            if self.with_labels:
                row["label"] = p.true_label
            row["error"] = p.error
            self.stream.write(json.dumps(row) + "\n")
            return
        row = [p.path, p.label or "", "" if p.confidence is None else f"{p.confidence:.6f}"]
        if self.top_k > 1:
            row.append(" ".join(f"{l}:{c:.6f}" for l, c in (p.top_k or [])[1:]))
        if self.with_labels:
            row.append(p.true_label or "")
        self.csv.writerow(row + [p.error or ""])
