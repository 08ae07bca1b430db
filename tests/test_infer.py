"""mnist-infer: real files (good, odd and broken), real ONNX Runtime sessions, the command as users run it."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from infer import contract as C
from infer.cli import main
from infer.engine import Classifier, ProviderError
from infer.pipeline import classify_paths
from infer.preprocess import ImageError, is_mnist_format, to_mnist

ROOT = Path(__file__).resolve().parent.parent


def run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# --- a folder of broken and odd files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory, mnist) -> Path:
    """Good digits in every odd encoding, and every kind of broken file, with labels in folder names."""
    root = tmp_path_factory.mktemp("odd")
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    d = {int(labels[i]): images[i] for i in range(200)}  # one digit per class
    good = root / "good"
    for label in range(10):
        (good / str(label)).mkdir(parents=True)
    Image.fromarray(d[0]).save(good / "0" / "plain.png")
    Image.fromarray((d[1].astype(np.uint16) * 257)).save(good / "1" / "sixteen-bit.png")  # mode I;16
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = d[2]  # black strokes, transparency elsewhere
    Image.fromarray(rgba, "RGBA").save(good / "2" / "transparent.png")
    Image.fromarray(255 - np.pad(d[3], 30)).save(good / "3" / "black-on-white.bmp")
    Image.fromarray(255 - np.pad(d[4], 20)).convert("1").save(good / "4" / "bilevel.tif")
    Image.fromarray(255 - np.pad(d[5], 10)).convert("P").save(good / "5" / "palette.gif")
    Image.fromarray(255 - np.pad(d[6], 10)).convert("CMYK").save(good / "6" / "cmyk.jpg", quality=95)
    # EXIF-rotated: pixels stored rotated 90 degrees, orientation tag 6 says "rotate to view"
    upright = Image.fromarray(255 - np.pad(d[7], 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.rotate(90, expand=True).save(good / "7" / "exif-rotated.jpg", exif=exif, quality=95)
    Image.fromarray(255 - np.pad(d[8], 12)).save(good / "8" / "grey.webp", lossless=True)
    Image.fromarray(255 - np.pad(d[9], 12)).save(good / "9" / "pgm.pgm")

    bad = root / "bad"
    bad.mkdir()
    (bad / "zero-bytes.png").write_bytes(b"")
    png = io.BytesIO()
    Image.fromarray(255 - np.pad(d[0], 40)).save(png, "PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (bad / "text.jpg").write_text("this is not a JPEG\n")
    (bad / "folder.png").mkdir()  # a directory named like an image: walked, empty
    os.symlink("..", bad / "loop")  # a symlink loop back to the root
    (bad / "notes.txt").write_text("not an image at all")
    (bad / ".hidden.png").write_bytes(png.getvalue())
    # a decompression bomb: 20000 x 20000 pixels in a few hundred kB
    bomb = Image.new("1", (20000, 20000))
    bomb.save(bad / "bomb.png", optimize=True)
    (bad / "blank.png").write_bytes(_png_bytes(np.full((64, 64), 255, np.uint8)))
    return root


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_odd_folder_good_classified_bad_reported(odd_folder, exported):
    result = run([odd_folder, "-m", exported, "--workers", "0"])
    assert result.exit_code == 1  # some files failed
    out = {Path(r["path"]).relative_to(odd_folder).as_posix(): r for r in rows(result.stdout)}
    good = {k: r for k, r in out.items() if k.startswith("good/")}
    assert len(good) == 10 and all(r["error"] == "" for r in good.values()), result.output[-3000:]
    correct = sum(r["prediction"] == r["label"] for r in good.values())
    assert correct >= 8, {k: (r["prediction"], r["label"]) for k, r in good.items()}
    assert good["good/7/exif-rotated.jpg"]["prediction"] == "7"  # EXIF orientation applied
    errors = {k: r["error"] for k, r in out.items() if k.startswith("bad/")}
    assert set(errors) == {"bad/zero-bytes.png", "bad/truncated.png", "bad/text.jpg", "bad/bomb.png", "bad/blank.png"}
    assert errors["bad/zero-bytes.png"] == "empty file (0 bytes)"
    assert "not an image" in errors["bad/text.jpg"]
    assert "truncated" in errors["bad/truncated.png"] or "decode" in errors["bad/truncated.png"]
    assert errors["bad/bomb.png"] == "image is 400.0 MP, over the 150-megapixel limit; not decoded"
    assert "no ink" in errors["bad/blank.png"] or "no digit" in errors["bad/blank.png"]
    # the symlink loop was visited once: no path appears twice, no path goes through the loop
    assert len(out) == len(set(out)) and not any("/loop/" in k for k in out)
    assert "5 failed" in result.stderr and "skipped 1 file that is not an image: 1 .txt" in result.stderr


def test_order_is_sorted_and_independent_of_batching(odd_folder, exported):
    a = run([odd_folder, "-m", exported, "--workers", "0", "--batch-size", "3", "-q"]).stdout
    b = run([odd_folder, "-m", exported, "--workers", "2", "--batch-size", "256", "-q"]).stdout
    assert a == b
    paths = [r["path"] for r in rows(a)]
    assert paths == sorted(paths, key=lambda p: Path(p).relative_to(odd_folder).parts)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, mnist) -> Path:
    """What the fast paths see, mixed with what they leave to the full steps: MNIST PNGs, off-centre
    and inverted ones, 28x28 digits on noisy paper, JPEG scans, ruled pages, errors and a skipped file."""
    from bench.realistic import jpeg, scan_like, shifted_inverted

    root = tmp_path_factory.mktemp("mixed")
    images = mnist.test_images.numpy()
    moved, _ = shifted_inverted(images, 40, seed=5)
    rng = np.random.default_rng(5)
    for i in range(40):
        folder = root / f"f{i % 3}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i:03d}-mnist.png").write_bytes(_png_bytes(images[i]))
        (folder / f"{i:03d}-moved.png").write_bytes(_png_bytes(moved[i]))
        noisy = np.clip(moved[i].astype(int) + rng.integers(-20, 21, (28, 28)), 0, 255).astype(np.uint8)
        (folder / f"{i:03d}-noisy.png").write_bytes(_png_bytes(noisy))
        (folder / f"{i:03d}-scan.jpg").write_bytes(jpeg(scan_like(images[i], rng, 256, 4.0), 85))
        if i % 10 == 0:
            page = np.asarray(scan_like(images[i], rng, 300, 2.0)).copy()
            page[::24] = 120  # ruled paper
            (folder / f"{i:03d}-ruled.jpg").write_bytes(jpeg(Image.fromarray(page), 90))
            (folder / f"{i:03d}-broken.png").write_bytes(_png_bytes(images[i])[:60])
            (folder / f"{i:03d}-notes.txt").write_text("not an image")
            (folder / f"{i:03d}-blank.png").write_bytes(_png_bytes(np.full((28, 28), 255, np.uint8)))
    return root


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_are_the_same_for_any_batch_size_and_worker_count(mixed_folder, exported, fmt):
    runs = [run([mixed_folder, "-m", exported, "-q", "--format", fmt, "--workers", str(w), "--batch-size", str(b),
                 "--top-k", "2"]) for w, b in ((0, 1), (0, 7), (2, 3), (2, 256), (1, 64))]
    assert all(r.exit_code == 1 for r in runs)  # the broken and the blank files
    assert all(r.stdout == runs[0].stdout for r in runs)
    lines = runs[0].stdout.splitlines()
    assert len(lines) == 40 * 4 + 4 * 3 * 1 + (fmt == "csv")  # every image, each once; .txt skipped
    errors = [line for line in lines if "cannot decode" in line or "no digit found" in line]
    assert len(errors) == 8


def test_listing_keeps_skipped_files_in_their_place(tmp_path):
    from infer.files import walk_images

    names = ["a.png", "b.txt", "c.PNG", "d", "e.jpg", "f.jpeg", "g.tar.gz", "h.TIFF", ".hidden.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.png").write_bytes(b"x")
    (tmp_path / "zz.gif").write_bytes(b"x")
    got = [(Path(item.path).name, item.skipped is not None) for item in walk_images([tmp_path])]
    assert got == [("a.png", False), ("b.txt", True), ("c.PNG", False), ("d", True), ("e.jpg", False),
                   ("f.jpeg", False), ("g.tar.gz", True), ("h.TIFF", False), ("z.png", False), ("zz.gif", False)]


def test_csv_rows_are_quoted_as_the_csv_module_quotes(tmp_path, exported, mnist):
    names = ["plain.png", "a,comma.png", 'a "quote".png', "new\nline.png", "tab\there.png", "café.png"]
    for name in names:
        (tmp_path / name).write_bytes(_png_bytes(mnist.test_images.numpy()[0]))
    (tmp_path / "bad,one.png").write_bytes(b"broken")
    text = run([tmp_path, "-m", exported, "-q", "--workers", "0"]).stdout
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["path", "prediction", "confidence", "label", "warning", "error"]
    assert sorted(Path(r[0]).name for r in table[1:]) == sorted(names + ["bad,one.png"])
    assert all(len(r) == 6 for r in table)
    bad = next(r for r in table[1:] if r[0].endswith("bad,one.png"))
    assert bad[1] == "" and bad[5] == "not an image Pillow can read"
    # a batch without any of them is written without quotes, as the csv module writes it
    plain = run([tmp_path / "plain.png", "-m", exported, "-q"]).stdout
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(csv.reader(io.StringIO(plain)))
    assert plain == buf.getvalue() and '"' not in plain


def test_strict_stops_and_leaves_no_file(odd_folder, exported, tmp_path):
    out = tmp_path / "out.csv"
    result = run([odd_folder / "bad", "-m", exported, "--strict", "-o", out, "--workers", "0"])
    assert result.exit_code == 1 and "--strict" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_explicit_non_image_file_is_an_error_row(tmp_path, exported):
    note = tmp_path / "readme.txt"
    note.write_text("hello")
    result = run([note, "-m", exported])
    assert result.exit_code == 1
    assert rows(result.stdout)[0]["error"] == "not an image Pillow can read"


# --- preprocessing -----------------------------------------------------------------------------------


def test_mnist_pngs_score_exactly_the_test_set(mnist_pngs, exported, tmp_path):
    out = tmp_path / "out.csv"
    result = run([mnist_pngs, "-m", exported, "-o", out])
    assert result.exit_code == 0, result.stderr
    table = rows(out.read_text())
    assert len(table) == 10000
    accuracy = sum(r["prediction"] == r["label"] for r in table) / 10000
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert accuracy == json.loads(meta[C.META_VERIFICATION])["test_set"]["accuracy_ort"]
    assert f"accuracy {100 * accuracy:.2f}%" in result.stderr


def test_mnist_digits_pass_through_unchanged(mnist):
    digits = mnist.test_images.numpy()
    assert all(is_mnist_format(x) for x in digits)
    assert all(to_mnist(x) is x for x in digits[:100])


def test_real_world_digits_are_brought_to_mnist_layout(mnist):
    digit = mnist.test_images.numpy()[0]
    # black on white, off-centre in a big canvas: recovered as an MNIST-like digit
    page = np.full((200, 150), 235, np.uint8)
    big = np.asarray(Image.fromarray(255 - digit).resize((84, 84), Image.BICUBIC))
    page[10:94, 50:134] = np.minimum(page[10:94, 50:134], big)
    out = to_mnist(page)
    assert out.shape == (28, 28) and is_mnist_format(out)
    rows_, cols_ = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    assert max(rows_[-1] - rows_[0], cols_[-1] - cols_[0]) + 1 in (19, 20)
    assert np.corrcoef(out.ravel().astype(float), digit.ravel().astype(float))[0, 1] > 0.8
    with pytest.raises(ImageError, match="no ink"):
        to_mnist(np.full((50, 50), 128, np.uint8))


@pytest.fixture(scope="module")
def realistic(tmp_path_factory, mnist) -> Path:
    from bench.realistic import write_realistic_set

    out = tmp_path_factory.mktemp("realistic")
    write_realistic_set(out, mnist.test_images.numpy(), mnist.test_labels.numpy(), per_kind=100, seed=1)
    return out


@pytest.mark.parametrize("kind, floor", [("scan", 0.85), ("photo", 0.8), ("transparent", 0.75), ("printed", 0.55)])
def test_preprocessing_accuracy_on_non_mnist_digits(realistic, exported, kind, floor):
    clf = Classifier(exported, provider="cpu")
    mnist_style = list(classify_paths([realistic / kind], clf, workers=0, label_of=lambda p: Path(p).parent.name))
    raw = list(classify_paths([realistic / kind], clf, mode="none", workers=0, label_of=lambda p: Path(p).parent.name))
    acc = np.mean([p.prediction == p.label for p in mnist_style])
    acc_raw = np.mean([p.prediction == p.label for p in raw])
    assert len(mnist_style) == 100 and all(p.error is None for p in mnist_style)
    assert acc >= floor, acc
    assert acc > acc_raw + 0.3, (acc, acc_raw)  # the preprocessing is what makes them readable


# --- output ------------------------------------------------------------------------------------------


def test_csv_jsonl_topk_and_output_file(exported, tmp_path):
    samples = ROOT / "samples"
    csv_out = run([samples, "-m", exported, "--top-k", "3", "-q"])
    assert csv_out.exit_code == 0
    table = rows(csv_out.stdout)
    assert list(table[0]) == ["path", "prediction", "confidence", "top_k", "label", "warning", "error"]
    first = table[0]
    top = [a.split(":") for a in first["top_k"].split()]
    assert len(top) == 3 and top[0] == [first["prediction"], first["confidence"]]
    assert [float(p) for _, p in top] == sorted((float(p) for _, p in top), reverse=True)
    out = tmp_path / "rows.jsonl"
    js = run([samples, "-m", exported, "--format", "jsonl", "--top-k", "2", "-o", out, "-q"])
    assert js.exit_code == 0 and js.stdout == ""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(table)
    assert list(lines[0]) == ["path", "prediction", "confidence", "top_k", "label", "warning", "error"]
    assert lines[0]["prediction"] == first["prediction"] and lines[0]["label"] == first["label"]
    assert lines[0]["top_k"][0] == {"prediction": first["prediction"], "confidence": float(first["confidence"])}
    assert len(lines[0]["top_k"]) == 2 and lines[0]["warning"] is None and lines[0]["error"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no .partial left behind


def test_summary_on_stderr(exported):
    result = run([ROOT / "samples", "-m", exported])
    assert result.exit_code == 0
    err = result.stderr
    assert "images:" in err and "classified" in err and "images/s" in err and "per digit:" in err
    assert "provider: cpu (auto)" in err
    assert "accuracy" in err and "precision" in err and "confusion matrix" in err


def test_labels_file_and_report(exported, tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    labels = tmp_path / "labels.csv"
    lines = ["path,label"]
    for src in sorted((ROOT / "samples").glob("*/mnist-test-*.png")):
        shutil.copy(src, folder / src.name)
        lines.append(f"{src.name},{src.parent.name}")
    labels.write_text("\n".join(lines) + "\n")
    report = tmp_path / "report"
    result = run([folder, "-m", exported, "--labels", labels, "--report", report, "-q"])
    assert result.exit_code == 0, result.stderr
    assert all(r["label"] for r in rows(result.stdout))
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["labelled"] == 20 and sum(map(sum, metrics["confusion"])) == 20
    assert set(metrics["per_class"]) == set(C.LABELS)
    for name in ("confusion.png", "misclassified.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,eleven\n")
    result = run([folder, "-m", exported, "--labels", bad])
    assert result.exit_code == 2 and "--labels" in result.stderr


# --- providers, model, doctor --------------------------------------------------------------------------


def test_cuda_without_cuda_is_a_clear_error(exported):
    import onnxruntime as ort

    try:
        Classifier(exported, provider="cuda")
        pytest.skip("CUDA is usable here")
    except ProviderError:
        pass
    result = run([ROOT / "samples", "-m", exported, "--provider", "cuda"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "CUDA was asked for" in line and "Hint" in line and "--provider cpu" in line
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert ".so" in line  # the library ORT could not load, in ORT's own words
    assert result.stdout == "" and "Traceback" not in result.output


def test_doctor(exported):
    result = run(["--doctor"])
    assert result.exit_code == 0
    import onnxruntime as ort

    assert ort.__version__ in result.stdout and "providers compiled in" in result.stdout
    assert "providers usable now: cpu" in result.stdout and "libcudnn" in result.stdout


def test_model_resolution_and_contract(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(exported, tmp_path / "model.onnx")
    result = run([ROOT / "samples" / "3", "-q"])
    assert result.exit_code == 0
    assert Classifier().info.path == "model.onnx"

    # a model without our metadata that cannot be a digit classifier (its output is [N,784])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["x"], ["logits"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 784])])
    other = tmp_path / "other.onnx"
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(other))
    result = run([ROOT / "samples", "-m", other])
    assert result.exit_code == 1 and "not a 10-class digit classifier" in result.stderr and "[N,784]" in result.stderr
    # not ONNX at all
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    result = run([ROOT / "samples", "-m", junk])
    assert result.exit_code == 1 and "junk.onnx is a text file" in result.stderr and "not an ONNX model" in result.stderr and "Traceback" not in result.output


def test_shipped_default_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./model.onnx here
    clf = Classifier(provider="cpu")
    assert clf.info.path.endswith(os.path.join("infer", "models", "default.onnx"))
    verification = clf.info.verification
    assert verification["passed"] is True and verification["test_set"]["accuracy_ort"] >= 0.96
    result = run([ROOT / "samples", "-q"])
    assert result.exit_code == 0
    table = rows(result.stdout)
    assert sum(r["prediction"] == r["label"] for r in table) / len(table) >= 0.9


# --- Python API ----------------------------------------------------------------------------------------


def test_python_api(exported, mnist):
    import infer

    clf = infer.Classifier(exported, provider="cpu")
    pixels = mnist.test_images.numpy()[:64].astype(np.float32) / 255
    probs = clf.predict(pixels)
    assert probs.shape == (64, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == mnist.test_labels.numpy()[:64]).mean() > 0.85
    assert clf.predict(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)
    preds = list(infer.classify_paths([ROOT / "samples" / "0"], clf, workers=0, top_k=2))
    assert preds and all(p.error is None and len(p.top_k) == 2 for p in preds)
    digit = infer.load_digit(next((ROOT / "samples" / "0").glob("scan-*.jpg")))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8


# --- bad usage, interruption, the real command -------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    ([], "give at least one"),
    (["samples", "--resume"], "--resume needs --output"),
    (["samples", "-o", "x.csv", "--resume", "--force"], "choose one"),
    (["samples", "--top-k", "0"], "--top-k"),
    (["samples", "--provider", "tpu"], "--provider"),
])
def test_usage_errors_exit_2(args, words, monkeypatch):
    monkeypatch.chdir(ROOT)
    result = run(args)
    assert result.exit_code == 2 and words in result.stderr


def test_ctrl_c_before_any_row_leaves_no_output(exported, tmp_path, monkeypatch):
    import infer.output as output

    def interrupted(self, batch, stop=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(output.RowWriter, "write", interrupted)
    out = tmp_path / "out.csv"
    result = run([ROOT / "samples", "-m", exported, "-o", out])
    assert result.exit_code == 130 and list(tmp_path.iterdir()) == []
    assert "interrupted" in result.stderr and "no rows were written" in result.stderr


NO_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("trainer", "exporter"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from infer.cli import main
sys.argv = ["mnist-infer"] + sys.argv[1:]
main()
"""


