"""`mnist-infer --doctor`: what ONNX Runtime can use here, and why CUDA can or cannot be had."""
from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import sys

CUDA_LIBS = ("cuda", "cudart", "cublas", "cublasLt", "cudnn", "cufft", "curand", "nvrtc")


def _find(lib: str) -> str:
    found = ctypes.util.find_library(lib)
    if found:
        return found
    # pip-installed NVIDIA wheels (nvidia-*-cu12, nvidia/cu13) live in site-packages/nvidia/*/lib
    for base in sys.path:
        hits = glob.glob(os.path.join(base, "nvidia", "*", "lib", f"lib{lib}.so*"))
        if hits:
            return sorted(hits)[0]
    return "not found"


def doctor_report() -> str:
    """A plain-text report: versions, providers compiled in and usable, the CUDA provider, the driver,
    what was preloaded from where, and the CUDA libraries on disk."""
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from infer import cuda
    from infer.contract import TOOL_VERSION
    from infer.engine import ProviderError, default_model_path, make_session

    built_for = getattr(ort, "cuda_version", "")  # set by onnxruntime-gpu builds only
    lines = [
        f"mnist-infer {TOOL_VERSION}, Python {platform.python_version()} on {platform.platform()}",
        f"onnxruntime {ort.__version__} (package {cuda.onnxruntime_package()}"
        + (f", built for CUDA {built_for}" if built_for else "") + f"), numpy {np.__version__}, Pillow {Image.__version__}",
        f"providers compiled in: {', '.join(ort.get_available_providers())}",
    ]
    if cuda.has_cuda_provider():
        lines.append("CUDA provider in this build: yes")
    else:
        lines.append("CUDA provider in this build: NO: " + cuda.no_cuda_provider_reason())
    driver = cuda.find_driver()
    lines.append(f"NVIDIA driver: {driver.library}" if driver.library else f"NVIDIA driver: not loadable: {driver.error}")
    lines.append(f"nvidia-smi: {cuda.nvidia_smi()}")

    model = default_model_path()
    usable = []
    for name in ("cpu", "cuda"):
        try:
            make_session(model, name, threads=1)
            usable.append(name)
        except ProviderError as exc:
            lines.append(f"provider {name}: NOT usable: {exc.message('use --provider cpu or auto to run on the CPU')}")
        except Exception as exc:  # a broken default model should not hide the provider facts
            lines.append(f"provider {name}: could not test ({type(exc).__name__}: {exc})")
    lines.append(f"providers usable now: {', '.join(usable) or 'none'} (tested with {model})")

    preload = cuda.preload_cuda()  # done by the cuda attempt above; this reads its result
    lines.append(f"preload: {preload.method}" + (f", {len(preload.libraries)} NVIDIA libraries loaded:"
                                                  if preload.done else ""))
    if preload.done:
        lines.extend(f"  {os.path.basename(p)}: {p}" for p in preload.libraries)
        lines.extend(f"  preload said: {m}" for m in preload.messages)
        if any(m.startswith("Failed to load") for m in preload.messages):
            lines.append("  missing CUDA/cuDNN libraries: pip install 'mnist-toolkit[cuda]' brings them "
                         "(onnxruntime-gpu[cuda,cudnn])")
    lines.append("CUDA libraries on disk:")
    for lib in CUDA_LIBS:
        lines.append(f"  lib{lib}: {_find(lib)}")
    lines.append(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    return "\n".join(lines)
