"""The training loop: MNIST held in memory, a hand-written forward/backward over one flat parameter buffer.

At batch 32 a step of this tiny network is mostly framework overhead, so the loop avoids autograd,
DataLoader and per-parameter optimizer bookkeeping: every parameter and gradient is a view into one
flat tensor, batches are gathered by index into buffers allocated once, and the optimizer updates the
flat tensor in a handful of in-place ops. `tests/test_train.py` checks the maths against autograd and
torch.optim.

Before the first epoch the inputs are prepared once: deskewed (infer.preprocess.deskew), an
augmentation pool built (trainer.augment), and with PCA whitening (trainer.whiten) the whole pool
projected, so that each batch is a single index_select; the whitening is folded back into the first
layer at the end, and the test set is scored by the network as saved, on pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from infer.contract import IMAGE_SIZE, PIXEL_SCALE
from infer.preprocess import deskew
from trainer.augment import build_pool
from trainer.data import MnistSplits, split_validation
from trainer.model import MLP, ModelConfig, build_model, normalise
from trainer.recipes import Recipe
from trainer.whiten import Whitening, fit_whitening, fold_whitening

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # training-set pixel statistics in [0,1]

_ACT_INPLACE = {"sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "relu": torch.relu_}


def _act_backward(name: str, grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(pre-activation) from d(loss)/d(activation) and the activation's output."""
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(grad, out)
    if name == "tanh":
        return torch.ops.aten.tanh_backward(grad, out)
    return torch.ops.aten.threshold_backward(grad, out, 0)


# A mean cross-entropy this high is no training run that will recover: a model guessing uniformly
# scores ln(10) = 2.3, and 1000 means the wrong digit wins by ~1000 logits on average (sigmoid units
# saturated for good). A too-high lr with plain SGD or Adam gets here with finite losses (1e8, 3e9).
DIVERGED_LOSS = 1e3


class TrainingDiverged(Exception):
    """The loss stopped being a finite number or exploded past DIVERGED_LOSS (or a weight is not finite):
    the learning rate is too high for the recipe.

    Carries the epoch it was noticed at (1-based), the epoch's mean loss and the recipe's (peak) lr."""

    def __init__(self, epoch: int, loss: float, lr: float, what: str):
        self.epoch, self.loss, self.lr, self.what = epoch, loss, lr, what
        super().__init__(f"training diverged: {what} at epoch {epoch} (lr {lr:g})")


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
    train_seconds: float  # the epochs' loop
    prepare_seconds: float = 0.0  # pool, deskew, whitening: everything before the first epoch
    deskew: bool = False  # the network reads deskewed digits (infer.preprocess.deskew)
    whitening: Whitening | None = None  # the PCA whitening the first layer was trained on, if any
    trained_model: MLP | None = None  # with whitening: the network as trained (reads whitened inputs)


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

    One-cycle follows torch's OneCycleLR (cosine annealing): lr warms up over pct_start of the steps
    from lr/div_factor to lr, then anneals to lr/div_factor/final_div_factor, while Adam's beta1
    cycles 0.95 -> 0.85 -> 0.95.
    """
    if recipe.schedule == "constant":
        return recipe.lr, None
    if recipe.schedule == "cosine":
        return _cos(recipe.lr, 0.0, step / total), None
    start, peak = recipe.lr / recipe.div_factor, recipe.lr
    end = start / recipe.final_div_factor
    warm = max(1.0, recipe.pct_start * total - 1)
    if step <= warm:
        return _cos(start, peak, step / warm), _cos(0.95, 0.85, step / warm)
    frac = (step - warm) / max(1.0, total - 1 - warm)
    return _cos(peak, end, frac), _cos(0.85, 0.95, frac)


def shift_table(images_u8: torch.Tensor, shift: int) -> torch.Tensor:
    """uint8 [N,28,28] -> uint8 [(2 shift + 1)^2, N, 28, 28]: every image translated by every (dy, dx).

    MNIST's background is 0, so shifting in uint8 with zero padding fills correctly.
    """
    s = IMAGE_SIZE
    moves = [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]
    padded = torch.nn.functional.pad(images_u8, (shift, shift, shift, shift))
    table = torch.empty((len(moves), *images_u8.shape), dtype=torch.uint8, device=images_u8.device)
    for k, (dy, dx) in enumerate(moves):
        table[k] = padded[:, shift - dy : shift - dy + s, shift - dx : shift - dx + s]
    return table


class PoolGather:
    """Batches drawn from V variants of each of n training images (augmented copies, shifted copies).

    The variants are one table, variant v of image i at row v n + i, so a batch in which every image
    comes from its own random variant is one index_select: of bytes, followed by a conversion and an
    affine normalisation (a uint8 table, 4x smaller), or of ready inputs (a float table, e.g. the
    whitened pool).
    """

    def __init__(self, table: torch.Tensor, n: int, seed: int, max_batch: int, scale: float = 1.0,
                 offset: float = 0.0):
        self.table, self.n, self.variants = table, n, len(table) // n
        self.generator = torch.Generator().manual_seed(seed)
        self.scale, self.offset = scale, offset
        self.raw = torch.empty(max_batch, table.shape[1], dtype=table.dtype, device=table.device)
        self.out = torch.empty(max_batch, table.shape[1], device=table.device)

    def rows(self, perm: torch.Tensor) -> torch.Tensor:
        """Table rows for an epoch's order of images, each image from its own random variant."""
        if self.variants == 1:
            return perm
        variant = torch.randint(0, self.variants, (len(perm),), generator=self.generator).to(perm.device)
        return variant.mul_(self.n).add_(perm)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        m = len(rows)
        if self.table.dtype != torch.uint8:
            return torch.index_select(self.table, 0, rows, out=self.out[:m])
        pixels = torch.index_select(self.table, 0, rows, out=self.raw[:m])
        return self.out[:m].copy_(pixels).mul_(self.scale).add_(self.offset)


