"""Model files made elsewhere -> the `Checkpoint` the exporter consumes, read as data and never run.

What people save after following a tutorial, each turned into trainer/model.py's MLP so that the rest of
the export (ONNX, proof, metadata) is the path mnist-train's own checkpoints take:

- a bare state_dict, whatever its key names (`layer1.weight`, `fc1.weight`, `0.weight`,
  `module.net.2.weight`): the Linear layers' order and sizes come from the weight shapes chaining
  784 -> ... -> 10, each bias from its weight's name prefix;
- a training-loop dict holding one (`{"epoch", "model_state_dict", "optimizer_state_dict", ...}`,
  `{"state_dict": ...}`, `{"model": ...}`, `{"net": ...}`);
- a whole pickled module (`torch.save(model, path)`): read with torch's own restricted unpickler
  (`weights_only=True`), in which every class the file names but torch does not allow is replaced by an
  inert `StandIn` (allow-listed through the public `torch.serialization.safe_globals`); a stand-in
  only stores what the file hands it, so no constructor, `__setstate__` or `__reduce__` of the file's
  classes runs. The module tree is then read from the stand-ins' `_parameters` / `_modules`, and
  activation modules in it (`Sigmoid`, `ReLU`, `Tanh`) are evidence for the activation;
- a safetensors file holding a state_dict;
- mnist-train's own model.pt (trainer.checkpoint.load_checkpoint, which validates it).

Tensors saved on CUDA are mapped to the CPU. What the weights cannot tell, the activation and the input
scaling the network was trained on, comes from `ImportOptions` (the seed's sigmoid and [0,1] pixels by
default); `score_alternatives` then measures the plausible other choices on real digits.
"""
from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from infer.filekind import FileKind, sniff
from infer import contract as C
from trainer.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from trainer.model import ACTIVATIONS, ModelConfig, Normalised
from trainer.train import MNIST_MEAN, MNIST_STD

SUPPORTED = (f"mnist-export imports MLPs: Linear layers chaining {C.IMAGE_SIZE * C.IMAGE_SIZE} -> ... -> "
             f"{C.NUM_CLASSES} (any names), with {', '.join(ACTIVATIONS)} between them")
# Keys under which training loops store the model, in the order they are tried.
MODEL_KEYS = ("model_state_dict", "state_dict", "model", "net", "model_state", "network", "module",
              "weights", "params", "ema_state_dict")
# `mnist.source_format` kinds.
OWN_CHECKPOINT = "mnist-toolkit-checkpoint"
STATE_DICT = "state-dict"
TRAINING_DICT = "training-dict"
MODULE_PICKLE = "module-pickle"
# torch.nn activation modules and what our MLP calls them; other activation modules are refused.
ACTIVATION_MODULES = {"Sigmoid": "sigmoid", "ReLU": "relu", "Tanh": "tanh"}
# At the output they change no argmax: the logits we export give the same digit.
OUTPUT_MODULES = {"Softmax", "LogSoftmax"}
TORCH_ACTIVATION_MODULE = "torch.nn.modules.activation."
# The alternatives are scored on this many test digits; one much better than the given choice by this much
# earns a hint.
SCORE_DIGITS = 1000
HINT_MARGIN = 0.10
NEAR_TIE = 0.01
MAX_ORDERINGS = 200_000  # search steps when the file's key order does not chain the layers


class UnsupportedModel(CheckpointError):
    """A readable file whose network mnist-export cannot rebuild (a CNN, an unknown layout)."""


@dataclass(frozen=True)
class InputScale:
    """The pixels the network was trained on: [0,1] (ToTensor), then (x - mean) / std (Normalize)."""

    mean: float
    std: float

    @property
    def name(self) -> str:
        """`unit`, `mnist`, or `MEAN,STD`: the --input-scale value that gives this scaling."""
        for name, scale in NAMED_SCALES.items():
            if scale == self:
                return name
        return f"{self.mean:g},{self.std:g}"

    def training_code(self) -> str:
        if self == NAMED_SCALES["unit"]:
            return "ToTensor() alone (pixels in [0,1])"
        return f"Normalize(({self.mean:g},), ({self.std:g},))"

    @classmethod
    def parse(cls, text: str) -> "InputScale":
        """`unit` | `mnist` | `MEAN,STD` (floats, STD > 0); raises ValueError with the reason."""
        text = text.strip().lower()
        if text in NAMED_SCALES:
            return NAMED_SCALES[text]
        parts = text.split(",")
        try:
            mean, std = (float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{text!r} is not unit, mnist or MEAN,STD (e.g. 0.5,0.5)") from None
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"{text!r}: MEAN and STD must be finite and STD > 0")
        return cls(mean, std)


