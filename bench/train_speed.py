"""Training speed and accuracy, one process, one table.

    MNIST_DATA=../shared/data/mnist python bench/train_speed.py [--repeats 3] [--skip-seed-loop]

Rows: the seed write-up's own loop (torchvision dataset + DataLoader + autograd + torch.optim, batch 32,
20 epochs), our trainer on the seed recipe, our trainer on the default recipe, and the real
`mnist-train` command end to end (process start to model.pt + plots written). Medians of --repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.data import load_mnist  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.recipes import RECIPES  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402


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


def command_wall(data_dir: str) -> tuple[float, float]:
    """`mnist-train` as a user runs it (default recipe, plots on), process start to exit."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "trainer", "--data-dir", data_dir, "--no-download",
                               "--out", os.path.join(tmp, "model.pt"), "-q"], capture_output=True, text=True, check=True)
        return time.perf_counter() - t0, json.loads(proc.stdout)["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA", str(ROOT.parent / "shared" / "data" / "mnist")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-seed-loop", action="store_true", help="skip the slow original loop (~40 s a run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_mnist(args.data_dir, download=False)

    results: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.repeats):
        if not args.skip_seed_loop:
            results.setdefault("seed write-up's DataLoader loop (seed recipe)", []).append(seed_loop(args.data_dir, r))
        for name in ("seed", "default"):
            res = train(TrainConfig(ModelConfig(), RECIPES[name], seed=r), data)
            results.setdefault(f"mnist-train trainer, {name} recipe", []).append((res.train_seconds, res.test_accuracy))
        results.setdefault("mnist-train command, default recipe (wall, incl. start-up + plots)", []).append(
            command_wall(args.data_dir))
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)

    print(f"\nTraining on {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread; "
          f"medians of {args.repeats} runs (seeds 0..{args.repeats - 1})\n")
    print(f"| {'run':<68} | {'seconds':>8} | {'test acc':>8} | {'all runs (s)':<22} |")
    print(f"|{'-' * 70}|{'-' * 10}|{'-' * 10}|{'-' * 24}|")
    med = {}
    for name, runs in results.items():
        secs, accs = [s for s, _ in runs], [a for _, a in runs]
        med[name] = statistics.median(secs)
        print(f"| {name:<68} | {med[name]:>8.2f} | {100 * statistics.median(accs):>7.2f}% | "
              f"{', '.join(f'{s:.1f}' for s in secs):<22} |")
    loop = "seed write-up's DataLoader loop (seed recipe)"
    if loop in med:
        ratio = med[loop] / med["mnist-train trainer, seed recipe"]
        print(f"\nspeed-up on the seed recipe: {ratio:.1f}x (DataLoader loop / our trainer, same run)")


if __name__ == "__main__":
    main()