@torch.no_grad()
def predict_classes(model: torch.nn.Module, images: torch.Tensor, batch: int = 10000) -> torch.Tensor:
    """Argmax predictions for already-normalised flat images."""
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, k: int) -> list[list[int]]:
    return torch.bincount(true * k + pred, minlength=k * k).reshape(k, k).tolist()


def prepare_pixels(images_u8: torch.Tensor, mean: float, std: float, device: str) -> torch.Tensor:
    """uint8 [N,28,28] or [N,784] -> normalised float32 [N,784] on the device (in place: no extra copies)."""
    pixels = images_u8.to(device).flatten(1).float()
    pixels.div_(PIXEL_SCALE)
    return normalise(pixels, mean, std, inplace=True) if (mean, std) != (0.0, 1.0) else pixels


def _model_inputs(images_u8: torch.Tensor, mean: float, std: float, device: str,
                  whitening: Whitening | None, batch: int = 16384) -> torch.Tensor:
    """uint8 [N,28,28] or [N,784] -> what the trained first layer reads: normalised pixels float32 [N,784],
    or their whitened projection float32 [N,k] (converted in batches: the pool stays uint8 until here)."""
    if whitening is None:
        return prepare_pixels(images_u8, mean, std, device)
    out = torch.empty(len(images_u8), whitening.components, device=device)
    for i in range(0, len(images_u8), batch):
        out[i : i + batch] = whitening.transform(prepare_pixels(images_u8[i : i + batch], mean, std, device))
    return out


def _deskewed(images_u8: torch.Tensor, on: bool) -> torch.Tensor:
    """The digits deskewed by infer.preprocess.deskew, the function mnist-infer applies (when `on`)."""
    return torch.from_numpy(deskew(images_u8.numpy())) if on and len(images_u8) else images_u8