NAMED_SCALES = {"unit": InputScale(0.0, 1.0), "mnist": InputScale(MNIST_MEAN, MNIST_STD)}
# The scalings MNIST tutorials use: ToTensor alone, Normalize with MNIST's statistics, Normalize((0.5,), (0.5,)).
PLAUSIBLE_SCALES = (NAMED_SCALES["unit"], NAMED_SCALES["mnist"], InputScale(0.5, 0.5))


@dataclass(frozen=True)
class ImportOptions:
    """What a foreign file cannot say; None: the file's evidence, else the seed's choice."""

    activation: str | None = None  # None: activation modules in a pickled module tree, else sigmoid
    input_scale: InputScale | None = None  # None: [0,1] pixels (the seed's)


@dataclass(frozen=True)
class Source:
    """A model file read for export: the checkpoint, how it was stored (`mnist.source_format`), notes for stderr."""

    checkpoint: Checkpoint
    format: dict
    notes: tuple[str, ...] = ()

    @property
    def imported(self) -> bool:
        """True for files made elsewhere: activation and input scaling were given or guessed, not recorded."""
        return self.format["kind"] != OWN_CHECKPOINT


@dataclass(frozen=True)
class Alternative:
    """One (activation, input scaling) reading of an imported network and its accuracy on test digits."""

    activation: str
    input_scale: InputScale
    accuracy: float
    given: bool

    def to_dict(self) -> dict:
        return {"activation": self.activation, "input_scale": self.input_scale.name,
                "accuracy": self.accuracy, "given": self.given}


class StandIn:
    """An object of a class the file names but that is never imported: it only stores what it is handed.

    Subclasses are made per qualified name (`_stand_in`). The unpickler creates them with `__new__`
    (NEWOBJ) or calls them (REDUCE: arguments stored, nothing run) and hands them their state (BUILD);
    a pickled nn.Module's state is its `__dict__`: `_parameters`, `_buffers`, `_modules`, ...
    """

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", None)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


def _stand_in(qualified_name: str) -> type:
    short = qualified_name.rsplit(".", 1)[-1] or "StandIn"
    return type(short, (StandIn,), {"qualified_name": qualified_name, "__module__": __name__})


def _is_module(obj) -> bool:
    return (isinstance(obj, StandIn) and isinstance(obj.state, dict)
            and "_parameters" in obj.state and "_modules" in obj.state)


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


# --- reading files --------------------------------------------------------------------------------


def load_source(path: str | Path, options: ImportOptions = ImportOptions()) -> Source:
    """Any supported model file -> Source; raises CheckpointError (UnsupportedModel) with one line."""
    path = Path(path)
    try:
        kind = sniff(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not kind.pytorch:
        raise CheckpointError(refusal(kind, path))
    if kind.name == "safetensors":
        data, container = read_safetensors(path), "safetensors"
    else:
        data = read_torch_file(path, kind)
        if isinstance(data, Mapping) and data.get("format") == C.CHECKPOINT_FORMAT:
            return _own(path, options)
        container = "torch.save " + ("zip" if kind.name == "torch-zip" else "legacy")
    try:
        return _import(path, data, container, options)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, KeyError, RuntimeError) as exc:
        # A layout no rule above foresaw: one line, not a traceback.
        raise UnsupportedModel(f"{path}: could not read an MLP from it ({type(exc).__name__}: {exc}); "
                               f"{SUPPORTED}") from None


# What mnist-export takes, said once for every refusal.
TAKES = ("mnist-export takes a PyTorch file: mnist-train's model.pt, or what torch.save wrote for an MLP "
         "(the model, its state_dict, or a training-loop dict holding it), or a .safetensors state_dict")


def refusal(kind: FileKind, path) -> str:
    """One line: what the file is, what mnist-export takes, and the fix when there is one."""
    fix = f"; {kind.fix}" if kind.fix else ""
    if kind.damaged:
        return f"{path}: {kind.what}{fix}"
    return f"{path}: {kind.what}, not a model mnist-export can read. {TAKES}{fix}"


