"""Classifier on ONNX digit classifiers made elsewhere: real ONNX files built here, real sessions,
predictions checked against the same computation in numpy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from infer import contract as C
from infer.cli import main as infer_main
from infer.engine import Classifier, ModelError

ROOT = Path(__file__).resolve().parent.parent


def save(graph, path: Path, opset: int = 13) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="elsewhere")
    model.ir_version = 8  # what ONNX Runtime 1.18+ reads; onnx's newest IR may be ahead of it
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


class Mlp:
    """A 784-16-10 ReLU MLP with seeded random weights, as an ONNX graph and in numpy."""

    def __init__(self, seed: int = 0, hidden: int = 16):
        rng = np.random.default_rng(seed)
        self.w1 = rng.normal(0, 0.08, (C.IMAGE_SIZE**2, hidden)).astype(np.float32)
        self.b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
        self.w2 = rng.normal(0, 0.5, (hidden, 10)).astype(np.float32)
        self.b2 = rng.normal(0, 0.1, 10).astype(np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x: the model's own input (any layout), float; -> logits [N,10] in float64."""
        flat = x.reshape(len(x), -1).astype(np.float64)
        return np.maximum(flat @ self.w1 + self.b1, 0) @ self.w2 + self.b2

    def graph(self, *, input_name: str, input_shape: list, output_name: str, head: str | None = None,
              dtype=TensorProto.FLOAT):
        batch = input_shape[0]
        inits = [numpy_helper.from_array(a, n) for a, n in
                 ((self.w1, "w1"), (self.b1, "b1"), (self.w2, "w2"), (self.b2, "b2"),
                  (np.array([-1, C.IMAGE_SIZE**2], np.int64), "flat_shape"))]
        source = input_name
        nodes = []
        if dtype != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [input_name], ["as_float"], to=TensorProto.FLOAT))
            source = "as_float"
        nodes += [
            helper.make_node("Reshape", [source, "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["z"]),
            helper.make_node("Add", ["z", "b2"], [output_name if head is None else "scores"]),
        ]
        if head == "softmax":
            nodes.append(helper.make_node("Softmax", ["scores"], [output_name], axis=1))
        elif head == "logsoftmax":
            nodes.append(helper.make_node("LogSoftmax", ["scores"], [output_name], axis=1))
        return helper.make_graph(nodes, "elsewhere", [helper.make_tensor_value_info(input_name, dtype, input_shape)],
                                 [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 10])], inits)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    """37 real MNIST test digits, float32 [37,28,28] in [0,1]: not a multiple of any batch size used."""
    return mnist.test_images.numpy()[:37].astype(np.float32) / 255


# --- foreign models, each kind of input and output ------------------------------------------------------


def test_model_zoo_shape_fixed_batch_of_one(tmp_path, digits):
    """The ONNX model zoo's MNIST shape: input 'Input3' [1,1,28,28] fixed, output [1,10] of logits."""
    mlp = Mlp(seed=1)
    path = save(mlp.graph(input_name="Input3", input_shape=[1, 1, 28, 28], output_name="Plus214_Output_0"),
                tmp_path / "zoo.onnx")
    clf = Classifier(path, provider="cpu")
    assert clf.path == path and clf.provider == "cpu" and clf.labels == C.LABELS and clf.deskew is False
    assert clf.info.foreign and clf.info.batch_size == 1 and clf.info.layout == "nchw"
    assert clf.info.input_name == "Input3" and clf.info.output_kind == "logits"
    probs = clf.predict(digits)  # 37 images through a model that takes exactly one
    assert probs.dtype == np.float32 and probs.shape == (37, 10)
    np.testing.assert_allclose(probs, softmax(mlp.logits(digits)), atol=1e-5)
    assert len(clf.notes) == 2 and all("\n" not in n for n in clf.notes)
    assert "assuming the MNIST input layout" in clf.notes[0] and "[0, 1]" in clf.notes[0]
    assert "white ink on black" in clf.notes[0] and "--input-scale 255" in clf.notes[0]
    assert "'Input3' [1,1,28,28]" in clf.notes[1] and "logits" in clf.notes[1] and "batch fixed at 1" in clf.notes[1]
    assert clf.predict(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)
    assert np.array_equal(clf.predict(digits[:, None]), probs)  # [N,1,28,28] is the same as [N,28,28]


def test_fixed_batch_pads_the_last_batch(tmp_path, digits):
    mlp = Mlp(seed=2)
    path = save(mlp.graph(input_name="x", input_shape=[8, 1, 28, 28], output_name="y"), tmp_path / "b8.onnx")
    clf = Classifier(path, provider="cpu")
    assert clf.info.batch_size == 8
    for n in (1, 8, 9, 37):
        np.testing.assert_allclose(clf.predict(digits[:n]), softmax(mlp.logits(digits[:n])), atol=1e-5)


