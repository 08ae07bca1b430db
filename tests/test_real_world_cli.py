"""mnist-infer end to end on real-world kinds of images: the command as users run it, the real
preprocessing, the shipped model; the rows, the warning column, error rows and --multi-digit."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bench.real_world_kinds import KINDS_BY_NAME, DigitShapes, make_samples
from infer import contract as C
from infer.cli import main
from infer.engine import Classifier
from infer.preprocess import deskew, to_model_input

ROOT = Path(__file__).resolve().parent.parent
FIELD = ROOT.parent / "shared" / "field"  # the issues' field images, beside the repository when present
PER_KIND = 10
# kind -> what its rows must show: the warning every row carries, or that every row is an error.
CASES = {
    "canvas-1px": C.WARN_THIN_STROKES,
    "grid-cell-4": C.WARN_LINES_REMOVED,
    "highlighter": C.WARN_FAINT_INK,
    "two-digits": C.WARN_SEVERAL_DIGITS,
    "three-digits": C.WARN_SEVERAL_DIGITS,
    "blank-squared": "error",
    "blank-ruled": "error",
}


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def table(text: str, fmt: str = "csv") -> list[dict]:
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, mnist) -> Path:
    """PER_KIND files of each kind in CASES, named KIND-NN-TRUTH.EXT (TRUTH 'x' for a blank page)."""
    clf = Classifier(provider="cpu")  # the shipped model picks the digit shapes it reads right

    def read(u8):
        u8 = np.asarray(u8, np.uint8).reshape(-1, 28, 28)
        return clf.predict(to_model_input(deskew(u8) if clf.deskew else u8)).argmax(1)

    shapes = DigitShapes(mnist.test_images.numpy(), mnist.test_labels.numpy(), read)
    root = tmp_path_factory.mktemp("real_world")
    for name in CASES:
        for n, sample in enumerate(make_samples(KINDS_BY_NAME[name], shapes, PER_KIND, seed=5)):
            (root / f"{name}-{n:02d}-{sample.truth or 'x'}{sample.ext}").write_bytes(sample.data)
    return root


def _kind(path: str) -> str:
    return Path(path).name.rsplit("-", 2)[0]


def _truth(path: str) -> str:
    return Path(path).stem.rsplit("-", 1)[1]


def test_each_kind_reaches_the_rows_with_its_warning(folder):
    result = run([folder, "-o", folder.parent / "rows.csv", "--force"])
    rows = table((folder.parent / "rows.csv").read_text())
    assert len(rows) == PER_KIND * len(CASES)
    assert result.exit_code == 1  # the blank pages are error rows
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(_kind(r["path"]), []).append(r)
    for kind, expected in CASES.items():
        got = by_kind[kind]
        if expected == "error":
            assert all(r["error"].startswith("no digit found") and r["prediction"] == "" for r in got), kind
            continue
        assert all(r["error"] == "" for r in got), kind
        assert all(expected in r["warning"].split(C.WARNING_SEPARATOR) for r in got), (kind, [r["warning"] for r in got])
        if kind in ("canvas-1px", "grid-cell-4", "highlighter"):  # single digits: read right
            right = sum(r["prediction"] == _truth(r["path"]) for r in got)
            assert right >= PER_KIND - 1, (kind, right)
    # the summary counts each code as the rows hold them
    counts = Counter(code for r in rows for code in r["warning"].split(C.WARNING_SEPARATOR) if code)
    summary = next(line for line in result.stderr.splitlines() if line.startswith("warnings: "))
    for code, count in counts.items():
        assert f"{count} {code}" in summary
    assert f"{2 * PER_KIND} failed" in result.stderr


def test_multi_digit_reads_the_numbers_left_to_right(folder):
    result = run([folder, "--multi-digit", "--format", "jsonl", "-q"])
    rows = [r for r in table(result.stdout, "jsonl") if _kind(r["path"]) in ("two-digits", "three-digits")]
    assert len(rows) == 2 * PER_KIND
    right = [r for r in rows if r["prediction"] == _truth(r["path"])]
    assert len(right) >= 0.9 * len(rows)
    for r in rows:
        assert len(r["digits"]) == len(r["prediction"]) >= 2 and C.WARN_SEVERAL_DIGITS in r["warning"]
        assert "".join(d["prediction"] for d in r["digits"]) == r["prediction"]
        assert r["confidence"] == pytest.approx(np.prod([d["confidence"] for d in r["digits"]]), abs=1e-5)
    # the other kinds are single digits, with or without --multi-digit
    singles = {r["path"]: r["prediction"] for r in table(result.stdout, "jsonl")
               if _kind(r["path"]) in ("canvas-1px", "grid-cell-4", "highlighter")}
    plain = {r["path"]: r["prediction"] for r in table(run([folder, "-q"]).stdout)
             if _kind(r["path"]) in ("canvas-1px", "grid-cell-4", "highlighter")}
    assert singles == plain


@pytest.mark.skipif(not FIELD.is_dir(), reason="the field images (../shared/field) are not here")
def test_the_field_images_as_a_user_runs_them():
    """The issues' four field images through the installed command, as a subprocess."""
    exe = Path(sys.executable).parent / "mnist-infer"
    plain = subprocess.run([str(exe), str(FIELD)], capture_output=True, text=True)
    multi = subprocess.run([str(exe), str(FIELD), "--multi-digit"], capture_output=True, text=True)
    assert plain.returncode == multi.returncode == 1  # the blank page is an error row
    rows = {Path(r["path"]).name: r for r in table(plain.stdout)}
    assert rows["c09_canvas_w1_truth0.png"]["prediction"] == "0"
    assert C.WARN_THIN_STROKES in rows["c09_canvas_w1_truth0.png"]["warning"]
    assert rows["c07_cell4_truth3.png"]["prediction"] == "3"
    assert C.WARN_LINES_REMOVED in rows["c07_cell4_truth3.png"]["warning"]
    blank = rows["c05_blank_squared_paper.png"]
    assert blank["prediction"] == "" and blank["error"].startswith("no digit found")
    assert C.WARN_SEVERAL_DIGITS in rows["c06_two_digits_17.png"]["warning"]
    numbers = {Path(r["path"]).name: r for r in table(multi.stdout)}
    assert numbers["c06_two_digits_17.png"]["prediction"] == "17"
    assert numbers["c09_canvas_w1_truth0.png"]["prediction"] == "0"
    assert "error: " in plain.stderr and "no digit found" in plain.stderr
