"""Rows out: CSV or JSON Lines, a batch at a time, always valid UTF-8; and reading them back (--resume).

Columns, in both formats: path, prediction, confidence, [top_k], [digits], label, warning, error.

Paths are file names as the OS gives them, which on Linux are bytes and need not be UTF-8 (an old
archive's `caf\\xe9.png` in Latin-1). The files are UTF-8 all the same, by one reversible escape:
a byte that is not part of valid UTF-8 is written as `\\xNN` (two hex digits) and a backslash as
`\\\\`; nothing else changes. `unescape_path` undoes it (--resume and --labels read paths with it).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

FORMATS = ("csv", "jsonl")


def escape_path(text: str) -> str:
    """A path (str as os.fsdecode makes it) -> valid UTF-8 text: undecodable bytes as \\xNN, '\\' as '\\\\'."""
    if "\\" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name holds (a caller's string): keep it visible
        raw = text.encode("utf-8", "surrogatepass")
    return "\\\\".join(part.decode("utf-8", "backslashreplace") for part in raw.split(b"\\"))


def escape_paths(texts: Sequence[str]) -> list[str]:
    """escape_path over a batch, with one check for the usual case where nothing needs escaping."""
    joined = "\n".join(texts)
    if "\\" not in joined:
        try:
            joined.encode("utf-8")
            return list(texts)
        except UnicodeEncodeError:
            pass
    return [escape_path(t) for t in texts]


_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')  # a field with one of these is quoted by the csv module


def unescape_path(text: str) -> str:
    """The inverse of escape_path: written text -> the path (str as os.fsdecode makes it).

    A backslash that starts neither escape is kept as it is (lists written by hand)."""
    if "\\" not in text:
        return text
    out, pos = bytearray(), 0
    for found in _ESCAPE.finditer(text):
        out += text[pos : found.start()].encode("utf-8", "surrogateescape")
        code = found.group(1)
        out += b"\\" if code == "\\" else bytes([int(code[1:], 16)])
        pos = found.end()
    out += text[pos:].encode("utf-8", "surrogateescape")
    return os.fsdecode(bytes(out))


def columns(fmt: str, top_k: int, multi_digit: bool) -> list[str]:
    """The columns (CSV header, JSONL keys) a run with these options writes."""
    return ["path", "prediction", "confidence", *(["top_k"] if top_k > 1 else []),
            *(["digits"] if multi_digit else []), "label", "warning", "error"]


def _pairs(labels, index, p) -> list[str]:
    return [f"{labels[j]}:{q:.6f}" for j, q in zip(index, p)]


class RowWriter:
    """Writes ResultBatches to a binary stream as CSV (with a header) or JSON Lines, one write per batch.

    CSV: `top_k` and `digits` are space-separated `digit:probability` pairs. JSONL: `top_k` and
    `digits` are lists of {"prediction", "confidence"}; absent values are null. Every string
    field goes through escape_paths, so the bytes written are always valid UTF-8.
    """

    def __init__(self, stream: BinaryIO, fmt: str, top_k: int, multi_digit: bool = False, header: bool = True):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.stream, self.fmt, self.top_k, self.multi_digit = stream, fmt, top_k, multi_digit
        self.columns = columns(fmt, top_k, multi_digit)
        self.need_header = header and fmt == "csv"

    def write(self, batch, stop: int | None = None) -> int:
        """Write rows [0, stop) of `batch` (all by default); returns how many."""
        n = len(batch) if stop is None else stop
        if n == 0:
            return 0
        text = self._csv(batch, n) if self.fmt == "csv" else self._jsonl(batch, n)
        self.stream.write(text.encode("utf-8"))
        self.stream.flush()
        return n

    def _fields(self, batch, n: int):
        errors = np.flatnonzero(batch.counts[:n] == 0).tolist()  # a row without digits is an error row
        # All the confidences in one formatting call (a C loop), then the error rows' blanked.
        confidence: list = ("%.6f\n" * n % tuple(batch.confidence[:n].tolist())).split("\n", n - 1)
        confidence[-1] = confidence[-1][:-1]
        for i in errors:
            confidence[i] = None
        top = digits = None
        if self.top_k > 1:
            index, p = batch.top_index[:n].tolist(), batch.top_p[:n].tolist()
            top = [_pairs(batch.labels, index[i], p[i]) if index[i][0] >= 0 else None for i in range(n)]
        if self.multi_digit:
            starts, counts = batch.starts[:n].tolist(), batch.counts[:n].tolist()
            index, p = batch.digit_index.tolist(), batch.digit_p.tolist()
            digits = [_pairs(batch.labels, index[s : s + c], p[s : s + c]) if c else None
                      for s, c in zip(starts, counts)]
        error = escape_paths([e or "" for e in batch.error[:n]]) if errors else [""] * n
        return escape_paths(batch.paths[:n]), confidence, top, digits, error

    def _csv(self, batch, n: int) -> str:
        paths, confidence, top, digits, error = self._fields(batch, n)
        cols = [paths, [p or "" for p in batch.prediction[:n]], [c or "" for c in confidence]]
        if top is not None:
            cols.append([" ".join(t) if t else "" for t in top])
        if digits is not None:
            cols.append([" ".join(d) if d else "" for d in digits])
        cols += [[l or "" for l in batch.label[:n]], batch.warning[:n], error]
        header = ",".join(self.columns) + "\n" if self.need_header else ""
        self.need_header = False
        if not _NEEDS_QUOTES.search("\0".join(["\0".join(c) for c in cols])):
            # No field holds a comma, a quote or a line break: the rows are the fields joined by commas,
            # as the csv module would write them, in one formatting call.
            line = ",".join(["%s"] * len(cols)) + "\n"
            return header + line * n % tuple(itertools.chain.from_iterable(zip(*cols)))
        buf = io.StringIO()
        buf.write(header)
        csv.writer(buf, lineterminator="\n").writerows(zip(*cols))
        return buf.getvalue()

    def _jsonl(self, batch, n: int) -> str:
        paths, confidence, top, digits, error = self._fields(batch, n)
        dumps = json.dumps
        quoted: dict = {None: "null", "": "null"}

        def q(value):  # predictions and labels repeat: encode each once
            try:
                return quoted[value]
            except KeyError:
                quoted[value] = dumps(value, ensure_ascii=False)
                return quoted[value]

        def pairs(items):
            if items is None:
                return "null"
            return "[" + ", ".join('{"prediction": %s, "confidence": %s}' % (dumps(d), c)
                                   for d, c in (t.rsplit(":", 1) for t in items)) + "]"

        extra = [""] * n
        if top is not None:
            extra = [f'{e}, "top_k": {pairs(t)}' for e, t in zip(extra, top)]
        if digits is not None:
            extra = [f'{e}, "digits": {pairs(d)}' for e, d in zip(extra, digits)]
        lines = [
            f'{{"path": {dumps(p, ensure_ascii=False)}, "prediction": {q(pred)}, "confidence": {c or "null"}{x}, '
            f'"label": {q(label)}, "warning": {q(w)}, "error": {q(e)}}}\n'
            for p, pred, c, x, label, w, e in zip(paths, batch.prediction, confidence, extra, batch.label,
                                                  batch.warning, error)
        ]
        return "".join(lines)


class OutputError(Exception):
    """An existing output that cannot be resumed (other columns, not our rows)."""


@dataclass
class ExistingRows:
    """What a previous run's output holds: its columns and how many bytes are whole rows."""

    columns: list[str]
    rows: int
    valid_bytes: int