def read_torch_file(path: Path, kind: FileKind):
    """torch.load(weights_only=True) onto the CPU, with inert stand-ins for the classes the file names."""
    names: list[str] = []
    if kind.name == "torch-zip":
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as exc:  # a damaged archive: zipfile, RuntimeError, pickle errors
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                                  f"{type(exc).__name__}") from None
    try:
        with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(path, kind, str(exc))) from None
    except Exception as exc:  # torch.load raises many types on garbage: RuntimeError, EOFError, IndexError, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}") from None


def _refusal(path: Path, kind: FileKind, message: str) -> str:
    blocked = re.search(r"GLOBAL (\S+) whose module \S+ is blocked", message)
    if blocked:
        return (f"{path}: refused to load: it would run {blocked.group(1)} on load, which no model file needs "
                "(a planted payload?); nothing in it was run")
    if kind.name == "torch-legacy":
        return (f"{path}: refused to load: a torch.save file in the legacy (pre-1.6) format holding Python "
                "objects (a whole pickled module?), which cannot be read without running it; where its class is "
                "defined, save the weights: torch.save(model.state_dict(), 'weights.pt'), then export weights.pt")
    what = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+", message)
    detail = (what.group(1) or what.group(0)) if what else message.strip().splitlines()[-1][:120]
    return f"{path}: refused to load: it would run code on load ({detail}); a model file must be data only"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, read with the safetensors library (the `train` extra brings it)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path}: a safetensors file; reading it needs the safetensors package: "
                              "pip install safetensors (or 'mnist-toolkit[train]')") from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {first}") from None


def _own(path: Path, options: ImportOptions) -> Source:
    """mnist-train's checkpoint records its activation and normalisation: flags may only agree with it."""
    ckpt = load_checkpoint(path)
    if options.activation is not None and options.activation != ckpt.config.activation:
        raise CheckpointError(f"{path}: this mnist-train checkpoint records activation {ckpt.config.activation}; "
                              f"--activation {options.activation} is for files that do not record theirs")
    recorded = InputScale(ckpt.mean, ckpt.std)
    if options.input_scale is not None and not _same_scale(options.input_scale, recorded):
        raise CheckpointError(f"{path}: this mnist-train checkpoint records input scaling {recorded.name}; "
                              f"--input-scale {options.input_scale.name} is for files that do not record theirs")
    for name, tensor in ckpt.data["state_dict"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            _refuse_not_finite(path, name, tensor)
    for name in ("mean", "std"):
        _refuse_not_finite(path, f"normalisation.{name}", torch.tensor(float(ckpt.data["normalisation"][name])))
    fmt = {"kind": OWN_CHECKPOINT, "format_version": ckpt.data["format_version"]}
    return Source(checkpoint=ckpt, format=fmt)


def _refuse_not_finite(path: Path, name: str, tensor: torch.Tensor) -> None:
    """A tensor holding NaN or +-inf (a diverged training run) would export as an ONNX model that answers
    NaN for every image: refused, naming the tensor and what it holds, whatever --no-verify says."""
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(tensor).sum())
    inf = int((~finite).sum()) - nan
    held = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n)
    raise UnsupportedModel(f"{path}: {name} holds {held} value{'s' if nan + inf > 1 else ''} of {tensor.numel()} "
                           "(a diverged training run?): there is no model to export")


def _same_scale(a: InputScale, b: InputScale) -> bool:
    return math.isclose(a.mean, b.mean, abs_tol=1e-6) and math.isclose(a.std, b.std, rel_tol=1e-6)


# --- finding the network -------------------------------------------------------------------------


@dataclass
class _Group:
    """The tensors of one layer (one name prefix) and, for a pickled module, its class."""

    name: str
    tensors: dict
    class_name: str = ""  # short class name, from a pickled module tree

    @property
    def kind(self) -> str:
        weight = self.tensors.get("weight")
        leaves = set(self.tensors)
        if self.class_name and self.class_name not in ("Linear", "LazyLinear") and self.class_name.endswith(
                ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Embedding", "BatchNorm1d", "BatchNorm2d",
                 "LayerNorm", "GroupNorm", "LSTM", "GRU", "RNN", "MultiheadAttention", "Bilinear")):
            return self.class_name
        if weight is not None and weight.dim() >= 3:
            return "conv"
        if leaves & {"running_mean", "running_var"} or (weight is not None and weight.dim() == 1):
            return "norm"
        bias = self.tensors.get("bias")
        if (weight is not None and weight.dim() == 2 and leaves <= {"weight", "bias"}
                and (bias is None or (bias.dim() == 1 and len(bias) == weight.shape[0]))):
            return "Linear"
        return "other"

    def describe(self) -> str:
        label = self.name or "(top)"
        if self.kind == "Linear":
            out_f, in_f = self.tensors["weight"].shape
            return f"{label} Linear {in_f}->{out_f}"
        shapes = ", ".join(f"{leaf} {'x'.join(map(str, t.shape)) or 'scalar'}" for leaf, t in self.tensors.items())
        return f"{label} {self.kind} ({shapes})"


