"""The training loop: MNIST held in memory, a hand-written forward/backward over one flat parameter buffer.

At batch 32 a step of this tiny network is mostly framework overhead, so the loop avoids autograd,
DataLoader and per-parameter optimizer bookkeeping: every parameter and gradient is a view into one
flat tensor, batches are gathered by index into buffers allocated once, and the optimizer updates the
flat tensor in a handful of in-place ops. `tests/test_train.py` checks the maths against autograd and
torch.optim.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from infer.contract import IMAGE_SIZE, PIXEL_SCALE
from trainer.data import MnistSplits, split_validation
from trainer.model import MLP, ModelConfig, build_model, normalise
from trainer.recipes import Recipe

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # training-set pixel statistics in [0,1]

_ACT_INPLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "relu": torch.relu_}


def _act_backward(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(pre-activation) from d(loss)/d(activation) and the activation's output."""
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, out)
    if name == "tanh":
        return torch.ops.aten.tanh_backward(grad, out)
    return torch.ops.aten.threshold_backward(grad, out, 0)


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how."""

    model: ModelConfig
    recipe: Recipe
    seed: int = 0
    val_size: int = 5000
    device: str = "cpu"
    keep: str = "best"  # "best" validation epoch or "last"


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """A trained model and everything measured while training it."""

    model: MLP
    mean: float
    std: float
    history: list[EpochStats]
    best_epoch: int
    val_accuracy: float | None
    test_accuracy: float
    test_confusion: list[list[int]]  # [true][predicted]
    train_seconds: float
    extra: dict = field(default_factory=dict)


class FlatMLP:
    """The MLP's parameters and gradients as views into two flat tensors, with a manual fwd/bwd step."""

    def __init__(self, model: MLP, max_batch: int):
        params = list(model.parameters())
        self.theta = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.theta)
        self.act = model.config.activation
        self.weights, self.biases, self.gw, self.gb = [], [], [], []
        offset = 0
        for i, p in enumerate(params):
            n = p.numel()
            p.data = self.theta[offset : offset + n].view_as(p)  # the module now reads the flat buffer
            g = self.grad[offset : offset + n].view_as(p)
            (self.weights if i % 2 == 0 else self.biases).append(p.data)
            (self.gw if i % 2 == 0 else self.gb).append(g)
            offset += n
        dev = self.theta.device
        self.outs = [torch.empty(max_batch, w.shape[0], device=dev) for w in self.weights]

    def step(self, x: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward on one batch; fills self.grad; returns minus the summed loss."""
        n = x.shape[0]
        inputs = [x]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            out = self.outs[i][:n]
            torch.addmm(b, inputs[-1], w.t(), out=out)
            if i < last:
                _ACT_INPLACE[self.act](out)
            inputs.append(out)
        logits = inputs[-1]
        # log_softmax's kernel is slow across 10 columns of a wide batch; this form is 2x faster there.
        logp = logits - torch.logsumexp(logits, 1, keepdim=True) if n >= 128 else torch.log_softmax(logits, 1)
        loss_sum = torch.dot(logp.view(-1), onehot.view(-1))  # minus the summed cross-entropy
        dz = logp.exp_().sub_(onehot).mul_(1.0 / n)  # d(mean CE)/d(logits)
        for i in range(last, -1, -1):
            torch.mm(dz.t(), inputs[i], out=self.gw[i])
            torch.sum(dz, 0, out=self.gb[i])
            if i > 0:
                dz = _act_backward(self.act, torch.mm(dz, self.weights[i]), inputs[i])
        return loss_sum


class FlatOptimizer:
    """SGD (momentum, L2), Adam (L2) and AdamW (decoupled decay) on one flat tensor; torch.optim's maths.

    Adam and AdamW run torch's fused kernels (one op for the whole update instead of eight).
    """

    def __init__(self, recipe: Recipe, theta: torch.Tensor, grad: torch.Tensor):
        self.kind, self.wd, self.momentum = recipe.optimizer, recipe.weight_decay, recipe.momentum
        self.theta, self.grad = theta, grad
        self.betas, self.eps, self.t = (0.9, 0.999), 1e-8, 0
        if self.kind == "sgd":
            self.buf = torch.zeros_like(theta) if self.momentum else None
        else:
            self.m, self.v = torch.zeros_like(theta), torch.zeros_like(theta)
            self.steps = torch.zeros((), device=theta.device)
            self.fused = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_

    def step(self, lr: float, beta1: float | None = None) -> None:
        theta, grad = self.theta, self.grad
        self.t += 1
        if self.kind == "sgd":
            if self.wd:
                grad.add_(theta, alpha=self.wd)
            if self.buf is not None:
                grad = self.buf.mul_(self.momentum).add_(grad) if self.t > 1 else self.buf.copy_(grad)
            theta.add_(grad, alpha=-lr)
            return
        self.steps += 1
        self.fused([theta], [grad], [self.m], [self.v], [], [self.steps], lr=lr, beta1=beta1 or self.betas[0],
                   beta2=self.betas[1], weight_decay=self.wd, eps=self.eps, amsgrad=False, maximize=False)


def _cos(a: float, b: float, frac: float) -> float:
    """Cosine interpolation from a (frac=0) to b (frac=1)."""
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * frac))


def schedule_at(recipe: Recipe, step: int, total: int) -> tuple[float, float | None]:
    """(learning rate, Adam beta1 or None) at optimizer step `step` of `total`.

    One-cycle follows torch's OneCycleLR defaults: lr warms up over 30% of the steps from lr/25 to lr,
    then anneals to lr/25/1e4, while Adam's beta1 cycles 0.95 -> 0.85 -> 0.95.
    """
    if recipe.schedule == "constant":
        return recipe.lr, None
    if recipe.schedule == "cosine":
        return _cos(recipe.lr, 0.0, step / total), None
    start, peak, end = recipe.lr / 25, recipe.lr, recipe.lr / 25 / 1e4
    warm = max(1.0, 0.3 * total - 1)
    if step <= warm:
        return _cos(start, peak, step / warm), _cos(0.95, 0.85, step / warm)
    frac = (step - warm) / max(1.0, total - 1 - warm)
    return _cos(peak, end, frac), _cos(0.85, 0.95, frac)


class ShiftedGather:
    """Gathers a normalised batch in which every image is translated by its own random (dy, dx).

    The training images are stored once per translation as uint8 (9 x 43 MB for +-1 pixel), so a
    batch is one index_select of bytes, a conversion and an affine normalisation: four ops, against
    a strided copy per translation. MNIST's background is 0, so shifting in uint8 fills correctly.
    """

    def __init__(self, images_u8: torch.Tensor, shift: int, mean: float, std: float, seed: int, max_batch: int):
        n, s = len(images_u8), IMAGE_SIZE
        moves = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
        padded = torch.nn.functional.pad(images_u8, (shift, shift, shift, shift))
        self.table = torch.empty((len(moves), n, s, s), dtype=torch.uint8, device=images_u8.device)
        for k, (dy, dx) in enumerate(moves):
            self.table[k] = padded[:, shift - dy : shift - dy + s, shift - dx : shift - dx + s]
        self.table = self.table.view(len(moves) * n, s * s)
        self.n, self.k = n, len(moves)
        self.generator = torch.Generator().manual_seed(seed)
        self.scale, self.offset = 1.0 / (PIXEL_SCALE * std), -mean / std
        self.raw = torch.empty(max_batch, s * s, dtype=torch.uint8, device=images_u8.device)
        self.out = torch.empty(max_batch, s * s, device=images_u8.device)

    def rows(self, perm: torch.Tensor) -> torch.Tensor:
        """Table rows for an epoch's order of images, each image with its own random translation."""
        moves = torch.randint(0, self.k, (len(perm),), generator=self.generator).to(perm.device)
        return moves.mul_(self.n).add_(perm)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        m = len(rows)
        pixels = torch.index_select(self.table, 0, rows, out=self.raw[:m])
        return self.out[:m].copy_(pixels).mul_(self.scale).add_(self.offset)


@torch.no_grad()
def predict_classes(model: torch.nn.Module, images: torch.Tensor, batch: int = 10000) -> torch.Tensor:
    """Argmax predictions for already-normalised flat images."""
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, k: int) -> list[list[int]]:
    return torch.bincount(true * k + pred, minlength=k * k).reshape(k, k).tolist()


