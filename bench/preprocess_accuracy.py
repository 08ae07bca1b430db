"""How well the MNIST-style preprocessing reads digits that are not MNIST, one table.

    MNIST_DATA=../shared/data/mnist python bench/preprocess_accuracy.py [--per-kind 500] [--model M.onnx]

Builds (seeded, under bench/out/realistic) scans, phone photos, drawing-app PNGs with transparency and
digits printed in the machine's fonts (bench/realistic.py), then classifies each folder with the
full preprocessing and with `--preprocess none` (a plain resize), and the MNIST test PNGs for reference.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.common import OUT, ROOT  # noqa: E402


def main() -> None:
    from bench.realistic import write_mnist_pngs, write_realistic_set
    from infer.engine import Classifier
    from infer.pipeline import classify_paths
    from trainer.data import load_mnist

    parser = common.parser(__doc__)
    parser.add_argument("--per-kind", type=int, default=500)
    args = parser.parse_args()
    data = load_mnist(args.data_dir, download=False)
    target = OUT / "realistic"
    shutil.rmtree(target, ignore_errors=True)
    write_realistic_set(target, data.test_images.numpy(), data.test_labels.numpy(), args.per_kind, seed=0)
    if not (OUT / "mnist_png" / "9").exists():
        write_mnist_pngs(OUT / "mnist_png", data.test_images.numpy(), data.test_labels.numpy())
    clf = Classifier(args.model, provider="cpu")
    label_of = lambda p: Path(p).parent.name  # noqa: E731

    def accuracy(folder: Path, mode: str) -> tuple[float, int, int]:
        preds = list(classify_paths([folder], clf, mode=mode, label_of=label_of))
        ok = [p for p in preds if p.error is None]
        return sum(p.prediction == p.label for p in ok) / len(preds), len(preds), len(preds) - len(ok)

    print(f"\nModel {os.path.relpath(args.model, ROOT)}; accuracy over all images (errors count as wrong)\n")
    print(f"| {'images':<58} | {'n':>6} | {'MNIST preprocessing':>19} | {'plain resize':>12} |")
    print(f"|{'-' * 60}|{'-' * 8}|{'-' * 21}|{'-' * 14}|")
    kinds = {
        "mnist": (OUT / "mnist_png", "MNIST test digits as PNG (pass through unchanged)"),
        "scan": (target / "scan", "scans: black on off-white, enlarged, off-centre, JPEG"),
        "photo": (target / "photo", "photos: RGB, uneven light, blur, JPEG"),
        "transparent": (target / "transparent", "drawing-app PNGs: dark strokes on transparent RGBA"),
        "printed": (target / "printed", "digits printed in the machine's fonts"),
    }
    for folder, text in kinds.values():
        acc, n, errors = accuracy(folder, "mnist")
        raw, _, _ = accuracy(folder, "none")
        err = f" ({errors} errors)" if errors else ""
        print(f"| {text:<58} | {n:>6} | {100 * acc:>18.2f}%{err} | {100 * raw:>11.2f}% |")


if __name__ == "__main__":
    main()
