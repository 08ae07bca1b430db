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

import functools
import io
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from infer.contract import DIGIT_BOX, IMAGE_SIZE, PIXEL_SCALE

# The one image size limit, for every format, checked from the header before a pixel is decoded
# (decompression bombs). 150 MP holds the largest phone photos (108 MP: 12000x9000) and 600-dpi A3
# scans, and stays below Pillow's own refusal (2 x Image.MAX_IMAGE_PIXELS = 179 MP), so the message
# is always this tool's.
MAX_PIXELS = 150_000_000
MIN_HAZE_CUT = 0.15  # ink below this fraction of the contrast is haze (paper texture, JPEG ringing)
DRAFT_SIZE = 2 * IMAGE_SIZE  # JPEGs are decoded at the smallest 1/2^k scale that keeps this many pixels

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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Files up to this size are read in one call (the PNG fast path needs the bytes); larger ones are
# handed to Pillow as open files, so it reads only what it decodes.
READ_WHOLE_BYTES = 4 * 1024 * 1024
# Decoded images larger than this are reduced (an integer factor, area average) before the MNIST
# steps: a digit needs far fewer pixels, and it bounds their memory and time on 100-MP photos.
WORKING_PIXELS = 16_000_000
# ISO base media files (HEIF, AVIF) say what they are in their `ftyp` box: bytes 4-8 "ftyp", 8-12 the brand.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})


def _decode_plain_png(data: bytes) -> np.ndarray | None:
    """8-bit greyscale, non-interlaced PNG (MNIST-style files) decoded by Pillow's own zlib/unfilter
    decoder without its plugin machinery: twice as fast for tiny images. None: use the full path."""
    if data[12:16] != b"IHDR" or len(data) < 33:
        return None
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if depth != 8 or colour != 0 or interlace != 0 or not 0 < w * h <= MAX_PIXELS:
        return None
    pos, idat = 33, []
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + size])
        elif kind == b"IEND":
            break
        elif kind in (b"tRNS", b"eXIf"):  # transparency or orientation: the full path handles them
            return None
        pos += 12 + size
    image = Image.new("L", (w, h))
    decoder = Image.core.zip_decoder("L", "L")
    decoder.setimage(image.im, (0, 0, w, h))
    consumed, status = decoder.decode(b"".join(idat))
    if consumed >= 0 or status < 0:  # wants more data (truncated) or failed: let Pillow say why
        return None
    return np.asarray(image)


