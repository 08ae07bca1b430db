"""BASELINE ONLY: the preprocessing as it was before the real-world pipeline (commit 69a9666), frozen.

bench/real_world.py compares the new `infer.preprocess.prepare` against this copy ("today's
preprocessing" in issue #9's table). Nothing else may import it; it is not maintained.
Copied verbatim from infer/preprocess.py at 69a9666 (`is_mnist_format` to `to_mnist`).
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from infer.contract import DIGIT_BOX, IMAGE_SIZE
from infer.preprocess import ImageError

MIN_HAZE_CUT = 0.15


_AXIS = np.arange(IMAGE_SIZE, dtype=np.float64)


def is_mnist_format(grey: np.ndarray) -> bool:
    """Already MNIST's layout: 28x28, mostly black, ink within 20x20, centre of mass at the centre (+-0.5)."""
    if grey.shape != (IMAGE_SIZE, IMAGE_SIZE) or np.count_nonzero(grey) > grey.size // 2:
        return False
    row_mass = np.add.reduce(grey, axis=1, dtype=np.int64)
    col_mass = np.add.reduce(grey, axis=0, dtype=np.int64)
    rows, cols = np.flatnonzero(row_mass), np.flatnonzero(col_mass)
    if not len(rows) or rows[-1] - rows[0] >= DIGIT_BOX or cols[-1] - cols[0] >= DIGIT_BOX:
        return False
    total = float(row_mass.sum())
    cy, cx = float(row_mass @ _AXIS) / total, float(col_mass @ _AXIS) / total
    return abs(cy - IMAGE_SIZE / 2) <= 0.51 and abs(cx - IMAGE_SIZE / 2) <= 0.51


@functools.lru_cache(maxsize=64)
def _border_design(h: int, w: int) -> np.ndarray:
    """Rows [1, y/h, x/w] for the border pixels, in the order _border() lists them."""
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1.0), np.arange(1, h - 1.0), np.arange(1, h - 1.0)]) / h
    xs = np.concatenate([np.arange(w, dtype=float), np.arange(w, dtype=float), np.zeros(h - 2), np.full(h - 2, w - 1.0)]) / w
    return np.stack([np.ones_like(ys), ys, xs], axis=1)


def _paper(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's level everywhere, a plane a + b*y + c*x fitted to the border (uneven lighting),
    and the paper's noise (robust sigma of the border around that plane)."""
    h, w = grey.shape
    design = _border_design(h, w)
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]]).astype(np.float64)
    # Least squares twice (normal equations, 3x3): the second fit ignores border pixels far from
    # the first, such as ink touching the edge.
    keep = np.ones(len(border), bool)
    for _ in range(2):
        d = design[keep]
        coef = np.linalg.solve(d.T @ d + 1e-9 * np.eye(3), d.T @ border[keep])
        resid = np.abs(design @ coef - border)
        q75 = np.partition(resid, (3 * len(resid)) // 4)[(3 * len(resid)) // 4]
        keep = resid <= max(8.0, 2 * q75)
    kept = resid[keep]
    noise = 1.4826 * float(np.partition(kept, len(kept) // 2)[len(kept) // 2]) if len(kept) else 0.0
    plane = (coef[0] + (coef[1] / h) * np.arange(h, dtype=np.float32)[:, None]
             + (coef[2] / w) * np.arange(w, dtype=np.float32))
    return plane.astype(np.float32), noise


def _mass_bounds(mass: np.ndarray, cut: float = 0.002) -> tuple[int, int]:
    """First and last index holding the central (1 - 2*cut) of the mass: stray specks fall outside."""
    cum = np.cumsum(mass)
    lo, hi = np.searchsorted(cum, [cut * cum[-1], (1 - cut) * cum[-1]])
    return int(lo), int(hi)


def _flat_paper(grey: np.ndarray) -> tuple[float, float] | None:
    """(level, noise) of an evenly lit page, from its border; None when the border varies (a photo)."""
    border = np.sort(np.concatenate((grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1])))
    n = len(border)
    q10, q25, q50, q75, q90 = border[[n // 10, n // 4, n // 2, 3 * n // 4, 9 * n // 10]].astype(float)
    if q90 - q10 > 24:
        return None
    return q50, (q75 - q25) / 1.349


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """A uint8 grey image of a single digit, any size and polarity -> uint8 [28,28] in MNIST's layout."""
    if is_mnist_format(grey):
        return grey
    if min(grey.shape) < 3:
        raise ImageError(f"image is {grey.shape[1]}x{grey.shape[0]} pixels: too small to hold a digit")
    flat_paper = _flat_paper(grey)
    paper, noise = flat_paper if flat_paper is not None else _paper(grey)
    residual = grey.astype(np.float32)
    residual -= paper
    flat = residual.ravel()
    k = max(1, flat.size // 4000)  # the k-th most extreme pixel: a few hot pixels do not decide
    darkest, brightest = np.partition(flat, [k - 1, flat.size - k])[[k - 1, flat.size - k]]
    # Ink polarity: whichever departs further from the paper is the ink (dark ink on light paper is
    # made white-on-black, as MNIST is).
    dark_ink = -darkest > brightest
    peak = float(-darkest if dark_ink else brightest)
    if peak < 16:  # a blank page: nothing to classify
        raise ImageError("no ink found: the image is blank or has no contrast")
    # Stretch the ink to full scale and cut the haze: what the paper's own noise could explain, and
    # at least MIN_HAZE_CUT of the contrast (faint boxes, shadows and ringing around the digit).
    cut = min(0.5, max(MIN_HAZE_CUT, 3.0 * noise / peak))
    gain = 255.0 / (peak * (1 - cut))
    ink = np.clip(residual, None, -cut * peak) if dark_ink else np.clip(residual, cut * peak, None)
    ink -= -cut * peak if dark_ink else cut * peak
    ink *= -gain if dark_ink else gain
    np.minimum(ink, 255.0, out=ink)
    r0, r1 = _mass_bounds(ink.sum(axis=1))
    c0, c1 = _mass_bounds(ink.sum(axis=0))
    crop = ink[r0 : r1 + 1, c0 : c1 + 1]
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    box = Image.fromarray(crop.astype(np.uint8), mode="L")
    digit = np.asarray(box.resize((new_w, new_h), Image.LANCZOS if scale < 1 else Image.BILINEAR))
    row_mass, col_mass = digit.sum(axis=1, dtype=np.float64), digit.sum(axis=0, dtype=np.float64)
    total = row_mass.sum()
    cy, cx = (row_mass @ np.arange(new_h)) / total, (col_mass @ np.arange(new_w)) / total
    top = min(max(int(round(IMAGE_SIZE / 2 - cy)), 0), IMAGE_SIZE - new_h)  # keep the whole digit in frame
    left = min(max(int(round(IMAGE_SIZE / 2 - cx)), 0), IMAGE_SIZE - new_w)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    out[top : top + new_h, left : left + new_w] = digit
    return out


