"""The augmentation pool: the clean training digits plus augmented copies, made once before training.

Each augmented copy of a digit is its own random affine distortion (rotation, scale, x-shear,
translation about the image centre; bilinear resampling with zeros outside) and, for a fraction of
them, a stroke-thickness change first: grey dilation (thicker) or grey erosion (thinner) that makes
strokes one pixel wider or narrower (OpenCV, 2x2 square).
Users' pens are not MNIST's: the thickness changes cost nothing on the test set and make the net far
more robust to thick and thin strokes (issue 8; bench/train_speed.py measures it). When the recipe
deskews, every digit of the pool is deskewed after its augmentation with `infer.preprocess.deskew`,
the one implementation mnist-infer applies.
"""
from __future__ import annotations

import numpy as np

from infer.contract import IMAGE_SIZE
from infer.preprocess import deskew
from trainer.recipes import Recipe

CENTRE = (IMAGE_SIZE - 1) / 2  # the image centre in OpenCV's pixel-centre coordinates
# Grey dilation / erosion with a 2x2 square: strokes one pixel wider / narrower. (A 3x3 square would
# change them by two pixels, one each side: thinning that much erases many of MNIST's thin strokes,
# and training on it costs ~0.5 point of test accuracy; the 2x2 change costs nothing measurable.)
STROKE_KERNEL = np.ones((2, 2), np.uint8)
THICKER, THINNER = 1, -1


def affine_matrices(n: int, rng: np.random.Generator, *, rotate: float, scale: float, shear: float,
                    translate: float) -> np.ndarray:
    """n random forward affine maps, float64 [n,2,3] in OpenCV's (x, y) pixel coordinates.

    p' = s R(theta) H (p - c) + c + t, with H the x-shear [[1, h], [0, 1]], c the image centre,
    theta ~ U(-rotate, rotate) degrees, s ~ U(1 - scale, 1 + scale), h ~ U(-shear, shear),
    t ~ U(-translate, translate)^2 pixels.
    """
    theta = np.deg2rad(rng.uniform(-rotate, rotate, n))
    s = rng.uniform(1 - scale, 1 + scale, n)
    h = rng.uniform(-shear, shear, n)
    t = rng.uniform(-translate, translate, (n, 2))
    cos, sin = s * np.cos(theta), s * np.sin(theta)
    matrices = np.empty((n, 2, 3))
    matrices[:, 0, 0], matrices[:, 0, 1] = cos, cos * h - sin
    matrices[:, 1, 0], matrices[:, 1, 1] = sin, sin * h + cos
    matrices[:, :, 2] = CENTRE - matrices[:, :, :2] @ np.array([CENTRE, CENTRE]) + t
    return matrices


def stroke_changes(n: int, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """int8 [n]: THICKER for fraction/2 of the images, THINNER for fraction/2, 0 for the rest (at random)."""
    u = rng.random(n)
    return np.where(u < fraction / 2, THICKER, np.where(u < fraction, THINNER, 0)).astype(np.int8)


def augment(digits: np.ndarray, matrices: np.ndarray, strokes: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> uint8 [N,28,28]: each digit's stroke change, then its affine map (bilinear, zeros outside)."""
    import cv2

    out = np.empty_like(digits)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    for i, (digit, matrix, stroke) in enumerate(zip(digits, matrices, strokes)):
        if stroke == THICKER:
            digit = cv2.dilate(digit, STROKE_KERNEL)
        elif stroke == THINNER:
            digit = cv2.erode(digit, STROKE_KERNEL)
        out[i] = cv2.warpAffine(digit, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
    return out


def build_pool(images: np.ndarray, recipe: Recipe, seed: int) -> np.ndarray:
    """uint8 [N,28,28] training digits -> uint8 [1 + recipe.copies, N, 28, 28]: copy 0 the clean digits,
    then the augmented copies; every copy deskewed when the recipe deskews. Seeded: same seed, same pool."""
    rng = np.random.default_rng([seed, 0x9E3779B9])  # its own stream: the pool does not move torch's RNG
    n = len(images)
    pool = np.empty((1 + recipe.copies, *images.shape), np.uint8)
    pool[0] = deskew(images) if recipe.deskew else images
    for c in range(1, 1 + recipe.copies):
        matrices = affine_matrices(n, rng, rotate=recipe.rotate, scale=recipe.scale, shear=recipe.shear,
                                   translate=recipe.translate)
        copy = augment(images, matrices, stroke_changes(n, rng, recipe.stroke))
        pool[c] = deskew(copy) if recipe.deskew else copy
    return pool

