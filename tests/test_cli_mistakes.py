"""mnist-infer as a new user drives it: mistakes with outputs, reports, resumed runs, path lists,
symlinks and broken models. Each one is a clear line and the right exit code, and no rows are lost."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from infer.cli import main
from infer.engine import shipped_model_path
from infer.pipeline import MODEL_OUTPUT_NOT_FINITE, classify_paths

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    return result.stderr


# --- outputs and formats ------------------------------------------------------------------------------


def test_resume_with_another_format_is_refused_and_keeps_the_rows(tmp_path):
    for name in ("rows.csv", "rows.out"):  # the extension says csv; no extension: the content does
        out = tmp_path / name
        assert run([SAMPLES, "-o", out, "-q"]).exit_code == 0
        before = out.read_bytes()
        err = one_line_error(run([SAMPLES / "7", "-o", out, "--resume", "--format", "jsonl"]))
        assert "csv" in err.lower() and out.read_bytes() == before
        assert not (tmp_path / f"{name}.partial").exists()


def test_output_format_follows_the_extension_and_dash_is_stdout(tmp_path):
    assert run([SAMPLES / "7", "-o", tmp_path / "r.jsonl", "-q"]).exit_code == 0
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["prediction"] == "7" for line in lines)
    err = one_line_error(run([SAMPLES / "7", "-o", tmp_path / "s.jsonl", "--format", "csv"]))
    assert "--format csv" in err and not (tmp_path / "s.jsonl").exists()
    result = run([SAMPLES / "7", "-o", "-", "-q"])
    assert result.exit_code == 0 and len(rows(result.stdout)) == 4 and not Path("-").exists()
    one_line_error(run([SAMPLES / "7", "-o", "-", "--resume"]))


def test_output_and_report_under_a_file_are_usage_errors_before_any_work(tmp_path):
    (tmp_path / "d.jpg").write_bytes(b"x")
    err = one_line_error(run([SAMPLES / "7", "-o", tmp_path / "d.jpg" / "rows.csv"]))
    assert "d.jpg is a file, not a folder" in err and "File exists" not in err
    err = one_line_error(run([SAMPLES / "7", "--report", tmp_path / "d.jpg" / "rep"]))
    assert "--report" in err and "d.jpg is a file, not a folder" in err
    if os.path.isdir("/proc/self"):  # a folder nothing can be made in
        one_line_error(run([SAMPLES / "7", "--report", "/proc/no-such/rep"]))


def test_report_folder_made_for_nothing_is_removed(tmp_path):
    blank = tmp_path / "unlabelled"
    blank.mkdir()
    shutil.copy(SAMPLES / "7" / "mnist-test-00000.png", blank / "x.png")
    result = run([blank, "--report", tmp_path / "a" / "b"])
    assert result.exit_code == 0 and "nothing written" in result.stderr
    assert not (tmp_path / "a").exists()
    result = run([SAMPLES / "7", "--report", tmp_path / "r"])
    assert result.exit_code == 0 and (tmp_path / "r" / "metrics.json").is_file()


def test_output_symlink_is_written_through(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    assert run([SAMPLES / "7", "-o", link, "--force", "-q"]).exit_code == 0
    assert link.is_symlink() and len(rows(target.read_text())) == 4


# --- --resume must continue the same job ------------------------------------------------------------


def test_resume_refuses_rows_of_another_model_or_options(tmp_path, exported):
    out = tmp_path / "rows.csv"
    assert run([SAMPLES / "0", "-o", out, "-q"]).exit_code == 0  # the shipped model
    before = out.read_bytes()
    err = one_line_error(run([SAMPLES / "1", "-o", out, "--resume", "--model", exported]))
    assert "another model or other options" in err and "--force" in err
    one_line_error(run([SAMPLES / "1", "-o", out, "--resume", "--min-confidence", "0.9999"]))
    one_line_error(run([SAMPLES / "1", "-o", out, "--resume", "--preprocess", "none"]))
    assert out.read_bytes() == before
    result = run([SAMPLES / "1", "-o", out, "--resume"])  # the same job: continued
    assert result.exit_code == 0 and len(rows(out.read_text())) == 5 + 4


# --- path lists ---------------------------------------------------------------------------------------


def test_nul_separated_path_lists_as_find_print0_writes_them(tmp_path):
    odd = tmp_path / "a\nb.png"  # a name with a newline: only a NUL-separated list can hold it
    shutil.copy(SAMPLES / "3" / "mnist-test-00018.png", odd)
    plain = tmp_path / "c.png"
    shutil.copy(SAMPLES / "7" / "mnist-test-00000.png", plain)
    listing = subprocess.run(["find", str(tmp_path), "-name", "*.png", "-print0"], capture_output=True).stdout
    result = run(["-", "-q"], input=listing)
    got = {r["path"]: (r["prediction"], r["error"]) for r in rows(result.stdout)}
    assert result.exit_code == 0, result.output
    assert got == {str(odd): ("3", ""), str(plain): ("7", "")}
    listing_file = tmp_path / "list"
    listing_file.write_bytes(listing)
    assert len(rows(run(["--files-from", listing_file, "-q"]).stdout)) == 2


def test_a_folder_reached_by_a_symlink_is_listed_under_its_real_path(tmp_path):
    deeper = tmp_path / "nested" / "deeper"
    deeper.mkdir(parents=True)
    shutil.copy(SAMPLES / "7" / "mnist-test-00000.png", deeper / "n.png")
    (tmp_path / "link-to-nested").symlink_to("nested")  # sorts before the real folder
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    shutil.copy(SAMPLES / "1" / "mnist-test-00002.png", outside / "o.png")
    (tmp_path / "elsewhere").symlink_to(outside)  # a link to a folder outside the tree is still walked
    result = run([tmp_path, "-q"])
    paths = [r["path"] for r in rows(result.stdout)]
    assert paths == [str(deeper / "n.png"), str(tmp_path / "elsewhere" / "o.png")]


# --- the Python API ---------------------------------------------------------------------------------------


def test_classify_paths_reads_labels_from_folders_as_the_command_does():
    from infer import Classifier

    clf = Classifier(provider="cpu")
    got = list(classify_paths([SAMPLES / "4", SAMPLES / "README.md"], clf, workers=0))
    assert {p.label for p in got if p.error is None} == {"4"}
    assert [p.label for p in classify_paths([SAMPLES / "4"], clf, workers=0, label_of=None)] == [None] * 5


# --- broken models ----------------------------------------------------------------------------------------


@pytest.fixture
def nan_model(tmp_path) -> Path:
    """The shipped model with a first-layer weight set to NaN (what a diverged training exports)."""
    model = onnx.load(shipped_model_path())
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    return path


def test_a_model_that_outputs_nan_gives_error_rows_and_valid_json(tmp_path, nan_model):
    result = run([SAMPLES / "7", "--model", nan_model, "--format", "jsonl", "-q"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # strict JSON: no bare NaN
    assert result.exit_code == 1 and len(lines) == 4
    assert all(r["error"] == MODEL_OUTPUT_NOT_FINITE and r["confidence"] is None for r in lines)
    csv_rows = rows(run([SAMPLES / "7", "--model", nan_model, "-q"]).stdout)
    assert [r["confidence"] for r in csv_rows] == [""] * 4


def test_layout_options_against_a_model_that_declares_its_layout_are_usage_errors():
    err = one_line_error(run([SAMPLES / "7", "--ink", "black"]))
    assert "declares its input layout" in err


def test_the_model_line_is_one_line_and_quiet_silences_it(tmp_path):
    shutil.copy(shipped_model_path(), tmp_path / "model.onnx")
    cmd = [sys.executable, "-m", "infer", str(SAMPLES / "7")]
    quiet = subprocess.run([*cmd, "-q"], cwd=tmp_path, capture_output=True, text=True)
    assert quiet.returncode == 0 and quiet.stderr == ""
    loud = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    model_lines = [line for line in loud.stderr.splitlines() if "model.onnx" in line]
    assert model_lines == ["model: model.onnx (found in the current folder; --model to choose)"]


def test_torchscript_model_is_refused_with_a_fix_that_works(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(784, 10))
    path = tmp_path / "ts.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, and still what people have saved
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    err = one_line_error(run([SAMPLES / "7", "--model", path]), code=1)
    assert "TorchScript" in err and "state_dict()" in err and "mnist-export weights.pt" in err
    assert "mnist-export " + str(path) not in err


def test_huge_tiff_gives_no_pillow_warning(tmp_path):
    from PIL import Image

    page = Image.new("1", (10_000, 9_000), 1)  # 90 MP, over Pillow's warning threshold (89.5 MP)
    page.paste(0, (4_000, 3_000, 6_000, 6_000))
    page.save(tmp_path / "page.tif", compression="group4")
    result = subprocess.run([sys.executable, "-m", "infer", str(tmp_path / "page.tif"), "--workers", "0"],
                            capture_output=True, text=True)
    assert "DecompressionBomb" not in result.stderr and "Warning" not in result.stderr
    assert result.stdout.count("\n") == 2


# --- a second new user's pass -------------------------------------------------------------------------


def test_resume_refuses_another_threshold_or_other_labels_on_any_kept_row(tmp_path):
    folder = tmp_path / "s"
    shutil.copytree(SAMPLES, folder)
    out = tmp_path / "rows.csv"
    assert run([folder, "-o", out, "-q"]).exit_code == 0  # two samples are read below 0.7: low-confidence
    before = out.read_bytes()
    err = one_line_error(run([folder, "-o", out, "--resume", "--min-confidence", "0.5"]))
    assert "another --min-confidence" in err
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{p},3\n" for p in sorted(str(q) for q in folder.rglob("*.png"))))
    err = one_line_error(run([folder, "-o", out, "--resume", "--labels", labels]))
    assert "other labels" in err and out.read_bytes() == before
    assert run([folder, "-o", out, "--resume"]).exit_code == 0


def test_a_run_that_finds_no_images_leaves_no_output_file(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run([tmp_path / "empty", "-o", tmp_path / "rows.csv"])
    assert result.exit_code == 1 and "no images found" in result.stderr
    assert not (tmp_path / "rows.csv").exists() and not (tmp_path / "rows.csv.partial").exists()
    assert run([SAMPLES / "7", "-o", tmp_path / "rows.csv", "-q"]).exit_code == 0  # nothing in the way


def test_classify_paths_takes_one_path_as_a_string_or_bytes():
    from infer import Classifier

    clf = Classifier(provider="cpu")
    assert len(list(classify_paths(str(SAMPLES / "2"), clf, workers=0))) == 5
    assert len(list(classify_paths([os.fsencode(SAMPLES / "1")], clf, workers=0))) == 4


def test_a_broken_link_with_an_image_name_in_a_folder_is_an_error_row(tmp_path):
    shutil.copy(SAMPLES / "7" / "mnist-test-00000.png", tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to("nothere.png")
    result = run([tmp_path, "-q"])
    got = {Path(r["path"]).name: r for r in rows(result.stdout)}
    assert result.exit_code == 1 and got["a.png"]["prediction"] == "7" and got["b.png"]["error"]


def test_an_output_that_cannot_be_opened_and_an_empty_report_are_usage_errors(tmp_path):
    if os.path.isdir("/proc/self"):
        one_line_error(run([SAMPLES / "7", "-o", "/proc/no-such.csv"]))
    one_line_error(run([SAMPLES / "7", "--report", ""]))


def test_a_nul_list_ending_in_a_newline(tmp_path):
    listing = tmp_path / "list"
    listing.write_bytes(os.fsencode(SAMPLES / "7" / "mnist-test-00000.png") + b"\0\n")
    result = run(["--files-from", listing, "-q"])
    assert result.exit_code == 0 and len(rows(result.stdout)) == 1
