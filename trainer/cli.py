"""mnist-train: the command-line face of the trainer (thin: parse, call the library, report)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import click

from infer.atomic import atomic_path
from infer.contract import TOOL_VERSION
from trainer.recipes import OPTIMIZERS, RECIPES, SCHEDULES

EPILOG = """\b
Examples:
  mnist-train                                   # default recipe -> model.pt (~25 s on 2 CPU cores)
  mnist-train --recipe seed                     # the seed write-up's recipe, reproduced
  mnist-train --data-dir ../shared/data/mnist --no-download --out runs/a/model.pt
  mnist-train --hidden 32,32 --activation relu --epochs 40
  mnist-train --recipe seed --optimizer adamw --lr 0.003 --schedule onecycle

\b
Writes beside the model: metrics.json, curves.png (loss/accuracy per epoch),
weights.png (the first layer's weights as 28x28 images), confusion.png (test set).
Data: --data-dir, else $MNIST_DATA, else ~/.cache/mnist-toolkit (downloaded by
torchvision unless --no-download). The test set is evaluated once, at the end.
"""


def _parse_hidden(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer sizes, e.g. 16,16") from None
    if not sizes or any(s <= 0 or s > 65536 for s in sizes):
        raise click.BadParameter(f"{value!r}: each layer size must be between 1 and 65536")
    return sizes


def _pick_device(device: str) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise click.ClickException("--device cuda was asked for, but PyTorch sees no usable CUDA device")
    return "cpu"


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(TOOL_VERSION, prog_name="mnist-train")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
              help="Named recipe; 'seed' is the write-up's SGD lr 0.01, batch 32, 20 epochs.")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's number of epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the (peak) learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the batch size.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Override the optimizer.")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay (AdamW: decoupled; else L2).")
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), help="SGD momentum.")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="Learning-rate schedule.")
@click.option("--normalise/--no-normalise", default=None,
              help="Standardise pixels with MNIST's mean/std (folded into the exported graph).")
@click.option("--shift", type=click.IntRange(min=0, max=2),
              help="Augmentation: translate each image by up to N pixels.")
@click.option("--hidden", callback=_parse_hidden, metavar="SIZES", help="Hidden layer sizes  [default: 16,16]")
@click.option("--activation", type=click.Choice(["sigmoid", "relu", "tanh"]), default="sigmoid", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, shuffling, split, augmentation.")
@click.option("--val-size", type=click.IntRange(min=0, max=59000), default=5000, show_default=True,
              help="Training images held out for model selection (0: none).")
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Keep the epoch with the best validation accuracy, or the last.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads; one is fastest for this small network.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding MNIST/raw/ (torchvision layout).  [default: $MNIST_DATA or the user cache]")
@click.option("--no-download", is_flag=True, help="Never touch the network; fail if the files are missing.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=Path("model.pt"),
              show_default=True, help="Checkpoint path; metrics.json and the plots go beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG pictures.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def main(recipe, epochs, lr, batch_size, optimizer, weight_decay, momentum, schedule, normalise, shift, hidden,
         activation, seed, val_size, keep, device, threads, data_dir, no_download, out, force, no_plots, quiet):
    """Train the 784-16-16-10 sigmoid digit classifier on MNIST and write a self-describing model.pt."""
    missing = [m for m in ("torch", *(() if no_plots else ("matplotlib",))) if importlib.util.find_spec(m) is None]
    if missing:  # an inference-only install: say which extra brings them
        raise click.ClickException(f"mnist-train needs the 'train' extra ({', '.join(missing)} not installed): "
                                   "pip install 'mnist-toolkit[train]'")
    t_wall = time.perf_counter()
    outputs = [out, out.with_name("metrics.json")]
    if not no_plots:
        outputs += [out.with_name(n) for n in ("curves.png", "weights.png", "confusion.png")]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not force:
        raise click.UsageError(f"{', '.join(existing)} already exist(s); use --force to overwrite")

    from trainer.model import ModelConfig

    try:
        chosen = RECIPES[recipe].with_overrides(
            epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
            momentum=momentum, schedule=schedule, normalise=normalise, shift=shift,
        )
        model_config = ModelConfig(hidden=hidden or (16, 16), activation=activation)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    import torch

    from trainer.checkpoint import checkpoint_dict, history_dicts, save_checkpoint
    from trainer.data import DataError, load_mnist
    from trainer.train import TrainConfig, train

    torch.set_num_threads(threads)
    dev = _pick_device(device)
    log = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    tty = sys.stderr.isatty()
    try:
        data = load_mnist(data_dir, download=not no_download)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    config = TrainConfig(model=model_config, recipe=chosen, seed=seed, val_size=val_size, device=dev, keep=keep)
    log(f"training {'-'.join(map(str, model_config.sizes))} {activation} with recipe {chosen.name} "
        f"({chosen.optimizer} lr {chosen.lr} batch {chosen.batch_size}, {chosen.epochs} epochs) on {dev}, seed {seed}")

    def on_epoch(s):
        val = f"  val {100 * s.val_accuracy:5.2f}%" if s.val_accuracy is not None else ""
        bar = f" {_bar(s.epoch, chosen.epochs)}" if tty else ""
        log(f"epoch {s.epoch:>{len(str(chosen.epochs))}}/{chosen.epochs}{bar}  loss {s.loss:.4f}  "
            f"train {100 * s.train_accuracy:5.2f}%{val}  lr {s.lr:.2g}  {s.seconds:.2f}s")

    try:
        result = train(config, data, on_epoch=on_epoch)
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    history = history_dicts(result.history)
    metrics = {
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "final_loss": history[-1]["loss"],
        "test_confusion": result.test_confusion,
    }
    data_info = {
        "fingerprint": data.fingerprint,
        "train_size": len(data.train_images) - val_size,
        "val_size": val_size,
        "test_size": len(data.test_images),
    }
    training = {"seed": seed, "device": dev, "threads": threads, "keep": keep}
    ckpt = checkpoint_dict(
        result.model, mean=result.mean, std=result.std, recipe=chosen.to_dict(), training=training,
        history=history, metrics=metrics, data=data_info,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in ckpt.items() if k != "state_dict"}
    try:
        save_checkpoint(ckpt, out)
        with atomic_path(out.with_name("metrics.json")) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        if not no_plots:
            from trainer.plots import plot_confusion, plot_curves, plot_first_layer

            plot_curves(history, out.with_name("curves.png"))
            plot_first_layer(result.model.layers[0].weight.detach().numpy(), out.with_name("weights.png"))
            plot_confusion(result.test_confusion, out.with_name("confusion.png"),
                           f"Test set, {100 * result.test_accuracy:.2f}% correct")
    except KeyboardInterrupt:
        click.echo("interrupted while writing: no partial file was left", err=True)
        sys.exit(130)
    val = f"val {100 * result.val_accuracy:.2f}% (epoch {result.best_epoch}), " if result.val_accuracy else ""
    log(f"{val}test {100 * result.test_accuracy:.2f}%; trained in {result.train_seconds:.1f}s, "
        f"{time.perf_counter() - t_wall:.1f}s in all; wrote {out}")
    click.echo(json.dumps({"model": os.fspath(out), "test_accuracy": round(result.test_accuracy, 4)}))
