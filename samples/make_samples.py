"""Regenerate samples/: MNIST test digits as PNG plus scan-like and drawing-app versions, in label folders.

    MNIST_DATA=../shared/data/mnist python samples/make_samples.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.realistic import jpeg, photo_like, scan_like, transparent_like  # noqa: E402
from trainer.data import load_mnist  # noqa: E402


def main() -> None:
    data = load_mnist(os.environ.get("MNIST_DATA"), download=False)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    rng = np.random.default_rng(2026)
    for digit in range(10):
        folder = HERE / str(digit)
        folder.mkdir(exist_ok=True)
        idx = np.flatnonzero(labels == digit)[:4]
        for i in idx[:2]:
            Image.fromarray(images[i]).save(folder / f"mnist-test-{i:05d}.png")
        (folder / f"scan-{idx[2]:05d}.jpg").write_bytes(jpeg(scan_like(images[idx[2]], rng, 160), 85))
        (folder / f"photo-{idx[3]:05d}.jpg").write_bytes(jpeg(photo_like(images[idx[3]], rng, 160), 85))
        if digit % 2 == 0:
            transparent_like(images[idx[0]], rng, 120).save(folder / f"drawn-{idx[0]:05d}.png")


if __name__ == "__main__":
    main()
