"""PCA-whitened inputs as a training-time reparametrisation of the first Linear layer.

While training, the first layer reads z = (x - mu) V diag(1 / sqrt(lambda + eps)), the k leading
principal components of the training inputs x, whitened (V: eigenvectors [784,k] of their
covariance, lambda: eigenvalues). Whitened inputs make the loss surface of the first layer round,
so it trains faster and better (issue 8: +0.26 on validation, ~2x faster per epoch: the first
layer is k wide instead of 784). At the end the projection is folded back into that layer:

    W1 z + b1 = W1 P^T (x - mu) + b1 = W1' x + b1',   W1' = W1 P^T,  b1' = b1 - W1' mu,
    P = V diag(1 / sqrt(lambda + eps))

so the saved network reads the same inputs as one trained without whitening, and nothing about
the whitening is needed at inference. `fold_whitening` does it; tests/test_train.py checks that the
folded and the trained networks agree on every test digit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.model import MLP, ModelConfig, build_model


@dataclass(frozen=True)
class Whitening:
    """mean float64 [d], projection P float64 [d,k], eigenvalues float64 [k] (descending)."""

    mean: torch.Tensor
    projection: torch.Tensor
    eigenvalues: torch.Tensor

    @property
    def components(self) -> int:
        return self.projection.shape[1]

    def transform(self, inputs: torch.Tensor, batch: int = 8192) -> torch.Tensor:
        """float32 [N,d] -> whitened float32 [N,k], in batches (memory stays small)."""
        mean = self.mean.to(inputs.device, torch.float32)
        projection = self.projection.to(inputs.device, torch.float32)
        out = torch.empty(len(inputs), self.components, device=inputs.device)
        for i in range(0, len(inputs), batch):
            torch.mm(inputs[i : i + batch] - mean, projection, out=out[i : i + batch])
        return out


def fit_whitening(inputs: torch.Tensor, components: int, eps: float) -> Whitening:
    """PCA whitening of float32 inputs [N,d]: the `components` leading eigenvectors of their covariance."""
    n, d = inputs.shape
    if not 0 < components <= d:
        raise ValueError(f"pca components must be between 1 and the input size {d}, got {components}")
    mean = inputs.mean(0, dtype=torch.float64)
    centred = inputs - mean.float()
    covariance = (centred.t() @ centred).double() / (n - 1)
    eigenvalues, vectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, vectors = eigenvalues.flip(0)[:components], vectors.flip(1)[:, :components]
    # An eigenvector's sign is arbitrary; fix it so the same data always gives the same projection.
    signs = torch.sign(vectors[vectors.abs().argmax(0), torch.arange(components)])
    vectors = vectors * signs
    projection = vectors / torch.sqrt(eigenvalues.clamp(min=0) + eps)
    return Whitening(mean=mean.cpu(), projection=projection.cpu(), eigenvalues=eigenvalues.cpu())


def fold_whitening(model: MLP, whitening: Whitening) -> MLP:
    """The network `model` (first layer reading whitened inputs) as one that reads the inputs themselves."""
    weight = model.layers[0].weight.detach().cpu().double()  # [h, k]
    bias = model.layers[0].bias.detach().cpu().double()
    folded_weight = weight @ whitening.projection.t()  # [h, d]
    folded_bias = bias - folded_weight @ whitening.mean
    config = ModelConfig(hidden=model.config.hidden, activation=model.config.activation,
                         input_size=whitening.projection.shape[0], num_classes=model.config.num_classes)
    folded = build_model(config)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state["layers.0.weight"], state["layers.0.bias"] = folded_weight.float(), folded_bias.float()
    folded.load_state_dict(state)
    return folded.eval()
