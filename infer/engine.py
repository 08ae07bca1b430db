"""ONNX Runtime sessions that are what was asked for, and a Classifier over the model contract.

Our own models (exported by mnist-export) carry their description in `metadata_props` and are held to
it. A digit classifier made elsewhere (the ONNX model zoo's MNIST, a tf2onnx or torch.onnx export of a
tutorial network) has no such metadata; the Classifier then reads what it can from the graph itself
(input and output names and shapes, a fixed batch size, logits or probabilities) and assumes the
MNIST input layout unless told otherwise (`input_scale`, `ink`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from infer import contract as C
from infer.filekind import sniff

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
INPUT_SCALES = (1, 255)
INKS = ("white", "black")
FLAT = C.IMAGE_SIZE * C.IMAGE_SIZE

# The input layouts a digit classifier can take, by the shape of its input after the batch axis.
# A rank-4 input whose dims are all symbolic is read as NCHW, the ONNX convention.
LAYOUTS = {
    "nchw": (1, C.IMAGE_SIZE, C.IMAGE_SIZE),  # [N,1,28,28]: PyTorch, the ONNX model zoo
    "nhwc": (C.IMAGE_SIZE, C.IMAGE_SIZE, 1),  # [N,28,28,1]: Keras through tf2onnx
    "nhw": (C.IMAGE_SIZE, C.IMAGE_SIZE),  # [N,28,28]
    "flat": (FLAT,),  # [N,784]: an MLP that takes flattened pixels
}
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
# Output names that say what the output holds; they take precedence over the probe (see _output_kind).
_PROBS_NAME = re.compile(r"prob|softmax", re.IGNORECASE)
_LOGITS_NAME = re.compile(r"logit", re.IGNORECASE)
PROBE_BATCH = 8

log = logging.getLogger("infer")


class ProviderError(Exception):
    """CUDA was asked for and could not be had: `reason` (the most basic cause) and `hint` (how to get
    it). `message(fallback)` is the one line with the caller's own way to run on the CPU instead."""

    def __init__(self, reason: str, hint: str = ""):
        self.reason, self.hint = reason, hint
        super().__init__(self.message("use --provider cpu or auto to run on the CPU"))  # mnist-infer's words

    def message(self, fallback: str) -> str:
        hint = "; ".join(filter(None, (self.hint, fallback)))
        return f"CUDA was asked for but ONNX Runtime could not load it: {self.reason}." + (f" Hint: {hint}." if hint else "")


class ModelError(Exception):
    """An ONNX file that is missing, unreadable, not a digit classifier, or does not fit the contract."""


class LayoutConflict(ModelError):
    """--input-scale/--ink given for a model whose metadata declares its input layout (a usage error)."""


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


def make_session(model, provider: str = "auto", threads: int | None = None, verbose: bool = False,
                 cuda_options: dict | None = None):
    """An InferenceSession on `provider` (cpu|cuda|auto); raise ProviderError if cuda cannot be had.

    Before a CUDA session, the CUDA and cuDNN libraries pip installed are preloaded
    (infer.cuda.preload_cuda). `auto` tries CUDA only where this onnxruntime build has the provider
    and the NVIDIA driver loads; `cuda` always tries, and a failure names the most basic cause (no
    CUDA provider in the build, no driver, else ONNX Runtime's own reason). ONNX Runtime quietly
    falls back to the CPU when CUDA fails to load: the providers actually in use are checked
    against what was asked for.
    """
    import onnxruntime as ort

    from infer import cuda

    if provider not in ("auto", *PROVIDERS):
        raise ValueError(f"unknown provider {provider!r}")
    if provider == "cuda" and not cuda.has_cuda_provider():
        raise ProviderError(*cuda.explain_cuda_failure([]))
    options = ort.SessionOptions()
    options.log_severity_level = 0 if verbose else 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Without a driver CUDA cannot work; `auto` then skips the preload (~250 MB of libraries mapped).
    want_cuda = provider == "cuda" or (provider == "auto" and cuda.has_cuda_provider()
                                       and cuda.find_driver().library is not None)
    chosen = [("CUDAExecutionProvider", cuda_options or {})] if want_cuda else []
    chosen.append("CPUExecutionProvider")
    if want_cuda:
        cuda.preload_cuda()
    source = model if isinstance(model, bytes) else os.fspath(model)
    if verbose:
        session = ort.InferenceSession(source, options, providers=chosen)
        log_lines: list[str] = []
    else:
        with _captured_stderr() as log_lines:
            session = ort.InferenceSession(source, options, providers=chosen)
    if provider == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise ProviderError(*cuda.explain_cuda_failure(log_lines))
    return session


