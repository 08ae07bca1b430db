"""Digits that are not MNIST-format, made here: scans, photos, transparent drawings, printed digits.

Used by the tests, the benchmarks and samples/make_samples.py. Every generator is seeded.
"""
from __future__ import annotations

import glob
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_GLOBS = ("/usr/share/fonts/truetype/dejavu/*.ttf", "/usr/share/fonts/**/*.ttf", "/Library/Fonts/*.ttf")


def scan_like(digit: np.ndarray, rng: np.random.Generator, size: int = 256, noise: float = 4.0) -> Image.Image:
    """An MNIST digit as a scan: black ink on off-white paper, enlarged, off-centre, noisy, grey mode."""
    scale = rng.uniform(0.35, 0.7) * size / 20
    big = Image.fromarray(digit).resize((max(8, int(28 * scale)),) * 2, Image.BICUBIC)
    ink = np.asarray(big, np.float32) / 255.0
    paper = rng.uniform(200, 250)
    ink_level = rng.uniform(0, 60)
    canvas = np.full((size, size), paper, np.float32)
    h, w = ink.shape
    top = int(rng.integers(0, max(1, size - h)))
    left = int(rng.integers(0, max(1, size - w)))
    region = canvas[top : top + h, left : left + w]
    region[:] = region * (1 - ink[: region.shape[0], : region.shape[1]]) + ink_level * ink[: region.shape[0], : region.shape[1]]
    if noise:
        canvas += rng.normal(0, noise, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "L")


def photo_like(digit: np.ndarray, rng: np.random.Generator, size: int = 320) -> Image.Image:
    """A phone photo: RGB, uneven lighting (a gradient), lower contrast, slight blur, JPEG later."""
    grey = np.asarray(scan_like(digit, rng, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 0.75 + 0.25 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    grey = grey * light
    rgb = np.stack([grey * rng.uniform(0.9, 1.0), grey * rng.uniform(0.9, 1.0), grey], axis=-1)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))


def transparent_like(digit: np.ndarray, rng: np.random.Generator, size: int = 200) -> Image.Image:
    """A drawing-app export: dark strokes on a fully transparent canvas (RGBA)."""
    grey = np.asarray(scan_like(digit, rng, size), np.float32)
    alpha = np.clip((255 - grey) * 1.4, 0, 255)
    alpha[alpha < 40] = 0
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = int(rng.integers(0, 40))
    rgba[..., 3] = alpha.astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def fonts() -> list[str]:
    found: list[str] = []
    for pattern in FONT_GLOBS:
        found += sorted(glob.glob(pattern, recursive=True))
    return [f for f in dict.fromkeys(found) if "Math" not in f]


def printed(label: int, rng: np.random.Generator, font_path: str | None, size: int = 160) -> Image.Image:
    """A digit printed in a font, black on white, at a random size and position."""
    px = int(rng.integers(size // 3, int(size * 0.8)))
    font = ImageFont.truetype(font_path, px) if font_path else ImageFont.load_default(size=px)
    img = Image.new("L", (size, size), int(rng.integers(220, 256)))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font)
    x = int(rng.integers(0, max(1, size - (right - left)))) - left
    y = int(rng.integers(0, max(1, size - (bottom - top)))) - top
    draw.text((x, y), str(label), fill=int(rng.integers(0, 50)), font=font)
    return img


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_realistic_set(out: Path, images: np.ndarray, labels: np.ndarray, per_kind: int, seed: int = 0) -> dict[str, int]:
    """Write labelled folders out/<kind>/<label>/<n>.<ext> of scans, photos, transparent PNGs and printed digits."""
    rng = np.random.default_rng(seed)
    font_list = fonts() or [None]
    counts: dict[str, int] = {}
    picks = rng.choice(len(images), size=per_kind, replace=False)
    for kind in ("scan", "photo", "transparent", "printed"):
        for n, i in enumerate(picks):
            label = int(labels[i])
            folder = out / kind / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            if kind == "scan":
                (folder / f"{n:05d}.jpg").write_bytes(jpeg(scan_like(images[i], rng), int(rng.integers(60, 95))))
            elif kind == "photo":
                (folder / f"{n:05d}.jpg").write_bytes(jpeg(photo_like(images[i], rng), int(rng.integers(70, 95))))
            elif kind == "transparent":
                transparent_like(images[i], rng).save(folder / f"{n:05d}.png")
            else:
                label = n % 10
                folder = out / kind / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                printed(label, rng, font_list[n % len(font_list)]).save(folder / f"{n:05d}.png")
        counts[kind] = per_kind
    return counts


def shifted_inverted(images: np.ndarray, n: int, seed: int = 0, max_shift: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """n MNIST digits as users' tiny PNGs look: each of `images` in turn (index i % len(images)), shifted
    by up to `max_shift` px in each direction (zeros shifted in), half of them inverted (black ink on
    white), seeded. Returns (uint8 [n,28,28], the source index of each [n])."""
    rng = np.random.default_rng(seed)
    index = np.arange(n) % len(images)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    inverted = rng.random(n) < 0.5
    out = np.zeros((n, 28, 28), np.uint8)
    m = max_shift
    padded = np.pad(images, ((0, 0), (m, m), (m, m)))
    for k, (i, (dy, dx)) in enumerate(zip(index, shifts)):
        out[k] = padded[i, m - dy : m - dy + 28, m - dx : m - dx + 28]
    out[inverted] = 255 - out[inverted]
    return out, index


def write_shifted_inverted_pngs(out: Path, images: np.ndarray, labels: np.ndarray, n: int, per_folder: int = 1000,
                                seed: int = 0) -> None:
    """`shifted_inverted` digits as PNG files, `per_folder` a folder: out/<folder>/<n>-<label>.png."""
    digits, index = shifted_inverted(images, n, seed)
    for k in range(n):
        folder = out / f"{k // per_folder:04d}"
        if k % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits[k]).save(folder / f"{k:07d}-{int(labels[index[k]])}.png")


def write_mnist_pngs(out: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST digits as PNG files in label folders, named by their test-set index."""
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.png")


if __name__ == "__main__":
    import sys

    from trainer.data import load_mnist

    data = load_mnist(os.environ.get("MNIST_DATA"), download=False)
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "realistic")
    print(write_realistic_set(target, data.test_images.numpy(), data.test_labels.numpy(), per_kind=500))
