"""mnist-infer as a command-line tool: results are never lost, inputs and outputs behave like Unix tools,
messages name the real cause, report pictures a person reads, the warning column and several digits,
rows made in bulk. Real files (names that are not UTF-8 included), real ONNX Runtime sessions, real
processes where signals and pipes matter."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from infer import contract as C
from infer.cli import main
from infer.engine import Classifier
from infer.output import escape_path, escape_paths, unescape_path
from infer.preprocess import MAX_PIXELS, ImageError, Prepared

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_COUNT = 45


def run(args, **kw):
    return CliRunner().invoke(main, [a if isinstance(a, (str, bytes)) else str(a) for a in args], **kw)


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def exe() -> str:
    found = shutil.which("mnist-infer", path=os.path.dirname(sys.executable))
    assert found
    return found


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sure(mnist, exported) -> dict[int, list[np.ndarray]]:
    """MNIST test digits the fixture model reads right with confidence > 0.95, by class."""
    images, labels = mnist.test_images.numpy()[:2000], mnist.test_labels.numpy()[:2000]
    probs = Classifier(exported, provider="cpu").predict(images.astype(np.float32) / 255)
    good = (probs.argmax(1) == labels) & (probs.max(1) > 0.95)
    return {d: [images[i] for i in np.flatnonzero(good & (labels == d))[:20]] for d in range(10)}


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory, mnist_pngs) -> Path:
    """30,000 MNIST PNGs (the test set hard-linked three times): a run long enough to interrupt."""
    big = tmp_path_factory.mktemp("big")
    for copy in range(3):
        for src in mnist_pngs.rglob("*.png"):
            dst = big / str(copy) / src.parent.name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    return big


@pytest.fixture(scope="module")
def big_reference(big_folder, exported, tmp_path_factory) -> bytes:
    """The CSV of one uninterrupted run over big_folder."""
    out = tmp_path_factory.mktemp("ref") / "out.csv"
    result = run([big_folder, "-m", exported, "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    return out.read_bytes()


# --- 1. A run's results are never lost ----------------------------------------------------------------------


def test_path_escape_round_trips_every_byte_name():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        raw = bytes(rng.integers(1, 256, int(rng.integers(1, 24))).tolist()).replace(b"/", b"_")
        name = os.fsdecode(raw)
        text = escape_path(name)
        text.encode("utf-8")  # valid UTF-8, no lone surrogates
        assert os.fsencode(unescape_path(text)) == raw
    for name in ["a.png", "café/ß.png", "数字/7.png", 'comma,"quote".png', "tab\tand\nnewline.png"]:
        assert escape_path(name) == name  # valid UTF-8 without a backslash is written as it is
    assert escape_path(os.fsdecode(b"caf\xe9_1.png")) == "caf\\xe9_1.png"
    assert escape_path("back\\slash") == "back\\\\slash"
    assert unescape_path("back\\\\slash") == "back\\slash" and unescape_path("odd\\q") == "odd\\q"
    names = ["x.png", os.fsdecode(b"\xff.png"), "y\\z.png"]
    assert escape_paths(names) == [escape_path(n) for n in names]


@pytest.fixture(scope="module")
def latin1_folder(tmp_path_factory, sure) -> Path:
    """Digits whose file names are not UTF-8 (Latin-1 archives), or hold a backslash, a comma or quotes."""
    root = tmp_path_factory.mktemp("latin1")
    names = [b"caf\xe9_1.png", b"na\xefve\\_2.png", b"plain_3.png", "ü_4.png".encode(), b"\xff\xfe_5.png",
             b'comma,"quote"_6.png']
    for digit, name in zip((1, 2, 3, 4, 5, 6), names):
        with open(os.path.join(os.fsencode(root), name), "wb") as f:
            f.write(png(sure[digit][0]))
    return root


def _strict_strings(value) -> None:
    """What a strict JSON parser refuses and Python's json accepts: lone surrogates."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for v in value.values():
            _strict_strings(v)
    elif isinstance(value, list):
        for v in value:
            _strict_strings(v)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_names_that_are_not_utf8_keep_the_run(latin1_folder, exported, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    result = run([latin1_folder, "-m", exported, "-o", out, "--format", fmt, "-q", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    text = out.read_bytes().decode("utf-8")  # strict: every byte is valid UTF-8
    if fmt == "csv":
        table = rows(text)
    else:
        table = [json.loads(line) for line in text.splitlines()]
        assert "\\ud" not in text.lower()  # no surrogate escapes in the JSON text
        _strict_strings(table)
    assert len(table) == 6 and all(r["error"] in ("", None) for r in table)
    written = {r["path"] for r in table}
    assert os.path.join(str(latin1_folder), "caf\\xe9_1.png") in written
    assert os.path.join(str(latin1_folder), "na\\xefve\\\\_2.png") in written
    for r in table:  # every escaped path leads back to its file
        assert os.path.isfile(os.fsencode(unescape_path(r["path"])))
    digits = {os.fsencode(unescape_path(r["path"])).rsplit(b"_", 1)[1][:1]: r["prediction"] for r in table}
    assert digits == {str(d).encode(): str(d) for d in range(1, 7)}


def test_labels_and_resume_read_the_escape(latin1_folder, exported, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncaf\\xe9_1.png,1\nna\\xefve\\\\_2.png,2\n\\xff\\xfe_5.png,5\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    result = run([latin1_folder, "-m", exported, "-o", out, "--labels", labels])
    assert result.exit_code == 0, result.output
    table = rows(out.read_text(encoding="utf-8"))
    assert sorted(r["label"] for r in table if r["label"]) == ["1", "2", "5"]
    assert "accuracy 100.00% (3/3 labelled images)" in result.stderr
    # an interrupted run over these names: keep the header and two rows, resume, same file
    complete = out.read_bytes()
    cut = complete.index(b"\n", complete.index(b"\n", complete.index(b"\n") + 1) + 1) + 1
    partial = tmp_path / "out.csv.partial"
    partial.write_bytes(complete[:cut])
    out.unlink()
    result = run([latin1_folder, "-m", exported, "-o", out, "--labels", labels, "--resume"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == complete and not partial.exists()
    assert "(2 resumed, 4 new)" in result.stderr and "accuracy 100.00% (3/3" in result.stderr


def test_a_bug_after_rows_keeps_them_and_resume_finishes(exported, tmp_path, monkeypatch):
    import infer.pipeline as pipeline

    reference = tmp_path / "reference.csv"
    assert run([ROOT / "samples", "-m", exported, "-o", reference, "-q", "--batch-size", "10"]).exit_code == 0
    real_score, calls = pipeline.score, []

    def buggy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bug in the third batch")
        return real_score(*args, **kwargs)

    monkeypatch.setattr(pipeline, "score", buggy)
    out = tmp_path / "sub" / "out.csv"
    result = run([ROOT / "samples", "-m", exported, "-o", out, "--batch-size", "10", "--workers", "0"])
    assert result.exit_code == 1
    assert "stopped by an internal error: RuntimeError: a bug in the third batch" in result.stderr
    partial = tmp_path / "sub" / "out.csv.partial"
    assert f"20 rows kept in {partial}" in result.stderr and "--resume" in result.stderr
    assert not out.exists() and len(rows(partial.read_text())) == 20 and "Traceback" not in result.output
    monkeypatch.setattr(pipeline, "score", real_score)
    result = run([ROOT / "samples", "-m", exported, "-o", out, "--resume", "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == reference.read_bytes() and not partial.exists()


def test_a_full_disk_keeps_the_rows_written(exported, tmp_path, monkeypatch):
    from infer.output import RowWriter

    real_write, calls = RowWriter.write, []

    def filling(self, batch, stop=None):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, batch, stop)

    monkeypatch.setattr(RowWriter, "write", filling)
    out = tmp_path / "out.jsonl"
    result = run([ROOT / "samples", "-m", exported, "-o", out, "--format", "jsonl", "--batch-size", "10",
                  "--workers", "0"])
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert "20 rows kept in" in result.stderr
    assert len((tmp_path / "out.jsonl.partial").read_text().splitlines()) == 20


def test_stdout_on_a_full_device_is_one_line(exported):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([exe(), str(ROOT / "samples"), "-m", str(exported)], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


@pytest.mark.parametrize("how, code, words", [
    ("SIGINT", 130, "interrupted"),
    ("SIGTERM", 143, "interrupted"),
    ("kill a worker", 1, "a decode worker (pid"),
])
def test_interrupted_run_keeps_rows_and_resume_gives_the_same_file(big_folder, big_reference, exported,
                                                                     tmp_path, how, code, words):
    """A real run, stopped mid-way (Ctrl-C to the process group, SIGTERM, a decode worker killed as the
    out-of-memory killer would): its rows are kept in out.csv.partial; --resume gives the same bytes."""
    out, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    proc = subprocess.Popen([exe(), str(big_folder), "-m", str(exported), "-o", str(out), "-q", "--workers", "2",
                             "--batch-size", "128"], start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not partial.exists() or partial.stat().st_size < 20000) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted"
    if how == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    elif how == "SIGTERM":
        os.kill(proc.pid, signal.SIGTERM)
    else:
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
    workers = _children(proc.pid)
    assert proc.wait(timeout=60) == code
    err = proc.stderr.read()
    proc.stderr.close()
    assert words in err and "Traceback" not in err, err
    assert "rows kept in" in err and not out.exists()
    kept = partial.read_bytes()
    assert 0 < len(kept) < len(big_reference) and big_reference.startswith(kept[: kept.rindex(b"\n") + 1])
    for pid in workers:  # no worker left behind
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] \
            in "ZX", pid
    result = run([big_folder, "-m", exported, "-o", out, "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == big_reference and not partial.exists()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_row_cut_short_is_redone(tmp_path, exported, sure, fmt):
    """A run killed in the middle of writing a row (SIGKILL, power loss): --resume drops the cut row."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        name = f"{i}\nwith a newline.png" if i == 3 else f"{i}.png"  # a quoted CSV field over two lines
        (folder / name).write_bytes(png(sure[i][0]))
    out = tmp_path / f"out.{fmt}"
    assert run([folder, "-m", exported, "-o", out, "--format", fmt, "-q"]).exit_code == 0
    complete = out.read_bytes()
    lines = complete.split(b"\n")
    third = len(b"\n".join(lines[:3])) + 1
    for cut in (complete.index(b"with a newline"), len(complete) - 5, third, third + 3):
        out.unlink(missing_ok=True)
        (tmp_path / f"out.{fmt}.partial").write_bytes(complete[:cut])
        result = run([folder, "-m", exported, "-o", out, "--format", fmt, "--resume", "-q"])
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == complete


def test_resume_refuses_other_columns_and_adds_new_files(tmp_path, exported, sure):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(png(sure[i][0]))
    out = tmp_path / "out.csv"
    assert run([folder, "-m", exported, "-o", out, "-q"]).exit_code == 0
    result = run([folder, "-m", exported, "-o", out, "--resume", "--top-k", "3"])
    assert result.exit_code == 2 and "use the options of the first run" in result.stderr
    (folder / "3.png").write_bytes(png(sure[3][0]))  # a file added since
    before = out.read_bytes()
    result = run([folder, "-m", exported, "-o", out, "--resume"])
    assert result.exit_code == 0 and "(3 resumed, 1 new)" in result.stderr
    after = out.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == before.count(b"\n") + 1


def test_strict_keeps_the_rows_before_the_failure(tmp_path, exported, sure):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(png(sure[i][0]))
    (folder / "2b.png").write_bytes(b"not a png")  # sorted between 2.png and 3.png
    out = tmp_path / "out.csv"
    result = run([folder, "-m", exported, "-o", out, "--strict", "--workers", "0"])
    assert result.exit_code == 1 and f"{folder / '2b.png'}: not an image Pillow can read (--strict)" in result.stderr
    kept = rows((tmp_path / "out.csv.partial").read_text())
    assert [Path(r["path"]).name for r in kept] == ["0.png", "1.png", "2.png"] and not out.exists()
    (folder / "2b.png").write_bytes(png(sure[7][0]))  # fixed: --resume goes on from it
    result = run([folder, "-m", exported, "-o", out, "--strict", "--resume"])
    assert result.exit_code == 0 and [r["prediction"] for r in rows(out.read_text())] == list("01273" "4")


def test_a_missing_path_is_an_error_row(exported):
    result = run([ROOT / "samples" / "7", "nope.png", "nowhere/", "-m", exported])
    assert result.exit_code == 1
    table = rows(result.stdout)
    errors = {r["path"]: r["error"] for r in table if r["error"]}
    assert errors == {"nope.png": "no such file or folder", "nowhere/": "no such file or folder"}
    assert sum(1 for r in table if r["prediction"]) == 4  # the rest are classified


# --- 2. Inputs and outputs behave like Unix tools ----------------------------------------------------------


def test_output_folder_is_made_and_an_existing_output_needs_force(exported, tmp_path):
    out = tmp_path / "new" / "deeper" / "rows.csv"
    assert run([ROOT / "samples" / "1", "-m", exported, "-o", out, "-q"]).exit_code == 0
    assert len(rows(out.read_text())) == 4
    result = run([ROOT / "samples" / "2", "-m", exported, "-o", out, "-q"])
    assert result.exit_code == 2 and "--force overwrites it" in result.stderr
    assert all("/1/" in r["path"] for r in rows(out.read_text()))  # untouched
    assert run([ROOT / "samples" / "2", "-m", exported, "-o", out, "-q", "--force"]).exit_code == 0
    assert all("/2/" in r["path"] for r in rows(out.read_text()))
    (tmp_path / "new" / "deeper" / "rows.csv.partial").write_text("path\n")
    result = run([ROOT / "samples" / "2", "-m", exported, "-o", out, "-q"])
    assert result.exit_code == 2 and "stopped early: --resume continues it" in result.stderr


def test_a_closed_pipe_stops_quietly(big_folder, exported):
    """`mnist-infer DIR | head -1`: the first line, then a quiet stop (141, as for any tool stopped by SIGPIPE)."""
    script = f"set -o pipefail; '{exe()}' '{big_folder}' -m '{exported}' | head -1"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout == "path,prediction,confidence,label,warning,error\n"
    assert proc.returncode == 141 and proc.stderr.count("\n") <= 2, proc.stderr  # model + provider lines only
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr


def test_paths_from_stdin_and_from_a_file(exported, tmp_path, latin1_folder):
    a, b = sorted((ROOT / "samples" / "7").glob("*.png"))[:2]
    result = run(["-", "-m", exported, "-q"], input=f"{b}\n\n{a}\r\n".encode())
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in rows(result.stdout)] == [str(b), str(a)]  # in the order given
    listing = tmp_path / "list.txt"
    weird = os.path.join(os.fsencode(latin1_folder), b"caf\xe9_1.png")
    listing.write_bytes(weird + b"\n" + str(ROOT / "samples" / "3").encode() + b"\n" + b"gone.png\n")
    result = run(["--files-from", listing, "-m", exported, "-q"])
    assert result.exit_code == 1  # gone.png
    table = rows(result.stdout)
    assert table[0]["path"] == escape_path(os.fsdecode(weird)) and table[0]["prediction"] == "1"
    assert len(table) == 1 + 4 + 1 and table[-1]["error"] == "no such file or folder"
    proc = subprocess.run(f"find '{ROOT / 'samples' / '5'}' -name '*.png' | sort | '{exe()}' - -m '{exported}' -q",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(rows(proc.stdout)) == 2


def test_stderr_says_which_model(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one = str(ROOT / "samples" / "4")
    assert f"model: {exported} (--model)\n" in run([one, "-m", exported]).stderr
    assert "(shipped with mnist-toolkit; --model to choose)" in run([one]).stderr
    shutil.copy(exported, tmp_path / "model.onnx")
    assert "model: model.onnx (found in the current folder; --model to choose)" in run([one]).stderr
    assert "model:" not in run([one, "-q"]).stderr


def test_the_summary_is_in_proportion(exported, tmp_path, sure):
    one = tmp_path / "7" / "only.png"
    one.parent.mkdir()
    one.write_bytes(png(sure[7][0]))
    err = run([one, "-m", exported]).stderr
    assert "1 image: read as 7 (confidence " in err and "1 images" not in err
    assert "accuracy 100.00% (1/1 labelled image)" in err
    assert "confusion matrix" not in err and "precision" not in err and "per digit" not in err
    wrong = tmp_path / "3" / "actually-a-5.png"
    wrong.parent.mkdir()
    wrong.write_bytes(png(sure[5][0]))
    err = run([tmp_path, "-m", exported]).stderr
    assert "2 images: 2 classified, 0 failed" in err and "per digit: 5:1  7:1\n" in err
    assert f"misread: {wrong}: true 3, predicted 5" in err and "confusion matrix" not in err
    err = run([ROOT / "samples", "-m", exported]).stderr  # 45 labelled images: the full table
    assert "precision" in err and "confusion matrix" in err


# --- 3. Messages that name the real cause ------------------------------------------------------------------


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _patched(fmt: str, w: int, h: int) -> bytes:
    """A small real file of `fmt` whose header says w x h (what a reader sees before decoding)."""
    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = bytearray(buf.getvalue())
    if fmt == "JPEG":
        i = data.index(b"\xff\xc0")
        data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", w, h)
    elif fmt == "GIF":
        data[6:10] = struct.pack("<HH", w, h)
    elif fmt == "WEBP":  # VP8L: 14 bits of width - 1, then 14 bits of height - 1
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        data[21:25] = (bits | (w - 1) | ((h - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_one_size_limit_for_every_format(tmp_path, exported, fmt):
    assert MAX_PIXELS == 150_000_000
    files = {"below": (14999, 10000), "above": (15001, 10000), "far-above": (16330, 12247)}
    for name, (w, h) in files.items():
        if fmt == "WEBP" and max(w, h) > 16384:
            w, h = 16383, 12207  # 200 MP, WebP's largest side
        data = _png_header(w, h) if fmt == "PNG" else _patched(fmt, w, h)
        (tmp_path / f"{name}.{fmt.lower()}").write_bytes(data)
    result = run([tmp_path, "-m", exported, "-q"])
    errors = {Path(r["path"]).stem: r["error"] for r in rows(result.stdout)}
    assert errors["above"] == "image is 150.0 MP, over the 150-megapixel limit; not decoded"
    assert errors["far-above"] == "image is 200.0 MP, over the 150-megapixel limit; not decoded"
    assert "limit" not in errors["below"] and "bomb" not in errors["below"]  # read, then found truncated


def test_images_at_the_limit_and_phone_photos_classify(tmp_path, exported, sure):
    """150 MP exactly (a 1-bit scan), and 50 MP and 108 MP phone photos: classified, not refused."""
    digit = Image.fromarray(255 - sure[3][0]).resize((1400, 1400), Image.BICUBIC)
    page = Image.new("L", (15000, 10000), 255)
    page.paste(digit, (7000, 4000))
    page.convert("1", dither=Image.Dither.NONE).save(tmp_path / "limit.png")
    del page
    for name, size in (("photo-50mp.jpg", (8160, 6120)), ("photo-108mp.jpg", (12000, 9000))):
        photo = Image.new("L", size, 225)
        photo.paste(Image.fromarray(255 - sure[4][0]).resize((size[1] // 4,) * 2, Image.BICUBIC),
                    (size[0] // 3, size[1] // 3))
        photo.save(tmp_path / name, quality=90)
    result = run([tmp_path, "-m", exported, "-q", "--workers", "0"])
    assert result.exit_code == 0, result.output
    got = {Path(r["path"]).name: r["prediction"] for r in rows(result.stdout)}
    assert got == {"limit.png": "3", "photo-50mp.jpg": "4", "photo-108mp.jpg": "4"}


def _heic(arr: np.ndarray) -> bytes:
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(arr).convert("RGB")).save(buf, quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, sure) -> Path:
    pytest.importorskip("pillow_heif")
    root = tmp_path_factory.mktemp("phone")
    (root / "IMG_0001.HEIC").write_bytes(_heic(255 - np.pad(sure[2][0], 20)))
    (root / "scan.png").write_bytes(png(255 - np.pad(sure[6][0], 10)))
    (root / "empty.png").write_bytes(b"")
    for name in ("notes.txt", "todo.txt", "letter.docx", "Makefile"):
        (root / name).write_text("not an image")
    return root


def test_heic_is_read_and_skipped_files_are_counted(mixed_folder, exported):
    result = run([mixed_folder, "-m", exported])
    assert result.exit_code == 1  # the empty file
    got = {Path(r["path"]).name: (r["prediction"], r["error"]) for r in rows(result.stdout)}
    assert got == {"IMG_0001.HEIC": ("2", ""), "scan.png": ("6", ""), "empty.png": ("", "empty file (0 bytes)")}
    assert "skipped 4 files that are not images: 2 .txt, 1 (no extension), 1 .docx" in result.stderr


BLOCK_HEIF = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "pillow_heif" or name.startswith("pillow_heif."):
            raise ImportError("not installed here")
sys.meta_path.insert(0, Block())
from infer.cli import main
main(sys.argv[1:])
"""


def test_heic_without_pillow_heif_names_the_extra(mixed_folder, exported):
    proc = subprocess.run([sys.executable, "-c", BLOCK_HEIF, str(mixed_folder), "-m", str(exported)],
                          capture_output=True, text=True, timeout=120)
    assert "skipped 5 files that are not images: 2 .txt, 1 (no extension), 1 .docx, 1 .heic (to read them: " \
           "pip install 'mnist-toolkit[heic]')" in proc.stderr
    named = subprocess.run([sys.executable, "-c", BLOCK_HEIF, str(mixed_folder / "IMG_0001.HEIC"), "-m",
                            str(exported), "-q"], capture_output=True, text=True, timeout=120)
    assert named.returncode == 1
    assert rows(named.stdout)[0]["error"] == ("HEIC/HEIF image: reading it needs pillow-heif: "
                                              "pip install 'mnist-toolkit[heic]'")


def test_pillow_heif_is_loaded_only_for_a_heif_file(mixed_folder):
    code = ("import sys\nfrom infer.preprocess import read_grey\n"
            f"read_grey({str(mixed_folder / 'scan.png')!r})\nprint('pillow_heif' in sys.modules)\n"
            f"read_grey({str(mixed_folder / 'IMG_0001.HEIC')!r})\nprint('pillow_heif' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "True"], proc.stderr


# --- 4. Pictures a person reads -----------------------------------------------------------------------------


def test_report_pictures(tmp_path, exported, sure):
    from infer.report import LINE_H, SCALE, TILE_W, render_confusion

    right = tmp_path / "right"
    for d in range(10):
        (right / str(d)).mkdir(parents=True)
        (right / str(d) / f"digit-{d}.png").write_bytes(png(sure[d][0]))
    result = run([right, "-m", exported, "--report", tmp_path / "r1", "-q"])
    assert result.exit_code == 0
    with Image.open(tmp_path / "r1" / "misclassified.png") as img:
        sheet = np.asarray(img.convert("L"))
    assert sheet.shape[1] <= 400 and sheet.shape[0] <= 100 and (sheet < 128).sum() > 100  # words, not a blank strip

    wrong = tmp_path / "wrong"
    (wrong / "3").mkdir(parents=True)
    (wrong / "3" / ("a-long-scanned-file-name-" * 3 + "0042.png")).write_bytes(png(sure[5][0]))
    result = run([wrong, "-m", exported, "--report", tmp_path / "r2", "-q"])
    with Image.open(tmp_path / "r2" / "misclassified.png") as sheet:
        size = sheet.size
    assert size == (TILE_W, 28 * SCALE + 8 + 3 * LINE_H + 8)  # one tile, three caption lines, no strip

    from infer.report import render_misclassified

    tiles = render_misclassified([(sure[5][0], f"{d}/scan-{i}.png", "3", "5", 0.61) for d in range(3)
                                  for i in range(4)], 12)
    assert tiles.size[0] == 8 * TILE_W  # eight columns at most

    # counts centred in their cells
    confusion = np.array([[7, 123], [4, 56]])
    img = np.asarray(render_confusion(confusion, ["0", "1"], "t").convert("L")).astype(int)
    from infer.report import CELL

    for t in range(2):
        for p in range(2):
            x0, y0 = 70 + p * CELL, 70 + t * CELL
            cell = img[y0 + 2 : y0 + CELL - 2, x0 + 2 : x0 + CELL - 2]
            ys, xs = np.nonzero(cell < cell.max() - 100)  # the text's pixels
            assert abs((xs.min() + xs.max()) / 2 - (CELL - 4) / 2) <= 1.5
            assert abs((ys.min() + ys.max()) / 2 - (CELL - 4) / 2) <= 2.5


def test_captions_name_the_file_and_fit(tmp_path):
    from PIL import ImageDraw

    from infer.report import TILE_W, _fit, _font

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    name = "a-very-long-file-name-from-a-scanner-0042.png"
    short = _fit(draw, name, _font(12), TILE_W - 6)
    assert short != name and "…" in short and short.startswith("a-very") and short.endswith("0042.png")
    assert draw.textlength(short, font=_font(12)) <= TILE_W - 6


# --- the warning column, several digits (issue 9's plumbing) ------------------------------------------------


def test_low_confidence_warning_and_its_count(exported):
    result = run([ROOT / "samples", "-m", exported, "--min-confidence", "0.95"])
    table = rows(result.stdout)
    low = [r for r in table if float(r["confidence"]) < 0.95]
    assert low and all(r["warning"] == C.WARN_LOW_CONFIDENCE for r in low)
    assert all(r["warning"] == "" for r in table if float(r["confidence"]) >= 0.95)
    assert f"warnings: {len(low)} low-confidence" in result.stderr
    none = run([ROOT / "samples", "-m", exported, "--min-confidence", "0", "--format", "jsonl"])
    assert all(json.loads(line)["warning"] is None for line in none.stdout.splitlines())
    assert "warnings:" not in none.stderr


def test_a_page_without_a_digit_is_an_error_row(tmp_path, exported):
    page = np.full((300, 200), 235, np.uint8)  # a blank page (ruled paper is the preprocessing's own test)
    (tmp_path / "blank.png").write_bytes(png(page))
    result = run([tmp_path, "-m", exported, "-q"])
    assert result.exit_code == 1
    row = rows(result.stdout)[0]
    assert row["prediction"] == "" and row["error"]


def fake_prepare(path, mode="mnist", *, multi_digit=False):
    """Stands in for preprocessing steps not written yet: reads the test's own files by name.

    `pair-*.png` holds two 28x28 digits side by side (several-digits; two digits with multi_digit),
    `thin-*.png` one digit (thin-strokes), `none-*.png` nothing (an empty Prepared)."""
    name = os.path.basename(path)
    if name.startswith("missing-"):
        raise ImageError("no digit found: the page is empty")
    grey = np.asarray(Image.open(path))
    if name.startswith("pair-"):
        pair = np.stack([grey[:, :28], grey[:, 28:]])
        if multi_digit:
            return Prepared(pair, (C.WARN_SEVERAL_DIGITS,))
        return Prepared(pair[:1], (C.WARN_SEVERAL_DIGITS,))
    if name.startswith("none-"):
        return Prepared(np.zeros((0, 28, 28), np.uint8))
    if name.startswith("thin-"):
        return Prepared(grey[None], (C.WARN_THIN_STROKES, C.WARN_FAINT_INK))
    return Prepared(grey[None])


@pytest.fixture(scope="module")
def fake_folder(tmp_path_factory, sure) -> Path:
    root = tmp_path_factory.mktemp("fake")
    for i in range(12):
        a, b = i % 10, (i * 7 + 1) % 10
        (root / f"pair-{i:02d}-{a}{b}.png").write_bytes(png(np.hstack([sure[a][i], sure[b][i]])))
        (root / f"thin-{i:02d}.png").write_bytes(png(sure[a][i + 1]))
        (root / f"plain-{i:02d}.png").write_bytes(png(sure[b][i + 2]))
    (root / "none-0.png").write_bytes(png(sure[0][0]))
    (root / "missing-0.png").write_bytes(png(sure[0][0]))
    return root


def test_warnings_and_numbers_reach_the_rows(fake_folder, exported, monkeypatch, tmp_path):
    import infer.pipeline as pipeline

    monkeypatch.setattr(pipeline, "prepare_file", fake_prepare)  # the workers are forked from here
    result = run([fake_folder, "-m", exported, "--multi-digit", "--format", "jsonl", "--workers", "2",
                  "--batch-size", "5", "--top-k", "2"])
    assert result.exit_code == 1  # none-0 and missing-0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert list(lines[0]) == ["path", "prediction", "confidence", "top_k", "digits", "label", "warning", "error"]
    by_name = {Path(r["path"]).name: r for r in lines}
    assert by_name["none-0.png"]["error"] == "no digit found"
    assert by_name["missing-0.png"]["error"] == "no digit found: the page is empty"
    for i in range(12):
        r = by_name[f"pair-{i:02d}-{i % 10}{(i * 7 + 1) % 10}.png"]
        assert r["prediction"] == f"{i % 10}{(i * 7 + 1) % 10}"  # read left to right
        assert [d["prediction"] for d in r["digits"]] == list(r["prediction"])
        assert r["confidence"] == pytest.approx(np.prod([d["confidence"] for d in r["digits"]]), abs=2e-6)
        assert r["warning"] == C.WARN_SEVERAL_DIGITS and r["top_k"] is None
        thin = by_name[f"thin-{i:02d}.png"]
        assert thin["warning"] == "thin-strokes;faint-ink" and len(thin["digits"]) == 1
        assert thin["top_k"][0]["prediction"] == thin["prediction"] == thin["digits"][0]["prediction"]
    assert "warnings: 12 faint-ink, 12 several-digits, 12 thin-strokes" in result.stderr
    assert "numbers:12" in result.stderr
    # the same rows whatever the batching and the number of workers, in CSV too
    a = run([fake_folder, "-m", exported, "--multi-digit", "--workers", "0", "--batch-size", "3", "-q"]).stdout
    b = run([fake_folder, "-m", exported, "--multi-digit", "--workers", "2", "--batch-size", "256", "-q"]).stdout
    assert a == b
    table = rows(a)
    pair = next(r for r in table if Path(r["path"]).name.startswith("pair-01"))
    assert pair["digits"] == " ".join(f"{d['prediction']}:{d['confidence']:.6f}"
                                      for d in by_name[Path(pair["path"]).name]["digits"])
    # without --multi-digit: one digit per image, and the warning says to look
    single = rows(run([fake_folder, "-m", exported, "-q", "--workers", "0"]).stdout)
    flagged = [r for r in single if Path(r["path"]).name.startswith("pair-")]
    assert all(len(r["prediction"]) == 1 and r["warning"].startswith(C.WARN_SEVERAL_DIGITS) for r in flagged)
    assert "digits" not in single[0]


def test_api_prediction_uses_the_files_words(fake_folder, exported):
    from infer.pipeline import ClassifyOptions, classify_batches

    names = ["path", "prediction", "confidence", "top_k", "digits", "label", "warnings", "error"]
    from infer.pipeline import Prediction

    assert [f for f in Prediction.__dataclass_fields__ if f != "pixels"] == names
    clf = Classifier(exported, provider="cpu")
    options = ClassifyOptions(multi_digit=True, workers=0, top_k=3, prepare=fake_prepare)
    preds = [p for batch in classify_batches([fake_folder], clf, options, label_of=lambda p: "1")
             for p in batch.predictions(multi_digit=True)]
    pair = next(p for p in preds if os.path.basename(p.path).startswith("pair-03"))
    assert pair.prediction == "32" and pair.label == "1" and pair.warnings == (C.WARN_SEVERAL_DIGITS,)
    assert [d for d, _ in pair.digits] == ["3", "2"] and pair.top_k is None
    assert pair.confidence == pytest.approx(pair.digits[0][1] * pair.digits[1][1])
    thin = next(p for p in preds if os.path.basename(p.path).startswith("thin-"))
    assert thin.warning == "thin-strokes;faint-ink" and len(thin.top_k) == 3 and thin.top_k[0][0] == thin.prediction


# --- rows in bulk (issue 13) ----------------------------------------------------------------------------------


def test_the_command_builds_no_object_per_image(exported, monkeypatch):
    import infer.pipeline as pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a Prediction was built on the command's path")

    monkeypatch.setattr(pipeline.Prediction, "__init__", refuse)
    result = run([ROOT / "samples", "-m", exported, "-q", "--top-k", "3", "--format", "jsonl"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == SAMPLE_COUNT


def test_memory_is_bounded_by_the_paths_in_flight(exported, mnist_pngs):
    """A million-file stream is never read ahead more than the in-flight chunks, with or without workers."""
    from infer.pipeline import INFLIGHT_PER_WORKER, ClassifyOptions, classify_batches

    one = str(next(mnist_pngs.rglob("*.png")))
    clf = Classifier(exported, provider="cpu")
    for workers in (0, 2):
        pulled = [0]

        def paths():
            for _ in range(1_000_000):
                pulled[0] += 1
                yield one

        options = ClassifyOptions(batch_size=32, workers=workers)
        done = 0
        for batch in classify_batches(paths(), clf, options):
            done += len(batch)
            ahead = pulled[0] - done
            assert ahead <= 32 * (2 + max(workers, 1) * INFLIGHT_PER_WORKER + 1), (workers, ahead)
            if done >= 3000:
                break
        assert pulled[0] < 4000


def test_a_prepare_the_workers_cannot_receive_is_an_error_not_a_hang(exported):
    import pickle

    from infer.pipeline import ClassifyOptions, classify_batches

    clf = Classifier(exported, provider="cpu")
    options = ClassifyOptions(workers=2, batch_size=8, prepare=lambda path, mode, multi_digit=False: None)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        for _ in classify_batches([ROOT / "samples"], clf, options):
            pass


def test_deskewing_models_get_the_same_rows_wherever_the_deskew_runs(exported, tmp_path, mnist_pngs):
    """A model that asks for deskewed digits: chunks decoded before the model was loaded are deskewed in
    the main process, later ones in the workers; the rows are the same as deskewing by hand."""
    import onnx

    from infer.preprocess import deskew, load_digit

    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == C.META_INPUT:
            prop.value = json.dumps(C.input_layout(True))
    skewed = tmp_path / "deskew.onnx"
    onnx.save(model, str(skewed))
    clf = Classifier(skewed, provider="cpu")
    assert clf.deskew
    folder = mnist_pngs / "7"
    paths = sorted(str(p) for p in folder.glob("*.png"))[:600]
    digits = np.stack([load_digit(p) for p in paths])
    expected = clf.predict(deskew(digits).astype(np.float32) / 255).argmax(1)
    assert (expected != clf.predict(digits.astype(np.float32) / 255).argmax(1)).any()  # deskew matters here
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths) + "\n")
    outputs = []
    for workers, batch in ((0, 600), (2, 16), (2, 256)):
        result = run(["--files-from", listing, "-m", skewed, "-q", "--workers", workers, "--batch-size", batch])
        assert result.exit_code == 0
        outputs.append(result.stdout)
        assert [int(r["prediction"]) for r in rows(result.stdout)] == expected.tolist()
    assert outputs[0] == outputs[1] == outputs[2]


def test_progress_bar_only_on_a_terminal(exported):
    import fcntl
    import pty
    import termios

    def stderr_of(args: list[str], tty: bool) -> str:
        if not tty:
            return subprocess.run(args, capture_output=True, text=True, timeout=120).stderr
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=120)
        os.close(leader)
        return b"".join(chunks).decode("utf-8", "replace")

    args = [exe(), str(ROOT / "samples"), "-m", str(exported), "--batch-size", "8"]
    assert " images/s]" in stderr_of(args, tty=True)  # tqdm's rate, on the terminal
    assert " images/s]" not in stderr_of(args, tty=False)
    quiet = stderr_of([*args, "-q"], tty=True)
    assert quiet.strip() == ""


# --- issue 10: flags for models made elsewhere --------------------------------------------------------------


def test_input_scale_and_ink_change_what_the_model_reads(exported, wrapped_foreign):
    """A network made elsewhere that reads [0,255] black-on-white pixels: with --input-scale 255 --ink
    black mnist-infer gives exactly our export's rows; with the default assumption it cannot read them."""
    ours = rows(run([ROOT / "samples", "-m", exported, "-q"]).stdout)
    result = run([ROOT / "samples", "-m", wrapped_foreign, "--input-scale", "255", "--ink", "black"])
    told = rows(result.stdout)
    assumed = rows(run([ROOT / "samples", "-m", wrapped_foreign, "-q"]).stdout)
    assert [r["path"] for r in told] == [r["path"] for r in ours]
    assert [r["prediction"] for r in told] == [r["prediction"] for r in ours]
    assert sum(r["prediction"] == r["label"] for r in assumed) < sum(r["prediction"] == r["label"] for r in told) - 20
    assert "note: " in result.stderr and "black ink on white" in result.stderr
    refused = run([ROOT / "samples", "-m", exported, "--input-scale", "255"])
    assert refused.exit_code == 2 and "declares its input layout" in refused.stderr  # a usage error


