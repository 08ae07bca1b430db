"""Training speed, accuracy and robustness, one process, one table.

    MNIST_DATA=../shared/data/mnist python bench/train_speed.py [--repeats 3] [--skip-seed-loop]

Rows: the seed write-up's own loop (torchvision dataset + DataLoader + autograd + torch.optim, batch 32,
20 epochs), our trainer on the seed recipe, on the first default (v1) and on the default recipe, and
the real `mnist-train` command end to end (process start to model.pt + plots written). Seeds
0..repeats-1; medians, and every run's figures.

Columns: seconds spent before the first epoch (deskew, augmentation pool, whitening), in the epochs,
and both (for the command: its wall time, process start to exit); test accuracy (10,000 digits); and robustness, the accuracy on 2,000 test digits (a fixed random
sample) changed the way users' digits differ from MNIST's: rotated by a random angle in +-15 degrees,
strokes 1 px thicker / thinner (grey dilation / erosion, 2x2 square) and 2 px thicker / thinner (3x3
square: one pixel on each side). Each changed digit then goes through the model's own preprocessing
(infer.preprocess.deskew for a model that deskews), as in mnist-infer.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infer.preprocess import deskew  # noqa: E402
from trainer.data import load_mnist  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.recipes import RECIPES  # noqa: E402
from trainer.train import TrainConfig, prepare_pixels, train  # noqa: E402

ROBUSTNESS_SAMPLE = 2000
CHANGES = ("rot ±15°", "+1 px", "-1 px", "+2 px", "-2 px")


def seed_loop(data_dir: str, seed: int) -> tuple[float, float]:
    """The seed write-up's training loop, as it was written: per-sample Dataset, DataLoader, autograd."""
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    tf = transforms.ToTensor()  # pixels in [0,1], no normalisation
    train_set = datasets.MNIST(data_dir, train=True, download=False, transform=tf)
    test_set = datasets.MNIST(data_dir, train=False, download=False, transform=tf)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Sigmoid(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(20):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(test_set, batch_size=1000))
    return seconds, correct / len(test_set)


def changed_digits(digits: np.ndarray) -> dict[str, np.ndarray]:
    """The robustness sets: uint8 [N,28,28] test digits, each changed one way (OpenCV)."""
    rng = np.random.default_rng(1)
    centre = (13.5, 13.5)
    rotated = np.stack([cv2.warpAffine(d, cv2.getRotationMatrix2D(centre, float(a), 1.0), (28, 28),
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                        for d, a in zip(digits, rng.uniform(-15, 15, len(digits)))])
    k2, k3 = np.ones((2, 2), np.uint8), np.ones((3, 3), np.uint8)
    return {
        "rot ±15°": rotated,
        "+1 px": np.stack([cv2.dilate(d, k2) for d in digits]),
        "-1 px": np.stack([cv2.erode(d, k2) for d in digits]),
        "+2 px": np.stack([cv2.dilate(d, k3) for d in digits]),
        "-2 px": np.stack([cv2.erode(d, k3) for d in digits]),
    }


def robustness(result, changed: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """Accuracy of a trained model on each changed set, through the model's own preprocessing."""
    scores = {}
    for name, digits in changed.items():
        digits = deskew(digits) if result.deskew else digits
        pixels = prepare_pixels(torch.from_numpy(digits), result.mean, result.std, "cpu")
        with torch.no_grad():
            scores[name] = float((result.model(pixels).argmax(1).numpy() == labels).mean())
    return scores


def command_wall(data_dir: str) -> tuple[float, float]:
    """`mnist-train` as a user runs it (default recipe, plots on), process start to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "trainer", "--data-dir", data_dir, "--no-download",
                               "--out", os.path.join(tmp, "model.pt"), "-q"], capture_output=True, text=True, check=True)
        return time.perf_counter() - t0, json.loads(proc.stdout)["test_accuracy"]


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA", str(ROOT.parent / "shared" / "data" / "mnist")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-seed-loop", action="store_true", help="skip the slow original loop (~40-120 s a run)")
    parser.add_argument("--skip-command", action="store_true", help="skip the end-to-end mnist-train runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(args.data_dir, download=False)
    sample = np.random.default_rng(0).choice(len(data.test_images), ROBUSTNESS_SAMPLE, replace=False)
    labels = data.test_labels.numpy()[sample]
    changed = changed_digits(data.test_images.numpy()[sample])

    # name -> runs of {"prep": s, "train": s, "total": s, "acc": test accuracy, change: accuracy}
    results: dict[str, list[dict]] = {}
    for r in range(args.repeats):
        if not args.skip_seed_loop:
            seconds, acc = seed_loop(args.data_dir, r)
            results.setdefault("seed write-up's DataLoader loop (seed recipe)", []).append(
                {"train": seconds, "total": seconds, "acc": acc})
        for name in ("seed", "v1", "default"):
            res = train(TrainConfig(ModelConfig(), RECIPES[name], seed=r), data)
            row = {"prep": res.prepare_seconds, "train": res.train_seconds,
                   "total": res.prepare_seconds + res.train_seconds, "acc": res.test_accuracy,
                   **robustness(res, changed, labels)}
            results.setdefault(f"mnist-train trainer, {name} recipe", []).append(row)
        if not args.skip_command:
            seconds, acc = command_wall(args.data_dir)
            results.setdefault("mnist-train command, default recipe (wall, start-up + plots)", []).append(
                {"total": seconds, "acc": acc})
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    print(f"\nTraining on {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread; medians of "
          f"{args.repeats} runs (seeds 0..{args.repeats - 1}); robustness on {ROBUSTNESS_SAMPLE} test digits\n")
    cols = ["prep s", "train s", "total s", "test acc", *CHANGES]
    print(f"| {'run':<62} | " + " | ".join(f"{c:>8}" for c in cols) + f" | {'all runs: test % (total s)':<40} |")
    print(f"|{'-' * 64}|" + "|".join("-" * 10 for _ in cols) + f"|{'-' * 42}|")
    for name, runs in results.items():
        cells = []
        for key in ("prep", "train", "total", "acc", *CHANGES):
            value = _median([run.get(key) for run in runs])
            cells.append("-" if value is None else f"{value:.2f}" if key in ("prep", "train", "total") else
                         f"{100 * value:.2f}%")
        every = ", ".join(f"{100 * run['acc']:.2f} ({run['total']:.1f})" for run in runs)
        print(f"| {name:<62} | " + " | ".join(f"{c:>8}" for c in cells) + f" | {every:<40} |")
    loop = "seed write-up's DataLoader loop (seed recipe)"
    if loop in results:
        ratio = _median([r["train"] for r in results[loop]]) / _median(
            [r["train"] for r in results["mnist-train trainer, seed recipe"]])
        print(f"\nspeed-up on the seed recipe: {ratio:.1f}x (DataLoader loop / our trainer, same run)")


if __name__ == "__main__":
    main()
