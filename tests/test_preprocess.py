"""The preprocessing steps, one at a time, on real MNIST digits and on images made to show each step."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from infer.preprocess import deskew


def _deskew_reference(image: np.ndarray) -> np.ndarray:
    """The usual scipy recipe in float64: centre of mass to (14, 14), shear rows by cov/var, bilinear."""
    img = image.astype(np.float64)
    mass, axis = img.sum(), np.arange(28.0)
    cy, cx = img.sum(1) @ axis / mass, img.sum(0) @ axis / mass
    var_y = ((axis - cy) ** 2 * img.sum(1)).sum() / mass
    cov = (np.outer(axis - cy, axis - cx) * img).sum() / mass
    matrix = np.array([[1.0, 0.0], [cov / var_y, 1.0]])
    offset = np.array([cy, cx]) - matrix @ np.array([14.0, 14.0])
    out = ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="grid-constant", cval=0.0)
    return np.clip(np.floor(out + 0.5), 0, 255)


def _slant(image: np.ndarray) -> float:
    """cov(row, col) / var(row) of an image: 0 for an upright digit."""
    img = image.astype(np.float64)
    mass, axis = img.sum(), np.arange(28.0)
    cy, cx = img.sum(1) @ axis / mass, img.sum(0) @ axis / mass
    return float((np.outer(axis - cy, axis - cx) * img).sum() / ((axis - cy) ** 2 * img.sum(1)).sum())


def test_deskew_matches_the_float_reference_on_all_test_digits(mnist):
    digits = mnist.test_images.numpy()
    straight = deskew(digits)
    assert straight.shape == digits.shape and straight.dtype == np.uint8
    worst = max(np.abs(_deskew_reference(d) - s).max() for d, s in zip(digits, straight))
    assert worst <= 1
    assert np.array_equal(deskew(digits[7]), straight[7])  # one image or a batch: the same pixels


def test_deskew_makes_slanted_digits_upright(mnist):
    digits = mnist.test_images.numpy()[:500]
    slants = np.array([_slant(d) for d in digits])
    after = np.array([_slant(d) for d in deskew(digits)])
    assert np.median(np.abs(slants)) > 0.1
    assert np.median(np.abs(after)) < 0.02
    # and the centre of mass is at (14, 14)
    img = deskew(digits[0]).astype(np.float64)
    centre = ndimage.center_of_mass(img)
    assert centre == pytest.approx((14.0, 14.0), abs=0.1)


def test_deskew_of_a_synthetic_shear_recovers_the_upright_bar():
    upright = np.zeros((28, 28), np.uint8)
    upright[6:23, 13:16] = 255  # a vertical bar, centred
    sheared = np.zeros_like(upright)
    for r in range(28):
        shift = int(round(0.4 * (r - 14)))
        sheared[r] = np.roll(upright[r], shift)
    assert abs(_slant(sheared)) > 0.3
    straight = deskew(sheared)
    assert abs(_slant(straight)) < 0.03
    assert np.abs(straight.astype(int) - upright.astype(int)).mean() < 15


def test_deskew_leaves_blank_and_upright_alone():
    blank = np.zeros((28, 28), np.uint8)
    assert not deskew(blank).any()
    upright = np.zeros((28, 28), np.uint8)
    upright[4:25, 12:17] = 200  # symmetric and centred at (14, 14): nothing to do
    assert np.array_equal(deskew(upright), upright)
