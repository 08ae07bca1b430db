"""Bring your own model: the PyTorch files people really save, exported by mnist-export and checked in ONNX Runtime.

Every file here is made the way users make it: a real nn.Module subclass, trained a little on real MNIST
(or freshly initialised where only the arithmetic matters), written with torch.save exactly as tutorials
call it. Each export runs through the real command and the ONNX file is compared, in a real ONNX Runtime
session, with the user's own PyTorch module on real test digits.
"""
from __future__ import annotations

import json
import os
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
from torch import nn

from exporter.cli import ACTIVATION_CHOICES, main
from infer import contract as C
from trainer.checkpoint import file_sha256
from trainer.model import ACTIVATIONS

ROOT = Path(__file__).resolve().parent.parent
MNIST_NORMALIZE = (0.1307, 0.3081)


# --- the networks people write ---------------------------------------------------------------------


class SeedNet(nn.Module):
    """The seed write-up's network: three Linear layers named layer1..3, sigmoid, flatten in forward."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(784, 16)
        self.layer2 = nn.Linear(16, 16)
        self.layer3 = nn.Linear(16, 10)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        x = torch.sigmoid(self.layer1(x))
        x = torch.sigmoid(self.layer2(x))
        return self.layer3(x)


class FcNet(nn.Module):
    """The other tutorial spelling: fc1/fc2/fc3 with F.relu, a wider first layer."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.flatten(x, 1)
        x = nn.functional.relu(self.fc1(x))
        x = nn.functional.relu(self.fc2(x))
        return self.fc3(x)


class OutOfOrderNet(nn.Module):
    """Layers registered in another order than forward uses them: only the shapes give the order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(24, 10)
        self.hidden = nn.Linear(784, 24)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(x.flatten(1))))


class Wrapped(nn.Module):
    """A nesting prefix: the MLP inside an nn.Sequential attribute, activation modules in the tree."""

    def __init__(self, act: type[nn.Module] = nn.Tanh):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), act(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


class MnistCnn(nn.Module):
    """PyTorch's own MNIST example network: conv layers, which mnist-export does not import."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def sequential_mlp() -> nn.Sequential:
    """`nn.Sequential(nn.Linear, nn.Sigmoid, ...)`: state_dict keys 0.weight, 2.weight, 4.weight."""
    return nn.Sequential(nn.Linear(784, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 10))


def train_briefly(model: nn.Module, mnist, *, steps: int = 300, normalize=(0.0, 1.0), flatten: bool = False,
                  seed: int = 0):
    """A plain PyTorch loop, as tutorials write it: Adam, cross-entropy, batches of 64 from the real training set."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images = mnist.train_images[:20000].float().div(255).unsqueeze(1)
    labels = mnist.train_labels[:20000]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    mean, std = normalize
    for _ in range(steps):
        idx = torch.randint(0, len(images), (64,), generator=gen)
        x = (images[idx] - mean) / std
        loss = nn.functional.cross_entropy(model(x.flatten(1) if flatten else x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


# --- helpers ---------------------------------------------------------------------------------------


def export(args) -> tuple[object, dict | None]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    line = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    return result, (json.loads(line) if line.startswith("{") else None)


def digits(mnist, n: int = 2000) -> np.ndarray:
    """The first n test digits as float32 [n,1,28,28] in [0,1]: what the ONNX file takes."""
    return mnist.test_images[:n].float().div(255).unsqueeze(1).numpy()


def assert_onnx_matches(onnx_path: Path, model: nn.Module, pixels: np.ndarray, *, normalize=(0.0, 1.0),
                        flatten: bool = False) -> np.ndarray:
    """ONNX Runtime on the exported file vs the user's own module on the same digits: logits and argmax."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probs"], {"pixels": pixels})
    mean, std = normalize
    with torch.no_grad():
        x = (torch.from_numpy(pixels) - mean) / std
        ref = model(x.flatten(1) if flatten else x).numpy()
    assert np.abs(logits - ref).max() < 1e-4
    assert (logits.argmax(1) == ref.argmax(1)).all()
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    return logits


def metadata(onnx_path: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}