def test_flat_input_with_softmax_output_is_read_as_probabilities(tmp_path, digits):
    """[N,784] in, probabilities out under a name that does not say so: the probe rule detects them,
    and they are not put through a second softmax."""
    mlp = Mlp(seed=3)
    path = save(mlp.graph(input_name="flatten_input", input_shape=["N", 784], output_name="dense_1", head="softmax"),
                tmp_path / "flat.onnx")
    clf = Classifier(path, provider="cpu")
    assert clf.info.layout == "flat" and clf.info.batch_size is None and clf.info.output_kind == "probs"
    np.testing.assert_allclose(clf.predict(digits), softmax(mlp.logits(digits)), atol=1e-5)
    assert "read as probs" in clf.notes[1]


def test_output_named_probabilities(tmp_path, digits):
    mlp = Mlp(seed=4)
    path = save(mlp.graph(input_name="x", input_shape=["N", 28, 28], output_name="output_probs", head="softmax"),
                tmp_path / "named.onnx")
    clf = Classifier(path, provider="cpu")
    assert clf.info.layout == "nhw" and clf.info.output_kind == "probs"
    np.testing.assert_allclose(clf.predict(digits), softmax(mlp.logits(digits)), atol=1e-5)


def test_log_softmax_output_and_nhwc_input(tmp_path, digits):
    """PyTorch's MNIST example ends in log_softmax; Keras through tf2onnx takes [N,28,28,1]."""
    mlp = Mlp(seed=5)
    path = save(mlp.graph(input_name="input_1", input_shape=["unk__6", 28, 28, 1], output_name="output",
                          head="logsoftmax"), tmp_path / "keras.onnx")
    clf = Classifier(path, provider="cpu")
    assert clf.info.layout == "nhwc" and clf.info.output_kind == "logits"
    np.testing.assert_allclose(clf.predict(digits), softmax(mlp.logits(digits)), atol=1e-5)


def test_double_input_is_cast(tmp_path, digits):
    mlp = Mlp(seed=6)
    path = save(mlp.graph(input_name="x", input_shape=["N", 1, 28, 28], output_name="y", dtype=TensorProto.DOUBLE),
                tmp_path / "f64.onnx")
    np.testing.assert_allclose(Classifier(path, provider="cpu").predict(digits), softmax(mlp.logits(digits)),
                               atol=1e-5)


@pytest.mark.parametrize("scale, ink", [(255, "white"), (1, "black"), (255, "black")])
def test_input_scale_and_ink(tmp_path, digits, scale, ink):
    mlp = Mlp(seed=7)
    path = save(mlp.graph(input_name="x", input_shape=["N", 784], output_name="y"), tmp_path / "m.onnx")
    clf = Classifier(path, provider="cpu", input_scale=scale, ink=ink)
    model_input = (1 - digits if ink == "black" else digits) * scale
    np.testing.assert_allclose(clf.predict(digits), softmax(mlp.logits(model_input)), atol=1e-5)
    assert "input layout as given" in clf.notes[0] and f"[0, {scale}]" in clf.notes[0]
    assert ("black ink on white" if ink == "black" else "white ink on black") in clf.notes[0]


def test_real_network_in_another_layout_needs_the_parameters(wrapped_foreign, exported, mnist):
    """A real trained network taking [0,255] black-on-white pixels: with input_scale=255 and ink='black'
    it scores what our own export scores; with the default assumption it cannot read MNIST digits."""
    foreign = wrapped_foreign
    pixels = mnist.test_images.numpy()[:2000].astype(np.float32) / 255
    labels = mnist.test_labels.numpy()[:2000]
    ours = Classifier(exported, provider="cpu").predict(pixels)
    right = Classifier(foreign, provider="cpu", input_scale=255, ink="black").predict(pixels)
    wrong = Classifier(foreign, provider="cpu").predict(pixels)
    np.testing.assert_allclose(right, ours, atol=1e-4)
    accuracy = (right.argmax(1) == labels).mean()
    assert accuracy > 0.85 and (wrong.argmax(1) == labels).mean() < accuracy - 0.5


