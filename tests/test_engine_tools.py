"""Our exported ONNX files through the ecosystem's own tools, and the results through the Classifier
and mnist-infer: onnxruntime's dynamic quantizer, its make_dynamic_shape_fixed tool, and onnx's strict
shape inference."""
from __future__ import annotations

import csv
import io
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from infer.cli import main as infer_main
from infer.engine import Classifier

ROOT = Path(__file__).resolve().parent.parent


def accuracy_of_command(folder: Path, model: Path, tmp_path: Path) -> float:
    out = tmp_path / f"{model.stem}.csv"
    result = CliRunner().invoke(infer_main, [str(folder), "-m", str(model), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10000 and all(r["error"] == "" for r in rows)
    return sum(r["prediction"] == r["label"] for r in rows) / len(rows)


def test_exported_graph_lists_no_weights_in_value_info(exported):
    """The exporter's stale copies of the weights' shapes are what broke the quantizer."""
    graph = onnx.load(str(exported)).graph
    weights = {t.name for t in graph.initializer}
    assert weights and graph.value_info and not weights & {v.name for v in graph.value_info}


def test_quantize_dynamic(exported, tmp_path, mnist_pngs, mnist):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = tmp_path / "model.int8.onnx"
    root = logging.getLogger()
    level = root.level
    try:  # the quantizer advises pre-processing on the root logger; not our concern here
        root.setLevel(logging.ERROR)
        quantize_dynamic(str(exported), str(quantized), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Gemm" not in ops
    assert quantized.stat().st_size < exported.stat().st_size * 0.6
    clf = Classifier(quantized, provider="cpu")  # metadata carried over: still our contract
    assert not clf.info.foreign and clf.notes == []
    pixels = mnist.test_images.numpy()[:500].astype(np.float32) / 255
    float_probs = Classifier(exported, provider="cpu").predict(pixels)
    int8_probs = clf.predict(pixels)
    assert 0 < np.abs(int8_probs - float_probs).max() < 0.2  # really a different computation, and close
    float_acc = accuracy_of_command(mnist_pngs, exported, tmp_path)
    int8_acc = accuracy_of_command(mnist_pngs, quantized, tmp_path)
    assert abs(int8_acc - float_acc) <= 0.005, (int8_acc, float_acc)


@pytest.mark.parametrize("batch", [1, 7])
def test_make_dynamic_shape_fixed(exported, tmp_path, mnist, batch):
    fixed = tmp_path / f"model.b{batch}.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxruntime.tools.make_dynamic_shape_fixed", "--dim_param", "batch",
                           "--dim_value", str(batch), str(exported), str(fixed)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [batch, 1, 28, 28]
    clf = Classifier(fixed, provider="cpu")
    assert clf.info.batch_size == batch and not clf.info.foreign
    pixels = mnist.test_images.numpy()[:45].astype(np.float32) / 255  # 45: not a multiple of 7
    np.testing.assert_allclose(clf.predict(pixels), Classifier(exported, provider="cpu").predict(pixels), atol=1e-6)
    # the command, which decodes and classifies in batches of 256: the rows of the dynamic model
    runs = [CliRunner().invoke(infer_main, [str(ROOT / "samples"), "-m", str(m), "-q"]) for m in (fixed, exported)]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    assert runs[0].stdout == runs[1].stdout and len(list(csv.DictReader(io.StringIO(runs[0].stdout)))) == 45


def test_strict_shape_inference(exported, tmp_path, mnist):
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(exported)), check_type=True, strict_mode=True,
                                                 data_prop=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert shapes["logits"] == ["batch", 10] and shapes["probs"] == ["batch", 10]
    path = tmp_path / "inferred.onnx"
    onnx.save(inferred, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    pixels = mnist.test_images.numpy()[:100].astype(np.float32) / 255
    np.testing.assert_array_equal(Classifier(path, provider="cpu").predict(pixels),
                                  Classifier(exported, provider="cpu").predict(pixels))
