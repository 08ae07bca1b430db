"""scripts/gpu-check --quick end to end on this machine (no GPU): MNIST gzipped by
scripts/prepare-mnist-gz, every step run or its one-line reason recorded, the report's sections there.

Slow (~40 s on 2 cores), so deselected by default; .ci/run runs it explicitly."""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_quick(tmp_path, mnist_dir):
    gz = tmp_path / "mnist-gz"
    prep = subprocess.run([sys.executable, ROOT / "scripts" / "prepare-mnist-gz", "--data-dir", mnist_dir,
                           "--out", gz, "--level", "1"], capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stderr
    raw = mnist_dir / "MNIST" / "raw"
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(gz / f"{name}.gz", "rb") as f:
            assert f.read() == (raw / name).read_bytes()

    out = tmp_path / "report"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MNIST_DATA")}  # it must set its own
    proc = subprocess.run([sys.executable, ROOT / "scripts" / "gpu-check", out, "--quick", "--mnist-gz", gz],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "errors" not in results, results["errors"]
    for section in ("## Machine", "## Training: `mnist-train --device cuda` against `--device cpu`",
                    "## Export proof on CPU", "## `mnist-infer --provider cuda` on samples/",
                    "## mnist-infer throughput: 2,000 MNIST PNGs, decode workers", "## `mnist-infer --doctor`"):
        assert section in report, section

    train = {(r["recipe"], r["device"], r["repeat"]): r for r in results["train"]}
    assert len(train) == 6
    for recipe in ("seed", "default"):
        cpu = train[(recipe, "cpu", 1)]
        assert cpu["reason"] is None and 0.1 < cpu["test_accuracy"] <= 1 and cpu["wall_s"] > cpu["train_s"] > 0
        if not torch.cuda.is_available():  # each CUDA step: its one-line reason, and the script went on
            assert "PyTorch sees no usable CUDA device" in train[(recipe, "cuda", 1)]["reason"]
            assert train[(recipe, "cuda", 2)]["reason"].startswith("not run: ")
    assert "Same seed twice on CUDA: not measured" in report or results.get("determinism")

    export = results["export"]
    assert export["reason"] is None and "test set   cpu       10000" in export["table"]
    assert re.search(r"test accuracy: PyTorch [\d.]+%, ONNX Runtime [\d.]+%", report)

    cuda = results["infer_cuda"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert cuda["rc"] == 1 and "no NVIDIA driver: libcuda.so.1" in cuda["reason"]
        assert "verdict" not in cuda
    else:
        assert cuda["verdict"] == "as expected"
    assert cuda["reason"] in report

    runs = results["throughput"]["runs"]
    assert [r["workers"] for r in runs] == sorted({w for w in (1, 2, 4, 8, os.cpu_count()) if w <= os.cpu_count()})
    assert all(r["reason"] is None and r["rows"] == 2000 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 20
               and 0 < r["main_busy"] <= 1.5 for r in runs)
    assert "Where it stops scaling: " in report and "images/s with" in report

    for needle in (str(ROOT), str(tmp_path), str(Path.home())):  # no path of this machine in the report
        assert needle not in report, needle
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("gpu-check-*/pngs")), "work folder left behind"