def read_rows(stream: BinaryIO, fmt: str, on_row: Callable[[dict], None]) -> ExistingRows:
    """Read a (possibly interrupted) output: call on_row(row as a dict of strings or None) for each
    whole row; a last row cut short (a killed run) is not one, and valid_bytes ends before it."""
    rows = valid = 0
    cols: list[str] = []
    if fmt == "jsonl":
        for raw in stream:
            if not raw.endswith(b"\n"):
                break
            try:
                row = json.loads(raw)
            except ValueError:
                if rows == 0:  # a whole first line that is not JSON: another format, not a cut row
                    raise OutputError("its first line is not JSON: it is not mnist-infer's JSON Lines "
                                      "(written with --format csv?)") from None
                break
            if not isinstance(row, dict) or "path" not in row:
                raise OutputError(f"line {rows + 1} is not a row of mnist-infer's JSON Lines")
            if not cols:
                cols = list(row)
            elif list(row) != cols:
                raise OutputError(f"line {rows + 1} has other keys than the first line")
            on_row({k: (v if v is None or isinstance(v, str) else json.dumps(v)) for k, v in row.items()})
            rows += 1
            valid += len(raw)
        return ExistingRows(cols, rows, valid)
    consumed, last_complete = 0, True

    def lines() -> Iterator[str]:
        nonlocal consumed, last_complete
        for raw in stream:
            consumed += len(raw)
            last_complete = raw.endswith(b"\n")
            yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines(), strict=True)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error:  # cut inside a quoted field
            break
        if not last_complete:
            break
        if not cols:
            cols = record
            if "path" not in cols:
                raise OutputError("its first line is not mnist-infer's CSV header"
                                  + (" (it is JSON: written with --format jsonl?)" if cols[0].startswith("{") else ""))
        elif len(record) != len(cols):
            break
        else:
            on_row({k: (v if v != "" else None) for k, v in zip(cols, record)})
            rows += 1
        valid = consumed
    return ExistingRows(cols, rows, valid)
