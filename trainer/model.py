"""The network, defined once: a multi-layer perceptron built from a config."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from infer.contract import IMAGE_SIZE, NUM_CLASSES

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class ModelConfig:
    """Layer sizes and activation of the MLP; the seed's network is the default."""

    hidden: tuple[int, ...] = (16, 16)
    activation: str = "sigmoid"
    input_size: int = IMAGE_SIZE * IMAGE_SIZE
    num_classes: int = NUM_CLASSES
    kind: str = field(default="mlp")

    def __post_init__(self) -> None:
        if self.kind != "mlp":
            raise ValueError(f"unknown model kind {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be positive integers, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.input_size, *self.hidden, self.num_classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(
            hidden=tuple(d["hidden"]),
            activation=d["activation"],
            input_size=int(d["input_size"]),
            num_classes=int(d["num_classes"]),
            kind=d.get("kind", "mlp"),
        )


class MLP(nn.Module):
    """Flatten -> (Linear -> activation) per hidden layer -> Linear, raw logits out."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        sizes = config.sizes
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[config.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def normalise(pixels: torch.Tensor, mean, std, inplace: bool = False) -> torch.Tensor:
    """The input normalisation, one formula for training, evaluation and export."""
    if inplace:
        return pixels.sub_(mean).div_(std)
    return (pixels - mean) / std


class Normalised(nn.Module):
    """Wraps a model so it takes plain [0,1] pixels: (x - mean) / std happens inside the graph."""

    def __init__(self, model: nn.Module, mean: float, std: float, with_probs: bool = False):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.with_probs = with_probs

    def forward(self, pixels: torch.Tensor):
        logits = self.model(normalise(pixels, self.mean, self.std))
        if self.with_probs:
            return logits, torch.softmax(logits, dim=1)
        return logits


def build_model(config: ModelConfig) -> MLP:
    """A freshly initialised network for this config (PyTorch's default Linear init)."""
    return MLP(config)
