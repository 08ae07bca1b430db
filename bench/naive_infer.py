"""The naive pipeline the benchmark compares against: Pillow open + resize to 28x28, one session.run per image.

Usage: python bench/naive_infer.py MODEL.onnx FOLDER OUT.csv
"""
import csv
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def main(model: str, folder: str, out: str) -> None:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "confidence"])
        for path in paths:
            img = Image.open(path).convert("L").resize((28, 28))
            pixels = (np.asarray(img, dtype=np.float32) / 255.0).reshape(1, 1, 28, 28)
            (probs,) = session.run(["probs"], {"pixels": pixels})
            writer.writerow([path, int(probs[0].argmax()), f"{probs[0].max():.6f}"])


if __name__ == "__main__":
    main(*sys.argv[1:4])
