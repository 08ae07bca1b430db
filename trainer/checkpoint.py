"""model.pt, the contract between training and export: a self-describing dict, loaded as data only."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from infer.atomic import atomic_path
from infer.contract import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, LABELS, TOOL_VERSION
from trainer.model import MLP, ModelConfig, Normalised, build_model

REQUIRED_KEYS = ("format", "format_version", "model_config", "state_dict", "normalisation", "labels")


class CheckpointError(Exception):
    """A file that is not a usable checkpoint of this toolkit."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the raw dict plus its parsed config and the file's sha256."""

    data: dict
    config: ModelConfig
    sha256: str
    path: Path

    @property
    def mean(self) -> float:
        return float(self.data["normalisation"]["mean"])

    @property
    def std(self) -> float:
        return float(self.data["normalisation"]["std"])

    @property
    def deskew(self) -> bool:
        """Whether the network was trained on deskewed digits (infer.preprocess.deskew)."""
        return bool(self.data.get("preprocessing", {}).get("deskew", False))

    @property
    def test_accuracy(self) -> float | None:
        return self.data.get("metrics", {}).get("test_accuracy")

    def build(self) -> MLP:
        """The trained network, rebuilt from the config and weights in the file alone."""
        model = build_model(self.config)
        try:
            model.load_state_dict(self.data["state_dict"])
        except (RuntimeError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: weights do not fit the model config: {first}") from None
        return model.eval()

    def build_normalised(self, with_probs: bool = False) -> Normalised:
        """The network taking [0,1] pixels, normalisation inside."""
        return Normalised(self.build(), self.mean, self.std, with_probs=with_probs).eval()


def checkpoint_dict(
    model: MLP,
    *,
    mean: float,
    std: float,
    recipe: dict,
    training: dict,
    history: list[dict],
    metrics: dict,
    data: dict,
    deskew: bool = False,
) -> dict:
    """Assemble the checkpoint (format version, config, weights, normalisation, labels, provenance).

    `preprocessing.deskew`: the network reads deskewed digits; the exporter records it in the ONNX
    metadata and mnist-infer applies the same deskew. Older checkpoints lack the key: not deskewed.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "normalisation": {"mean": float(mean), "std": float(std)},
        "preprocessing": {"deskew": bool(deskew)},
        "labels": list(LABELS),
        "recipe": recipe,
        "training": training,
        "history": history,
        "metrics": metrics,
        "data": data,
        "versions": {"torch": str(torch.__version__), "tool": TOOL_VERSION},
    }


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write the checkpoint atomically, through an open file: torch.save given a path string parses it
    itself (a backslash in the name is read as a folder separator), so any name the file system allows
    works only this way."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a checkpoint with weights_only=True: a checkpoint is data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+", str(exc))
        what = found.group(1) or found.group(0) if found else "not plain data"
        raise CheckpointError(f"{path}: refused to load: it would run code on load ({what}); a checkpoint must be data only") from None
    except Exception as exc:  # torch.load raises many types on garbage: RuntimeError, EOFError, IndexError, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(exc).__name__}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an mnist-toolkit checkpoint (a bare state_dict or another tool's file?)")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is not supported (this tool reads {CHECKPOINT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    try:
        config = ModelConfig.from_dict(data["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config: {exc}") from None
    if list(data["labels"]) != list(LABELS):
        raise CheckpointError(f"{path}: labels {data['labels']!r} are not the digits 0-9")
    return Checkpoint(data=data, config=config, sha256=file_sha256(path), path=path)


def history_dicts(history) -> list[dict]:
    return [asdict(e) for e in history]