def prepare_pixels(images_u8: torch.Tensor, mean: float, std: float, device: str) -> torch.Tensor:
    """uint8 [N,28,28] -> normalised float32 [N,784] on the device (in place: no extra copies)."""
    pixels = images_u8.to(device).reshape(len(images_u8), -1).float()
    pixels.div_(PIXEL_SCALE)
    return normalise(pixels, mean, std, inplace=True) if (mean, std) != (0.0, 1.0) else pixels


def train(
    config: TrainConfig,
    data: MnistSplits,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    """Train the configured network on MNIST; evaluate on the test set once, at the end."""
    recipe, device = config.recipe, config.device
    torch.manual_seed(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)

    mean, std = (MNIST_MEAN, MNIST_STD) if recipe.normalise else (0.0, 1.0)
    train_idx, val_idx = split_validation(len(data.train_images), config.val_size, config.seed)
    train_u8 = data.train_images[train_idx]
    y_train = data.train_labels[train_idx].to(device)
    x_val = prepare_pixels(data.train_images[val_idx], mean, std, device)
    y_val = data.train_labels[val_idx].to(device)
    n_probe = min(len(train_u8), 10000)  # training accuracy is tracked on a fixed sample, for speed
    x_probe, y_probe = prepare_pixels(train_u8[:n_probe], mean, std, device), y_train[:n_probe]
    onehot = torch.nn.functional.one_hot(y_train, config.model.num_classes).float()

    model = build_model(config.model).to(device)
    flat = FlatMLP(model, recipe.batch_size)
    opt = FlatOptimizer(recipe, flat.theta, flat.grad)
    bs, n = recipe.batch_size, len(train_u8)
    # Batches come either from the shifted uint8 table (augmentation) or from the float images.
    shifter = ShiftedGather(train_u8.to(device), recipe.shift, mean, std, config.seed, bs) if recipe.shift else None
    x_train = prepare_pixels(train_u8, mean, std, device) if shifter is None else None
    xbuf = torch.empty(bs, IMAGE_SIZE * IMAGE_SIZE, device=device)
    ybuf = torch.empty(bs, onehot.shape[1], device=device)
    total_steps = recipe.epochs * math.ceil(n / bs)
    step = 0

    history: list[EpochStats] = []
    best = (-1.0, 0, flat.theta.clone())
    t_start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        rows = shifter.rows(perm) if shifter is not None else None
        loss_total = torch.zeros((), device=device)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            m = idx.shape[0]
            if rows is not None:
                x = shifter.gather(rows[start : start + bs])
            else:
                x = torch.index_select(x_train, 0, idx, out=xbuf[:m])
            y = torch.index_select(onehot, 0, idx, out=ybuf[:m])
            loss_total.sub_(flat.step(x, y))
            lr, beta1 = schedule_at(recipe, step, total_steps)
            opt.step(lr, beta1)
            step += 1
        val_acc = None
        if len(x_val):
            val_acc = (predict_classes(model, x_val) == y_val).float().mean().item()
            if config.keep == "last" or val_acc > best[0]:
                best = (val_acc, epoch, flat.theta.clone())
        stats = EpochStats(
            epoch=epoch,
            loss=loss_total.item() / n,
            train_accuracy=(predict_classes(model, x_probe) == y_probe).float().mean().item(),
            val_accuracy=val_acc,
            lr=lr,
            seconds=time.perf_counter() - t0,
        )
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    train_seconds = time.perf_counter() - t_start

    best_epoch = recipe.epochs
    if len(x_val):
        flat.theta.copy_(best[2])
        best_epoch = best[1]
    x_test = prepare_pixels(data.test_images, mean, std, device)
    y_test = data.test_labels.to(device)
    pred = predict_classes(model, x_test)
    test_acc = (pred == y_test).float().mean().item()
    val_final = (predict_classes(model, x_val) == y_val).float().mean().item() if len(x_val) else None

    # Hand back an ordinary module whose parameters own their memory.
    final = build_model(config.model)
    final.load_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return TrainResult(
        model=final.eval(),
        mean=mean,
        std=std,
        history=history,
        best_epoch=best_epoch,
        val_accuracy=val_final,
        test_accuracy=test_acc,
        test_confusion=confusion_matrix(y_test.cpu(), pred.cpu(), config.model.num_classes),
        train_seconds=train_seconds,
    )
