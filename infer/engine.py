"""ONNX Runtime sessions that are what was asked for, and a Classifier over the model contract."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from infer import contract as C

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class ProviderError(Exception):
    """The execution provider that was asked for could not be had."""


class ModelError(Exception):
    """An ONNX file that is missing, unreadable or does not fit the contract."""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (ORT logs there, not through Python)."""
    lines: list[str] = []
    try:
        fd = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters)
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def _cuda_failure_reason(log_lines: list[str]) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(log_lines))
    found = re.search(r"with error: (.+?)(?:\n|$)", text) or re.search(r"Failed to create CUDAExecutionProvider.*", text)
    if found:
        return found.group(1).strip() if found.re.groups else found.group(0).strip()
    return "ONNX Runtime did not say why"


def make_session(model, provider: str = "auto", threads: int | None = None, verbose: bool = False,
                 cuda_options: dict | None = None):
    """An InferenceSession on `provider` (cpu|cuda|auto); raise ProviderError if cuda cannot be had.

    ONNX Runtime quietly falls back to the CPU when CUDA fails to load: the providers actually in
    use are checked against what was asked for.
    """
    import onnxruntime as ort

    if provider not in ("auto", *PROVIDERS):
        raise ValueError(f"unknown provider {provider!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 0 if verbose else 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    want_cuda = provider in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers()
    chosen = [("CUDAExecutionProvider", cuda_options or {})] if want_cuda else []
    chosen.append("CPUExecutionProvider")
    source = model if isinstance(model, bytes) else os.fspath(model)
    if verbose:
        session = ort.InferenceSession(source, options, providers=chosen)
        log: list[str] = []
    else:
        with _captured_stderr() as log:
            session = ort.InferenceSession(source, options, providers=chosen)
    active = session.get_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in active:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = f"this onnxruntime build has no CUDA provider (available: {', '.join(ort.get_available_providers())})"
        else:
            reason = _cuda_failure_reason(log)
        raise ProviderError(
            f"CUDA was asked for but ONNX Runtime could not load it: {reason}. "
            "Hint: onnxruntime-gpu needs an NVIDIA driver, CUDA and cuDNN libraries it can find "
            "(`mnist-infer --doctor` lists them); use --provider cpu or auto to run on the CPU."
        )
    return session


def session_provider(session) -> str:
    return "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself."""

    path: str
    labels: tuple[str, ...]
    outputs: tuple[str, ...]
    metadata: dict[str, str]

    @property
    def deskew(self) -> bool:
        """The model reads deskewed digits (infer.preprocess.deskew after the MNIST layout step)."""
        return bool(json.loads(self.metadata.get(C.META_INPUT, "{}")).get("deskew", False))

    @property
    def verification(self) -> dict | None:
        raw = self.metadata.get(C.META_VERIFICATION)
        return json.loads(raw) if raw else None


def check_contract(session, path: str) -> ModelInfo:
    """Refuse a model whose inputs, outputs or metadata do not fit the mnist-toolkit contract."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].name != C.INPUT_NAME:
        raise ModelError(f"{path}: expected one input named {C.INPUT_NAME!r}, found {[i.name for i in inputs]}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [1, C.IMAGE_SIZE, C.IMAGE_SIZE] or inputs[0].type != "tensor(float)":
        raise ModelError(f"{path}: input {C.INPUT_NAME!r} is {inputs[0].type} {shape}, expected float [N,1,28,28]")
    names = tuple(o.name for o in outputs)
    if C.LOGITS_NAME not in names:
        raise ModelError(f"{path}: no {C.LOGITS_NAME!r} output (outputs: {list(names)})")
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(C.META_FORMAT) != C.META_FORMAT_VALUE:
        raise ModelError(f"{path}: not an mnist-toolkit model (metadata {C.META_FORMAT!r} is {meta.get(C.META_FORMAT)!r}); "
                         "export it with mnist-export")
    try:
        labels = tuple(json.loads(meta[C.META_LABELS]))
    except (KeyError, ValueError, TypeError):
        raise ModelError(f"{path}: metadata {C.META_LABELS!r} is missing or not a JSON list") from None
    if labels != C.LABELS:
        raise ModelError(f"{path}: labels {list(labels)} are not the digits 0-9 this tool reads")
    out_shape = outputs[names.index(C.LOGITS_NAME)].shape
    if len(out_shape) != 2 or out_shape[1] != len(labels):
        raise ModelError(f"{path}: logits shape {out_shape} does not match {len(labels)} labels")
    layout = json.loads(meta.get(C.META_INPUT, "{}"))
    if layout.get("ink") != C.INPUT_LAYOUT["ink"] or layout.get("scale") != C.INPUT_LAYOUT["scale"]:
        raise ModelError(f"{path}: model expects input layout {layout}, this tool feeds {C.INPUT_LAYOUT}")
    return ModelInfo(path=path, labels=labels, outputs=names, metadata=dict(meta))


def default_model_path() -> Path:
    """./model.onnx if present, else the model shipped inside the package."""
    local = Path("model.onnx")
    if local.is_file():
        return local
    return Path(__file__).resolve().parent / "models" / "default.onnx"


class Classifier:
    """An ONNX digit classifier: `Classifier("model.onnx").predict(pixels)` -> probabilities [N,10].

    `pixels` are MNIST-format model inputs, float32 [N,28,28] or [N,1,28,28] in [0,1]
    (see infer.preprocess). The session is built once and reused.
    """

    def __init__(self, model: str | os.PathLike | None = None, provider: str = "auto",
                 threads: int | None = None, verbose: bool = False):
        path = Path(model) if model is not None else default_model_path()
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        try:
            self.session = make_session(path, provider, threads=threads, verbose=verbose)
        except ProviderError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {first[:300]}") from None
        self.info = check_contract(self.session, os.fspath(path))
        self.provider = session_provider(self.session)
        self.labels = self.info.labels
        self.deskew = self.info.deskew  # callers deskew MNIST-layout digits before predict() when True
        self._want = [C.PROBS_NAME] if C.PROBS_NAME in self.info.outputs else [C.LOGITS_NAME]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 10] for MNIST-format pixels [N,28,28] or [N,1,28,28]."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[:, None]
        if len(pixels) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        (out,) = self.session.run(self._want, {C.INPUT_NAME: np.ascontiguousarray(pixels)})
        if self._want[0] == C.LOGITS_NAME:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out