def session_provider(session) -> str:
    return "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"


@dataclass(frozen=True)
class ModelInfo:
    """What the model file says about itself, and how the Classifier feeds and reads it."""

    path: str
    labels: tuple[str, ...]
    outputs: tuple[str, ...]
    metadata: dict[str, str]
    input_name: str = C.INPUT_NAME
    input_shape: tuple = ("N", 1, C.IMAGE_SIZE, C.IMAGE_SIZE)  # as declared: int, or str for a symbolic dim
    layout: str = "nchw"  # a key of LAYOUTS
    output_name: str = C.LOGITS_NAME
    output_kind: str = "logits"  # "logits" (predict applies softmax) or "probs"
    output_rule: str = "the mnist-toolkit contract"  # why output_kind was chosen (see _output_kind)
    batch_size: int | None = None  # the input's fixed batch dimension; None when it is dynamic
    foreign: bool = False  # no mnist-toolkit metadata: the input layout below is assumed or given
    input_scale: int = 1  # the model reads pixel values in [0, input_scale]
    ink: str = "white"  # white ink on black (MNIST) or black on white
    dtype: str = "float32"

    @property
    def deskew(self) -> bool:
        """The model reads deskewed digits (infer.preprocess.deskew after the MNIST layout step)."""
        return bool(json.loads(self.metadata.get(C.META_INPUT, "{}")).get("deskew", False))

    @property
    def verification(self) -> dict | None:
        raw = self.metadata.get(C.META_VERIFICATION)
        return json.loads(raw) if raw else None


def _dims(shape) -> tuple:
    """ONNX Runtime's shape list with symbolic or unknown dims as strings."""
    return tuple(d if isinstance(d, int) else (d or "?") for d in shape)


def _shape_text(shape) -> str:
    return "[" + ",".join(str(d) for d in _dims(shape)) + "]"


def _fixed_batch(shape) -> int | None:
    first = _dims(shape)[0] if len(shape) else None
    return first if isinstance(first, int) and first > 0 else None


def check_contract(session, path: str) -> ModelInfo:
    """Refuse a model whose inputs, outputs or metadata do not fit the mnist-toolkit contract.

    A fixed batch dimension (e.g. after onnxruntime.tools.make_dynamic_shape_fixed) fits: the
    Classifier feeds batches of exactly that size.
    """
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
    output = C.PROBS_NAME if C.PROBS_NAME in names else C.LOGITS_NAME
    return ModelInfo(path=path, labels=labels, outputs=names, metadata=dict(meta), input_shape=_dims(shape),
                     output_name=output, output_kind="probs" if output == C.PROBS_NAME else "logits",
                     batch_size=_fixed_batch(shape))


def _not_a_digit_classifier(path: str, found: str) -> ModelError:
    return ModelError(f"{path}: not a 10-class digit classifier on 28x28 images: {found} (expected one float input "
                      "[N,1,28,28], [N,28,28,1], [N,28,28] or [N,784] and an output [N,10])")


def _fits(dims: tuple, want: tuple) -> bool:
    return len(dims) == len(want) and all(not isinstance(d, int) or d == w for d, w in zip(dims, want))


