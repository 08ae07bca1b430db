"""mnist-train: the command-line face of the trainer (thin: parse, call the library, report)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import click

from infer.contract import TOOL_VERSION
from infer.output import escape_path
from trainer.clitext import EscapingCommand, check_named_data, say, shown
from trainer.outputs import OutputError, OutputPaths, claim_output_folder, release_output_folder
from trainer.recipes import OPTIMIZERS, RECIPES, SCHEDULES

EPILOG = """\b
Examples:
  mnist-train                                   # default recipe -> model.pt (~20 s on 2 CPU cores)
  mnist-train --recipe seed                     # the seed write-up's recipe, reproduced
  mnist-train --data-dir ../shared/data/mnist --no-download --out runs/a/model.pt
  mnist-train --hidden 32,32 --activation relu --epochs 40
  mnist-train --no-deskew --copies 0 --pca 0    # switch the default's steps off one by one
  mnist-train --recipe seed --optimizer adamw --lr 0.003 --schedule onecycle

\b
Writes beside the model, named after it (runs/a/model.pt -> runs/a/model.metrics.json):
NAME.metrics.json (everything but the weights), NAME.curves.png (loss/accuracy per
epoch), NAME.weights.png (the first layer's weights as 28x28 images),
NAME.confusion.png (test set). Data: --data-dir, else $MNIST_DATA, else the user cache
~/.cache/mnist-toolkit (downloaded there unless --no-download; a folder you name is only
read). The test set is evaluated once, at the end.
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


def _check_out(ctx, param, value: str) -> Path:
    if not value.strip():
        raise click.BadParameter("is empty: name the checkpoint file, e.g. --out model.pt")
    path = Path(value)
    if path.suffix.lower() == ".onnx":
        raise click.BadParameter(f"'{value}': mnist-train writes a PyTorch checkpoint (.pt); make the ONNX model "
                                 f"from it with mnist-export, e.g. --out {path.with_suffix('.pt')}")
    if path.suffix.lower() not in (".pt", ".pth"):
        raise click.BadParameter(f"'{value}': a checkpoint file name ends in .pt (or .pth), e.g. runs/a/model.pt")
    return path


def _pick_device(device: str) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise click.ClickException("--device cuda was asked for, but PyTorch sees no usable CUDA device")
    return "cpu"


class Progress:
    """Epoch progress on stderr: one live bar in place on a terminal (tqdm), else a compact line for
    the first and last epoch and every tenth of the run, so a log file stays short."""

    def __init__(self, epochs: int, enabled: bool, tty: bool):
        self.epochs, self.enabled, self.tty = epochs, enabled, tty
        self.every = max(1, math.ceil(epochs / 10))
        self.bar = None

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(escape_path(msg), file=sys.stderr)
        else:
            say(msg)

    def start(self) -> None:
        """The first epoch begins: on a terminal, the bar appears (and its clock starts)."""
        if self.enabled and self.tty and self.bar is None:
            from tqdm import tqdm

            # Redrawn after every epoch (they are short, and a redraw is cheap).
            self.bar = tqdm(total=self.epochs, desc="epoch", unit="epoch", file=sys.stderr, dynamic_ncols=True,
                            leave=True, mininterval=0, miniters=1)

    def epoch(self, s) -> None:
        if not self.enabled:
            return
        val = f"  val {100 * s.val_accuracy:5.2f}%" if s.val_accuracy is not None else ""
        figures = f"loss {s.loss:.4f}  train {100 * s.train_accuracy:5.2f}%{val}  lr {s.lr:.2g}"
        if self.tty:
            self.start()
            self.bar.set_postfix_str(figures, refresh=False)
            self.bar.update(1)
        elif s.epoch in (1, self.epochs) or s.epoch % self.every == 0:
            click.echo(f"epoch {s.epoch:>{len(str(self.epochs))}}/{self.epochs}  {figures}  {s.seconds:.2f}s", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command(cls=EscapingCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(TOOL_VERSION, prog_name="mnist-train")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
              help="Named recipe: 'default' (deskew, augmentation pool, PCA whitening, AdamW one-cycle), "
                   "'v1' (the first default: AdamW, 1-px shifts), 'seed' (the write-up's SGD lr 0.01, batch 32).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override the recipe's number of epochs.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override the (peak) learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override the batch size.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="Override the optimizer.")
@click.option("--weight-decay", type=click.FloatRange(min=0), help="Weight decay (AdamW: decoupled; else L2).")
@click.option("--momentum", type=click.FloatRange(min=0, max=1, max_open=True), help="SGD momentum.")
@click.option("--schedule", type=click.Choice(SCHEDULES), help="Learning-rate schedule.")
@click.option("--pct-start", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              help="One-cycle: fraction of the steps spent warming up.")
@click.option("--normalise/--no-normalise", default=None,
              help="Standardise pixels with MNIST's mean/std (folded into the exported graph).")
@click.option("--deskew/--no-deskew", default=None,
              help="Deskew digits by their image moments (recorded in the model; mnist-infer does the same).")
@click.option("--copies", type=click.IntRange(min=0, max=32),
              help="Augmentation pool: augmented copies of each training image (0: no pool).")
@click.option("--rotate", type=click.FloatRange(min=0, max=180), help="Pool: rotation, +- degrees.")
@click.option("--scale", type=click.FloatRange(min=0, max=1, max_open=True), help="Pool: scale 1 +- this.")
@click.option("--shear", type=click.FloatRange(min=0), help="Pool: x-shear factor, +- this.")
@click.option("--translate", type=click.FloatRange(min=0), help="Pool: translation, +- pixels per axis.")
@click.option("--stroke", type=click.FloatRange(min=0, max=1),
              help="Pool: fraction of augmented images with 1 px thicker or thinner strokes (0: none).")
@click.option("--pca", type=click.IntRange(min=0),
              help="Train the first layer on this many PCA-whitened components, folded back at the end (0: off).")
@click.option("--shift", type=click.IntRange(min=0, max=2),
              help="Augmentation without a pool: translate each image by up to N pixels.")
@click.option("--hidden", callback=_parse_hidden, metavar="SIZES", help="Hidden layer sizes  [default: 16,16]")
@click.option("--activation", type=click.Choice(["sigmoid", "relu", "tanh"]), default="sigmoid", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, shuffling, split, augmentation.")
@click.option("--val-size", type=click.IntRange(min=0, max=59000), default=5000, show_default=True,
              help="Training images held out for model selection (0: none: train on all 60,000, keep the last epoch).")
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Keep the epoch with the best validation accuracy, or the last.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads; one is fastest for this small network.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding MNIST/raw/ (torchvision layout); only read.  [default: $MNIST_DATA or the user cache]")
@click.option("--no-download", is_flag=True, help="Never touch the network; fail if the files are missing.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default="model.pt",
              show_default=True, callback=_check_out,
              help="Checkpoint path (.pt); NAME.metrics.json and the plots go beside it.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--no-plots", is_flag=True, help="Skip the PNG pictures.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def main(recipe, epochs, lr, batch_size, optimizer, weight_decay, momentum, schedule, pct_start, normalise, deskew,
         copies, rotate, scale, shear, translate, stroke, pca, shift, hidden, activation, seed, val_size, keep, device,
         threads, data_dir, no_download, out, force, no_plots, quiet):
    """Train the 784-16-16-10 sigmoid digit classifier on MNIST and write a self-describing model.pt."""
    missing = [m for m in ("torch", *(() if no_plots else ("matplotlib",))) if importlib.util.find_spec(m) is None]
    if missing:  # an inference-only install: say which extra brings them
        raise click.ClickException(f"mnist-train needs the 'train' extra ({', '.join(missing)} not installed): "
                                   "pip install 'mnist-toolkit[train]'")
    t_wall = time.perf_counter()
    paths = OutputPaths.beside(out, plots=not no_plots)
    existing = [str(p) for p in paths.all() if p.exists()]
    if existing and not force:
        raise click.UsageError(f"{', '.join(existing)} already exist(s); use --force to overwrite")

    from trainer.model import ModelConfig

    try:
        chosen = RECIPES[recipe].with_overrides(
            epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
            momentum=momentum, schedule=schedule, pct_start=pct_start, normalise=normalise, deskew=deskew,
            copies=copies, rotate=rotate, scale=scale, shear=shear, translate=translate, stroke=stroke, pca=pca,
            shift=shift,
        )
        model_config = ModelConfig(hidden=hidden or (16, 16), activation=activation)
        if chosen.pca > model_config.input_size:
            raise ValueError(f"--pca {chosen.pca} is more components than the {model_config.input_size} inputs")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from trainer.data import ENV_VAR, cache_dir

    check_named_data(data_dir, fix=f"leave out --data-dir and ${ENV_VAR} to download MNIST into the user cache "
                                   f"{cache_dir()}")
    # The destination is checked (and its folder made) before any training, so no run is lost to it.
    try:
        created = claim_output_folder(out)
    except OutputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--out'") from None
    try:
        _run(chosen, model_config, paths, created, seed=seed, val_size=val_size, keep=keep, device=device,
             threads=threads, data_dir=data_dir, no_download=no_download, quiet=quiet, t_wall=t_wall)
    except BaseException:
        release_output_folder(created)  # nothing was written: leave no empty folders behind
        raise


def _run(chosen, model_config, paths: OutputPaths, created, *, seed, val_size, keep, device, threads, data_dir,
         no_download, quiet, t_wall) -> None:
    import torch

    from trainer.checkpoint import checkpoint_dict, file_sha256, history_dicts, save_checkpoint
    from trainer.data import DataError, load_mnist
    from trainer.train import TrainConfig, TrainingDiverged, train

    torch.set_num_threads(threads)
    dev = _pick_device(device)
    progress = Progress(chosen.epochs, enabled=not quiet, tty=sys.stderr.isatty())
    try:
        data = load_mnist(data_dir, download=not no_download)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    config = TrainConfig(model=model_config, recipe=chosen, seed=seed, val_size=val_size, device=dev, keep=keep)
    steps = [s for s, on in (("deskew", chosen.deskew), (f"{chosen.copies} augmented {'copy' if chosen.copies == 1 else 'copies'}", chosen.copies),
                             (f"PCA {chosen.pca}", chosen.pca), (f"shift {chosen.shift}", chosen.shift)) if on]
    progress.log(f"training {'-'.join(map(str, model_config.sizes))} {model_config.activation} with recipe "
                 f"{chosen.name} ({chosen.optimizer} lr {chosen.lr} batch {chosen.batch_size}, {chosen.epochs} epochs"
                 f"{'; ' + ', '.join(steps) if steps else ''}) on {dev}, seed {seed}"
                 f"{'' if val_size else '; no validation split: keeping the last epoch'}")
    try:
        result = train(config, data, on_epoch=progress.epoch, log=progress.log, on_start=progress.start)
    except KeyboardInterrupt:
        progress.close()
        click.echo("interrupted: nothing was written", err=True)
        sys.exit(130)
    except TrainingDiverged as exc:
        progress.close()
        raise click.ClickException(f"{exc}: lower --lr; nothing was written") from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        progress.close()

    history = history_dicts(result.history)
    metrics = {
        "test_accuracy": result.test_accuracy,
        "val_accuracy": result.val_accuracy,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "prepare_seconds": result.prepare_seconds,
        "final_loss": history[-1]["loss"],
        "test_confusion": result.test_confusion,
    }
    data_info = {
        "fingerprint": data.fingerprint,
        "train_size": len(data.train_images) - val_size,
        "val_size": val_size,
        "test_size": len(data.test_images),
    }
    training = {"seed": seed, "device": dev, "threads": threads, "keep": keep if val_size else "last"}
    ckpt = checkpoint_dict(
        result.model, mean=result.mean, std=result.std, recipe=chosen.to_dict(), training=training,
        history=history, metrics=metrics, data=data_info, deskew=result.deskew,
    )
    out = paths.model
    try:
        save_checkpoint(ckpt, out)
        # The side files say which model they describe: its file name (beside them) and sha256.
        describes = {"file": escape_path(out.name), "sha256": file_sha256(out)}
        paths.write_summary({"model": describes, **{k: v for k, v in ckpt.items() if k != "state_dict"}})
        if paths.curves is not None:
            from trainer.plots import plot_confusion, plot_curves, plot_first_layer

            # Titles and PNG text are text: a name with undecodable bytes is shown as mnist-infer prints it.
            name = escape_path(out.name)
            plot_curves(history, paths.curves, model_name=name)
            plot_first_layer(result.model.layers[0].weight.detach().numpy(), paths.weights, model_name=name)
            plot_confusion(result.test_confusion, paths.confusion,
                           f"{name}: test set, {100 * result.test_accuracy:.2f}% correct", model_name=name)
    except KeyboardInterrupt:
        for p in paths.all():
            p.unlink(missing_ok=True)
        click.echo("interrupted while writing: no partial file was left", err=True)
        sys.exit(130)
    val = f"val {100 * result.val_accuracy:.2f}% (epoch {result.best_epoch}), " if result.val_accuracy is not None else ""
    progress.log(f"{val}test {100 * result.test_accuracy:.2f}%; prepared in {result.prepare_seconds:.1f}s, "
                 f"trained in {result.train_seconds:.1f}s, {time.perf_counter() - t_wall:.1f}s in all; "
                 f"wrote {', '.join(str(p) for p in paths.all())}")
    click.echo(json.dumps({"model": shown(out), "metrics": shown(paths.summary),
                           "test_accuracy": round(result.test_accuracy, 4)}))
