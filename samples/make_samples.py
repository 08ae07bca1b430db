"""Regenerate samples/: MNIST test digits as PNG plus scan-like and drawing-app versions, in label folders.

    MNIST_DATA=../shared/data/mnist python samples/make_samples.py

A drawing-app version keeps the digit's shape only if the shipped model reads that shape right when it
is laid out as MNIST (its strokes, alpha > 0.5, through bench.real_world_kinds.ideal_mnist); otherwise
the next test digit of the class is drawn instead (the generator's alpha cut can break a thin stroke). Each drawing
draws the same random numbers, so the other files do not change.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.real_world_kinds import ideal_mnist  # noqa: E402
from bench.realistic import jpeg, photo_like, scan_like, transparent_like  # noqa: E402
from infer.engine import Classifier  # noqa: E402
from trainer.data import load_mnist  # noqa: E402


def main() -> None:
    data = load_mnist(os.environ.get("MNIST_DATA"), download=False)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    rng = np.random.default_rng(2026)
    clf = Classifier(HERE.parent / "infer" / "models" / "default.onnx", provider="cpu")
    for digit in range(10):
        folder = HERE / str(digit)
        folder.mkdir(exist_ok=True)
        idx = np.flatnonzero(labels == digit)[:4]
        for i in idx[:2]:
            Image.fromarray(images[i]).save(folder / f"mnist-test-{i:05d}.png")
        (folder / f"scan-{idx[2]:05d}.jpg").write_bytes(jpeg(scan_like(images[idx[2]], rng, 160), 85))
        (folder / f"photo-{idx[3]:05d}.jpg").write_bytes(jpeg(photo_like(images[idx[3]], rng, 160), 85))
        if digit % 2 == 0:
            state = rng.bit_generator.state
            for i in np.flatnonzero(labels == digit):
                rng.bit_generator.state = state
                drawn = transparent_like(images[i], rng, 120)
                alpha = np.asarray(drawn)[..., 3] / 255.0
                shape = ideal_mnist(np.where(alpha > 0.5, alpha, 0.0))  # the strokes, not the faint speckle
                if int(clf.predict(shape[None] / np.float32(255)).argmax()) == digit:
                    break
            for old in folder.glob("drawn-*.png"):
                old.unlink()
            drawn.save(folder / f"drawn-{i:05d}.png")


if __name__ == "__main__":
    main()