def _layout_of(dims: tuple) -> str | None:
    body = dims[1:]
    for name in ("nchw", "nhwc", "nhw", "flat"):  # nchw first: an all-symbolic rank-4 input is NCHW
        if _fits(body, LAYOUTS[name]):
            return name
    return None


def _output_kind(name: str, values: np.ndarray) -> tuple[str, str]:
    """("probs" | "logits", why). The rule: an output named like probabilities (prob, softmax) holds
    probabilities and one named like logits holds logits; otherwise the output holds probabilities
    when, on the probe batch, every value lies in [0, 1] and every row sums to 1 (within 1e-3), and
    logits otherwise. Log-probabilities (log_softmax) are read as logits: softmax recovers them exactly."""
    if _PROBS_NAME.search(name):
        return "probs", "named like probabilities"
    if _LOGITS_NAME.search(name):
        return "logits", "named like logits"
    values = values.astype(np.float64)
    if np.all(values >= -1e-6) and np.all(values <= 1 + 1e-6) and np.allclose(values.sum(1), 1, atol=1e-3):
        return "probs", "rows of the probe batch are non-negative and sum to 1"
    return "logits", "rows of the probe batch are not probabilities"


def _probe_pixels(n: int) -> np.ndarray:
    """MNIST-layout float32 [n,28,28]: blank, full, and seeded random images, to run a model once."""
    pixels = np.random.default_rng(0).random((n, C.IMAGE_SIZE, C.IMAGE_SIZE), dtype=np.float32)
    pixels[0] = 0.0
    if n > 1:
        pixels[1] = 1.0
    return pixels


def inspect_foreign(session, path: str, input_scale: int, ink: str) -> ModelInfo:
    """Read a model without mnist-toolkit metadata from its graph: input layout and fixed batch size,
    the output to use and whether it holds logits or probabilities (_output_kind). A model that
    cannot be a 10-class digit classifier on 28x28 images raises ModelError saying what it is."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        described = ", ".join(f"{i.name!r} {_shape_text(i.shape)}" for i in inputs) or "none"
        raise _not_a_digit_classifier(path, f"it takes {len(inputs)} inputs ({described})")
    inp = inputs[0]
    dims = _dims(inp.shape)
    if inp.type not in _DTYPES:
        raise _not_a_digit_classifier(path, f"its input {inp.name!r} is {inp.type} {_shape_text(inp.shape)}")
    layout = _layout_of(dims) if len(dims) >= 2 else None
    if layout is None:
        raise _not_a_digit_classifier(path, f"its input {inp.name!r} is {_shape_text(inp.shape)}")
    candidates = [o for o in outputs if len(o.shape) == 2 and _fits(_dims(o.shape)[1:], (C.NUM_CLASSES,))]
    if not candidates:
        described = ", ".join(f"{o.name!r} {_shape_text(o.shape)}" for o in outputs)
        raise _not_a_digit_classifier(path, f"its outputs are {described}")
    output = next((o for o in candidates if _PROBS_NAME.search(o.name)), candidates[0])
    info = ModelInfo(path=path, labels=C.LABELS, outputs=tuple(o.name for o in outputs),
                     metadata=dict(session.get_modelmeta().custom_metadata_map), input_name=inp.name,
                     input_shape=dims, layout=layout, output_name=output.name, batch_size=_fixed_batch(dims),
                     foreign=True, input_scale=input_scale, ink=ink, dtype=np.dtype(_DTYPES[inp.type]).name)
    batch = info.batch_size or PROBE_BATCH
    try:
        (values,) = session.run([output.name], {inp.name: _feed(info, _probe_pixels(batch))})
    except Exception as exc:  # onnxruntime's own Fail/InvalidArgument types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _not_a_digit_classifier(path, f"it fails on a {_shape_text((batch, *LAYOUTS[layout]))} input: "
                                            f"{first[:200]}") from None
    values = np.asarray(values)
    if values.shape != (batch, C.NUM_CLASSES):
        raise _not_a_digit_classifier(path, f"its output {output.name!r} is {list(values.shape)} for a batch of {batch}")
    kind, why = _output_kind(output.name, values)
    return replace(info, output_kind=kind, output_rule=why)


def _feed(info: ModelInfo, pixels: np.ndarray) -> np.ndarray:
    """Our layout (float32 [n,28,28] in [0,1], white on black) -> the model's input array."""
    x = pixels
    if info.ink == "black":
        x = 1.0 - x
    if info.input_scale != 1:
        x = x * np.float32(info.input_scale)
    if info.layout == "nchw":
        x = x[:, None]
    elif info.layout == "nhwc":
        x = x[..., None]
    elif info.layout == "flat":
        x = x.reshape(len(x), FLAT)
    return np.ascontiguousarray(x, dtype=info.dtype)