def test_infer_runs_without_torch(exported):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "samples"), "-m", str(exported)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(rows(proc.stdout)) == 45


def test_help_loads_nothing_heavy():
    code = ("import sys\nfrom infer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'numpy', 'PIL') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "Examples" in proc.stdout


def test_installed_command(exported, tmp_path):
    exe = shutil.which("mnist-infer", path=os.path.dirname(sys.executable))
    assert exe
    out = tmp_path / "rows.csv"
    proc = subprocess.run([exe, str(ROOT / "samples"), "-m", str(exported), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(rows(out.read_text())) == 45 and "images/s" in proc.stderr
    mod = subprocess.run([sys.executable, "-m", "infer", "--version"], capture_output=True, text=True)
    assert mod.returncode == 0 and C.TOOL_VERSION in mod.stdout


def test_fast_png_path_matches_pillow(mnist_pngs, tmp_path):
    from infer.preprocess import read_grey

    paths = sorted(mnist_pngs.rglob("*.png"))[::20]
    for p in paths:
        assert np.array_equal(read_grey(p), np.asarray(Image.open(p)))
    # greyscale with a transparent colour (tRNS) and 16-bit go through Pillow, and still decode right
    img = Image.fromarray(np.pad(np.full((5, 5), 200, np.uint8), 4))
    img.save(tmp_path / "trns.png", transparency=0)
    assert read_grey(tmp_path / "trns.png").shape == (13, 13)
    data = paths[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(ImageError):
        read_grey(tmp_path / "cut.png")
