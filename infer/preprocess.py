"""Image -> MNIST-format model input: the one implementation, shared by infer, the exporter and the tests.

MNIST digits are white ink on black, the digit fitted in a 20x20 box keeping its aspect ratio, then
placed in 28x28 so that its centre of mass is at the centre. Real images are black ink on white
paper, any size, off-centre, in any mode. `to_mnist` makes the one look like the other:

    decode (JPEG at reduced scale) -> EXIF orientation -> grey (alpha composited, 16-bit scaled)
    -> ink polarity (the border is the paper) -> background removed and contrast stretched
    -> crop to the ink -> fit in 20x20 -> centre by mass in 28x28

An image that already is MNIST-format (28x28, black border, digit within 20x20, centred by mass)
passes through unchanged, so MNIST's own digits score exactly what the test set scores.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from infer.contract import DIGIT_BOX, IMAGE_SIZE, PIXEL_SCALE

MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
MAX_FILE_BYTES = 256 * 1024 * 1024
MIN_HAZE_CUT = 0.15  # ink below this fraction of the contrast is haze (paper texture, JPEG ringing)
DRAFT_SIZE = 4 * IMAGE_SIZE  # JPEGs are decoded at the smallest 1/2^k scale that keeps this many pixels
MODES = ("mnist", "none")

EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """This file cannot be turned into a digit (unreadable, not an image, too large, blank...)."""


def to_model_input(images_u8: np.ndarray) -> np.ndarray:
    """MNIST-format uint8 images [N,28,28] -> float32 model input [N,1,28,28] in [0,1]."""
    images_u8 = np.asarray(images_u8)
    return (images_u8.astype(np.float32) / np.float32(PIXEL_SCALE)).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


def _grey(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 grey array; transparency composited so the ink stays visible."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("LA"), dtype=np.float32)
        grey, alpha = rgba[..., 0], rgba[..., 1] / 255.0
        if alpha.min() < 1.0:
            # Strokes drawn on a transparent canvas: put them on the background that contrasts with them.
            weight = alpha.sum()
            ink_level = (grey * alpha).sum() / weight if weight else 0.0
            background = 0.0 if ink_level > 127 else 255.0
            grey = grey * alpha + background * (1.0 - alpha)
        return np.clip(grey + 0.5, 0, 255).astype(np.uint8)
    return np.asarray(im.convert("L"))


def read_grey(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Decode an image file to a uint8 grey array, refusing bombs before decoding."""
    try:
        # Image.open reads the header only: the size is checked before a single pixel is decoded.
        with Image.open(source) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the {MAX_PIXELS} limit; not decoded")
            if w == 0 or h == 0:
                raise ImageError("image has no pixels")
            if im.format == "JPEG" and mode == "mnist":
                im.draft("L", (DRAFT_SIZE, DRAFT_SIZE))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: far less work
            if im.format != "PNG" or "exif" in im.info:  # PNGs rarely carry EXIF; reading it costs ~10%
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                if orientation != 1:
                    im = ImageOps.exif_transpose(im)
            im.load()
            return _grey(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        raise ImageError("no such file (removed while running?)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error()) as exc:
        text = str(exc) or type(exc).__name__
        raise ImageError(f"cannot decode: {text}") from None


def struct_error():
    import struct

    return struct.error


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


def _centre_of_mass(ink: np.ndarray) -> tuple[float, float]:
    total = float(ink.sum())
    ys, xs = np.arange(ink.shape[0], dtype=np.float32), np.arange(ink.shape[1], dtype=np.float32)
    return float(ink.sum(axis=1) @ ys) / total, float(ink.sum(axis=0) @ xs) / total


def _paper(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's level everywhere, a plane a + b*y + c*x fitted to the border (uneven lighting),
    and the paper's noise (robust sigma of the border around that plane)."""
    h, w = grey.shape
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(1, h - 1), np.arange(1, h - 1)])
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h - 2), np.full(h - 2, w - 1)])
    border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]]).astype(np.float64)
    # Fit twice: the second fit ignores border pixels far from the first (ink touching the edge).
    design = np.stack([np.ones_like(ys), ys / h, xs / w], axis=1)
    keep = np.ones(len(border), bool)
    for _ in range(2):
        coef = np.linalg.lstsq(design[keep], border[keep], rcond=None)[0]
        resid = np.abs(design @ coef - border)
        keep = resid <= max(8.0, float(np.percentile(resid, 75)) * 2)
    yy, xx = np.mgrid[0:h, 0:w]
    noise = 1.4826 * float(np.median(resid[keep]))
    return (coef[0] + coef[1] * yy / h + coef[2] * xx / w).astype(np.float32), noise


def _mass_bounds(mass: np.ndarray, cut: float = 0.002) -> tuple[int, int]:
    """First and last index holding the central (1 - 2*cut) of the mass: stray specks fall outside."""
    cum = np.cumsum(mass) / mass.sum()
    return int(np.searchsorted(cum, cut)), int(np.searchsorted(cum, 1 - cut))


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """A uint8 grey image of a single digit, any size and polarity -> uint8 [28,28] in MNIST's layout."""
    if is_mnist_format(grey):
        return grey
    if min(grey.shape) < 3:
        raise ImageError(f"image is {grey.shape[1]}x{grey.shape[0]} pixels: too small to hold a digit")
    paper, noise = _paper(grey)
    residual = grey.astype(np.float32) - paper
    flat = residual.ravel()
    k = max(1, flat.size // 4000)  # the k-th most extreme pixel: a few hot pixels do not decide
    darkest, brightest = np.partition(flat, [k - 1, flat.size - k])[[k - 1, flat.size - k]]
    # Ink polarity: whichever departs further from the paper is the ink (dark ink on light paper is
    # made white-on-black, as MNIST is).
    ink = np.clip(-residual if -darkest > brightest else residual, 0, None)
    peak = float(max(-darkest, brightest))
    if peak < 16:  # a blank page: nothing to classify
        raise ImageError("no ink found: the image is blank or has no contrast")
    # Stretch the ink to full scale and cut the haze: what the paper's own noise could explain,
    # or at least a few percent of the contrast. A clean digital image loses nothing.
    cut = min(0.5, max(MIN_HAZE_CUT, 3.0 * noise / peak)) if noise > 0 else 0.0
    ink = np.clip((ink / peak - cut) / (1 - cut), 0, 1) * 255.0
    r0, r1 = _mass_bounds(ink.sum(axis=1))
    c0, c1 = _mass_bounds(ink.sum(axis=0))
    crop = ink[r0 : r1 + 1, c0 : c1 + 1]
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    box = Image.fromarray(crop, mode="F").resize((new_w, new_h), Image.LANCZOS if scale < 1 else Image.BILINEAR)
    digit = np.clip(np.asarray(box), 0, 255)
    cy, cx = _centre_of_mass(digit)
    top, left = int(round(IMAGE_SIZE / 2 - cy)), int(round(IMAGE_SIZE / 2 - cx))
    top = min(max(top, 0), IMAGE_SIZE - new_h)  # keep the whole digit in the frame
    left = min(max(left, 0), IMAGE_SIZE - new_w)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    out[top : top + new_h, left : left + new_w] = digit
    return (out + 0.5).astype(np.uint8)


def resize_raw(grey: np.ndarray) -> np.ndarray:
    """`--preprocess none`: the whole image resized to 28x28, nothing else."""
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return grey
    return np.asarray(Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def load_digit(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Image file -> uint8 [28,28] model-ready digit (MNIST layout, or a raw resize with mode='none')."""
    grey = read_grey(source, mode)
    return to_mnist(grey) if mode == "mnist" else resize_raw(grey)
