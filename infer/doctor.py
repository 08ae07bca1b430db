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
    # pip-installed NVIDIA wheels (nvidia-*-cu12/13) live in site-packages/nvidia/*/lib
    for base in sys.path:
        hits = glob.glob(os.path.join(base, "nvidia", "*", "lib", f"lib{lib}.so*"))
        if hits:
            return hits[0]
    return "not found"


def doctor_report() -> str:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from infer.contract import TOOL_VERSION
    from infer.engine import ProviderError, default_model_path, make_session

    lines = [
        f"mnist-infer {TOOL_VERSION}, Python {platform.python_version()} on {platform.platform()}",
        f"onnxruntime {ort.__version__} (device build: {ort.get_device()}), numpy {np.__version__}, Pillow {Image.__version__}",
        f"providers compiled in: {', '.join(ort.get_available_providers())}",
    ]
    model = default_model_path()
    usable = []
    for name in ("cpu", "cuda"):
        try:
            make_session(model, name, threads=1)
            usable.append(name)
        except ProviderError as exc:
            lines.append(f"provider {name}: NOT usable: {exc}")
        except Exception as exc:  # a broken default model should not hide the provider facts
            lines.append(f"provider {name}: could not test ({type(exc).__name__}: {exc})")
    lines.append(f"providers usable now: {', '.join(usable) or 'none'} (tested with {model})")
    lines.append("CUDA libraries:")
    for lib in CUDA_LIBS:
        lines.append(f"  lib{lib}: {_find(lib)}")
    lines.append(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    return "\n".join(lines)
