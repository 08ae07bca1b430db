"""CUDA for ONNX Runtime: load the libraries pip installed, find the driver, name the real cause of a failure.

ONNX Runtime's CUDA provider opens libcublasLt, libcudnn, ... by name. pip's nvidia-* wheels (brought by
torch, or by `onnxruntime-gpu[cuda,cudnn]`) put them in site-packages/nvidia/*/lib, which the dynamic
loader does not search, so without help the provider fails on the first library it opens, whatever the
real problem is. `onnxruntime.preload_dlls()` (ONNX Runtime >= 1.21) loads them by full path first; the
provider's own dlopen then finds them already loaded. After that, a failure names what is really
missing, typically the NVIDIA driver's `libcuda.so.1`.

Nothing here imports torch; only onnxruntime, and only when asked.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass

CUDA_PROVIDER = "CUDAExecutionProvider"
PRELOAD_MIN_VERSION = "1.21"

# Basenames of the NVIDIA libraries ONNX Runtime's CUDA provider uses (driver, runtime, maths, cuDNN).
_NVIDIA_LIB = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cudnn[a-z_]*|cufft|curand|nvrtc|nvJitLink)\.so[.\d]*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Preload:
    """What was done to make pip's CUDA libraries loadable in this process."""

    done: bool  # onnxruntime.preload_dlls() was called
    method: str  # how, or why nothing was preloaded
    libraries: tuple[str, ...]  # NVIDIA libraries mapped into this process afterwards (full paths)
    messages: tuple[str, ...]  # what preload_dlls printed or warned (libraries it could not load)


@dataclass(frozen=True)
class Driver:
    """The NVIDIA driver's user-space library (libcuda), which every CUDA program needs."""

    library: str | None  # full path of the loaded libcuda, None when it cannot be loaded
    error: str | None  # the loader's reason when it cannot


def onnxruntime_package() -> str:
    """The distribution that provides the `onnxruntime` module: 'onnxruntime-gpu', 'onnxruntime', ..."""
    from importlib.metadata import packages_distributions

    names = packages_distributions().get("onnxruntime") or ["onnxruntime"]
    return ", ".join(sorted(set(names)))


def has_cuda_provider() -> bool:
    """This onnxruntime build has the CUDA execution provider compiled in (the plain `onnxruntime`
    package never has; `onnxruntime-gpu` has)."""
    import onnxruntime as ort

    return CUDA_PROVIDER in ort.get_available_providers()


def no_cuda_provider_reason() -> str:
    import onnxruntime as ort

    return (f"this onnxruntime build has no CUDA provider ({onnxruntime_package()} {ort.__version__}, providers: "
            f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu in its place "
            "(pip uninstall onnxruntime && pip install onnxruntime-gpu)")


def loaded_nvidia_libraries() -> tuple[str, ...]:
    """Full paths of the NVIDIA libraries mapped into this process (Linux: /proc/self/maps; else ())."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if line.count(" ") >= 5 and "/" in line}
    except (OSError, IndexError):
        return ()
    return tuple(sorted(p for p in paths if _NVIDIA_LIB.match(os.path.basename(p))))


_PRELOADED: Preload | None = None


def preload_cuda() -> Preload:
    """Load the CUDA and cuDNN libraries pip installed into this process, once, before a CUDA session.

    Uses `onnxruntime.preload_dlls()` (ONNX Runtime >= 1.21; it prints its failures on stdout, which
    is ours for results, so they are captured into `messages`). Never raises.
    """
    global _PRELOADED
    if _PRELOADED is not None:
        return _PRELOADED
    import onnxruntime as ort

    if not has_cuda_provider():
        result = Preload(False, "nothing preloaded: " + no_cuda_provider_reason(), loaded_nvidia_libraries(), ())
    elif not hasattr(ort, "preload_dlls"):
        result = Preload(False, f"nothing preloaded: onnxruntime {ort.__version__} predates preload_dlls "
                                f"(ONNX Runtime >= {PRELOAD_MIN_VERSION}); the CUDA and cuDNN libraries must be "
                                "on the loader's path (LD_LIBRARY_PATH)", loaded_nvidia_libraries(), ())
    else:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ort.preload_dlls()
            except Exception as exc:  # e.g. RuntimeError for a missing directory: report, never fail here
                printed.write(f"preload_dlls failed: {type(exc).__name__}: {exc}\n")
        lines = [_ANSI.sub("", line).strip() for line in printed.getvalue().splitlines()]
        messages = tuple(line for line in lines if line) + tuple(str(w.message) for w in caught)
        result = Preload(True, "onnxruntime.preload_dlls()", loaded_nvidia_libraries(), messages)
    _PRELOADED = result
    return result


@functools.lru_cache(maxsize=1)
def find_driver() -> Driver:
    """Try to load the driver's library (libcuda.so.1 on Linux, nvcuda.dll on Windows) as CUDA would."""
    name = {"linux": "libcuda.so.1", "win32": "nvcuda.dll"}.get(sys.platform)
    if name is None:
        return Driver(None, f"no NVIDIA CUDA driver exists for {sys.platform}")
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return Driver(None, str(exc))
    path = next((p for p in loaded_nvidia_libraries() if os.path.basename(p).startswith("libcuda.so")), name)
    return Driver(path, None)


def nvidia_smi() -> str:
    """The GPUs and driver version as nvidia-smi reports them, or why it could not say."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    try:
        proc = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    text = (proc.stdout if proc.returncode == 0 else proc.stderr or proc.stdout).strip()
    return "; ".join(text.splitlines()) or f"nvidia-smi exited {proc.returncode}"


def onnxruntime_reason(log_lines: list[str]) -> str:
    """The cause ONNX Runtime logged when the CUDA provider failed to load."""
    text = _ANSI.sub("", "\n".join(log_lines))
    found = re.search(r"with error: (.+?)(?:\n|$)", text) or re.search(r"Failed to create CUDAExecutionProvider.*", text)
    if found:
        return found.group(1).strip() if found.re.groups else found.group(0).strip()
    return "ONNX Runtime did not say why"


def explain_cuda_failure(log_lines: list[str]) -> tuple[str, str]:
    """(reason, hint) for a CUDA session that ended up on the CPU, most basic cause first: no CUDA
    provider in the build, then no driver, then what ONNX Runtime itself logged. The hint says how to
    get CUDA; how to run on the CPU instead is the caller's to say, in its own options (ProviderError)."""
    if not has_cuda_provider():
        return no_cuda_provider_reason(), ""
    driver = find_driver()
    if driver.library is None:
        return (f"no NVIDIA driver: {driver.error}",
                "CUDA needs an NVIDIA GPU and its driver (`mnist-infer --doctor` shows what was found)")
    reason = onnxruntime_reason(log_lines)
    preload = preload_cuda()
    if not preload.done:
        reason += f" ({preload.method})"
    elif preload.messages:
        reason += f" (preloading the CUDA libraries: {'; '.join(preload.messages)[:300]})"
    return (reason, "the CUDA and cuDNN libraries come with pip install 'mnist-toolkit[cuda]' "
                    "(`mnist-infer --doctor` lists what was loaded from where)")