def _flatten_module(root) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A pickled module tree -> (state_dict-like tensors, prefix -> qualified class name)."""
    tensors: dict[str, torch.Tensor] = {}
    classes: dict[str, str] = {}
    seen: set[int] = set()

    def walk(module, prefix: str, depth: int) -> None:
        if id(module) in seen or depth > 64:  # a shared or cyclic module is read once
            return
        seen.add(id(module))
        state = module.state
        classes[prefix.rstrip(".")] = type(module).qualified_name
        # Whatever the file put there is data of unknown type: only real sets, mappings and tensors are read.
        skip = state.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset)) else set()
        for store in ("_parameters", "_buffers"):
            entries = state.get(store)
            for name, value in (entries.items() if isinstance(entries, Mapping) else ()):
                if isinstance(name, str) and isinstance(value, torch.Tensor) and name not in skip:
                    tensors[prefix + name] = value
        children = state.get("_modules")
        for name, child in (children.items() if isinstance(children, Mapping) else ()):
            if isinstance(name, str) and _is_module(child):
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(root, "", 0)
    return tensors, classes


def _find_model(data, path: Path) -> tuple[str, object, str | None]:
    """(kind, state_dict or module stand-in, key it was found under) from what torch.load returned."""
    if _is_module(data):
        return MODULE_PICKLE, data, None
    if _is_state_dict(data):
        return STATE_DICT, data, None
    if isinstance(data, Mapping):
        holds = {k: v for k, v in data.items() if _is_module(v) or _is_state_dict(v)}
        for key in MODEL_KEYS:
            if key in holds:
                return TRAINING_DICT, holds[key], key
        if len(holds) == 1:
            (key, value), = holds.items()
            return TRAINING_DICT, value, key
        keys = ", ".join(map(repr, list(data)[:10])) + (", ..." if len(data) > 10 else "")
        if holds:
            raise UnsupportedModel(f"{path}: a dict with several models ({', '.join(map(repr, holds))}): "
                                   f"save the one to export alone (torch.save(d[KEY], 'model.pt')); {SUPPORTED}")
        raise UnsupportedModel(f"{path}: a dict with keys {keys}, none of which holds a model (a state_dict of "
                               f"tensors or a pickled nn.Module); {SUPPORTED}")
    if isinstance(data, torch.Tensor):
        raise UnsupportedModel(f"{path}: a single tensor {'x'.join(map(str, data.shape))}, not a model; {SUPPORTED}")
    what = type(data).qualified_name if isinstance(data, StandIn) else type(data).__name__
    raise UnsupportedModel(f"{path}: holds a {what}, not a model; {SUPPORTED}")


def _groups(tensors: Mapping[str, torch.Tensor], classes: Mapping[str, str]) -> list[_Group]:
    groups: dict[str, _Group] = {}
    for key, tensor in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        group = groups.setdefault(prefix, _Group(prefix, {}, classes.get(prefix, "").rsplit(".", 1)[-1]))
        group.tensors[leaf] = tensor
    return list(groups.values())


def _chain(linears: list[_Group]) -> tuple[list[_Group], str | None]:
    """The Linear layers in the order their shapes chain 784 -> ... -> 10; the file's order when it chains.

    Returns (layers, note); layers is empty when no order chains.
    """
    size_in, size_out = C.IMAGE_SIZE * C.IMAGE_SIZE, C.NUM_CLASSES

    def chains(order: list[_Group]) -> bool:
        size = size_in
        for g in order:
            out_f, in_f = g.tensors["weight"].shape
            if in_f != size:
                return False
            size = out_f
        return size == size_out

    if chains(linears):
        return linears, None
    found: list[list[_Group]] = []
    steps = 0

    def search(size: int, used: list[bool], order: list[_Group]) -> None:
        nonlocal steps
        steps += 1
        if len(found) > 1 or steps > MAX_ORDERINGS:
            return
        if len(order) == len(linears):
            if size == size_out:
                found.append(list(order))
            return
        for i, g in enumerate(linears):
            if not used[i] and g.tensors["weight"].shape[1] == size:
                used[i] = True
                order.append(g)
                search(g.tensors["weight"].shape[0], used, order)
                order.pop()
                used[i] = False

    search(size_in, [False] * len(linears), [])
    if not found:
        return [], None
    names = " -> ".join(g.name for g in found[0])
    note = f"layers taken in the order their shapes chain ({names}), not the file's key order"
    if len(found) > 1:
        note += "; other orders chain too (equal layer sizes): check the result"
    return found[0], note


def _activation(classes: Mapping[str, str], options: ImportOptions, path: Path) -> tuple[str, str, list[str]]:
    """(activation, where it came from, notes), from the flag, the module tree's activation modules, or the default."""
    found = sorted({q[len(TORCH_ACTIVATION_MODULE):] for q in classes.values() if q.startswith(TORCH_ACTIVATION_MODULE)})
    modules = [n for n in found if n in ACTIVATION_MODULES]
    ours = sorted({ACTIVATION_MODULES[n] for n in modules})
    others = [n for n in found if n not in ACTIVATION_MODULES and n not in OUTPUT_MODULES]
    if others:
        raise UnsupportedModel(f"{path}: the module tree holds activation {', '.join(others)}; {SUPPORTED}")
    if len(ours) > 1:
        raise UnsupportedModel(f"{path}: the module tree mixes activations {', '.join(ours)}; the MLP mnist-export "
                               "builds uses one activation between all layers")
    notes = []
    if options.activation is not None:
        if ours and ours[0] != options.activation:
            notes.append(f"the module tree holds {modules[0]} modules; using --activation {options.activation} as given")
        return options.activation, "--activation", notes
    if ours:
        return ours[0], f"module tree ({modules[0]})", notes
    notes.append("activation: sigmoid, the seed's (the file does not say; --activation relu|tanh to change)")
    return "sigmoid", "default", notes