def train(
    config: TrainConfig,
    data: MnistSplits,
    on_epoch: Callable[[EpochStats], None] | None = None,
    log: Callable[[str], None] | None = None,
    on_start: Callable[[], None] | None = None,
) -> TrainResult:
    """Train the configured network on MNIST; evaluate on the test set once, at the end.

    Raises ValueError for a recipe that does not fit the network or the data (e.g. more PCA
    components than inputs), TrainingDiverged at the first epoch whose loss is not finite (or
    above DIVERGED_LOSS) or whose weights are not finite. `log` receives one line per preparation step (pool, whitening); `on_start` is called
    when the preparation is done and the first epoch begins.
    """
    recipe, device = config.recipe, config.device
    log = log or (lambda msg: None)
    torch.manual_seed(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    if recipe.pca > config.model.input_size:
        raise ValueError(f"--pca {recipe.pca} is more components than the {config.model.input_size} inputs")

    t_prepare = time.perf_counter()
    mean, std = (MNIST_MEAN, MNIST_STD) if recipe.normalise else (0.0, 1.0)
    train_idx, val_idx = split_validation(len(data.train_images), config.val_size, config.seed)
    n = len(train_idx)
    y_train = data.train_labels[train_idx].to(device)
    y_val = data.train_labels[val_idx].to(device)
    # Validation and test digits go through infer's own deskew, so the recorded accuracy is exactly
    # what mnist-infer scores on the same digits.
    val_u8 = _deskewed(data.train_images[val_idx], recipe.deskew)
    if recipe.copies:
        t0 = time.perf_counter()
        pool = torch.from_numpy(build_pool(data.train_images[train_idx].numpy(), recipe, config.seed))
        log(f"augmentation pool: {n} digits + {recipe.copies} augmented {'copy' if recipe.copies == 1 else 'copies'}"
            f"{', deskewed' if recipe.deskew else ''} ({time.perf_counter() - t0:.1f}s)")
    else:
        pool = _deskewed(data.train_images[train_idx], recipe.deskew)[None]
    clean = pool[0]  # the unaugmented training digits (deskewed when the recipe deskews)
    whitening = None
    if recipe.pca:
        t0 = time.perf_counter()
        whitening = fit_whitening(prepare_pixels(clean, mean, std, "cpu"), recipe.pca, recipe.pca_eps)
        log(f"PCA whitening: {recipe.pca} components ({time.perf_counter() - t0:.1f}s)")
    n_probe = min(n, 10000)  # training accuracy is tracked on a fixed sample of clean digits, for speed
    x_probe, y_probe = _model_inputs(clean[:n_probe], mean, std, device, whitening), y_train[:n_probe]
    if recipe.shift:
        pool = shift_table(clean, recipe.shift)
    del clean
    variants = len(pool)
    table = pool.reshape(variants * n, -1).to(device)
    del pool
    if whitening is not None or variants == 1:
        gather = PoolGather(_model_inputs(table, mean, std, device, whitening), n, config.seed, recipe.batch_size)
    else:
        gather = PoolGather(table, n, config.seed, recipe.batch_size, 1.0 / (PIXEL_SCALE * std), -mean / std)
    del table
    x_val = _model_inputs(val_u8, mean, std, device, whitening)
    onehot = torch.nn.functional.one_hot(y_train, config.model.num_classes).float()
    prepare_seconds = time.perf_counter() - t_prepare

    trained_config = config.model if whitening is None else replace(config.model, input_size=whitening.components)
    model = build_model(trained_config).to(device)
    flat = FlatMLP(model, recipe.batch_size)
    opt = FlatOptimizer(recipe, flat.theta, flat.grad)
    bs = recipe.batch_size
    ybuf = torch.empty(bs, onehot.shape[1], device=device)
    total_steps = recipe.epochs * math.ceil(n / bs)
    step = 0

    history: list[EpochStats] = []
    best = (-1.0, 0, flat.theta.clone())
    if on_start:
        on_start()
    t_start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        rows = gather.rows(perm)
        loss_total = torch.zeros((), device=device)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            x = gather.gather(rows[start : start + bs])
            y = torch.index_select(onehot, 0, idx, out=ybuf[: idx.shape[0]])
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
        # A diverged run only gets worse, and its weights (NaN) would be saved as a model: stop at once.
        if not math.isfinite(stats.loss) or stats.loss > DIVERGED_LOSS:
            raise TrainingDiverged(epoch, stats.loss, recipe.lr, f"the loss is {stats.loss:.3g}")
        if not torch.isfinite(flat.theta).all():
            raise TrainingDiverged(epoch, stats.loss, recipe.lr, "the weights hold NaN or infinite values")
    train_seconds = time.perf_counter() - t_start

    # Without a validation split the last epoch is kept.
    best_epoch = recipe.epochs
    if len(x_val):
        flat.theta.copy_(best[2])
        best_epoch = best[1]
    # Hand back an ordinary module whose parameters own their memory, reading pixels.
    trained = build_model(trained_config)
    trained.load_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    trained.eval()
    final = fold_whitening(trained, whitening) if whitening is not None else trained

    # The test set (and the final validation figure) through the network as it is saved: pixels in.
    test_u8 = _deskewed(data.test_images, recipe.deskew)
    x_test, y_test = prepare_pixels(test_u8, mean, std, device), data.test_labels.to(device)
    final_dev = final.to(device)
    pred = predict_classes(final_dev, x_test)
    test_acc = (pred == y_test).float().mean().item()
    val_final = None
    if len(val_idx):
        val_final = (predict_classes(final_dev, prepare_pixels(val_u8, mean, std, device)) == y_val).float().mean().item()
    return TrainResult(
        model=final.cpu().eval(),
        mean=mean,
        std=std,
        history=history,
        best_epoch=best_epoch,
        val_accuracy=val_final,
        test_accuracy=test_acc,
        test_confusion=confusion_matrix(y_test.cpu(), pred.cpu(), config.model.num_classes),
        train_seconds=train_seconds,
        prepare_seconds=prepare_seconds,
        deskew=recipe.deskew,
        whitening=whitening,
        trained_model=trained if whitening is not None else None,
    )