def _refuse_non_onnx(path: Path, kind) -> ModelError:
    """One line for a --model that is another kind of file (infer.filekind), with what to do instead."""
    if kind.name == "torchscript":  # mnist-export does not run TorchScript code: its weights, then
        return ModelError(f"{path} is {kind.what}, not an ONNX model: {kind.fix} (`mnist-export weights.pt`), "
                          "and pass the weights.onnx it writes")
    if kind.pytorch or kind.name == "pickle":
        return ModelError(f"{path} is a PyTorch file ({kind.what}), not an ONNX model: export it first with "
                          f"`mnist-export {path}` and pass the .onnx file it writes")
    if kind.name == "json":
        return ModelError(f"{path} is {kind.what}, not an ONNX model (mnist-export writes its proof beside the model "
                          "as MODEL.onnx.json): pass the .onnx file")
    if kind.name == "image":
        return ModelError(f"{path} is {kind.what}, not an ONNX model: images are the PATHS to classify, "
                          f"--model takes an .onnx file")
    fix = f" ({kind.fix})" if kind.fix and kind.name != "onnx" else ""
    return ModelError(f"{path} is {kind.what}, not an ONNX model: pass an .onnx file (mnist-export turns a "
                      f"PyTorch checkpoint into one){fix}")


def default_model_path() -> Path:
    """./model.onnx if present, else the model shipped inside the package."""
    local = Path("model.onnx")
    if local.is_file():
        return local
    return shipped_model_path()


def shipped_model_path() -> Path:
    return Path(__file__).resolve().parent / "models" / "default.onnx"