def _import(path: Path, data, container: str, options: ImportOptions) -> Source:
    """A foreign file's contents -> Source with our MLP's config and state_dict."""
    kind, model, key = _find_model(data, path)
    if _is_module(model):
        tensors, classes = _flatten_module(model)
    else:
        tensors, classes = dict(model), {}
    what = {STATE_DICT: "a state_dict", TRAINING_DICT: f"a training-loop dict ({key!r})",
            MODULE_PICKLE: "a pickled module"}[kind]
    groups = _groups(tensors, classes)
    others = [g for g in groups if g.kind != "Linear"]
    linears = [g for g in groups if g.kind == "Linear"]
    if others or not linears:
        shown = [g.describe() for g in groups[:8]] + ([f"... ({len(groups)} layers in all)"] if len(groups) > 8 else [])
        found = "; ".join(shown) if shown else "no tensors"
        not_mlp = "not an MLP" if others else "no Linear layers"
        raise UnsupportedModel(f"{path}: {what} of a network that is {not_mlp}: found {found}. {SUPPORTED}")
    order, order_note = _chain(linears)
    if not order:
        found = "; ".join(g.describe() for g in linears[:8])
        raise UnsupportedModel(f"{path}: {what} whose Linear layers do not chain "
                               f"{C.IMAGE_SIZE * C.IMAGE_SIZE} -> ... -> {C.NUM_CLASSES}: found {found}. {SUPPORTED}")
    if len(order) < 2:
        raise UnsupportedModel(f"{path}: {what} with a single Linear layer 784->10 (no hidden layer); "
                               "the MLP mnist-export builds has at least one hidden layer")
    activation, activation_from, notes = _activation(classes, options, path)
    if order_note:
        notes.append(order_note)
    scale = options.input_scale or NAMED_SCALES["unit"]
    if options.input_scale is None:
        notes.append("input scaling: pixels in [0,1], the seed's (the file does not say; "
                     "--input-scale mnist|MEAN,STD to change)")

    state: dict[str, torch.Tensor] = {}
    dtypes = set()
    for i, g in enumerate(order):
        weight = g.tensors["weight"].detach()
        bias = g.tensors.get("bias")
        if bias is None:
            notes.append(f"{g.name or '(top)'} has no bias: zeros")
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        for name, tensor in (("weight", weight), ("bias", bias.detach())):
            if not tensor.is_floating_point():
                raise UnsupportedModel(f"{path}: {g.name}.{name} holds {tensor.dtype}, not floating-point weights")
            _refuse_not_finite(path, f"{g.name}.{name}" if g.name else name, tensor)
            dtypes.add(str(tensor.dtype).replace("torch.", ""))
            state[f"layers.{i}.{name}"] = tensor.to(torch.float32).contiguous()
    if dtypes - {"float32"}:
        notes.append(f"weights stored as {', '.join(sorted(dtypes))}; exported as float32")

    config = ModelConfig(hidden=tuple(int(g.tensors["weight"].shape[0]) for g in order[:-1]), activation=activation)
    ckpt_data = {
        "model_config": config.to_dict(),
        "state_dict": state,
        "normalisation": {"mean": scale.mean, "std": scale.std},
        "preprocessing": {"deskew": False},
        "labels": list(C.LABELS),
        "recipe": {},
        "metrics": {},
    }
    ckpt = Checkpoint(data=ckpt_data, config=config, sha256=file_sha256(path), path=path)
    ckpt.build()  # our MLP takes these weights (raises CheckpointError otherwise)
    fmt = {"kind": kind, "container": container, "layers": [g.name for g in order],
           "activation": activation, "activation_from": activation_from,
           "input_scale": scale.name, "input_scale_from": "--input-scale" if options.input_scale else "default"}
    if key is not None:
        fmt["key"] = key
    if _is_module(model):
        fmt["class"] = type(model).qualified_name
    return Source(checkpoint=ckpt, format=fmt, notes=tuple(notes))


