"""The inference-only install, for real: a fresh virtual environment, `pip install .` (the core
dependencies, no torch), then the commands as a user runs them. Then the same environment with the
plain CPU build of onnxruntime in place of onnxruntime-gpu: a build without the CUDA provider.

Slow (it installs ~300 MB of wheels from the package index; ~1 minute with a warm network), so
deselected by default; .ci/run runs it explicitly.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "trainer", "exporter", "infer")


def _env(venv: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(venv: Path, args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=_env(venv), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_inference_only_install(tmp_path):
    # A copy of the package's sources: pip builds in the source folder and must not litter the checkout.
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    work = tmp_path / "work"  # no ./model.onnx here, and not the checkout
    work.mkdir()

    install = _run(venv, [py, "-m", "pip", "install", "-q", str(src)], work, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    listed = _run(venv, [py, "-m", "pip", "list", "--format=freeze"], work).stdout.lower()
    packages = {line.split("==")[0] for line in listed.splitlines()}
    assert {"onnxruntime-gpu", "numpy", "pillow", "click", "opencv-python-headless", "tqdm"} <= packages, packages
    assert not packages & {"torch", "torchvision", "onnx", "onnxscript", "matplotlib", "ray", "pytest"}, packages
    where = _run(venv, [py, "-c", "import infer; print(infer.__file__)"], work)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    infer = _run(venv, ["mnist-infer", ROOT / "samples"], work)
    assert infer.returncode == 0, infer.stderr
    rows = list(csv.DictReader(io.StringIO(infer.stdout)))
    assert len(rows) == 45 and all(r["error"] == "" for r in rows)
    assert sum(r["prediction"] == r["label"] for r in rows) >= 40  # the shipped model, installed with the package
    assert "Traceback" not in infer.stderr

    for command, args in (("mnist-train", ["--no-download", "-q"]), ("mnist-export", [ROOT / "samples" / "README.md"])):
        result = _run(venv, [command, *args], work)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.strip() == (f"Error: {command} needs the 'train' extra (torch"
                                          + (", matplotlib" if command == "mnist-train" else ", onnx, onnxscript")
                                          + " not installed): pip install 'mnist-toolkit[train]'"), result.stderr

    # onnxruntime-gpu without the CUDA libraries (no `cuda` extra, no torch) on a machine without a
    # GPU: preloading finds nothing, says so on the doctor's page and never on stdout.
    cuda = _run(venv, ["mnist-infer", ROOT / "samples" / "3", "--provider", "cuda"], work)
    assert cuda.returncode == 1 and "Traceback" not in cuda.stderr
    assert "Failed to load" not in cuda.stdout and "CUDA was asked for" in cuda.stderr.strip().splitlines()[-1]
    doctor = _run(venv, ["mnist-infer", "--doctor"], work)
    assert doctor.returncode == 0 and "CUDA provider in this build: yes" in doctor.stdout
    assert "preload: onnxruntime.preload_dlls()" in doctor.stdout
    assert "Failed to load libcublasLt" in doctor.stdout and "pip install 'mnist-toolkit[cuda]'" in doctor.stdout

    # The plain onnxruntime package: the CPU build, with no CUDA provider at all.
    swap = _run(venv, [py, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime-gpu"], work)
    assert swap.returncode == 0, swap.stderr
    swap = _run(venv, [py, "-m", "pip", "install", "-q", "onnxruntime"], work, timeout=600)
    assert swap.returncode == 0, swap.stderr
    providers = _run(venv, [py, "-c", "import onnxruntime as o; print(o.get_available_providers())"], work).stdout
    assert "CUDAExecutionProvider" not in providers and "CPUExecutionProvider" in providers
    cuda = _run(venv, ["mnist-infer", ROOT / "samples" / "3", "--provider", "cuda"], work)
    assert cuda.returncode == 1 and "Traceback" not in cuda.stderr
    line = cuda.stderr.strip().splitlines()[-1]
    assert "this onnxruntime build has no CUDA provider" in line and "install onnxruntime-gpu" in line, line
    doctor = _run(venv, ["mnist-infer", "--doctor"], work)
    assert doctor.returncode == 0, doctor.stderr
    assert "CUDA provider in this build: NO" in doctor.stdout and "install onnxruntime-gpu" in doctor.stdout
    assert "package onnxruntime," in doctor.stdout or "package onnxruntime)" in doctor.stdout
    auto = _run(venv, ["mnist-infer", ROOT / "samples" / "3"], work)
    images = [p for p in (ROOT / "samples" / "3").iterdir() if p.suffix in (".png", ".jpg")]
    assert auto.returncode == 0 and len(list(csv.DictReader(io.StringIO(auto.stdout)))) == len(images), auto.stderr