def read_grey(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Decode an image file to a uint8 grey array [H,W].

    Refuses, with ImageError and one line: an empty file, an image over MAX_PIXELS (from its header,
    before decoding, whatever the format), anything that is not an image. HEIC/HEIF files are read
    when pillow-heif is installed (its opener is registered the first time one is met). Images over
    WORKING_PIXELS come back reduced by an integer factor.
    """
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise ImageError("empty file (0 bytes)")
                if size > READ_WHOLE_BYTES:
                    return _read_with_pillow(f, mode)
                data = f.read()
        except IsADirectoryError:
            raise ImageError("is a folder, not an image file") from None
        except PermissionError:
            raise ImageError("permission denied") from None
        except FileNotFoundError:
            raise ImageError("no such file or folder") from None
        except OSError as exc:
            raise ImageError(f"cannot read: {exc.strerror or exc}") from None
        if data[:8] == PNG_SIGNATURE:
            grey = _decode_plain_png(data)
            if grey is not None:
                return _working_size(grey)
        source = io.BytesIO(data)
    return _read_with_pillow(source, mode)


def _working_size(grey: np.ndarray) -> np.ndarray:
    if grey.size <= WORKING_PIXELS:
        return grey
    factor = math.ceil(math.sqrt(grey.size / WORKING_PIXELS))
    return np.asarray(Image.fromarray(grey).reduce(factor))


def _too_large(pixels: int) -> ImageError:
    return ImageError(f"image is {pixels / 1e6:.1f} MP, over the {MAX_PIXELS / 1e6:.0f}-megapixel limit; not decoded")


@functools.lru_cache(maxsize=1)
def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF through pillow-heif, once, when the first such file is met (False: not installed)."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _open(source: BinaryIO) -> Image.Image:
    """Image.open (header only), with what Pillow cannot identify named: empty, HEIC without pillow-heif, AVIF."""
    head = source.read(12)
    source.seek(0)
    if not head:
        raise ImageError("empty file (0 bytes)")
    brand = head[8:12] if head[4:8] == b"ftyp" else None
    # Pillow's own bomb warning is redundant with the check on MAX_PIXELS that follows.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.UnidentifiedImageError:
            if brand in HEIF_BRANDS:
                if not _register_heif():
                    raise ImageError("HEIC/HEIF image: reading it needs pillow-heif: "
                                     "pip install 'mnist-toolkit[heic]'") from None
                source.seek(0)
                try:
                    return Image.open(source)
                except Image.UnidentifiedImageError:
                    raise ImageError("HEIF file that pillow-heif cannot read") from None
            if brand in AVIF_BRANDS:
                raise ImageError("AVIF image: this Pillow cannot read AVIF (Pillow >= 11.3 wheels can)") from None
            raise ImageError("not an image Pillow can read") from None


def _read_with_pillow(source: BinaryIO, mode: str) -> np.ndarray:
    try:
        im = _open(source)
        with im:
            w, h = im.size
            if w == 0 or h == 0:
                raise ImageError("image has no pixels")
            if w * h > MAX_PIXELS:
                raise _too_large(w * h)
            if im.format == "JPEG" and mode == "mnist":
                im.draft("L", (DRAFT_SIZE, DRAFT_SIZE))  # libjpeg decodes at 1/2, 1/4 or 1/8 scale: far less work
            if im.format != "PNG" or "exif" in im.info:  # PNGs rarely carry EXIF; reading it costs ~10%
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                if orientation != 1:
                    im = ImageOps.exif_transpose(im)
            im.load()
            return _working_size(_grey(im))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses over 2 x Image.MAX_IMAGE_PIXELS (179 MP) before the size reaches us: the same
        # message, with the count from Pillow's text.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_large(int(found.group(1)) if found else MAX_PIXELS + 1) from None
    except MemoryError:
        raise ImageError("out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        text = str(exc) or type(exc).__name__
        raise ImageError(f"cannot decode: {text}") from None


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


_CENTRE = IMAGE_SIZE / 2  # MNIST's centre of mass sits at pixel coordinate 14 (is_mnist_format)


def _deskew_one(digit: np.ndarray) -> np.ndarray:
    import cv2

    m = cv2.moments(digit)
    if m["m00"] <= 0:
        return np.zeros_like(digit)
    cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
    alpha = m["mu11"] / m["mu02"] if m["mu02"] > 1e-6 else 0.0
    # Output pixel (oy, ox) reads input (oy - 14 + cy, ox - 14 + cx + alpha * (oy - 14)).
    to_source = np.array([[1.0, alpha, cx - _CENTRE - alpha * _CENTRE], [0.0, 1.0, cy - _CENTRE]])
    return cv2.warpAffine(digit, to_source, (IMAGE_SIZE, IMAGE_SIZE),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def deskew(digits: np.ndarray) -> np.ndarray:
    """Straighten slanted digits by their image moments: uint8 [28,28] or [N,28,28] -> the same, uint8.

    For the models whose metadata asks for it (`mnist.input` "deskew": true), after the MNIST layout
    step: handwriting slants, and a slanted 1 or 7 is a different picture to a small MLP. Each image's
    centre of mass moves to (14, 14) and its rows are sheared by alpha = cov(row, col) / var(row)
    (central moments mu11 / mu02), so the principal axis becomes vertical; bilinear resampling
    (OpenCV's warpAffine: coordinates in 1/32 pixel), zeros outside. An empty image stays empty.
    The method is the moment-based deslanting of LeCun et al. (1998), section III.C; with float
    coordinates it is scipy's affine_transform(image, [[1, 0], [alpha, 1]], order=1,
    offset=centre_of_mass - matrix @ (14, 14), mode="grid-constant"), which this matches within one
    grey level (tests/test_preprocess.py).
    The trainer deskews with this function too (tests/test_train.py checks its batched copy).
    """
    digits = np.asarray(digits, dtype=np.uint8)
    if digits.ndim == 2:
        return _deskew_one(digits)
    flat = digits.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    out = np.empty_like(flat)
    for i, digit in enumerate(flat):
        out[i] = _deskew_one(digit)
    return out.reshape(digits.shape)


def resize_raw(grey: np.ndarray) -> np.ndarray:
    """`--preprocess none`: the whole image resized to 28x28, nothing else."""
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return grey
    return np.asarray(Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


@dataclass(frozen=True)
class Prepared:
    """What preprocessing made of one image: its digit(s) in MNIST's layout, and what it noticed."""

    digits: np.ndarray  # uint8 [k,28,28], k >= 1, left to right; k > 1 only when asked for several digits
    warnings: tuple[str, ...] = ()  # infer.contract.WARN_* codes, in the order the steps fired


def prepare(grey: np.ndarray, *, multi_digit: bool = False) -> Prepared:
    """A uint8 grey image -> Prepared (MNIST layout; deskewing is the model's business, not done here).

    Raises ImageError when there is no digit to read.
    """
    return Prepared(to_mnist(grey)[None])


def prepare_file(source: str | os.PathLike | BinaryIO, mode: str = "mnist", *, multi_digit: bool = False) -> Prepared:
    """Image file -> Prepared: MNIST-layout digit(s), or with mode='none' the whole image resized to 28x28."""
    grey = read_grey(source, mode)
    if mode == "mnist":
        return prepare(grey, multi_digit=multi_digit)
    return Prepared(resize_raw(grey)[None])


def load_digit(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Image file -> uint8 [28,28] model-ready digit (MNIST layout, or a raw resize with mode='none')."""
    return prepare_file(source, mode).digits[0]
