"""mnist-export: round trip on a real checkpoint, a proof that fails loudly, metadata, bad input, reproducibility."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from exporter.cli import main
from infer import contract as C
from trainer.checkpoint import file_sha256


def run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_round_trip_agrees_on_the_real_test_set(exported, trained, mnist):
    report = json.loads(exported.with_name("model.onnx.json").read_text())
    assert report["passed"] and report["test_set_checked"] and report["failures"] == []
    test = next(c for c in report["checks"] if c["name"] == "test set")
    assert test["n"] == 10000
    assert test["outputs"]["logits"]["argmax_agreement"] == 1.0
    assert test["outputs"]["logits"]["max_abs_diff"] <= report["atol"]
    assert test["accuracy_ort"] == test["accuracy_torch"]
    names = {c["name"] for c in report["checks"]}
    assert {"zeros", "ones", "uniform", "batch 1", "batch 7", "batch 1000"} <= names
    assert 0 < report["noise_floor"] < 1e-3

    # Independently: a fresh ORT session on the file vs the checkpoint rebuilt in PyTorch.
    from trainer.checkpoint import load_checkpoint

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    pixels = mnist.test_images.numpy()[:500].astype(np.float32)[:, None] / 255
    logits, probs = session.run(["logits", "probs"], {"pixels": pixels})
    with torch.no_grad():
        ref, ref_probs = load_checkpoint(trained).build_normalised(with_probs=True)(torch.from_numpy(pixels))
    assert np.abs(logits - ref.numpy()).max() < 1e-4
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and np.abs(probs - ref_probs.numpy()).max() < 1e-5


def test_graph_contract(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert {op.domain: op.version for op in model.opset_import}[""] == 18
    assert not exported.with_name("model.onnx.data").exists()  # one self-contained file
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    # normalisation is folded in: the graph starts from raw pixels
    assert [n.op_type for n in model.graph.node][:2] == ["Sub", "Div"]
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n in (1, 3, 257):
        assert session.run(["logits"], {"pixels": np.zeros((n, 1, 28, 28), np.float32)})[0].shape == (n, 10)


def test_metadata_is_read_back(exported, trained):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta[C.META_FORMAT] == C.META_FORMAT_VALUE
    assert json.loads(meta[C.META_LABELS]) == list(C.LABELS)
    layout = json.loads(meta[C.META_INPUT])
    assert layout["ink"] == "white-on-black" and layout["shape"] == ["N", 1, 28, 28] and "centre of mass" in layout["centring"]
    assert meta[C.META_SOURCE_SHA256] == file_sha256(trained)
    ckpt = torch.load(trained, weights_only=True)
    assert json.loads(meta[C.META_SOURCE_TEST_ACCURACY]) == ckpt["metrics"]["test_accuracy"]
    verification = json.loads(meta[C.META_VERIFICATION])
    assert verification["passed"] is True and verification["test_set"]["argmax_agreement"] == 1.0
    assert verification["test_set"]["accuracy_ort"] == pytest.approx(ckpt["metrics"]["test_accuracy"], abs=1e-4)
    assert meta[C.META_OPSET] == "18"
    versions = json.loads(meta[C.META_VERSIONS])
    assert versions["tool"] == C.TOOL_VERSION and versions["torch"] == str(torch.__version__)
    assert versions["onnx"] == onnx.__version__


def test_no_paths_and_byte_identical(exported, trained, tmp_path, mnist_dir):
    blob = exported.read_bytes()
    for needle in (str(Path.home()), "/tmp", str(tmp_path.parent), "site-packages", "stack_trace", ".py"):
        assert needle.encode() not in blob, needle
    model = onnx.load(str(exported))
    assert all(len(n.metadata_props) == 0 for n in model.graph.node)
    again = tmp_path / "again.onnx"
    assert run([trained, "-o", again, "--data-dir", mnist_dir, "-q"]).exit_code == 0
    assert again.read_bytes() == blob


def test_corrupted_graph_fails_with_exit_1_and_no_file(trained, tmp_path, mnist_dir, monkeypatch):
    import exporter.export as export

    real_build = export.build_onnx

    def build_then_perturb(ckpt, opset=18):
        proto = real_build(ckpt, opset)
        weight = next(t for t in proto.graph.initializer if t.name.endswith("layers.2.weight"))
        array = onnx.numpy_helper.to_array(weight).copy()
        array[3, 5] += 0.05  # one weight of the output layer, nudged
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
        return proto

    monkeypatch.setattr(export, "build_onnx", build_then_perturb)
    out = tmp_path / "bad.onnx"
    result = run([trained, "-o", out, "--data-dir", mnist_dir])
    assert result.exit_code == 1
    assert "verification failed" in result.stderr and "logits" in result.stderr and "max abs diff" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    report = json.loads((tmp_path / "bad.onnx.json").read_text())
    assert report["passed"] is False and report["output"] is None and report["failures"]


def test_check_mode_catches_a_tampered_file(exported, trained, tmp_path, mnist_dir):
    tampered = tmp_path / "tampered.onnx"
    model = onnx.load(str(exported))
    bias = next(t for t in model.graph.initializer if t.name.endswith("layers.0.bias"))
    array = onnx.numpy_helper.to_array(bias).copy() + 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(array, bias.name))
    onnx.save(model, str(tampered))
    bad = run([trained, "--check", tampered, "--data-dir", mnist_dir])
    assert bad.exit_code == 1 and "exceeds atol" in bad.stderr
    good = run([trained, "--check", exported, "--data-dir", mnist_dir, "--report", tmp_path / "ok.json"])
    assert good.exit_code == 0 and json.loads((tmp_path / "ok.json").read_text())["passed"]


def test_tolerance_is_enforced(trained, tmp_path, mnist_dir):
    result = run([trained, "-o", tmp_path / "m.onnx", "--data-dir", mnist_dir, "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 1 and not (tmp_path / "m.onnx").exists()


def test_without_test_set_says_so(trained, tmp_path):
    result = run([trained, "-o", tmp_path / "m.onnx", "--data-dir", tmp_path / "nowhere"])
    assert result.exit_code == 0, result.output
    assert "MNIST test set not found" in result.stderr
    assert json.loads((tmp_path / "m.onnx.json").read_text())["test_set_checked"] is False


def test_no_verify_is_loud(trained, tmp_path):
    out = tmp_path / "m.onnx"
    result = run([trained, "-o", out, "--no-verify"])
    assert result.exit_code == 0 and "NOTHING WAS CHECKED" in result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[C.META_VERIFICATION])["passed"] is None


def test_cuda_verification_without_cuda_is_exit_1(trained, tmp_path, mnist_dir):
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "m.onnx"
    result = run([trained, "-o", out, "--data-dir", mnist_dir, "--verify-provider", "cuda"])
    assert result.exit_code == 1 and "CUDA" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


# --- bad input -------------------------------------------------------------------------------------


def _bad_input(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "state_dict":
        torch.save({"layers.0.weight": torch.zeros(16, 784)}, path)
    elif kind == "version":
        torch.save({"format": C.CHECKPOINT_FORMAT, "format_version": 99}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, words", [
    ("text", "not a readable PyTorch checkpoint"),
    ("empty", "not a readable PyTorch checkpoint"),
    ("state_dict", "not an mnist-toolkit checkpoint"),
    ("version", "format version 99 is not supported"),
])
def test_bad_checkpoints_get_one_line(kind, words, tmp_path):
    result = run([_bad_input(tmp_path, kind), "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 1
    assert words in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_truncated_checkpoint(trained, tmp_path):
    data = trained.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[: len(data) // 2])
    result = run([bad, "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 1 and "truncated or corrupt" in result.stderr


def test_missing_file_is_usage_error(tmp_path):
    result = run([tmp_path / "nope.pt"])
    assert result.exit_code == 2 and "does not exist" in result.stderr


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_malicious_pickle_never_runs(tmp_path, trained):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    # A real checkpoint whose data.pkl also carries an object that runs a shell command when unpickled.
    ckpt = torch.load(trained, weights_only=True)
    ckpt["metrics"]["extra"] = Payload()
    torch.save(ckpt, evil)
    with zipfile.ZipFile(evil) as z:
        assert any(b"system" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    result = run([evil, "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 1 and "refused to load" in result.stderr
    assert not Path(MARKER).exists(), "the pickle's payload ran"
    assert not (tmp_path / "m.onnx").exists()
    # and a plain pickle file, not even a zip
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(Payload()))
    result = run([plain, "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 1 and not Path(MARKER).exists()


def test_existing_output_needs_force(exported, trained, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    result = run([trained, "-o", out, "--no-verify"])
    assert result.exit_code == 2 and "--force" in result.stderr and out.read_bytes() == b"keep me"
    assert run([trained, "-o", out, "--no-verify", "--force"]).exit_code == 0
    assert out.read_bytes() != b"keep me"


def test_installed_command(trained, tmp_path, mnist_dir):
    exe = shutil.which("mnist-export", path=os.path.dirname(sys.executable))
    assert exe
    out = tmp_path / "sub.onnx"
    proc = subprocess.run([exe, str(trained), "-o", str(out), "--data-dir", str(mnist_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] is True and "test set" in proc.stderr
    assert "[torch.onnx]" not in proc.stdout
    mod = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True)
    assert mod.returncode == 0 and "Examples" in mod.stdout


def test_deskew_travels_from_checkpoint_to_model_to_infer(trained, tmp_path, mnist_dir, mnist_pngs):
    """A checkpoint that reads deskewed digits: the export records it and is proved on deskewed test
    digits; mnist-infer deskews for it, so the MNIST PNGs score exactly the proof's accuracy."""
    from infer.cli import main as infer_main
    from infer.engine import Classifier
    from infer.preprocess import deskew

    ckpt = torch.load(trained, weights_only=True)
    assert ckpt["preprocessing"] == {"deskew": False}
    ckpt["preprocessing"] = {"deskew": True}
    source = tmp_path / "deskewed.pt"
    torch.save(ckpt, source)
    out = tmp_path / "deskewed.onnx"
    assert run([source, "-o", out, "--data-dir", mnist_dir, "-q"]).exit_code == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[C.META_INPUT])["deskew"] is True
    proof = json.loads(meta[C.META_VERIFICATION])["test_set"]

    # The proof's accuracy is the accuracy on deskewed digits, computed independently here.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    from trainer.data import load_mnist

    mnist = load_mnist(mnist_dir, download=False)
    pixels = deskew(mnist.test_images.numpy()).astype(np.float32)[:, None] / 255
    (logits,) = session.run(["logits"], {"pixels": pixels})
    assert proof["accuracy_ort"] == float((logits.argmax(1) == mnist.test_labels.numpy()).mean())
    assert Classifier(out, provider="cpu").deskew is True

    result = CliRunner().invoke(infer_main, [str(mnist_pngs), "-m", str(out), "-q", "-o", str(tmp_path / "rows.csv")])
    assert result.exit_code == 0, result.output
    import csv

    with open(tmp_path / "rows.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10000
    assert sum(r["prediction"] == r["label"] for r in table) / 10000 == proof["accuracy_ort"]