# --- the guesses, measured ------------------------------------------------------------------------


def with_reading(source: Source, activation: str, scale: InputScale) -> Checkpoint:
    """The imported checkpoint read with another activation and input scaling."""
    ckpt = source.checkpoint
    config = replace(ckpt.config, activation=activation)
    data = {**ckpt.data, "model_config": config.to_dict(), "normalisation": {"mean": scale.mean, "std": scale.std}}
    return replace(ckpt, data=data, config=config)


def score_alternatives(source: Source, pixels: np.ndarray, labels: np.ndarray) -> list[Alternative]:
    """Accuracy of each plausible (activation, input scaling) reading on `pixels` (float32 [N,1,28,28] in
    [0,1]) against `labels` (int [N]); the given reading first, then best first."""
    ckpt = source.checkpoint
    given = (ckpt.config.activation, InputScale(ckpt.mean, ckpt.std))
    scales = list(PLAUSIBLE_SCALES) + ([given[1]] if given[1] not in PLAUSIBLE_SCALES else [])
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels)).long()
    scored = []
    with torch.no_grad():
        for activation in ACTIVATIONS:
            network = with_reading(source, activation, given[1]).build()
            for scale in scales:
                logits = Normalised(network, scale.mean, scale.std)(x)
                accuracy = float((logits.argmax(1) == y).float().mean())
                scored.append(Alternative(activation, scale, accuracy, (activation, scale) == given))
    scored.sort(key=lambda a: (not a.given, -a.accuracy))
    return scored


def alternatives_hint(scored: list[Alternative]) -> str | None:
    """One line when another reading is much better than the given one, or when none reads digits well.

    Readings within NEAR_TIE of the best are named too: the weights alone cannot tell them apart.
    """
    if not scored:
        return None
    given, best = scored[0], max(scored, key=lambda a: a.accuracy)
    if best.accuracy - given.accuracy >= HINT_MARGIN:
        near = [a for a in scored if a is not best and not a.given and best.accuracy - a.accuracy < NEAR_TIE]
        questions = []
        if best.activation != given.activation:
            questions.append(f"does its forward use {best.activation}")
        if best.input_scale != given.input_scale:
            questions.append(f"was it trained with {best.input_scale.training_code()}")
        close = f" (or {', '.join(f'{a.accuracy:.0%} with {_flags(a, given)}' for a in near)})" if near else ""
        return (f"{given.accuracy:.0%} as given; {best.accuracy:.0%} with {_flags(best, given)}{close}: "
                f"{' and '.join(questions)}?")
    if best.accuracy < 0.5:
        return (f"at most {best.accuracy:.0%} of the test digits with any activation and input scaling tried: "
                "is this a plain MLP trained on MNIST digits (white on black, 28x28, row by row)?")
    return None


def _flags(reading: Alternative, given: Alternative) -> str:
    flags = []
    if reading.activation != given.activation:
        flags.append(f"--activation {reading.activation}")
    if reading.input_scale != given.input_scale:
        flags.append(f"--input-scale {reading.input_scale.name}")
    return " ".join(flags)
