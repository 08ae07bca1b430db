"""mnist-export: round trip on a real checkpoint, a proof that fails loudly, metadata, bad input, reproducibility."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
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

ROOT = Path(__file__).resolve().parent.parent


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
    assert json.loads(meta[C.META_SOURCE_FORMAT]) == {"kind": "mnist-toolkit-checkpoint",
                                                      "format_version": C.CHECKPOINT_VERSION}
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
    bad = run([trained, "--check", tampered, "--data-dir", mnist_dir, "-q"])
    assert bad.exit_code == 1 and "exceeds atol" in bad.stderr
    line = bad.stderr.strip()
    assert len(line.splitlines()) == 1 and len(line) < 400 and "more)" in line  # not all 14 failures in one line
    report = json.loads((tmp_path / "tampered.onnx.check.json").read_text())
    assert report["passed"] is False and len(report["failures"]) > 1
    good = run([trained, "--check", exported, "--data-dir", mnist_dir, "--report", tmp_path / "ok.json"])
    assert good.exit_code == 0 and json.loads((tmp_path / "ok.json").read_text())["passed"]
    line = json.loads(good.stdout)
    accuracy = line.pop("test_accuracy")
    assert line == {"model": str(exported), "checkpoint": str(trained), "report": str(tmp_path / "ok.json"),
                    "sha256": hashlib.sha256(exported.read_bytes()).hexdigest(),
                    "source_format": "mnist-toolkit-checkpoint", "verified": True, "hint": None,
                    "check_status": {"test_set": "passed", "edge_inputs": "passed", "batch_sizes": "passed"}}
    # the same fields as the export's own line, the same test accuracy
    exported_line = json.loads((exported.parent / (exported.name + ".json")).read_text())
    assert accuracy == pytest.approx(next(c["accuracy_ort"] for c in exported_line["checks"] if c["name"] == "test set"))
    # the one rule for existing outputs: the report is not overwritten without --force
    again = run([trained, "--check", exported, "--data-dir", mnist_dir, "--report", tmp_path / "ok.json"])
    assert again.exit_code == 2 and "--force" in again.stderr


def test_check_against_another_checkpoint_compares_the_recorded_sha256(exported, trained, tmp_path, mnist_dir):
    other = tmp_path / "other.pt"
    ckpt = torch.load(trained, weights_only=True)
    ckpt["state_dict"]["layers.0.bias"] += 0.5
    torch.save(ckpt, other)
    result = run([other, "--check", exported, "--data-dir", mnist_dir])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and len(line) < 400
    assert "was exported from another checkpoint" in line and C.META_SOURCE_SHA256 in line
    assert file_sha256(trained)[:12] in line and file_sha256(other)[:12] in line
    assert not (tmp_path / "model.onnx.check.json").exists()


def test_check_against_an_onnx_file_made_elsewhere(trained, tmp_path):
    """A digit model from elsewhere (the ONNX model zoo's names and fixed shape, no metadata): one line."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["Input3", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["Plus214_Output_0"])],
        "zoo", [helper.make_tensor_value_info("Input3", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("Plus214_Output_0", TensorProto.FLOAT, [1, 10])],
        [weight, numpy_helper.from_array(np.array([1, 784], np.int64), "shape")])
    zoo = tmp_path / "mnist-8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(zoo))
    result = run([trained, "--check", zoo])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "records no source checkpoint" in result.stderr
    assert "inputs ['Input3'] and outputs ['Plus214_Output_0'] are not mnist-export's" in result.stderr
    assert not (tmp_path / "mnist-8.onnx.check.json").exists()


def test_check_takes_an_onnx_file(trained, tmp_path):
    result = run([trained, "--check", trained])
    assert result.exit_code == 1 and "--check takes the ONNX file" in result.stderr and "torch.save file" in result.stderr


def test_tolerance_is_enforced(trained, tmp_path, mnist_dir):
    result = run([trained, "-o", tmp_path / "m.onnx", "--data-dir", mnist_dir, "--atol", "0", "--rtol", "0"])
    assert result.exit_code == 1 and not (tmp_path / "m.onnx").exists()


def test_without_test_set_says_so(trained, tmp_path, monkeypatch):
    """Only the user cache may lack MNIST (no --data-dir, no $MNIST_DATA): the proof runs without it, says so."""
    monkeypatch.delenv("MNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = run([trained, "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 0, result.output
    assert "MNIST test set not found" in result.stderr and "partly verified" in result.stderr
    report = json.loads((tmp_path / "m.onnx.json").read_text())
    assert report["test_set_checked"] is False and report["verified"] is False
    summary = json.loads(result.stdout)
    assert summary["verified"] is False and summary["test_accuracy"] is None
    assert summary["check_status"] == {"test_set": "not run: MNIST test set not found", "edge_inputs": "passed",
                                       "batch_sizes": "passed"}


def _named_data_folder(kind: str, tmp_path: Path, mnist_dir: Path) -> Path:
    """A folder a user could name for MNIST that does not hold it, one of each kind."""
    if kind == "missing":
        return tmp_path / "no-such" / "folder"
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    if kind == "empty":
        return tmp_path / "data"
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = (mnist_dir / "MNIST" / "raw" / name).read_bytes()
        if kind == "one-file-missing" and name.startswith("t10k-labels"):
            continue
        (raw / name).write_bytes(data[:999] if kind == "truncated" and name.startswith("t10k-labels") else data)
    return tmp_path / "data"


NAMED_KINDS = {"missing": "no such folder", "empty": "MNIST not found", "one-file-missing": "t10k-labels-idx1-ubyte missing",
               "truncated": "truncated"}


@pytest.mark.parametrize("how", ["--data-dir", "$MNIST_DATA", "--check"])
@pytest.mark.parametrize("kind", NAMED_KINDS)
def test_a_named_folder_without_mnist_is_a_usage_error_before_any_work(trained, exported, tmp_path, mnist_dir,
                                                                        monkeypatch, kind, how):
    folder = _named_data_folder(kind, tmp_path, mnist_dir)
    before = sorted(tmp_path.rglob("*"))
    if how == "$MNIST_DATA":
        monkeypatch.setenv("MNIST_DATA", str(folder))
        args = []
    else:
        args = ["--data-dir", folder] + (["--check", exported, "--report", tmp_path / "r.json"] if how == "--check" else [])
    result = run([trained, "-o", tmp_path / "z.onnx", *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and NAMED_KINDS[kind] in errors[0], result.stderr
    assert errors[0].startswith("Error: $MNIST_DATA: " if how == "$MNIST_DATA" else "Error: Invalid value for '--data-dir': ")
    assert "verified" not in result.output and "Traceback" not in result.output and result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before


def test_no_verify_reads_no_mnist_data_but_checks_a_data_dir_named_on_the_command_line(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA", str(tmp_path / "nowhere"))  # set for other commands; not needed here
    ok = run([trained, "-o", tmp_path / "a.onnx", "--no-verify"])
    assert ok.exit_code == 0 and (tmp_path / "a.onnx").is_file()
    typo = run([trained, "-o", tmp_path / "b.onnx", "--no-verify", "--data-dir", tmp_path / "nowhere"])
    assert typo.exit_code == 2 and "no such folder" in typo.stderr and not (tmp_path / "b.onnx").exists()


def test_stdout_says_which_checks_ran(exported, trained, tmp_path, mnist_dir):
    result = run([trained, "-o", tmp_path / "m.onnx", "--data-dir", mnist_dir, "-q"])
    summary = json.loads(result.stdout)
    assert summary["verified"] is True and summary["source_format"] == "mnist-toolkit-checkpoint"
    assert summary["check_status"] == {"test_set": "passed", "edge_inputs": "passed", "batch_sizes": "passed"}
    proof = json.loads((tmp_path / "m.onnx.json").read_text())
    assert summary["test_accuracy"] == next(c for c in proof["checks"] if c["name"] == "test set")["accuracy_ort"]
    assert summary["sha256"] == hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()


def test_no_verify_is_loud(trained, tmp_path):
    out = tmp_path / "m.onnx"
    result = run([trained, "-o", out, "--no-verify"])
    assert result.exit_code == 0 and "NOTHING WAS CHECKED" in result.stderr
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta[C.META_VERIFICATION])["passed"] is None
    summary = json.loads(result.stdout)
    assert summary["verified"] is False and set(summary["check_status"].values()) == {"not run: --no-verify"}
    # the report says so too, and is written with the model (never a stale proof beside it)
    assert json.loads((tmp_path / "m.onnx.json").read_text())["verified"] is False


def options_not_on_mnist_export(text: str) -> list[str]:
    """The --options a message names for mnist-export that it does not have (one named for another
    command, `mnist-infer --doctor`, is that command's)."""
    ours = {o for p in main.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "--version"}
    return [m.group(2) for m in re.finditer(r"(?:(mnist-\w+) )?(?<![\w-])(--[a-z][a-z0-9-]*)", text)
            if m.group(1) in (None, "mnist-export") and m.group(2) not in ours]


@pytest.mark.parametrize("build", ["as-installed", "without-cuda-provider"])
@pytest.mark.parametrize("check", [False, True], ids=["export", "check"])
def test_cuda_verification_without_cuda_is_exit_1_with_a_hint_naming_our_option(trained, exported, tmp_path, mnist_dir,
                                                                                 monkeypatch, build, check):
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if build == "without-cuda-provider":  # the plain onnxruntime package: another hint from infer
        import infer.cuda

        monkeypatch.setattr(infer.cuda, "has_cuda_provider", lambda: False)
    out = tmp_path / "m.onnx"
    mode = ["--check", exported, "--report", tmp_path / "r.json"] if check else ["-o", out]
    result = run([trained, *mode, "--data-dir", mnist_dir, "--verify-provider", "cuda"])
    assert result.exit_code == 1 and "CUDA" in result.stderr and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--verify-provider cuda" in errors[0], result.stderr
    assert options_not_on_mnist_export(result.stderr) == []
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_every_option_the_exporter_names_exists():
    """Every --option in a string of exporter/ (messages, hints, help) is one of mnist-export's; regular
    expressions (which match other commands' words to rewrite them) are not messages."""
    import ast

    for path in sorted((ROOT / "exporter").glob("*.py")):
        tree = ast.parse(path.read_text())
        patterns = {id(a) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and n.func.attr == "compile" for a in n.args}
        texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                 and id(n) not in patterns]
        assert options_not_on_mnist_export("\n".join(texts)) == [], path.name


# --- bad input -------------------------------------------------------------------------------------


def _poisoned(trained: Path, tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A checkpoint whose weights a diverged run left not finite: ours or a foreign state_dict."""
    data = torch.load(trained, weights_only=True)
    state = data["state_dict"]
    if kind == "own-nan":
        state["layers.1.weight"][3, 5] = float("nan")
        words = "layers.1.weight holds 1 NaN value of 256"
    elif kind == "own-inf":
        state["layers.0.bias"][:2] = torch.tensor([float("inf"), -float("inf")])
        words = "layers.0.bias holds 2 infinite values of 16"
    elif kind == "own-all-nan":
        for v in state.values():
            v.fill_(float("nan"))
        words = "layers.0.weight holds 12544 NaN values of 12544"
    else:  # a tutorial's state_dict, all NaN but one infinite weight
        data = {"fc1.weight": state["layers.0.weight"], "fc1.bias": state["layers.0.bias"],
                "fc2.weight": state["layers.1.weight"], "fc2.bias": state["layers.1.bias"],
                "fc3.weight": state["layers.2.weight"].fill_(float("nan")), "fc3.bias": state["layers.2.bias"]}
        data["fc3.weight"][0, 0] = float("inf")
        words = "fc3.weight holds 159 NaN and 1 infinite values of 160"
    path = tmp_path / f"{kind}.pt"
    torch.save(data, path)
    return path, words


@pytest.mark.parametrize("verify", [[], ["--no-verify"]], ids=["verify", "no-verify"])
@pytest.mark.parametrize("kind", ["own-nan", "own-inf", "own-all-nan", "foreign"])
def test_weights_that_are_not_finite_are_refused_naming_the_tensor(trained, tmp_path, mnist_dir, kind, verify):
    path, words = _poisoned(trained, tmp_path, kind)
    result = run([path, "-o", tmp_path / "m.onnx", "--data-dir", mnist_dir, *verify])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0] and "diverged" in errors[0], result.stderr
    assert "max abs diff" not in result.output and "Traceback" not in result.output and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no ONNX file, no report


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
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    return path


@pytest.mark.parametrize("kind, words", [
    ("text", "a text file (starting 'this is not a checkpoint')"),
    ("empty", "an empty file (0 bytes)"),
    ("state_dict", "Linear layers do not chain 784 -> ... -> 10: found layers.0 Linear 784->16"),
    ("version", "format version 99 is not supported"),
    ("zip", "a zip archive (notes.txt)"),
])
def test_bad_checkpoints_get_one_line(kind, words, tmp_path):
    result = run([_bad_input(tmp_path, kind), "-o", tmp_path / "m.onnx"])
    assert result.exit_code == 1
    assert words in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def _wrong_kind(kind: str, tmp_path: Path, exported: Path) -> tuple[Path, list[str]]:
    """A file people hand mnist-export by mistake, and the words its one line must hold."""
    if kind == "onnx":
        return exported, ["an ONNX model", f"mnist-infer IMAGES --model {exported}", "--check"]
    if kind == "json":
        return exported.with_name("model.onnx.json"), ["a JSON file"]
    if kind == "png":
        image = next(p for p in sorted((ROOT / "samples").rglob("*.png")))
        return image, ["a PNG image", f"mnist-infer {image}"]
    if kind == "jpeg":
        from PIL import Image

        path = tmp_path / "digit.jpg"
        Image.new("L", (28, 28)).save(path)
        return path, ["a JPEG image", "mnist-infer"]
    if kind == "python":
        path = tmp_path / "train.py"
        path.write_text("import torch\n")
        return path, ["a text file (starting 'import torch')"]
    if kind == "pickle":
        path = tmp_path / "weights.pkl"
        path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
        return path, ["a plain Python pickle", "not opened"]
    if kind == "lfs":
        path = tmp_path / "model.pt"
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 52000\n")
        return path, ["a Git LFS pointer", "git lfs pull"]
    if kind == "npy":
        path = tmp_path / "weights.npy"
        np.save(path, np.zeros((16, 784), np.float32))
        return path, ["a NumPy .npy array"]
    if kind == "npz":
        path = tmp_path / "weights.npz"
        np.savez(path, w1=np.zeros((16, 784), np.float32), b1=np.zeros(16, np.float32))
        return path, ["a NumPy .npz archive"]
    if kind == "torchscript":
        path = tmp_path / "scripted.pt"
        torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2), torch.zeros(1, 4)), str(path))
        return path, ["a TorchScript archive", ".state_dict()"]
    raise AssertionError(kind)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace's own deprecation notice
@pytest.mark.parametrize("kind", ["onnx", "json", "png", "jpeg", "python", "pickle", "lfs", "npy", "npz",
                                  "torchscript"])
def test_wrong_kind_of_file_gets_the_fix_in_one_line(kind, tmp_path, exported):
    path, words = _wrong_kind(kind, tmp_path, exported)
    before = path.read_bytes()
    result = run([path, "-o", tmp_path / "out.onnx"])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output
    for w in words:
        assert w in line
    assert "mnist-export takes a PyTorch file" in line
    assert "would run code" not in line  # today's misleading words
    assert not (tmp_path / "out.onnx").exists() and path.read_bytes() == before


def test_an_onnx_file_is_named_before_its_default_output_clashes(exported, tmp_path):
    model = tmp_path / "model.onnx"  # its default output would be itself
    shutil.copy(exported, model)
    result = run([model])
    assert result.exit_code == 1 and "an ONNX model" in result.stderr and "already exists" not in result.stderr
    assert model.read_bytes() == exported.read_bytes()


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


def test_existing_report_needs_force_too(trained, tmp_path):
    report = tmp_path / "m.onnx.json"
    report.write_text("keep me")
    result = run([trained, "-o", tmp_path / "m.onnx", "--no-verify"])
    assert result.exit_code == 2 and str(report) in result.stderr and "--force" in result.stderr
    assert report.read_text() == "keep me" and not (tmp_path / "m.onnx").exists()
    assert run([trained, "-o", tmp_path / "m.onnx", "--no-verify", "--force"]).exit_code == 0
    assert json.loads(report.read_text())["verified"] is False


@pytest.mark.parametrize("clash", ["output", "report", "output-is-report"])
def test_an_output_that_is_an_input_is_refused(clash, trained, tmp_path):
    source = tmp_path / "m.pt"
    shutil.copy(trained, source)
    before = source.read_bytes()
    args = {"output": ["-o", source], "report": ["--report", source],
            "output-is-report": ["-o", tmp_path / "x.onnx", "--report", tmp_path / "x.onnx"]}[clash]
    result = run([source, *args, "--force", "--no-verify"])
    assert result.exit_code == 2, result.output
    assert ("is the input checkpoint" in result.stderr) or ("name the same file" in result.stderr)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    # the same file by another spelling
    result = run([source, "-o", tmp_path / "." / "m.pt", "--force", "--no-verify"])
    assert result.exit_code == 2 and source.read_bytes() == before


def test_check_report_is_not_the_model_checked(exported, trained, tmp_path):
    copy = tmp_path / "model.onnx"
    shutil.copy(exported, copy)
    result = run([trained, "--check", copy, "--report", copy, "--force"])
    assert result.exit_code == 2 and copy.read_bytes() == exported.read_bytes()


def test_report_in_a_new_folder(trained, tmp_path, mnist_dir):
    result = run([trained, "-o", tmp_path / "models" / "m.onnx", "--report", tmp_path / "nodir" / "deeper" / "r.json",
                  "--data-dir", mnist_dir, "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "m.onnx").stat().st_size > 1000
    assert json.loads((tmp_path / "nodir" / "deeper" / "r.json").read_text())["verified"] is True


def test_model_and_report_are_committed_together_or_not_at_all(trained, tmp_path, monkeypatch):
    # The report cannot be written (its folder would be under a file): no model either, no temporaries.
    (tmp_path / "afile").write_text("x")
    result = run([trained, "-o", tmp_path / "m.onnx", "--report", tmp_path / "afile" / "r.json", "--no-verify"])
    assert result.exit_code == 1 and "nothing was written" in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]

    # A failure while renaming the second file: the first is taken back, an overwritten model restored.
    import exporter.outputs as outputs

    old_model, old_report = tmp_path / "old.onnx", tmp_path / "old.onnx.json"
    old_model.write_bytes(b"the previous model")
    old_report.write_text("the previous report")
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace_then_fail)
    result = run([trained, "-o", old_model, "--no-verify", "--force"])
    monkeypatch.undo()
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert old_model.read_bytes() == b"the previous model" and old_report.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "old.onnx", "old.onnx.json"]

    # New files, the same failure: neither is left behind, nor the folder made for them.
    calls.clear()
    monkeypatch.setattr(outputs.os, "replace", replace_then_fail)
    result = run([trained, "-o", tmp_path / "new" / "m.onnx", "--no-verify"])
    monkeypatch.undo()
    assert result.exit_code == 1 and not (tmp_path / "new").exists()


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


def test_train_and_export_print_paths_as_mnist_infer_does(trained, tmp_path, mnist_dir):
    """Real processes, real file names (bytes): every path on stdout (JSON) and stderr, and in the files
    written, is infer.output.escape_path's text, valid UTF-8, as mnist-infer writes it."""
    from infer.output import escape_path, unescape_path

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_DATA": str(mnist_dir)}
    name = os.fsdecode(b"r\xe9sum\xe9 caf\xc3\xa9 back\\slash")  # Latin-1 bytes (not UTF-8), UTF-8, a backslash
    shutil.copy(trained, tmp_path / f"{name}.pt")

    def call(module, *args):
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                              timeout=300)
        return proc.returncode, proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")  # strict: no lone surrogate

    code, out, err = call("trainer", "--epochs", "1", "--copies", "0", "--pca", "0", "--no-plots", "--out",
                          f"{name}.new.pt")
    assert code == 0, err
    assert json.loads(out)["model"] == escape_path(f"{name}.new.pt") and "\\ud" not in out
    assert f"wrote {escape_path(name)}.new.pt, {escape_path(name)}.new.metrics.json" in err
    assert json.loads((tmp_path / f"{name}.new.metrics.json").read_bytes().decode("utf-8"))["model"]["file"] == \
        escape_path(f"{name}.new.pt")

    code, out, err = call("exporter", f"{name}.pt", "-o", f"{name}.onnx", "--no-verify")  # the proof prints no path
    assert code == 0, err
    printed = json.loads(out)
    assert (printed["model"], printed["report"]) == (escape_path(f"{name}.onnx"), escape_path(f"{name}.onnx.json"))
    assert unescape_path(printed["model"]) == f"{name}.onnx" and (tmp_path / unescape_path(printed["model"])).is_file()
    assert f"wrote {escape_path(name)}.onnx" in err
    report = json.loads((tmp_path / f"{name}.onnx.json").read_bytes().decode("utf-8"))
    assert (report["checkpoint"], report["output"]) == (escape_path(f"{name}.pt"), escape_path(f"{name}.onnx"))

    code, out, err = call("exporter", f"{name}.pt", "-o", f"{name}.onnx")  # exists: a usage error naming it
    assert code == 2 and f"Error: {escape_path(name)}.onnx and {escape_path(name)}.onnx.json already exist" in err


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