def accuracy(model: nn.Module, mnist, normalize=(0.0, 1.0), flatten: bool = False) -> float:
    mean, std = normalize
    with torch.no_grad():
        x = (mnist.test_images.float().div(255).unsqueeze(1) - mean) / std
        logits = model(x.flatten(1) if flatten else x)
    return float((logits.argmax(1) == mnist.test_labels).float().mean())


@pytest.fixture(scope="module")
def seed_net(mnist):
    return train_briefly(SeedNet(), mnist)


@pytest.fixture(scope="module")
def seed_state_dict(seed_net, tmp_path_factory, mnist_dir):
    """The write-up's net saved the usual way, exported once by the real command (shared by several tests)."""
    folder = tmp_path_factory.mktemp("seed_sd")
    path = folder / "mine.pt"
    torch.save(seed_net.state_dict(), path)
    result, summary = export([path, "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    return path, folder / "mine.onnx", summary, result


# --- the table's rows: state_dicts -----------------------------------------------------------------


def test_seed_write_up_state_dict(seed_state_dict, seed_net, mnist):
    path, onnx_path, summary, result = seed_state_dict
    assert summary["verified"] is True and summary["source_format"] == "state-dict"
    assert summary["check_status"] == {"test_set": "passed", "edge_inputs": "passed", "batch_sizes": "passed"}
    assert_onnx_matches(onnx_path, seed_net, digits(mnist))
    # The proof's test accuracy is the user's own model's accuracy on the 10,000 test digits.
    own = accuracy(seed_net, mnist)
    assert own > 0.8 and summary["test_accuracy"] == pytest.approx(own, abs=2e-4)
    assert summary["hint"] is None
    assert "layer1, layer2, layer3" in result.stderr and "784-16-16-10 sigmoid" in result.stderr


def test_imported_model_carries_our_metadata(seed_state_dict):
    path, onnx_path, _, _ = seed_state_dict
    meta = metadata(onnx_path)
    assert meta[C.META_FORMAT] == C.META_FORMAT_VALUE
    assert meta[C.META_SOURCE_SHA256] == file_sha256(path)
    assert json.loads(meta[C.META_LABELS]) == list(C.LABELS)
    assert json.loads(meta[C.META_INPUT]) == C.input_layout(False)
    config = json.loads(meta[C.META_MODEL_CONFIG])
    assert config["hidden"] == [16, 16] and config["activation"] == "sigmoid"
    assert config["normalisation"] == {"mean": 0.0, "std": 1.0}
    source = json.loads(meta[C.META_SOURCE_FORMAT])
    assert source == {"kind": "state-dict", "container": "torch.save zip", "layers": ["layer1", "layer2", "layer3"],
                      "activation": "sigmoid", "activation_from": "default",
                      "input_scale": "unit", "input_scale_from": "default"}
    assert json.loads(meta[C.META_SOURCE_TEST_ACCURACY]) is None  # a foreign file records none
    assert json.loads(meta[C.META_VERIFICATION])["passed"] is True
    report = json.loads(onnx_path.with_name("mine.onnx.json").read_text())
    assert report["source_format"] == source and report["verified"] is True
    given = report["alternatives"][0]
    assert given == {**given, "activation": "sigmoid", "input_scale": "unit", "given": True}
    assert len(report["alternatives"]) == 9  # 3 activations x 3 scalings


def test_fc_names_relu_with_activation_flag(mnist, tmp_path, mnist_dir):
    model = train_briefly(FcNet(), mnist, steps=200)
    path = tmp_path / "fc.pt"
    torch.save(model.state_dict(), path)
    result, summary = export([path, "--activation", "relu", "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "fc.onnx", model, digits(mnist))
    source = json.loads(metadata(tmp_path / "fc.onnx")[C.META_SOURCE_FORMAT])
    assert source["layers"] == ["fc1", "fc2", "fc3"] and source["activation_from"] == "--activation"
    assert json.loads(metadata(tmp_path / "fc.onnx")[C.META_MODEL_CONFIG])["hidden"] == [64, 32]


def test_sequential_state_dict(mnist, tmp_path, mnist_dir):
    torch.manual_seed(3)
    model = sequential_mlp().eval()  # randomly initialised: the arithmetic is what is checked
    assert list(model.state_dict())[:3] == ["0.weight", "0.bias", "2.weight"]
    path = tmp_path / "seq.pt"
    torch.save(model.state_dict(), path)
    result, summary = export([path, "--data-dir", mnist_dir, "-q"])
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "seq.onnx", model, digits(mnist), flatten=True)
    assert json.loads(metadata(tmp_path / "seq.onnx")[C.META_SOURCE_FORMAT])["layers"] == ["0", "2", "4"]


def test_nesting_prefix_and_layer_order_from_shapes(mnist, tmp_path, mnist_dir):
    """DataParallel's `module.` prefix on a net whose layers were registered out of forward order."""
    torch.manual_seed(4)
    model = OutOfOrderNet().eval()
    parallel = nn.DataParallel(model)
    path = tmp_path / "parallel.pt"
    torch.save(parallel.state_dict(), path)
    assert next(iter(torch.load(path, weights_only=True))).startswith("module.head")
    result, summary = export([path, "--activation", "tanh", "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    assert "module.hidden -> module.head" in result.stderr  # the order came from the shapes, and it says so
    assert_onnx_matches(tmp_path / "parallel.onnx", model, digits(mnist))


def test_cuda_saved_tensors_are_mapped_to_the_cpu(seed_net, mnist, tmp_path, mnist_dir):
    """A state_dict whose storages say cuda:0, as torch.save writes them from a GPU; read on this CPU machine."""
    path = tmp_path / "gpu.pt"
    with saved_as_cuda():
        torch.save(seed_net.state_dict(), path)
    with zipfile.ZipFile(path) as z:
        assert any(b"cuda:0" in z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a user without a GPU gets from plain torch.load
    result, summary = export([path, "--data-dir", mnist_dir, "-q"])
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "gpu.onnx", seed_net, digits(mnist))


class _CudaTag:
    """torch.serialization.register_package: tags storages as cuda:0 while on (the public hook torch.save
    asks for a storage's location), so a CPU machine writes the file a GPU machine writes."""

    on = False
    registered = False

    @classmethod
    def tag(cls, storage):
        return "cuda:0" if cls.on else None


def saved_as_cuda():
    import contextlib

    if not _CudaTag.registered:
        torch.serialization.register_package(0, _CudaTag.tag, lambda obj, location: None)
        _CudaTag.registered = True

    @contextlib.contextmanager
    def on():
        _CudaTag.on = True
        try:
            yield
        finally:
            _CudaTag.on = False

    return on()


def test_legacy_format_state_dict_and_pickled_module(seed_net, mnist, tmp_path):
    """torch.save's pre-1.6 format (`_use_new_zipfile_serialization=False`): a state_dict is read; a pickled
    module, which that format stores with its source code, is refused with the fix."""
    path = tmp_path / "old.pt"
    torch.save(seed_net.state_dict(), path, _use_new_zipfile_serialization=False)
    result, summary = export([path, "--no-verify", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(metadata(tmp_path / "old.onnx")[C.META_SOURCE_FORMAT])["container"] == "torch.save legacy"
    assert_onnx_matches(tmp_path / "old.onnx", seed_net, digits(mnist, 500))

    whole = tmp_path / "old-whole.pt"
    torch.save(seed_net, whole, _use_new_zipfile_serialization=False)
    result, _ = export([whole, "--no-verify"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "legacy (pre-1.6) format" in result.stderr and "torch.save(model.state_dict()" in result.stderr
    assert not (tmp_path / "old-whole.onnx").exists()


# --- training-loop dicts ---------------------------------------------------------------------------


def _training_dict(kind: str, model: nn.Module) -> object:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    optimizer.step()  # the optimizer's state holds tensors too
    if kind == "model_state_dict":
        return {"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "loss": 0.31}
    if kind == "state_dict":
        return {"state_dict": model.state_dict(), "best_acc": 0.9, "arch": "mlp"}
    if kind == "net":
        return {"net": model.state_dict(), "acc": 91.2, "epoch": 3}
    if kind == "model":  # the whole module inside the dict
        return {"model": model, "optimizer": optimizer.state_dict(), "epoch": 2}
    raise AssertionError(kind)


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "net", "model"])
def test_training_loop_dicts_are_unwrapped(key, seed_net, mnist, tmp_path, mnist_dir):
    import copy

    model = copy.deepcopy(seed_net)
    path = tmp_path / "checkpoint.pth"
    torch.save(_training_dict(key, model), path)
    model.eval()
    result, summary = export([path, "-o", tmp_path / "out.onnx", "--data-dir", mnist_dir, "-q"])
    assert result.exit_code == 0, result.output
    assert summary["source_format"] == "training-dict"
    assert_onnx_matches(tmp_path / "out.onnx", model, digits(mnist, 500))
    source = json.loads(metadata(tmp_path / "out.onnx")[C.META_SOURCE_FORMAT])
    assert source["key"] == key and source["layers"] == ["layer1", "layer2", "layer3"]


# --- whole-module pickles --------------------------------------------------------------------------


def test_whole_module_pickle(seed_net, mnist, tmp_path, mnist_dir):
    path = tmp_path / "mine-whole.pt"
    torch.save(seed_net, path)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)  # what safe loading alone says of it
    result, summary = export([path, "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    assert summary["source_format"] == "module-pickle" and summary["verified"] is True
    assert_onnx_matches(tmp_path / "mine-whole.onnx", seed_net, digits(mnist))
    source = json.loads(metadata(tmp_path / "mine-whole.onnx")[C.META_SOURCE_FORMAT])
    assert source["class"].endswith("SeedNet") and source["layers"] == ["layer1", "layer2", "layer3"]


def test_module_tree_gives_the_activation(mnist, tmp_path, mnist_dir):
    """Tanh modules in the pickled tree: exported as tanh without a flag (sigmoid would not match)."""
    torch.manual_seed(5)
    model = Wrapped(nn.Tanh).eval()
    path = tmp_path / "wrapped.pt"
    torch.save(model, path)
    result, summary = export([path, "--data-dir", mnist_dir])
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "wrapped.onnx", model, digits(mnist))
    source = json.loads(metadata(tmp_path / "wrapped.onnx")[C.META_SOURCE_FORMAT])
    assert source["activation"] == "tanh" and source["activation_from"] == "module tree (Tanh)"
    assert source["layers"] == ["body.1", "body.4"]


MARKER = Path("/nonexistent")


class SubprocessPayload:
    """A planted payload: unpickling it runs a program that creates MARKER."""

    def __reduce__(self):
        return (subprocess.call, (["touch", str(MARKER)],))


class ExecPayload:
    """Unpickling it calls builtins.exec on Python source that creates MARKER."""

    def __reduce__(self):
        return (exec, (f"open({str(MARKER)!r}, 'w').close()",))


class SetstateTrap:
    """A class whose own __setstate__ creates MARKER: a loader that builds real classes runs it."""

    def __init__(self):
        self.armed = True  # some state, so that pickle records a BUILD that calls __setstate__

    def __setstate__(self, state):
        Path(MARKER).touch()


class OsSystemPayload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.mark.parametrize("payload", [SubprocessPayload, ExecPayload, SetstateTrap])
def test_planted_payload_in_a_pickled_module_never_runs(payload, seed_net, mnist, tmp_path, mnist_dir, monkeypatch):
    import copy

    monkeypatch.setattr(sys.modules[__name__], "MARKER", tmp_path / "pwned")
    model = copy.deepcopy(seed_net)
    model.extra = payload()  # rides along in the module's __dict__
    path = tmp_path / "evil.pt"
    torch.save(model, path)
    # The payload is real: the unsafe way of loading runs it.
    torch.load(path, weights_only=False)
    assert MARKER.exists()
    MARKER.unlink()
    result, summary = export([path, "--data-dir", mnist_dir, "-q"])
    assert not MARKER.exists(), "the planted payload ran"
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "evil.onnx", seed_net, digits(mnist, 500))


def test_payload_torch_blocks_is_refused_and_never_runs(seed_net, tmp_path, monkeypatch):
    import copy

    monkeypatch.setattr(sys.modules[__name__], "MARKER", tmp_path / "pwned")
    model = copy.deepcopy(seed_net)
    model.extra = OsSystemPayload()
    path = tmp_path / "evil.pt"
    torch.save(model, path)
    result, _ = export([path, "--no-verify"])
    assert result.exit_code == 1 and "refused to load" in result.stderr and "system" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not MARKER.exists() and not (tmp_path / "evil.onnx").exists()


# --- what is not an MLP: one line, what was found, what is supported ------------------------------


def _unsupported(kind: str, path: Path) -> None:
    if kind == "cnn-state-dict":
        torch.save(MnistCnn().state_dict(), path)
    elif kind == "cnn-module":
        torch.save(MnistCnn(), path)
    elif kind == "leaky":
        torch.save(Wrapped(nn.LeakyReLU), path)
    elif kind == "32x32":
        torch.save(nn.Sequential(nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 10)).state_dict(), path)
    elif kind == "no-model":
        torch.save({"epoch": 3, "loss": 0.2, "history": [0.9, 0.5]}, path)
    elif kind == "batchnorm":
        torch.save(nn.Sequential(nn.Linear(784, 16), nn.BatchNorm1d(16), nn.Linear(16, 10)).state_dict(), path)


@pytest.mark.parametrize("kind, words", [
    ("cnn-state-dict", ["not an MLP", "conv1 conv (weight 32x1x3x3", "fc1 Linear 9216->128"]),
    ("cnn-module", ["not an MLP", "conv1 Conv2d (weight 32x1x3x3"]),
    ("leaky", ["activation LeakyReLU"]),
    ("32x32", ["do not chain 784 -> ... -> 10", "0 Linear 1024->64"]),
    ("no-model", ["keys 'epoch', 'loss', 'history'", "none of which holds a model"]),
    ("batchnorm", ["not an MLP", "running_mean"]),
])
def test_unsupported_networks_get_one_line(kind, words, tmp_path):
    path = tmp_path / "model.pt"
    _unsupported(kind, path)
    result, _ = export([path, "--no-verify"])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.output
    for w in words:
        assert w in line
    assert "mnist-export imports MLPs: Linear layers chaining 784 -> ... -> 10" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


# --- the guesses, measured -------------------------------------------------------------------------


def test_wrong_guesses_get_a_hint_and_the_flags_fix_them(mnist, tmp_path, mnist_dir):
    """A relu net trained on Normalize((0.5,), (0.5,)), exported with the defaults (sigmoid, [0,1]): the report
    scores the alternatives and names the flags that read it right."""
    model = train_briefly(FcNet(), mnist, normalize=(0.5, 0.5), steps=300)
    path = tmp_path / "theirs.pt"
    torch.save(model.state_dict(), path)
    result, summary = export([path, "--data-dir", mnist_dir, "-o", tmp_path / "as-given.onnx"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "as-given.onnx.json").read_text())
    scored = {(a["activation"], a["input_scale"]): a["accuracy"] for a in report["alternatives"]}
    given, right = scored["sigmoid", "unit"], scored["relu", "0.5,0.5"]
    own = accuracy(model, mnist, normalize=(0.5, 0.5))
    assert right == pytest.approx(scored_reference(model, mnist, (0.5, 0.5)), abs=1e-6)
    # Trained on [-1,1], the net also reads MNIST's mean/std scaling nearly as well: either may come out on
    # top, and the hint names both when they are within a point.
    best = max(scored.values())
    assert right >= best - 0.01 and right > given + 0.10
    hint = summary["hint"]
    assert hint.startswith(f"{given:.0%} as given; {best:.0%} with --activation relu --input-scale ")
    assert f"{right:.0%} with --activation relu --input-scale 0.5,0.5" in hint
    assert "does its forward use relu and was it trained with Normalize((" in hint
    assert f"hint: {hint}" in result.stderr and len(hint.splitlines()) == 1
    assert "relu" in result.stderr.split("accuracy on 1000 test digits")[1]  # the table of alternatives

    result, summary = export([path, "--data-dir", mnist_dir, "--activation", "relu", "--input-scale", "0.5,0.5",
                              "-o", tmp_path / "right.onnx"])
    assert result.exit_code == 0 and summary["hint"] is None
    assert summary["test_accuracy"] == pytest.approx(own, abs=2e-4)
    assert_onnx_matches(tmp_path / "right.onnx", model, digits(mnist), normalize=(0.5, 0.5))
    assert json.loads(metadata(tmp_path / "right.onnx")[C.META_MODEL_CONFIG])["normalisation"] == {
        "mean": 0.5, "std": 0.5}
    # --check reads the guesses back from the model it checks
    check, check_summary = export([path, "--check", tmp_path / "right.onnx", "--data-dir", mnist_dir])
    assert check.exit_code == 0, check.output
    assert check_summary["verified"] is True and "activation relu, --input-scale 0.5,0.5" in check.stderr


def scored_reference(model: nn.Module, mnist, normalize) -> float:
    """The user's own model on the first 1,000 test digits, preprocessed as it was trained."""
    mean, std = normalize
    with torch.no_grad():
        x = (mnist.test_images[:1000].float().div(255).unsqueeze(1) - mean) / std
        return float((model(x).argmax(1) == mnist.test_labels[:1000]).float().mean())


def test_custom_input_scale_and_bad_values(mnist, tmp_path, mnist_dir):
    model = train_briefly(SeedNet(), mnist, normalize=(0.5, 0.5), steps=100)
    path = tmp_path / "half.pt"
    torch.save(model.state_dict(), path)
    result, _ = export([path, "--input-scale", "0.5,0.5", "--data-dir", mnist_dir, "-q"])
    assert result.exit_code == 0, result.output
    assert_onnx_matches(tmp_path / "half.onnx", model, digits(mnist, 500), normalize=(0.5, 0.5))
    for bad in ("0.5", "a,b", "0.5,0", "0.5,-1"):
        result, _ = export([path, "--input-scale", bad, "-o", tmp_path / "x.onnx"])
        assert result.exit_code == 2 and "--input-scale" in result.stderr


def test_activation_choices_are_the_models():
    assert sorted(ACTIVATION_CHOICES) == sorted(ACTIVATIONS)


def test_our_own_checkpoint_records_its_format_and_refuses_contradicting_flags(exported, trained, tmp_path):
    source = json.loads(metadata(exported)[C.META_SOURCE_FORMAT])
    assert source == {"kind": "mnist-toolkit-checkpoint", "format_version": C.CHECKPOINT_VERSION}
    result, _ = export([trained, "--activation", "relu", "-o", tmp_path / "m.onnx", "--no-verify"])
    assert result.exit_code == 1 and "records activation sigmoid" in result.stderr
    result, _ = export([trained, "--input-scale", "unit", "-o", tmp_path / "m.onnx", "--no-verify"])
    assert result.exit_code == 1 and "records input scaling mnist" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


# --- safetensors -----------------------------------------------------------------------------------

from safetensors.torch import save_file  # noqa: E402


def test_safetensors_state_dict_in_half_precision(seed_net, mnist, tmp_path, mnist_dir):
    half = {k: v.to(torch.bfloat16) for k, v in seed_net.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(half, str(path))  # as users save them
    result, summary = export([path, "--data-dir", mnist_dir, "-o", tmp_path / "st.onnx"])
    assert result.exit_code == 0, result.output
    assert "weights stored as bfloat16; exported as float32" in result.stderr
    reference = SeedNet()
    reference.load_state_dict({k: v.float() for k, v in half.items()})
    assert_onnx_matches(tmp_path / "st.onnx", reference.eval(), digits(mnist, 500))
    assert json.loads(metadata(tmp_path / "st.onnx")[C.META_SOURCE_FORMAT])["container"] == "safetensors"


# --- once as a real process ------------------------------------------------------------------------


def test_installed_command_imports_a_state_dict(seed_net, mnist, tmp_path, mnist_dir):
    exe = shutil.which("mnist-export", path=os.path.dirname(sys.executable))
    assert exe
    path = tmp_path / "mine.pt"
    torch.save(seed_net.state_dict(), path)
    proc = subprocess.run([exe, str(path), "--data-dir", str(mnist_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["verified"] is True and summary["source_format"] == "state-dict"
    assert_onnx_matches(tmp_path / "mine.onnx", seed_net, digits(mnist, 500))


def test_help_does_not_import_torch():
    code = ("import sys\nfrom exporter.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "--activation" in proc.stdout and "--input-scale" in proc.stdout and "mine.pt" in proc.stdout
