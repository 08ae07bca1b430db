"""CUDA on a machine without a GPU: the libraries pip installed are really loaded before a CUDA session
(seen in the process's own memory map), and the reason given is the real one (no driver: libcuda).
A build without the CUDA provider is covered by tests/test_install.py, which installs one."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from infer import cuda

ROOT = Path(__file__).resolve().parent.parent
HAS_PROVIDER = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_DRIVER = cuda.find_driver().library is not None
PIP_CUDA_LIBS = [p for base in sys.path for p in glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcublasLt.so*"))]

needs_gpu_less_cuda_build = pytest.mark.skipif(
    not HAS_PROVIDER or HAS_DRIVER or not PIP_CUDA_LIBS,
    reason="needs onnxruntime-gpu and pip's CUDA libraries on a machine without an NVIDIA driver (as here)")

PROBE = """
import json, sys
from infer.cuda import loaded_nvidia_libraries
from infer.engine import Classifier, ProviderError
before = loaded_nvidia_libraries()
try:
    clf = Classifier(sys.argv[1], provider=sys.argv[2], threads=1)
    error, used = None, clf.provider
except ProviderError as exc:
    error, used = str(exc), None
print(json.dumps({"before": before, "after": loaded_nvidia_libraries(), "error": error, "used": used}))
"""


def probe(model: Path, provider: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model), provider], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_gpu_less_cuda_build
def test_cuda_session_preloads_pip_libraries_then_names_the_driver(exported):
    got = probe(exported, "cuda")
    assert got["before"] == [] and got["used"] is None
    loaded = {os.path.basename(p).split(".so")[0]: p for p in got["after"]}
    # loaded by full path from pip's nvidia wheels, not found on the loader's path
    assert {"libcublasLt", "libcublas", "libcudart", "libcudnn"} <= set(loaded), got["after"]
    assert all(f"{os.sep}nvidia{os.sep}" in loaded[name] for name in ("libcublasLt", "libcudnn"))
    line = got["error"]
    assert "\n" not in line and "CUDA was asked for" in line
    # the real cause, not the first library ONNX Runtime happened to open before the preload existed
    assert "no NVIDIA driver" in line and "libcuda.so.1" in line and "libcublasLt" not in line
    assert "--provider cpu" in line


@needs_gpu_less_cuda_build
def test_cpu_and_auto_load_no_cuda_library_without_a_driver(exported):
    for provider in ("cpu", "auto"):
        got = probe(exported, provider)
        assert got["error"] is None and got["used"] == "cpu" and got["after"] == [], (provider, got)


@needs_gpu_less_cuda_build
def test_exporter_cuda_verification_names_the_driver(trained, tmp_path, mnist_dir):
    from exporter.cli import main as export_main

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(export_main, [str(trained), "-o", str(out), "--data-dir", str(mnist_dir),
                                              "--verify-provider", "cuda"])
    assert result.exit_code == 1 and not out.exists() and "Traceback" not in result.output
    assert "no NVIDIA driver" in result.stderr and "libcuda.so.1" in result.stderr


@needs_gpu_less_cuda_build
def test_doctor_shows_preload_driver_and_provider(exported):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "infer", "--doctor"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "CUDA provider in this build: yes" in out
    assert "NVIDIA driver: not loadable: libcuda.so.1" in out
    assert "nvidia-smi:" in out
    assert "preload: onnxruntime.preload_dlls()" in out
    preloaded = [line.split(": ", 1) for line in out.splitlines() if line.startswith("  lib") and "/nvidia/" in line]
    names = {name.strip() for name, _ in preloaded}
    assert any(n.startswith("libcublasLt.so") for n in names) and any(n.startswith("libcudnn.so") for n in names)
    assert all(os.path.isfile(path) for _, path in preloaded)
    assert "provider cuda: NOT usable" in out and "providers usable now: cpu" in out


def test_preload_is_reported_and_never_prints_on_stdout(capsys):
    """Whatever this build and machine are, preload_cuda says what it did, and stdout stays ours."""
    result = cuda.preload_cuda()
    assert capsys.readouterr().out == ""
    if not HAS_PROVIDER:
        assert not result.done and "no CUDA provider" in result.method
    elif hasattr(ort, "preload_dlls"):
        assert result.done and result.method == "onnxruntime.preload_dlls()"
        assert all(os.path.isabs(p) for p in result.libraries)
    else:
        assert not result.done and "predates preload_dlls" in result.method
    assert cuda.preload_cuda() is result  # once per process