def test_foreign_model_through_the_command(tmp_path):
    mlp = Mlp(seed=8)
    path = save(mlp.graph(input_name="Input3", input_shape=[1, 1, 28, 28], output_name="Plus214_Output_0"),
                tmp_path / "zoo.onnx")
    result = CliRunner().invoke(infer_main, [str(ROOT / "samples"), "-m", str(path), "-q"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.strip().splitlines()
    assert rows[0].startswith("path,prediction") and len(rows) == 46 and "Traceback" not in result.output


# --- refusals: one line, saying what was found -----------------------------------------------------------


def _graph(inputs, outputs, nodes):
    return helper.make_graph(nodes, "g", inputs, outputs)


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.mark.parametrize("kind, words", [
    ("imagenet", "input 'data' is [N,3,224,224]"),
    ("thousand", "outputs are 'prob' [N,1000]"),
    ("two-inputs", "takes 2 inputs ('a' [N,784], 'b' [N,784])"),
    ("int-input", "input 'x' is tensor(int64) [N,784]"),
    ("wrong-batch-output", "its output 'y' is [3, 10] for a batch of 1"),
])
def test_not_a_digit_classifier_is_refused_in_one_line(tmp_path, kind, words):
    if kind == "imagenet":
        graph = _graph([vi("data", ["N", 3, 224, 224])], [vi("out", ["N", 10])],
                       [helper.make_node("ReduceMean", ["data"], ["out"], axes=[2, 3], keepdims=0)])
    elif kind == "thousand":
        graph = _graph([vi("x", ["N", 784])], [vi("prob", ["N", 1000])],
                       [helper.make_node("Concat", ["x", "x"], ["xx"], axis=1),
                        helper.make_node("Slice", ["xx", "s", "e", "a"], ["prob"])])
        graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                                  for v, n in ((0, "s"), (1000, "e"), (1, "a"))])
    elif kind == "two-inputs":
        graph = _graph([vi("a", ["N", 784]), vi("b", ["N", 784])], [vi("y", ["N", 784])],
                       [helper.make_node("Add", ["a", "b"], ["y"])])
    elif kind == "int-input":
        graph = _graph([vi("x", ["N", 784], TensorProto.INT64)], [vi("y", ["N", 784], TensorProto.INT64)],
                       [helper.make_node("Identity", ["x"], ["y"])])
    else:  # declares [1,10] but computes 3 rows
        graph = _graph([vi("x", [1, 784])], [vi("y", [1, 10])],
                       [helper.make_node("Slice", ["x", "s", "e", "a"], ["cut"]),
                        helper.make_node("Tile", ["cut", "r"], ["y"])])
        graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                                  for v, n in ((0, "s"), (10, "e"), (1, "a"))])
        graph.initializer.append(numpy_helper.from_array(np.array([3, 1], np.int64), "r"))
    path = tmp_path / f"{kind}.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    with pytest.raises(ModelError) as err:
        Classifier(path, provider="cpu")
    message = str(err.value)
    assert "\n" not in message and "not a 10-class digit classifier on 28x28 images" in message
    assert words in message, message


def test_pytorch_and_other_files_get_one_line(tmp_path, trained):
    state_dict = tmp_path / "weights.pt"
    torch.save({"fc1.weight": torch.zeros(16, 784)}, state_dict)
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    report = tmp_path / "model.onnx.json"
    report.write_text(json.dumps({"passed": True}))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(64) + b"not onnx")
    cases = {trained: "export it first with `mnist-export", state_dict: "export it first with `mnist-export",
             legacy: "export it first", report: "a JSON file", empty: "an empty file", garbage: "not an ONNX model"}
    for path, words in cases.items():
        with pytest.raises(ModelError) as err:
            Classifier(path, provider="cpu")
        assert words in str(err.value) and "\n" not in str(err.value), (path, err.value)
    result = CliRunner().invoke(infer_main, [str(ROOT / "samples" / "3"), "-m", str(trained)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "PyTorch file" in result.stderr and "mnist-export" in result.stderr
    assert "Protobuf parsing failed" not in result.stderr


def test_our_model_keeps_its_contract(exported, tmp_path):
    """Our own models are still held to their metadata, and a layout override contradicting it is refused."""
    clf = Classifier(exported, provider="cpu")
    assert not clf.info.foreign and clf.notes == [] and clf.info.output_kind == "probs"
    with pytest.raises(ModelError, match="declares its input layout"):
        Classifier(exported, provider="cpu", input_scale=255)
    assert Classifier(exported, provider="cpu", input_scale=1, ink="white").notes == []
    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == C.META_INPUT:
            prop.value = json.dumps({**json.loads(prop.value), "ink": "black-on-white"})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="expects input layout"):
        Classifier(tmp_path / "bad.onnx", provider="cpu")
    with pytest.raises(ValueError, match="input_scale"):
        Classifier(exported, input_scale=2)
    with pytest.raises(ValueError, match="ink"):
        Classifier(exported, ink="red")


# --- which model file: Classifier() and ./model.onnx --------------------------------------------------------

WHICH = ("from infer.engine import Classifier\n"
         "clf = Classifier(provider='cpu')\n"
         "print(clf.path)\n")


def test_implicit_local_model_is_said_on_stderr(exported, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shipped = subprocess.run([sys.executable, "-c", WHICH], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=60)
    assert shipped.returncode == 0, shipped.stderr
    assert Path(shipped.stdout.strip()) == ROOT / "infer" / "models" / "default.onnx"
    assert "model.onnx" not in shipped.stderr
    (tmp_path / "model.onnx").write_bytes(exported.read_bytes())
    local = subprocess.run([sys.executable, "-c", WHICH], cwd=tmp_path, capture_output=True, text=True, env=env,
                           timeout=60)
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == "model.onnx"
    assert local.stderr.strip() == "using ./model.onnx from the current directory, not the shipped model " \
                                   "(pass a model to choose)"