class Classifier:
    """An ONNX digit classifier: `Classifier("model.onnx").predict(pixels)` -> probabilities [N,10].

    model: an .onnx file; None: ./model.onnx if there is one (logged as a warning on the "infer"
        logger, since it is easy to miss), else the shipped model. `path` is the file used.
    provider: "cpu", "cuda" (ProviderError if it cannot be had) or "auto" (`provider` says which).
    input_scale (1 or 255) and ink ("white" or "black"): the input layout of a model without
        mnist-toolkit metadata; default: MNIST's ([0, 1], white ink on black). Our own models declare
        their layout, and a different one given here is a ModelError.
    notes: one-line messages for the user (stderr), e.g. the layout assumed for a foreign model.
    Raises ModelError (one line) for a file that is not an ONNX model, not a 10-class digit
    classifier on 28x28 images, or one of ours that does not fit the contract.
    """

    def __init__(self, model: str | os.PathLike | None = None, provider: str = "auto", threads: int | None = None,
                 verbose: bool = False, *, input_scale: int | None = None, ink: str | None = None):
        if input_scale is not None and input_scale not in INPUT_SCALES:
            raise ValueError(f"input_scale must be one of {INPUT_SCALES}, not {input_scale!r}")
        if ink is not None and ink not in INKS:
            raise ValueError(f"ink must be one of {INKS}, not {ink!r}")
        path = Path(model) if model is not None else default_model_path()
        if model is None and path != shipped_model_path():
            log.warning("using ./%s from the current directory, not the shipped model (pass a model to choose)", path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        try:
            kind = sniff(path, parse_onnx=False)  # ONNX Runtime itself says whether an ONNX candidate loads
        except OSError as exc:
            raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if kind.name not in ("onnx", "unknown"):
            raise _refuse_non_onnx(path, kind)
        try:
            self.session = make_session(path, provider, threads=threads, verbose=verbose)
        except ProviderError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "Protobuf parsing failed" in first:
                raise ModelError(f"{path} is not an ONNX model: ONNX Runtime cannot load it (Protobuf parsing "
                                 "failed)") from None
            raise ModelError(f"{path}: ONNX Runtime cannot load it: {first[:300]}") from None
        self.path = path
        self.notes: list[str] = []
        meta = self.session.get_modelmeta().custom_metadata_map
        if C.META_FORMAT in meta:
            self.info = check_contract(self.session, os.fspath(path))
            if (input_scale or 1, ink or "white") != (1, "white"):
                raise LayoutConflict(f"{path} declares its input layout in its metadata (pixels in [0, 1], white ink on "
                                 "black): --input-scale/--ink are for models without mnist-toolkit metadata")
        else:
            self.info = inspect_foreign(self.session, os.fspath(path), input_scale or 1, ink or "white")
            self.notes.extend(self._foreign_notes(given=input_scale is not None or ink is not None))
        self.provider = session_provider(self.session)
        self.labels = self.info.labels
        self.deskew = self.info.deskew  # callers deskew MNIST-layout digits before predict() when True

    def _foreign_notes(self, given: bool) -> list[str]:
        info = self.info
        scale = f"pixels in [0, {info.input_scale}]"
        ink = "white ink on black" if info.ink == "white" else "black ink on white"
        layout = (f"input layout as given: {scale}, {ink}, digit centred in 28x28" if given else
                  f"assuming the MNIST input layout: {scale}, {ink}, digit centred in 28x28 "
                  "(--input-scale 255 or --ink black say otherwise)")
        batch = (f"; batch fixed at {info.batch_size}: fed {info.batch_size} at a time"
                 if info.batch_size else "")
        return [f"{self.path}: no mnist-toolkit metadata; {layout}",
                f"{self.path}: input {info.input_name!r} {_shape_text(info.input_shape)}, output {info.output_name!r} "
                f"read as {info.output_kind} ({info.output_rule}), index i = digit i{batch}"]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N,10] for MNIST-format pixels float32 [N,28,28] or [N,1,28,28]
        in [0, 1], white ink on black (see infer.preprocess), whatever the model's own input layout,
        batch size and output (logits are turned into probabilities with a softmax)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim == 4 and pixels.shape[1] == 1:
            pixels = pixels[:, 0]
        if pixels.ndim != 3 or pixels.shape[1:] != (C.IMAGE_SIZE, C.IMAGE_SIZE):
            raise ValueError(f"pixels must be [N,28,28] or [N,1,28,28], not {list(pixels.shape)}")
        n = len(pixels)
        if n == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        info = self.info
        batch = info.batch_size
        if batch is None:
            (out,) = self.session.run([info.output_name], {info.input_name: _feed(info, pixels)})
        else:  # a fixed batch dimension: exact batches, the last one padded with blank images
            parts = []
            for start in range(0, n, batch):
                chunk = pixels[start : start + batch]
                if len(chunk) < batch:
                    chunk = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
                (part,) = self.session.run([info.output_name], {info.input_name: _feed(info, chunk)})
                parts.append(part[: min(batch, n - start)])
            out = np.concatenate(parts)
        out = np.asarray(out, dtype=np.float64)
        if info.output_kind == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
        else:
            out = np.clip(out, 0.0, None)  # float error can leave a probability at -1e-9
        out /= out.sum(axis=1, keepdims=True)
        return out.astype(np.float32)
