"""Image -> MNIST-format model input: the one implementation, shared by infer, the exporter and the tests.

MNIST digits are white ink on black, the digit fitted in a 20x20 box keeping its aspect ratio, then
placed in 28x28 so that its centre of mass is at the centre. Real images are black ink on white
paper, any size, off-centre, in any mode. `prepare_file` makes the one look like the other:

    decode (OpenCV for PNG and JPEG, JPEG at reduced scale; Pillow for the rest) -> EXIF orientation
    -> grey (alpha composited, 16-bit scaled)
    -> `prepare`: the pipeline of named steps below (paper, rules, components, strokes, 20x20 box)

An image that already is MNIST-format (28x28, black border, digit within 20x20, centred by mass)
passes through unchanged, so MNIST's own digits score exactly what the test set scores; one that is
but for a shift or its polarity is centred by whole pixels (`centre_by_shift`). `prepare_files` and
`prepare_many` do the same for many images at once, the tiny ones as one array.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import struct
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from infer.contract import (DIGIT_BOX, IMAGE_SIZE, PIXEL_SCALE, WARN_FAINT_INK, WARN_LINES_REMOVED,
                            WARN_MARKS_REMOVED, WARN_SEVERAL_DIGITS, WARN_THIN_STROKES)

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
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Files up to this size are read whole, in one call, and decoded from memory (OpenCV decodes from a
# buffer); larger ones are handed to Pillow as open files, so that it reads only what it decodes.
READ_WHOLE_BYTES = 64 * 1024 * 1024
FIRST_READ = 1 << 20  # read size for files that do not say how large they are (pipes)
# Decoded images larger than this are reduced (an integer factor, area average) before the MNIST
# steps: a digit needs far fewer pixels, and it bounds their memory and time on 100-MP photos.
WORKING_PIXELS = 16_000_000
# ISO base media files (HEIF, AVIF) say what they are in their `ftyp` box: bytes 4-8 "ftyp", 8-12 the brand.
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): they
# carry the image's height, width and number of components.
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# OpenCV's reduced JPEG decodes (libjpeg's DCT scaling: 1/2, 1/4, 1/8 of each side at a fraction of the work).
JPEG_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# EXIF orientation (TIFF tag 274) -> how the stored pixels become the upright picture, as numpy views
# of the uint8 [H,W] array (the transposes Pillow's ImageOps.exif_transpose makes; tests compare them).
ORIENT = {
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored upside down
    5: lambda a: a.T,  # transposed
    6: lambda a: a.T[:, ::-1],  # stored rotated 90 degrees anticlockwise: turn it clockwise
    7: lambda a: a.T[::-1, ::-1],  # transversed
    8: lambda a: a.T[::-1],  # stored rotated 90 degrees clockwise: turn it anticlockwise
}


def read_grey(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Decode an image file (a path, or a binary stream read to its end) to a uint8 grey array [H,W].

    PNG and JPEG are decoded by OpenCV (`cv2.imdecode`, from the bytes in memory; JPEGs at reduced
    scale for mode 'mnist', see `jpeg_scale`; EXIF orientation applied); every other format and mode,
    and any file OpenCV leaves out, by Pillow (`_read_with_pillow`). Both give the same grey levels
    (tests/test_preprocess.py compares them mode by mode).
    Refuses, with ImageError and one line: an empty file, an image over MAX_PIXELS (from its header,
    before decoding, whatever the format), anything that is not an image. HEIC/HEIF files are read
    when pillow-heif is installed (its opener is registered the first time one is met). Images over
    WORKING_PIXELS come back reduced by an integer factor.
    """
    data = _load(source)
    if data is None:
        return _read_large(source, mode)
    return _decode(data, mode, DRAFT_SIZE)[0]


def _load(source: str | os.PathLike | BinaryIO) -> bytes | None:
    """A file's bytes (a path, or a stream read to its end); None: a file too large to hold whole."""
    if isinstance(source, (str, os.PathLike)):
        return _read_file(source)
    return source.read()


def _read_large(path: str | os.PathLike, mode: str) -> np.ndarray:
    """A file over READ_WHOLE_BYTES: Pillow reads what it needs of it from the file."""
    try:
        with open(path, "rb") as f:
            return _read_with_pillow(f, mode)
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def _decode(data: bytes, mode: str, jpeg_side: int) -> tuple[np.ndarray, int]:
    """(uint8 grey [H,W] of a file's bytes, the reduction a JPEG was decoded at: 1 for full size and
    for every other format); JPEGs keep at least `jpeg_side` px a side (mode 'mnist')."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    grey, scale = None, 1
    if data[:8] == PNG_SIGNATURE:
        grey = _decode_png(data)
    elif data[:3] == JPEG_SIGNATURE:
        grey, scale = _decode_jpeg(data, mode, jpeg_side)
    if grey is None:  # a format or a mode OpenCV does not read as Pillow does
        return _read_with_pillow(io.BytesIO(data), mode), 1
    return _working_size(grey), scale


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # Windows: no newline translation


def _read_file(path: str | os.PathLike) -> bytes | None:
    """The file's bytes (None: larger than READ_WHOLE_BYTES), with OS errors as one-line ImageErrors."""
    try:
        fd = os.open(path, _READ_FLAGS)
        try:
            size = os.fstat(fd).st_size
            if size > READ_WHOLE_BYTES:
                return None
            data = os.read(fd, size + 1)  # a byte to spare: one read sees the end of the file
            if len(data) <= size:
                return data
            parts = [data]  # it grew, or it has no size (a pipe): read on to the end
            while chunk := os.read(fd, FIRST_READ):
                parts.append(chunk)
            return b"".join(parts)
        finally:
            os.close(fd)
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except FileNotFoundError:
        raise ImageError("no such file or folder") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


_IHDR = struct.Struct(">IIBB")  # a PNG's width, height, bit depth and colour type, at byte 16


def _decode_png(data: bytes) -> np.ndarray | None:
    """A PNG's grey pixels by OpenCV: 8-bit RGB and greyscale or palette at any bit depth, complete
    (ending with IEND), without transparency or EXIF. None: Pillow reads it (16-bit, alpha, tRNS,
    eXIf, truncated or damaged files, whose errors Pillow words)."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    w, h, depth, colour = _IHDR.unpack_from(data, 16)
    if w * h > MAX_PIXELS:
        raise _too_large(w * h)
    if (w * h == 0 or colour not in (0, 2, 3) or (colour == 2 and depth != 8) or depth > 8
            or data[-8:-4] != b"IEND" or b"tRNS" in data or b"eXIf" in data):
        return None
    buf = np.frombuffer(data, np.uint8)
    if colour == 0:
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    # Colour: OpenCV's BGR -> grey conversion (ITU-R 601 weights, as Pillow's "L"), not libpng's own
    # rgb_to_gray, whose rounding differs from Pillow's in every other pixel.
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def _jpeg_header(data: bytes) -> tuple[int, int, int, bool, int] | None:
    """(width, height, components, has EXIF, offset of the scan) from a JPEG's markers; None if malformed."""
    pos, n, exif, frame = 2, len(data), False, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            exif = True
        elif marker in JPEG_SOF and pos + 10 <= n:
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            frame = (w, h, data[pos + 9])
        elif marker == 0xDA:
            return (*frame, exif, pos) if frame else None
        pos += 2 + length
    return None


def jpeg_scale(width: int, height: int, side: int = DRAFT_SIZE) -> int:
    """The reduction (1, 2, 4 or 8) at which a JPEG is decoded for the MNIST steps: the largest that
    keeps both sides at least `side` px (libjpeg scales while it decodes; as Pillow's `draft`)."""
    scale = min(width, height) // side
    return 8 if scale >= 8 else 4 if scale >= 4 else 2 if scale >= 2 else 1


def _decode_jpeg(data: bytes, mode: str, side: int) -> tuple[np.ndarray | None, int]:
    """(A JPEG's grey pixels by OpenCV, reduced for mode 'mnist' to keep `side` px (`jpeg_scale`), its
    EXIF orientation applied (read by Pillow); the reduction). None: Pillow reads it (CMYK, malformed
    or truncated files)."""
    header = _jpeg_header(data)
    if header is None:
        return None, 1
    w, h, components, exif, scan = header
    if w * h > MAX_PIXELS:
        raise _too_large(w * h)
    if w * h == 0 or components not in (1, 3) or data.rfind(b"\xff\xd9") < scan:  # no end of image: truncated
        return None, 1
    scale = jpeg_scale(w, h, side) if mode == "mnist" else 1
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), JPEG_REDUCED[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
    if grey is None:
        return None, 1
    if exif:
        from PIL import Image  # loaded where it is used: most files never need Pillow

        try:
            with Image.open(io.BytesIO(data)) as im:
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except (OSError, SyntaxError, ValueError, struct.error):
            return None, 1
        if orientation in ORIENT:
            grey = np.ascontiguousarray(ORIENT[orientation](grey))
    return grey, scale


def _working_size(grey: np.ndarray) -> np.ndarray:
    if grey.size <= WORKING_PIXELS:
        return grey
    from PIL import Image

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
    from PIL import Image

    head = source.read(12)
    source.seek(0)
    if not head:
        raise ImageError("empty file (0 bytes)")
    brand = head[8:12] if head[4:8] == b"ftyp" else None
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
    from PIL import Image

    # Pillow's bomb warning (from Image.open, or at load for TIFF and WebP) is redundant with the check
    # on MAX_PIXELS: it would only be two lines of noise on stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _pillow_grey(source, mode)


def _pillow_grey(source: BinaryIO, mode: str) -> np.ndarray:
    from PIL import Image, ImageOps

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



# --- Grey image -> MNIST layout: a pipeline of named steps ------------------------------------------
#
# `prepare` reads top to bottom as what is done to a user's image (each step's docstring says which
# real-world situation it exists for and which generated kind in bench/real_world_kinds.py shows it):
#
#     is_mnist_format        MNIST's own digits pass through untouched (exact test-set scores)
#     centre_by_shift        28x28 digits made as MNIST's but off-centre or inverted: moved by whole pixels
#                            (these two on a whole chunk's tiny images at once: `mnist_layout_small`)
#     to_working_size        large scans and photos reduced to WORK_SIDE px (area averaging)
#     ink_is_dark            polarity: the paper is the bulk of the pixels, the ink the far tail
#     subtract_paper         a local paper level (shadows, vignettes, dark photo corners) taken away
#     remove_rules           ruled and squared paper, form and Sudoku cells, boxes: long thin lines
#     keep_digit_components  the digit's connected components; specks, marks and frames dropped;
#                            several digit-sized groups side by side found
#     crop_digit, paper_haze, normalise_contrast   the digit's own ink to full scale, haze cut
#     normalise_strokes      thin pens and 1-px canvas lines brought to MNIST's stroke width
#     fit_and_centre         20x20 box keeping the aspect ratio, centre of mass at (14, 14) in 28x28
#
# Lines are removed after the paper is subtracted, not before: the paper estimate is a morphological
# opening wider than any line, so lines cannot bend it (the old border-plane fit could), and lines are
# far easier to find on the flat ink map than on a shaded photo. The digit's contrast is estimated
# only after lines, specks and marks are gone, from the digit's own pixels.
# Deskewing is the model's business (`deskew`, applied by the pipeline when the model asks for it).

WORK_SIDE = 256  # longest side the steps work at: a digit needs no more to fill a 20x20 box
PAPER_SIDE = 32  # the paper is estimated on a copy this small: shadows are smooth, noise averages out
EVEN_BORDER = 24  # a border whose 10th-90th percentiles are this close (grey levels) is evenly lit paper
PAPER_KERNEL = 0.3  # opening width, fraction of the longer side: wider than any stroke, narrower than a shadow
MIN_INK_LEVEL = 10  # grey levels above the local paper that can be ink at all
NOISE_SIGMAS = 4.0  # ... and at least this many times the paper's noise
INK_FRACTION = 0.25  # ... and this fraction of the strongest ink's level
MIN_CONTRAST = 20  # a digit's strongest ink stands at least this far from the paper (grey levels)
MIN_CONTRAST_SIGMAS = 6.0  # ... and this many times the paper's noise (at most 1.5 times the ink level)
MIN_SHARPNESS = 0.15  # ... and rises from the paper within a few pixels (`edge_sharpness`): shading does not
FAINT_SHARPNESS = 0.4  # ... and faint ink (below FAINT_CONTRAST) rises sharply: faint and soft is shading
FAINT_CONTRAST = 50  # below this (grey levels) the ink is faint: `faint-ink`
RULE_SPAN = 0.85  # a thin straight line this long (fraction of the image) is a rule or grid line
RULE_COVER = 0.4  # ... with its pieces covering this much of it (the rest hidden under the digit's strokes)
FRAME_SPAN = 0.3  # thin straight lines at least this long that meet at corners are a box or cell frame
PIECE_SPAN = 0.12  # straight pieces shorter than this (fraction of the image) are not looked at
MIN_RULED_SIDE = 32  # images smaller than this (shorter side, px) are all digit: no lines looked for
LINE_THICKNESS = 0.05  # thickest line, fraction of the shorter side (at least MIN_LINE_THICKNESS px)
MIN_LINE_THICKNESS = 4
MERGE_GAP = 0.12  # pieces closer than this (fraction of the digit's height) are one digit (a broken 5)
MIN_DIGIT_SIDE = 0.05  # a digit is at least this big (fraction of the image's longer side) ...
MIN_DIGIT_PX = 6  # ... and this many pixels
MAX_COMPONENTS = 48  # the largest components considered; the rest are specks
MNIST_STROKE = 3.0  # MNIST's median stroke width in a 20-px box (2*area/boundary at 12% ink; 5th pct 2.5)
THIN_STROKE = 1.6  # thinner than this in a 20-px box (well below MNIST's 5th percentile): thickened
SIDE_BY_SIDE_HEIGHT = 0.65  # another group this tall relative to the digit, beside it, is another digit ...
BESIDE_AREA = 0.15  # ... with at least this much ink relative to it ...
TOUCHING_WIDTH = 1.15  # a mark this many times wider than tall may be two digits touching ...
TOUCHING_JOINT = 0.3  # ... where its ink thins to this share of its thickest column ...
TOUCHING_STROKES = 1.5  # ... and to about one stroke (this many stroke widths at most)
UNDERLINE_BEYOND = 0.25  # an underline reaches this share of its length beyond the digit above it
FRAMED_AREA = 0.3  # paper inside a heavy frame is at least this share of the image ...
FRAMED_SOLIDITY = 0.6  # ... and this solid (its area over its convex hull's, the digit cut out of it)
PAGE_AREA = 0.4  # a sheet on a table covers at least this share of the photo ...
PAGE_BEYOND = 0.03  # ... and leaves at least this share of table showing ...
PAGE_CONTRAST = 40  # ... which is this many grey levels darker than the sheet ...
PAGE_TILT = 2.5  # ... along a side of the sheet turned at least this many degrees ...
PAGE_STEP = 0.6  # ... and at the sheet's edge, within 5 px, the grey drops by this share of that contrast
RULED_SPREAD = 0.12  # on a page where lines were found, a straight mark edge to edge this thick is a line too
STRAIGHT_SPREAD = 0.04  # a mark whose ink spreads across its axis less than this (ratio of standard deviations) is a line
BESIDE_STROKE = 0.35  # ... and strokes at least this wide relative to its strokes (not a hair or a scratch)

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_SQUARE = np.ones((3, 3), np.uint8)
_SQUARE5 = np.ones((5, 5), np.uint8)
_INDEX = np.arange(IMAGE_SIZE, dtype=np.int64)


def is_mnist_format(grey: np.ndarray) -> bool:
    """Already MNIST's layout: 28x28, mostly black, ink within 20x20, centre of mass at the centre (+-0.5)."""
    if grey.shape != (IMAGE_SIZE, IMAGE_SIZE):
        return False
    return bool(_mnist_format_many(grey[None])[0])


@dataclass(frozen=True)
class _Layout:
    """Per image of a uint8 stack [n,28,28]: where its ink lies, and its centre of mass (pixel indices)."""

    nonzero: np.ndarray  # int [n]: pixels that are not 0
    rows: np.ndarray  # int [n,2]: first and last row holding ink
    cols: np.ndarray  # int [n,2]: first and last column holding ink
    cy: np.ndarray  # float64 [n]; NaN for a blank image
    cx: np.ndarray


def _layout(stack: np.ndarray) -> _Layout:
    n = len(stack)
    row_mass = np.add.reduce(stack, axis=2, dtype=np.int64)
    col_mass = np.add.reduce(stack, axis=1, dtype=np.int64)
    has_row, has_col = row_mass > 0, col_mass > 0
    last = IMAGE_SIZE - 1
    rows = np.stack([has_row.argmax(1), last - has_row[:, ::-1].argmax(1)], axis=1)
    cols = np.stack([has_col.argmax(1), last - has_col[:, ::-1].argmax(1)], axis=1)
    total = row_mass.sum(1).astype(np.float64)
    # Sums of integers, exact: the centres are bit for bit is_mnist_format's. (No matrix product: in
    # a decode worker, OpenBLAS's threads would spin on the other workers' cores.)
    with np.errstate(invalid="ignore", divide="ignore"):  # blank images: NaN, never taken
        cy = (row_mass * _INDEX).sum(1).astype(np.float64) / total
        cx = (col_mass * _INDEX).sum(1).astype(np.float64) / total
    return _Layout(np.count_nonzero(stack.reshape(n, -1), axis=1), rows, cols, cy, cx)


def _mnist_format_many(stack: np.ndarray) -> np.ndarray:
    """is_mnist_format for each image of a uint8 stack [n,28,28] -> bool [n], in a few whole-stack calls."""
    return _in_mnist_format(_layout(stack))


def _in_mnist_format(lay: _Layout) -> np.ndarray:
    half = IMAGE_SIZE * IMAGE_SIZE // 2
    within = (lay.rows[:, 1] - lay.rows[:, 0] < DIGIT_BOX) & (lay.cols[:, 1] - lay.cols[:, 0] < DIGIT_BOX)
    centred = (np.abs(lay.cy - IMAGE_SIZE / 2) <= 0.51) & (np.abs(lay.cx - IMAGE_SIZE / 2) <= 0.51)
    return (lay.nonzero <= half) & (lay.nonzero > 0) & within & centred


def _ink_bright(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dark bool [n]: `ink_is_dark` of each image, the stack with dark-ink images inverted: ink bright)."""
    dark = _ink_is_dark_many(stack.reshape(len(stack), -1))
    return dark, stack ^ (dark.astype(np.uint8) * np.uint8(255))[:, None, None]  # 255 - x where dark


def centre_by_shift(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """28x28 digits made as MNIST's are, but off-centre or inverted -> (taken bool [n], uint8 [n,28,28]).

    For the tiny PNGs users' folders hold: MNIST digits cropped or pasted a pixel or two off-centre,
    saved black on white. Polarity as `ink_is_dark` judges it, then the digit is moved by whole pixels
    so that its centre of mass is at (14, 14), as MNIST placed its digits: its pixels are MNIST's own,
    with no paper fit, no line search and no resampling. Taken when the image is MNIST's layout but for
    the shift (what `is_mnist_format` asks, after polarity): clean paper (at least half the pixels
    exactly the paper's level), the ink within 20x20, and room to move it. So one MNIST digit gives
    the same digit wherever it sits; like `is_mnist_format`, it does not look inside the 20x20 box
    for specks or a second digit. (Strokes cannot be thinner there than `normalise_strokes` allows:
    2 * area / boundary is at least 2 px, in a box of at most 20.) Any other image (noise, grey
    paper, a digit wider than 20 px...) is left to the pipeline's steps: not taken, its row of the
    output is zeros.
    Whole-stack numpy calls: a chunk's tiny images cost a few microseconds each.
    Kind: bench/realistic.py `shifted_inverted` (bench/infer_throughput.py's realistic folder).
    """
    _, ink = _ink_bright(stack)
    return _shift_to_centre(ink, _layout(ink))


def _shift_to_centre(ink: np.ndarray, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """centre_by_shift's move, for ink-bright images and their layout."""
    half = IMAGE_SIZE * IMAGE_SIZE // 2
    height, width = lay.rows[:, 1] - lay.rows[:, 0], lay.cols[:, 1] - lay.cols[:, 0]
    with np.errstate(invalid="ignore"):  # blank images: NaN centres, not taken
        dy, dx = np.round(IMAGE_SIZE / 2 - lay.cy), np.round(IMAGE_SIZE / 2 - lay.cx)
        taken = ((lay.nonzero <= half) & (lay.nonzero > 0) & (height < DIGIT_BOX) & (width < DIGIT_BOX)
                 & (lay.rows[:, 0] + dy >= 0) & (lay.rows[:, 1] + dy < IMAGE_SIZE)
                 & (lay.cols[:, 0] + dx >= 0) & (lay.cols[:, 1] + dx < IMAGE_SIZE))
    out = np.zeros_like(ink)
    if not taken.any():
        return taken, out
    # One slice assignment per distinct shift (a chunk of off-centre digits has a few dozen), whole
    # images at once: the ink lies in its box, which stays in frame, so only paper leaves the frame.
    moves = np.stack([dy[taken], dx[taken]], axis=1).astype(int)
    which = np.flatnonzero(taken)
    kinds, group = np.unique(moves, axis=0, return_inverse=True)
    for g, (y, x) in enumerate(kinds.tolist()):
        sel = which[group.ravel() == g]
        out[sel, max(y, 0) : IMAGE_SIZE + min(y, 0), max(x, 0) : IMAGE_SIZE + min(x, 0)] = \
            ink[sel, max(-y, 0) : IMAGE_SIZE + min(-y, 0), max(-x, 0) : IMAGE_SIZE + min(-x, 0)]
    return taken, out


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a uint8 mask: (count with the background, labels int32, stats as OpenCV's).

    By Grana's block-based algorithm (BBDT): the same labels, numbered in the same order, as OpenCV's
    default (Spaghetti; tests/test_preprocess.py compares them), in half the time on images this small."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_GRANA)
    return n, labels, stats


def _no_digit(why: str) -> ImageError:
    return ImageError(f"no digit found: {why}")


def _kernel(width: int, height: int) -> np.ndarray:
    return _rect(max(1, int(width)), max(1, int(height)))


@functools.lru_cache(maxsize=256)
def _rect(width: int, height: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (width, height))
    kernel.flags.writeable = False  # shared between calls
    return kernel


def to_working_size(grey: np.ndarray) -> np.ndarray:
    """uint8 [H,W] -> uint8 with the longest side at most WORK_SIDE (area averaging; smaller ones as they are).

    For phone photos and 300-dpi scans: thousands of pixels a side cost time and say nothing more about
    a digit that ends up 20 px tall; a thin pen's stroke is averaged, not lost (kind `thin-pen-scan`).
    """
    h, w = grey.shape
    if max(h, w) <= WORK_SIDE:
        return grey
    f = WORK_SIDE / max(h, w)
    return cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def ink_is_dark(grey: np.ndarray) -> bool:
    """Polarity of uint8 [H,W]: True for dark ink on light paper, False for light ink on dark (inverted).

    The paper is the bulk of the pixels (the median), the ink whichever tail departs further from it.
    Judged on all pixels rather than the border, which a grid cell's frame or a dark photo corner would
    decide wrongly (field image c07: the frame line was taken for the paper). Kind: `inverted`.
    """
    flat = grey.ravel() if grey.size <= 1 << 15 else grey[::2, ::2].ravel()
    m = flat.size
    k = max(1, m // 2000)  # the k-th most extreme pixel: a few hot pixels do not decide
    lo, med, hi = _ranked(flat, (k - 1, m // 2, m - k))
    return med - lo >= hi - med


def framed_paper(grey: np.ndarray) -> bool:
    """Whether an image `ink_is_dark` read as light ink on dark paper is light paper inside a heavy dark
    frame (a Sudoku cell cut with its thick lines: the frame outweighs the paper, and the bulk of the
    pixels is dark). The light part (Otsu's threshold) is then one solid region clear of the image's
    edges, at least FRAMED_AREA of the image and filling FRAMED_SOLIDITY of its convex hull but for the
    digit in it; a light digit on dark paper is strokes, far from solid, and never that large.
    Kind: `grid-cell-thick`."""
    found = _largest_bright_region(grey)
    if found is None:
        return False
    _, region, (x, y, w, h, area) = found
    if area < FRAMED_AREA * grey.size or x == 0 or y == 0 or x + w == grey.shape[1] or y + h == grey.shape[0]:
        return False
    hull = cv2.contourArea(_outer_hull(region))
    return hull > 0 and area >= FRAMED_SOLIDITY * hull


def _largest_bright_region(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None:
    """uint8 [H,W] -> (Otsu's bright mask, its largest 8-connected region as a mask, that region's
    x, y, w, h, area), or None when nothing is bright: the paper of `framed_paper` and `beyond_the_page`."""
    _, bright = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    n, labels, stats = _components(bright)
    if n < 2:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return bright, cv2.compare(labels, i, cv2.CMP_EQ), tuple(int(v) for v in stats[i])


def _outer_hull(region: np.ndarray) -> np.ndarray:
    """The convex hull (OpenCV points) of a mask's largest outer contour: its holes (a digit) filled."""
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.convexHull(max(contours, key=cv2.contourArea))


def _ranked(values: np.ndarray, ranks) -> list[int]:
    """The values of uint8 `values` at these ranks (0-based) in sorted order, as np.partition would
    place them, from a histogram: one counting pass instead of a selection per rank."""
    cum = np.bincount(values.ravel(), minlength=256).cumsum()
    return np.searchsorted(cum, ranks, side="right").tolist()


def _ink_is_dark_many(flat: np.ndarray) -> np.ndarray:
    """ink_is_dark for each row of uint8 [n,m] (one image's pixels a row) -> bool [n], in one call."""
    m = flat.shape[1]
    k = max(1, m // 2000)  # the k-th most extreme pixel: a few hot pixels do not decide
    if k == 1:  # the extremes themselves: a selection for the median only
        lo, hi = flat.min(axis=1).astype(int), flat.max(axis=1).astype(int)
        med = np.partition(flat, m // 2, axis=1)[:, m // 2].astype(int)
    else:
        ranks = (k - 1, m // 2, m - k)
        lo, med, hi = np.partition(flat, ranks, axis=1)[:, ranks].astype(int).T
    return med - lo >= hi - med


@functools.lru_cache(maxsize=64)
def _quadratic_design(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u [w], v [h], design [h*w, 6]): pixel centres in [-0.5, 0.5] and the terms 1, u, v, u^2, uv, v^2."""
    u = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    v = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    uu, vv = np.broadcast_to(u, (h, w)).ravel(), np.broadcast_to(v[:, None], (h, w)).ravel()
    return u, v, np.stack([np.ones_like(uu), uu, vv, uu * uu, uu * vv, vv * vv], axis=1)


def _median(values: np.ndarray) -> float:
    return float(np.partition(values, values.size // 2)[values.size // 2])


def _paper_trend(small: np.ndarray) -> np.ndarray:
    """A quadratic surface a + bx + cy + dx^2 + exy + fy^2 fitted to the paper of a small float32 image
    (ink-bright), ink left out by iterated residual cuts: the light's overall fall-off (a vignette)."""
    h, w = small.shape
    u, v, design = _quadratic_design(h, w)
    values = small.ravel()
    keep = values <= _median(values)  # start from the darker half: paper, however much ink there is
    for _ in range(3):
        d = design[keep]
        coef = np.linalg.solve(d.T @ d + np.float32(1e-6) * np.eye(6, dtype=np.float32), d.T @ values[keep])
        resid = values - design @ coef
        kept = resid[keep]
        med = _median(kept)
        keep = resid <= med + 2.5 * 1.4826 * _median(np.abs(kept - med)) + 1.0  # ink is above the paper
    c = coef.astype(np.float32)
    return c[0] + c[1] * u + c[2] * v[:, None] + c[3] * u * u + c[4] * u * v[:, None] + c[5] * (v * v)[:, None]


def _regrow_from_edges(opened: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The opening, with what it cut from the narrow tips of shadows and dark regions that come in
    from the image's edges grown back (reconstruction by geodesic dilation under the image, kept only
    where the regrown part reaches the edge). A stroke is brighter than the paper around it and does
    not regrow; if a thick blob of a digit survived the opening, what regrows from it along the
    strokes stays inside the image and is not kept."""
    grown = opened
    for _ in range(max(image.shape)):
        step = cv2.min(cv2.dilate(grown, _SQUARE5), image)
        if np.array_equal(step, grown):
            break
        grown = step
    regrown = cv2.compare(grown - opened, 2.0, cv2.CMP_GT)
    n, labels, stats = _components(regrown)
    h, w = image.shape
    x, y, bw, bh = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    at_edge = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    at_edge[0] = False
    if not at_edge.any():
        return opened
    return np.where(at_edge[labels], grown, opened)


def _even_paper(ink_up: np.ndarray) -> tuple[float, float] | None:
    """(level, noise sigma) of evenly lit paper, from the image's border (ink-bright image); None when
    the border's level varies (a photo, a shadow) or is not the paper (a cell's frame, a digit)."""
    border = np.concatenate((ink_up[0], ink_up[-1], ink_up[1:-1, 0], ink_up[1:-1, -1]))
    n = border.size
    q10, q25, q50, q75, q90 = map(float, _ranked(border, (n // 10, n // 4, n // 2, 3 * n // 4, 9 * n // 10)))
    if q90 - q10 > EVEN_BORDER:
        return None
    sample = ink_up[:: max(1, ink_up.shape[0] // 32), :: max(1, ink_up.shape[1] // 32)]
    if q50 > _ranked(sample, (sample.size // 2,))[0] + max(4.0, q90 - q10):  # the border is darker than
        return None  # most of the page: a frame
    return q50, (q75 - q25) / 1.349


def subtract_paper(grey: np.ndarray, dark_ink: bool, even: tuple[float, float] | None | bool = False
                   ) -> tuple[np.ndarray, float]:
    """uint8 [H,W] -> (ink uint8 [H,W]: grey levels above the local paper, bright = ink; paper noise sigma).

    Evenly lit paper (a flat border at the page's own level: scans, drawings) is one level. Otherwise
    the paper's level is estimated everywhere, not as one level or one plane, on a PAPER_SIDE-px copy
    (then enlarged): the light's overall fall-off as a quadratic surface fitted to the paper, and what
    it leaves (a soft shadow's edge, the table beyond a photo's paper edge) as a morphological opening
    of the ink-bright image, wider than any stroke, regrown into the narrow tips of shadows
    (`_regrow_from_edges`). An opening alone follows the light everywhere but at the image's edges,
    where it only sees inwards and leaves a bright rim under a vignette; on the remainder of the
    quadratic fit there is little slope left to misjudge. Kinds: `shadow`,
    `vignette`, `photo`, `dark-corner`, `blank-photo`.
    The noise sigma is (median - lower quartile) / 0.6745 of the residual over a sample of the pixels.
    `even`: `_even_paper`'s answer for this image when the caller has it (False: not asked yet).
    """
    ink_up = cv2.bitwise_not(grey) if dark_ink else grey
    if even is False:
        even = _even_paper(ink_up)
    if even is not None:  # a scan, a drawing, a thumbnail: one level will do, and costs nothing
        level, noise = even
        return cv2.subtract(ink_up, level), noise
    h, w = ink_up.shape
    f = PAPER_SIDE / max(h, w)
    small = ink_up
    if f < 1:
        small = cv2.resize(ink_up, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    trend = _paper_trend(small)
    k = max(3, int(min(PAPER_KERNEL * max(small.shape), min(small.shape))) | 1)
    flat = small - trend
    opened = cv2.morphologyEx(flat, cv2.MORPH_OPEN, _kernel(k, k))
    paper = _regrow_from_edges(opened, flat) + trend
    paper = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR) if f < 1 else paper
    residual = ink_up.astype(np.float32) - paper
    ink = cv2.convertScaleAbs(np.maximum(residual, 0))  # rounded, saturated uint8
    # The noise from the lower half of the residual only: ink adds to the paper, never takes away, so
    # there the paper is alone even when a thick digit covers a third of the page.
    step = max(1, int((h * w / 4096) ** 0.5))
    sample = residual[::step, ::step].ravel()
    q25, q50 = np.partition(sample, (sample.size // 4, sample.size // 2))[[sample.size // 4, sample.size // 2]]
    return ink, float(q50 - q25) / 0.6745


def beyond_the_page(grey: np.ndarray) -> np.ndarray | None:
    """A photo of a sheet lying on a table: uint8 mask [H,W] (255) of what lies beyond the sheet's
    edges, or None. The sheet is the one large bright region (Otsu's threshold; at least PAGE_AREA of
    the image and nearly all of its bright pixels), its outline a convex polygon of a few straight
    sides (a quadrilateral seen in perspective, cut by the image's edges), one of them long and turned
    (a sheet photographed by hand, not a cell's lines along the image's edges), and what is outside it is
    darker by PAGE_CONTRAST grey levels, with a step at the sheet's edge. A shadow's soft, curved edge
    and light falling off across a page are no such outline. Kinds: `page-on-table`, `blank-on-table`,
    `dark-corner`."""
    found = _largest_bright_region(grey)
    if found is None:
        return None
    bright, page, (*_, area) = found
    if area < PAGE_AREA * grey.size or area < 0.9 * cv2.countNonZero(bright):
        return None
    hull = _outer_hull(page)
    hull_area = cv2.contourArea(hull)
    outline = cv2.approxPolyDP(hull, 0.01 * cv2.arcLength(hull, True), True)
    # The sheet fills its outline but for the digit's holes; an outline of straight sides.
    if area < 0.85 * hull_area or len(outline) > 8 or hull_area > (1 - PAGE_BEYOND) * grey.size:
        return None
    inside = np.zeros_like(page)
    cv2.fillConvexPoly(inside, outline, 255)
    outside = cv2.bitwise_not(inside)
    contrast = cv2.mean(grey, page)[0] - cv2.mean(grey, outside)[0]
    if contrast < PAGE_CONTRAST:
        return None
    # A sheet askew: a cell's or a frame's lines run along the image's edges (remove_rules and the cell
    # rule of keep_digit_components take them), a sheet photographed by hand is turned a little.
    sides = np.diff(np.vstack([outline[:, 0], outline[:1, 0]]), axis=0).astype(np.float64)
    tilt = np.degrees(np.arctan2(np.abs(sides[:, 1]), np.abs(sides[:, 0])))  # 0: horizontal, 90: vertical
    turned = (tilt > PAGE_TILT) & (tilt < 90 - PAGE_TILT) & (np.hypot(*sides.T) >= 0.2 * min(grey.shape))
    if not turned.any():
        return None
    # A sheet's edge is a step: across it, within a few pixels, the grey drops by most of the contrast;
    # light falling off across a page (a gradient, a vignette, a soft shadow) has no step where Otsu cut it.
    rim_in = cv2.subtract(inside, cv2.erode(inside, _SQUARE5))
    rim_out = cv2.subtract(cv2.dilate(inside, _SQUARE5), inside)
    if cv2.mean(grey, rim_in)[0] - cv2.mean(grey, rim_out)[0] < PAGE_STEP * contrast:
        return None
    return cv2.dilate(outside, _SQUARE5)  # and the sheet's blurred edge


def ink_level(ink: np.ndarray, noise: float) -> int:
    """Grey levels above the paper that count as ink: at least MIN_INK_LEVEL, NOISE_SIGMAS * the paper's
    noise, and INK_FRACTION of the strongest ink (its 99.5th percentile: the digit's, not a speck's),
    so that faint speckle, shading and JPEG ringing around strong ink stay out. The noise's share is
    at most half the strongest ink: on a canvas speckled all over, the "noise" is the speckle, and
    the digit still stands above it."""
    hist = cv2.calcHist([ink], [0], None, [256], [0, 256]).ravel()
    top = int(np.searchsorted(np.cumsum(hist), 0.995 * ink.size))
    return int(max(MIN_INK_LEVEL, min(NOISE_SIGMAS * noise, 0.5 * top), INK_FRACTION * top))


def _thin_runs(found: np.ndarray, solid: np.ndarray, horizontal: bool, thickness: int, length: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Thin straight runs along one axis, in `found` (where lines may be) but not thick in `solid` (the
    ink): (the runs, at least `length` px long, as a uint8 mask; the thin mask)."""
    def along(length: int, width: int) -> np.ndarray:  # a kernel `length` along the line, `width` across
        return _kernel(length, width) if horizontal else _kernel(width, length)

    # Thin: what an opening across the line with (thickness + 1) would delete; a digit's strokes that
    # cross the line are thick in that direction and stay.
    # (Outside the image is paper: a line along the image's edge is thin too.)
    thick = cv2.morphologyEx(solid, cv2.MORPH_OPEN, along(1, thickness + 1),
                             borderType=cv2.BORDER_CONSTANT, borderValue=0)
    thin = cv2.subtract(found, thick)
    band = cv2.dilate(thin, along(1, 3))  # a line tilted by a pixel or two
    bridged = cv2.morphologyEx(band, cv2.MORPH_CLOSE, along(_bridge(length), 1))  # gaps where strokes cross
    return cv2.morphologyEx(bridged, cv2.MORPH_OPEN, along(length, 1)), thin


def _bridge(length: int) -> int:
    """The gap (px) that _thin_runs closes along a line whose pieces are looked at from `length` px."""
    return max(3, length // 3)


def _rules(stats: np.ndarray, horizontal: bool, span: int) -> list[list[int]]:
    """Segments (indices, grouped by line) that, with the collinear pieces beside them (one ruled line
    interrupted where the digit crosses it), span RULE_SPAN of the image and cover RULE_COVER of it."""
    if len(stats) == 0:
        return []
    across = stats[:, 1] + stats[:, 3] / 2 if horizontal else stats[:, 0] + stats[:, 2] / 2
    start, length = (stats[:, 0], stats[:, 2]) if horizontal else (stats[:, 1], stats[:, 3])
    order = np.argsort(across, kind="stable")
    clusters, current = [], [int(order[0])]
    for a, b in zip(order[:-1], order[1:]):
        if across[b] - across[a] <= 3:
            current.append(int(b))
        else:
            clusters.append(current)
            current = [int(b)]
    clusters.append(current)
    rules = [c for c in clusters
             if max(start[c] + length[c]) - min(start[c]) >= RULE_SPAN * span and length[c].sum() >= RULE_COVER * span]
    if rules:  # the other side of a cell, a rule a little shorter than its neighbours: as long as they are
        ruled = {i for c in rules for i in c}
        longest = max(int(length[c].sum()) for c in rules)
        rules += [[i] for i in range(len(stats)) if i not in ruled and length[i] >= 0.8 * longest]
    return rules


def _frame_sides(h_stats: np.ndarray, v_stats: np.ndarray, tol: float) -> tuple[set[int], set[int]]:
    """Indices of horizontal and vertical segments that meet others at two or more corners (a box, a cell)."""
    if len(h_stats) == 0 or len(v_stats) == 0:
        return set(), set()
    hs = [h_stats[np.argmin(h_stats[:, 1])], h_stats[np.argmax(h_stats[:, 1])]]  # top-most, bottom-most
    vs = [v_stats[np.argmin(v_stats[:, 0])], v_stats[np.argmax(v_stats[:, 0])]]  # left-most, right-most
    h_ids = [int(np.argmin(h_stats[:, 1])), int(np.argmax(h_stats[:, 1]))]
    v_ids = [int(np.argmin(v_stats[:, 0])), int(np.argmax(v_stats[:, 0]))]
    corners = set()  # (horizontal, vertical) pairs whose ends meet; one segment may be both top- and bottom-most
    for hi, (hx, hy, hw, hh, _) in zip(h_ids, hs):
        for vi, (vx, vy, vw, vh, _) in zip(v_ids, vs):
            h_end = min(abs(hx - (vx + vw / 2)), abs(hx + hw - (vx + vw / 2)))
            v_end = min(abs(vy - (hy + hh / 2)), abs(vy + vh - (hy + hh / 2)))
            if h_end <= tol and v_end <= tol:
                corners.add((hi, vi))
    if len(corners) < 2:
        return set(), set()
    return {hi for hi, _ in corners}, {vi for _, vi in corners}


def _encloses_ink(solid: np.ndarray, h_sides: np.ndarray, v_sides: np.ndarray, thickness: int) -> bool:
    """Whether the rectangle of these frame sides holds ink inside, clear of the sides: a box drawn
    around a digit does; the straight sides of a small 0 or the corner of a 4 enclose nothing."""
    sides = np.concatenate([h_sides, v_sides])
    x0, y0 = sides[:, 0].min(), sides[:, 1].min()
    x1, y1 = (sides[:, 0] + sides[:, 2]).max(), (sides[:, 1] + sides[:, 3]).max()
    m = thickness + 1
    inner = solid[y0 + m : y1 - m, x0 + m : x1 - m]
    if inner.size == 0 or inner.sum() < max(8, 0.01 * inner.size):
        return False
    ys, xs = np.nonzero(inner)
    return ys.min() > 0 and xs.min() > 0 and ys.max() < inner.shape[0] - 1 and xs.max() < inner.shape[1] - 1


def remove_rules(ink: np.ndarray, level: int) -> tuple[np.ndarray, int]:
    """Ink uint8 [H,W] -> (the same without rule, grid, form and box lines; how many lines were removed).

    For ruled and squared paper, a cell cut from a form or a Sudoku with its lines on two or four sides,
    a box drawn around the digit. A line is a thin (at most LINE_THICKNESS of the image) straight run
    of ink, horizontal or vertical within a pixel or two of tilt, found by morphological openings, that
    spans RULE_SPAN of the image (counting the collinear pieces of a line the digit interrupts, and the
    parallel lines as long as those), or is at least FRAME_SPAN long and meets others at two or more
    corners around other ink (a box). Each line is cut along its own fitted band, and only what is as
    thin as the lines there, so a digit's strokes beside or across a line stay; where a thin stroke
    crossed a line, the cut is closed again across it. Images under MIN_RULED_SIDE px are left alone.
    Kinds: `ruled`, `squared`, `grid-cell-4`, `grid-cell-2`, `boxed`; field image c07 (a printed 3 in a
    four-sided cell).
    """
    h, w = ink.shape
    thickness = max(MIN_LINE_THICKNESS, round(LINE_THICKNESS * min(h, w)))
    if min(h, w) < MIN_RULED_SIDE:  # the digit fills so small an image: no room for rules around it
        return ink, 0
    # Half the ink level, so that a faint line broken into dashes (JPEG, a reduced photo) is found
    # whole; of that, only what stays inky averaged along the line's direction: speckle averages away.
    half = max(MIN_INK_LEVEL // 2, level // 2)
    faint = cv2.compare(ink, half, cv2.CMP_GT)
    spans = {True: w, False: h}
    pieces = {d: max(8, round(PIECE_SPAN * spans[d])) for d in (True, False)}
    # A line is found only where the runs of `_thin_runs` can reach: within the faint ink's box, widened
    # along the line by what its closing bridges. Where that box is too short for a rule along a
    # direction, and too short for the sides of a frame, there is no line to look for (a digit on a
    # clean page): the answer is the search's own, at a fraction of its cost.
    _, _, fw, fh = cv2.boundingRect(faint)
    extent = {True: fw + 2 * _bridge(pieces[True]), False: fh + 2 * _bridge(pieces[False])}
    rule = {d: extent[d] >= RULE_SPAN * spans[d] for d in (True, False)}
    frame = all(extent[d] >= FRAME_SPAN * spans[d] for d in (True, False))
    def search(horizontal: bool) -> tuple[np.ndarray, np.ndarray]:
        along = cv2.compare(cv2.blur(ink, (9, 1) if horizontal else (1, 9)), half, cv2.CMP_GT)
        return _thin_runs(cv2.bitwise_and(faint, along), faint, horizontal, thickness, pieces[horizontal])

    runs: dict[bool, tuple[np.ndarray, np.ndarray]] = {}
    for horizontal in (True, False):  # one direction at a time, while it may hold a line
        if not (rule[True] or rule[False] or frame):
            return ink, 0
        if rule[horizontal] or frame:
            runs[horizontal] = search(horizontal)
            _, _, rw, rh = cv2.boundingRect(runs[horizontal][0])
            reach = rw if horizontal else rh
            rule[horizontal] &= reach >= RULE_SPAN * spans[horizontal]
            frame &= reach >= FRAME_SPAN * spans[horizontal]
    if not (rule[True] or rule[False] or frame):
        return ink, 0
    found = []
    for horizontal in (True, False):
        lines, thin = runs[horizontal] if horizontal in runs else search(horizontal)
        _, labels, stats = _components(lines)
        found.append((spans[horizontal], labels, stats[1:], thin))
    (w_span, h_labels, h_stats, h_band), (h_span, v_labels, v_stats, v_band) = found
    h_rules, v_rules = _rules(h_stats, True, w_span), _rules(v_stats, False, h_span)
    h_long = np.flatnonzero(h_stats[:, 2] >= FRAME_SPAN * w_span)
    v_long = np.flatnonzero(v_stats[:, 3] >= FRAME_SPAN * h_span)
    h_frame, v_frame = _frame_sides(h_stats[h_long], v_stats[v_long], tol=max(4.0, 0.06 * max(h, w)))
    if (h_frame or v_frame) and not _encloses_ink(ink > level, h_stats[h_long[list(h_frame)]],
                                                   v_stats[v_long[list(v_frame)]], thickness):
        h_frame, v_frame = set(), set()  # the corners of a 0 or a 4, not a box around the digit
    h_lines = h_rules + [[int(h_long[i])] for i in h_frame if not any(h_long[i] in c for c in h_rules)]
    v_lines = v_rules + [[int(v_long[i])] for i in v_frame if not any(v_long[i] in c for c in v_rules)]
    if not h_lines and not v_lines:
        return ink, 0
    cuts = []
    for lines, labels, stats, thin, horizontal in ((h_lines, h_labels, h_stats, h_band, True),
                                                    (v_lines, v_labels, v_stats, v_band, False)):
        if lines:
            band, width = _line_bands(lines, labels, stats, thin, horizontal)
            # Cut only what is as thin as the lines themselves, inside their own band: a digit's
            # stroke that crosses a line, or runs beside it, stays.
            across = _kernel(1, width + 2) if horizontal else _kernel(width + 2, 1)
            thick = cv2.morphologyEx(faint, cv2.MORPH_OPEN, across, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            cuts.append([band, cv2.bitwise_and(band, cv2.subtract(faint, thick)), horizontal, width])
    if len(cuts) == 2:  # where a horizontal and a vertical line cross, each is thick in the other's direction
        crossings = cv2.bitwise_and(cuts[0][0], cuts[1][0])
        for c in cuts:
            c[1] = cv2.bitwise_or(c[1], crossings)
    out = ink.copy()
    for _, cut, _, _ in cuts:
        out[cut > 0] = 0
    for _, cut, horizontal, width in cuts:
        # A thin stroke that crossed the line was cut with it: close the cut across the line.
        closed = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _kernel(3, width + 1) if horizontal else _kernel(width + 1, 3))
        cv2.copyTo(closed, cut, out)
    return out, len(h_lines) + len(v_lines)


def _could_be_a_one(ink: np.ndarray, cleaned: np.ndarray) -> bool:
    """Whether the one line `remove_rules` took away (ink before, cleaned after, uint8 [H,W]) may be a
    digit 1: upright, and in the middle of the image (its centre in the middle half, across). A
    horizontal line is never a digit; a margin rule, a page's edge or a fold near a side is paper.
    Kinds: `blank-one-line`; a canvas 1 drawn top to bottom (`canvas-1px`)."""
    x, y, w, h = cv2.boundingRect(cv2.compare(ink, cleaned, cv2.CMP_NE))
    width = ink.shape[1]
    return h > w and 0.25 * width <= x + w / 2 <= 0.75 * width


def _line_bands(lines: list[list[int]], labels: np.ndarray, stats: np.ndarray, thin: np.ndarray,
                horizontal: bool) -> tuple[np.ndarray, int]:
    """Each line (its run segments' indices) as a straight band, fitted through its thin pixels, as
    thick as the thickest line (a pixel to spare): (uint8 mask, band width in pixels)."""
    fits = []
    for ids in lines:
        x0, y0 = stats[ids, 0].min(), stats[ids, 1].min()
        x1, y1 = (stats[ids, 0] + stats[ids, 2]).max(), (stats[ids, 1] + stats[ids, 3]).max()
        box = (slice(y0, y1), slice(x0, x1))
        ys, xs = np.nonzero(np.isin(labels[box], np.asarray(ids) + 1) & (thin[box] > 0))
        if len(ys) < 2:
            continue
        along, across = (xs + x0, ys + y0) if horizontal else (ys + y0, xs + x0)
        if np.ptp(along):
            slope, offset = np.polyfit(along.astype(np.float64), across.astype(np.float64), 1)
        else:
            slope, offset = 0.0, float(across.mean())
        extent = max(1, int(np.ptp(along)) + 1)
        fits.append((slope, offset, int(along.min()), int(along.max()), len(ys) / extent))
    band = np.zeros(labels.shape, np.uint8)
    if not fits:
        return band, 1
    width = int(np.ceil(max(f[4] for f in fits))) + 1
    for slope, offset, lo, hi, _ in fits:
        lo, hi = lo - width - 2, hi + width + 2  # past the ends, where a crossing line made the pixels thick
        a, b = (lo, slope * lo + offset), (hi, slope * hi + offset)
        p, q = (a, b) if horizontal else (a[::-1], b[::-1])
        cv2.line(band, (round(p[0] * 16), round(p[1] * 16)), (round(q[0] * 16), round(q[1] * 16)), 255, width,
                 cv2.LINE_8, shift=4)
    return band, width


def edge_sharpness(ink: np.ndarray, mask: np.ndarray, peak: float) -> float:
    """How sharply ink rises from the paper at a mark's outline: the median morphological gradient
    (3x3 max - min) on the mask's boundary pixels, over the mark's peak. Pen strokes, even blurred by
    a phone, rise within a few pixels (0.3 and more); what is left of a shadow's edge or a vignette
    rises over tens of pixels (below 0.15)."""
    boundary = cv2.subtract(mask, cv2.erode(mask, _SQUARE))
    gradient = cv2.morphologyEx(ink, cv2.MORPH_GRADIENT, _SQUARE)
    values = gradient[boundary > 0]
    return _median(values) / max(peak, 1.0) if values.size else 0.0


def _not_digit_parts(x0, y0, x1, y1, area, h: int, w: int) -> np.ndarray:
    """Per component (bounding boxes and areas as arrays): never part of a digit. Dark photo corners
    (solid, in a corner of the image), strips along the image's edge (the paper's edge, a scanner's
    margin), frames around other sizeable ink (a box drawn by hand, a circle around the digit) and a
    cell's lines cut on three or four sides, however thick, around other ink (`grid-cell-thick`)."""
    cw, ch = x1 - x0, y1 - y0
    fill = area / np.maximum(cw * ch, 1)
    left, top, right, bottom = x0 <= 0, y0 <= 0, x1 >= w, y1 >= h
    if len(x0) == 1 and not (left[0] or top[0] or right[0] or bottom[0]):
        return left  # one mark clear of the edges (a clean page): neither a corner nor a strip; False
    touches = left.astype(int) + top + right + bottom
    corner = (left | right) & (top | bottom) & (touches < 4) & (fill > 0.4)
    strip = (left ^ right) & (ch >= 0.9 * h) & (cw <= 0.15 * w)
    strip |= (top ^ bottom) & (cw >= 0.9 * w) & (ch <= 0.15 * h)
    if len(x0) == 1:
        return corner | strip
    inside = ((x0[None] > x0[:, None]) & (x1[None] < x1[:, None]) & (y0[None] > y0[:, None]) & (y1[None] < y1[:, None])
              & (ch[None] >= 0.25 * ch[:, None]))  # [i, j]: j lies inside i's box
    frame = inside.any(axis=1) & (fill < 0.3)
    # A cell's own lines, however thick (a Sudoku's box lines, a form's heavy rules), cut on three or
    # four sides: one mark along the image's edges, from end to end, with other ink inside.
    cell = inside.any(axis=1) & (touches >= 3) & (cw >= 0.9 * w) & (ch >= 0.9 * h) & (fill < 0.7)
    return corner | strip | frame | cell


def _group(x0, y0, x1, y1, area, apart: np.ndarray, gap: float, height: float) -> np.ndarray:
    """Group index per component: pieces of one digit are close (within `gap` px), and a speck beside
    a stroke joins it only when touching it. Components flagged in `apart` stay alone."""
    dx = np.maximum(0, np.maximum(x0[:, None], x0[None]) - np.minimum(x1[:, None], x1[None]))
    dy = np.maximum(0, np.maximum(y0[:, None], y0[None]) - np.minimum(y1[:, None], y1[None]))
    substantial = np.minimum(area[:, None], area[None]) >= 0.05 * np.maximum(area[:, None], area[None])
    join = (dx <= gap) & (dy <= gap) & (substantial | (np.maximum(dx, dy) <= 0.03 * height))
    join &= ~apart[:, None] & ~apart[None]
    # An underline is not part of the digit above it: a dash (far wider than tall, as wide as half a
    # digit) lying below another mark stays apart from it (a 5's or a 7's bar is on top).
    cw, ch = x1 - x0, y1 - y0
    dash = (cw > 3 * ch) & (cw >= 0.5 * height)
    below = y0[:, None] >= y1[None] - 0.1 * ch[None]  # [i, j]: i lies below j
    join &= ~((dash[:, None] & below) | (dash[None] & below.T))
    parent = list(range(len(x0)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(join, 1)):
        parent[root(int(i))] = root(int(j))
    return np.array([root(i) for i in range(len(x0))])


def _ids_mask(labels: np.ndarray, ids: list[int], n: int) -> np.ndarray:
    """uint8 mask (255) of the pixels whose component label is one of `ids` (labels from OpenCV, n labels)."""
    if len(ids) == 1:
        return cv2.compare(labels, ids[0], cv2.CMP_EQ)
    lut = np.zeros(n, np.uint8)
    lut[ids] = 255
    return lut[labels]


def _box_like(mask: np.ndarray) -> bool:
    """Whether a mark (uint8 mask cut to its box) is a rectangle's outline: nearly all of its ink lies
    along the edges of its box (within 8% of the box's size). An oval 0 touches its box at four points."""
    h, w = mask.shape
    m = max(2, round(0.08 * min(h, w)))
    if min(h, w) < 4 * m:
        return False
    total = cv2.countNonZero(mask)
    return cv2.countNonZero(mask[m:-m, m:-m]) < 0.1 * total


def _straight_line(mask: np.ndarray, spread: float = None) -> bool:
    """Whether a mark (uint8 mask) is one thin straight line at any angle: its ink's spread across its
    main axis is under `spread` (default STRAIGHT_SPREAD) of its spread along it (image moments). A 1,
    even a thin one in a tight crop, is ~0.1; a fold or a crease photographed across a page ~0.01."""
    spread = STRAIGHT_SPREAD if spread is None else spread
    m = cv2.moments(mask, binaryImage=True)
    if m["m00"] < 2:
        return False
    a, b, c = m["mu20"], m["mu11"], m["mu02"]
    root = ((a - c) ** 2 + 4 * b * b) ** 0.5
    major, minor = (a + c + root) / 2, (a + c - root) / 2
    return major > 0 and max(minor, 0.0) < spread ** 2 * major


def _underline(mask: np.ndarray) -> np.ndarray | None:
    """A line drawn under a digit and touching it, in a mark's mask (uint8, cut to its box): the mask of
    the line's pixels, or None. A straight horizontal run, at least half the mark's width long, in its
    bottom fifth, reaching beyond the ink above it by UNDERLINE_BEYOND of its length (a 2's base or a
    1's foot is about as wide as the digit). Kind: `underlined`."""
    h, w = mask.shape
    if w < 8 or h < 8:
        return None
    counts = cv2.reduce((mask > 0).view(np.uint8), 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    if counts[int(0.8 * h) :].max() < w // 2:  # no row of the bottom fifth holds that much ink: no line
        return None

    def extent(part: np.ndarray) -> int:
        cols = np.flatnonzero(cv2.reduce(part, 0, cv2.REDUCE_MAX).ravel())
        return int(cols[-1] - cols[0] + 1) if len(cols) else 0

    if extent(mask[: int(0.8 * h)]) > (1 - UNDERLINE_BEYOND) * extent(mask[int(0.8 * h) :]):
        return None  # the bottom is no wider than the digit above it: a 2's base, a 1's foot
    run = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(max(5, w // 2), 1))
    rows = np.flatnonzero(cv2.reduce(run, 1, cv2.REDUCE_MAX).ravel())
    if len(rows) == 0 or rows[0] < 0.8 * h:
        return None
    above = mask[: rows[0]]
    cols = np.flatnonzero(cv2.reduce(above, 0, cv2.REDUCE_MAX).ravel())
    line_cols = np.flatnonzero(cv2.reduce(run, 0, cv2.REDUCE_MAX).ravel())
    if len(cols) == 0 or (cols[-1] - cols[0] + 1) > (1 - UNDERLINE_BEYOND) * (line_cols[-1] - line_cols[0] + 1):
        return None
    return cv2.dilate(run, _kernel(1, 3))  # with the line's soft edges


def _touching_digits(mask: np.ndarray) -> int | None:
    """Where to cut a mark (uint8 mask, cut to its box) that is two digits written touching: the column
    (from the left) of the narrowest joint, or None (also when that column's ink is two strokes half
    the mark's height apart: the top and the bottom of a wide 0). Only a mark far wider than a digit (TOUCHING_WIDTH
    times its height; under 1.5% of MNIST's digits are) whose ink, in its middle half, thins to
    TOUCHING_JOINT of its thickest column and to about one stroke, with a digit-tall part on each side. Kind: `two-digits-touching`."""
    h, w = mask.shape
    if w < TOUCHING_WIDTH * h or h < 8:
        return None
    column = cv2.reduce((mask > 0).view(np.uint8), 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    lo, hi = w // 4, w - w // 4
    cut = lo + int(np.argmin(column[lo:hi]))
    if column[cut] > TOUCHING_JOINT * column.max() or column[cut] > TOUCHING_STROKES * stroke_width(mask):
        return None  # a 0's or a 2's middle holds two strokes: the joint of two digits is about one
    rows = np.flatnonzero(mask[:, cut])
    if len(rows) and rows[-1] - rows[0] + 1 >= 0.5 * h and np.any(np.diff(rows) > 1):
        return None  # the top and the bottom of a wide 0, not one joint (crossing strokes stay close)
    for part in (mask[:, :cut], mask[:, cut:]):
        rows = np.flatnonzero(cv2.reduce(part, 1, cv2.REDUCE_MAX).ravel())
        if len(rows) == 0 or rows[-1] - rows[0] + 1 < SIDE_BY_SIDE_HEIGHT * h:
            return None
    return cut


def _has_hole(mask: np.ndarray) -> bool:
    """Whether a mask (uint8, nonzero = ink) encloses paper: the paper reached from outside is not all of it."""
    outside = cv2.copyMakeBorder((mask > 0).view(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    paper = outside.size - cv2.countNonZero(outside)
    cv2.floodFill(outside, None, (0, 0), 1)
    return outside.size - cv2.countNonZero(outside) > 0 and paper > 0


def keep_digit_components(ink: np.ndarray, level: int, noise: float, ruled: bool = False
                          ) -> tuple[list[np.ndarray], bool]:
    """Ink uint8 [H,W] -> (one uint8 mask [H,W] per digit, left to right; whether sizeable marks were dropped).

    Connected components of the ink (8-connected); dark photo corners, strips along the image's edge
    and frames around other ink are set apart (`_not_digit_parts`); the rest are grouped when closer
    than MERGE_GAP of the digit's height (the two strokes of a 4, a broken 5). Left out: specks and
    dust, groups too small to be a digit, dashes and underlines (far wider than tall), solid blobs,
    and groups too faint or too soft-edged to be ink (the edge of a shadow). The digit is the largest
    group that remains; other groups of comparable height beside it (not above or below), with
    comparable ink and strokes, are further digits.
    Raises ImageError("no digit found ...") when nothing digit-like remains: blank, ruled or squared
    paper, only lines or specks. Kinds: `specks`, `dark-corner`, `alpha-speckle`, `highlighter`,
    `boxed`, `blank-*`, `two-digits`, `three-digits`; field images c05 (blank squared paper) and
    c06 ("17").
    """
    h, w = ink.shape
    binary = cv2.compare(ink, level, cv2.CMP_GT)
    n, labels, stats = _components(binary)
    if n <= 1:
        raise _no_digit("no ink (the image is blank or has no contrast)")
    stats = stats[1:]
    order = np.argsort(-stats[:, 4], kind="stable")[:MAX_COMPONENTS]
    order = order[stats[order, 4] >= 3]  # single pixels and pairs are noise
    if len(order) == 0:
        raise _no_digit("only specks")
    x0, y0, cw, ch, area = stats[order].astype(np.int64).T
    x1, y1 = x0 + cw, y0 + ch
    apart = _not_digit_parts(x0, y0, x1, y1, area, h, w)
    sizeable = (area >= 0.1 * area.max()) & ~apart
    height = float(ch[sizeable].max()) if sizeable.any() else float(ch.max())
    roots = [0]
    if len(order) > 1:
        roots = _group(x0, y0, x1, y1, area, apart, max(2.0, MERGE_GAP * height), height).tolist()
    # Each group's box, ink and labels, in plain ints: a page has a handful of components, and numpy's
    # per-call cost would be most of the work.
    by_root: dict[int, dict] = {}
    for r, i, gx0, gy0, gx1, gy1, a, ap in zip(roots, (order + 1).tolist(), x0.tolist(), y0.tolist(), x1.tolist(),
                                                y1.tolist(), area.tolist(), apart.tolist()):
        g = by_root.get(r)
        if g is None:
            by_root[r] = dict(ids=[i], x0=gx0, y0=gy0, x1=gx1, y1=gy1, area=a, apart=ap)
        else:
            g["ids"].append(i)
            g.update(x0=min(g["x0"], gx0), y0=min(g["y0"], gy0), x1=max(g["x1"], gx1), y1=max(g["y1"], gy1),
                     area=g["area"] + a, apart=g["apart"] or ap)
    groups = [by_root[r] for r in sorted(by_root)]
    for g in groups:
        g["w"], g["h"] = g["x1"] - g["x0"], g["y1"] - g["y0"]
    min_side = max(MIN_DIGIT_PX, MIN_DIGIT_SIDE * max(h, w))
    min_peak = max(MIN_CONTRAST, min(MIN_CONTRAST_SIGMAS * noise, 1.5 * level))
    candidates = []
    for g in groups:
        fill = g["area"] / float(g["w"] * g["h"])
        if (g["apart"] or max(g["w"], g["h"]) < min_side  # a speck
                or g["w"] > 3 * g["h"]):  # a dash, an underline, what is left of a line
            continue
        box = (slice(g["y0"], g["y1"]), slice(g["x0"], g["x1"]))
        g["mask"] = _ids_mask(labels[box], g["ids"], n)
        underline = _underline(g["mask"])
        if underline is not None:  # drawn touching the digit: cut, and the digit's box is its own again
            g["mask"] = cv2.subtract(g["mask"], underline)
            g["cut"] = (box, underline)
            bx, by, bw, bh = cv2.boundingRect(g["mask"])
            g.update(x0=g["x0"] + bx, y0=g["y0"] + by, w=bw, h=bh, area=cv2.countNonZero(g["mask"]))
            g["x1"], g["y1"] = g["x0"] + bw, g["y0"] + bh
            box = (slice(g["y0"], g["y1"]), slice(g["x0"], g["x1"]))
            g["mask"] = g["mask"][by : by + bh, bx : bx + bw]
            fill = g["area"] / float(bw * bh)
            if max(bw, bh) < min_side:
                continue
        if fill > 0.75 and g["h"] < 1.8 * g["w"] and not _has_hole(g["mask"]):
            continue  # a blob, a smudge (a bold 0 has a hole)
        if _box_like(g["mask"]):
            continue  # an empty box or cell frame
        edges = (g["x0"] <= 0) + (g["y0"] <= 0) + (g["x1"] >= w) + (g["y1"] >= h)
        if edges >= 2 and _straight_line(g["mask"]):
            continue  # a fold, a crease or a rule at a slant, from edge to edge of the image
        if ruled and ((g["x0"] <= 0 and g["x1"] >= w) or (g["y0"] <= 0 and g["y1"] >= h)) \
                and _straight_line(g["mask"], RULED_SPREAD):
            continue  # on ruled or squared paper: a grid line too heavy to be taken as one, edge to edge
        g["peak"] = cv2.minMaxLoc(ink[box], g["mask"])[1]
        sharpness = edge_sharpness(ink[box], g["mask"], g["peak"])
        if g["peak"] >= min_peak and sharpness >= (MIN_SHARPNESS if g["peak"] >= FAINT_CONTRAST else FAINT_SHARPNESS):
            candidates.append(g)
    if not candidates:
        raise _no_digit("only lines, specks or marks" if len(groups) > 1 else "only specks")
    main = max(candidates, key=lambda g: g["area"])
    beside = [g for g in candidates if g is not main
              and SIDE_BY_SIDE_HEIGHT * main["h"] <= g["h"] <= main["h"] / SIDE_BY_SIDE_HEIGHT
              and min(g["y1"], main["y1"]) - max(g["y0"], main["y0"]) >= 0.5 * min(g["h"], main["h"])
              and min(g["x1"], main["x1"]) - max(g["x0"], main["x0"]) <= 0.2 * min(g["w"], main["w"])
              and g["area"] >= BESIDE_AREA * main["area"]]
    if beside:  # written with the same pen: a hair or a scratch beside a digit is not a 1
        width = stroke_width(main["mask"])
        beside = [g for g in beside if stroke_width(g["mask"]) >= BESIDE_STROKE * width]
    dropped = any(all(g is not d for d in [main] + beside) and max(g["w"], g["h"]) >= 0.3 * main["h"]
                  and g["area"] >= 0.05 * main["area"] for g in groups)
    split = _touching_digits(main["mask"]) if not beside else None
    if split is not None:  # two digits written touching: each side of the narrowest joint is one
        x = main["x0"] + split
        beside = [dict(main, x1=x, w=x - main["x0"], keep=(main["x0"], x)),
                  dict(main, x0=x, w=main["x1"] - x, keep=(x, main["x1"]))]
        main = beside.pop()
    digits = sorted([main] + beside, key=lambda g: g["x0"])
    masks = [_ids_mask(labels, g["ids"], n) for g in digits]
    for mask, g in zip(masks, digits):
        if "cut" in g:
            box, underline = g["cut"]
            mask[box] = cv2.subtract(mask[box], underline)
            dropped = True
        if "keep" in g:
            mask[:, : g["keep"][0]] = 0
            mask[:, g["keep"][1] :] = 0
    return masks, dropped


def crop_digit(ink: np.ndarray, mask: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(ink uint8 [H,W], digit mask) -> (the digit's ink, its mask), cut to the mask's box plus a margin.

    Everything outside the mask (grown by a pixel, for the strokes' soft edges) is set to 0: specks,
    marks and other digits do not enter the digit's box.
    """
    x, y, bw, bh = cv2.boundingRect(mask)
    h, w = mask.shape
    x0, y0, x1, y1 = max(0, x - margin), max(0, y - margin), min(w, x + bw + margin), min(h, y + bh + margin)
    m = mask[y0:y1, x0:x1]
    return cv2.bitwise_and(ink[y0:y1, x0:x1], cv2.dilate(m, _SQUARE)), m


def paper_haze(ink: np.ndarray, masks: list[np.ndarray]) -> float:
    """The strongest the paper alone gets, in grey levels: the 99th percentile of the ink map away from
    the digits (their masks grown by 2 px). Paper noise, texture and JPEG ringing; on a transparent
    canvas with faint alpha speckle, the speckle (samples/0/drawn-00003.png, kind `alpha-speckle`)."""
    digits = functools.reduce(cv2.bitwise_or, masks)
    away = np.equal(cv2.dilate(digits, _SQUARE5), 0).view(np.uint8)  # 1 away from the digits
    hist = cv2.calcHist([ink], [0], away, [256], [0, 256]).ravel()
    total = hist.sum()
    return float(np.searchsorted(np.cumsum(hist), 0.99 * total)) if total else 0.0


def normalise_contrast(ink: np.ndarray, mask: np.ndarray, haze: float) -> tuple[np.ndarray, float]:
    """A digit's ink uint8 -> (float32 in [0,1], its contrast in grey levels): the ink's own peak to 1.

    The peak is the 98th percentile of the digit's pixels, so a faint highlighter digit is as strong as
    a black one and a darker speck elsewhere (already dropped) does not dim it. Haze is cut: what the
    paper alone reaches (`paper_haze`) and at least MIN_HAZE_CUT of the contrast (JPEG ringing, paper
    texture, faint alpha speckle around the strokes). Kinds: `highlighter`, `alpha-speckle`.
    """
    hist = cv2.calcHist([ink], [0], mask, [256], [0, 256]).ravel()
    peak = float(np.searchsorted(np.cumsum(hist), 0.98 * hist.sum()))
    cut = min(0.5 * peak, max(MIN_HAZE_CUT * peak, haze))
    out = ink.astype(np.float32)
    out -= cut
    out *= 1.0 / max(peak - cut, 1.0)
    np.clip(out, 0.0, 1.0, out=out)
    return out, peak


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in pixels of a uint8 stroke mask: 2 * area / boundary pixels (2 for 1-2 px lines)."""
    area = cv2.countNonZero(mask)
    boundary = area - cv2.countNonZero(cv2.erode(mask, _CROSS))
    return 2.0 * area / max(boundary, 1)


def normalise_strokes(ink: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """A digit's ink float32 [h,w] in [0,1] and its mask -> (ink with MNIST's stroke width, whether thickened).

    A digit drawn with a 1-px line on a 280x280 canvas (an HTML canvas's default lineWidth), a 3-px
    brush, or a thin pen on a large scan has strokes a tenth of MNIST's once shrunk to 20x20: faint
    grey threads (field image c09: 45/255 at best). The stroke width is estimated (`stroke_width`) and
    scaled to the 20-px box; below THIN_STROKE px the strokes are redrawn at MNIST_STROKE px and full
    intensity, as a round brush along them (distance transform), before any shrinking.
    Kinds: `canvas-1px`, `canvas-3px`, `thin-pen-scan`.
    """
    _, _, bw, bh = cv2.boundingRect(mask)
    side = max(bw, bh, 1)
    width = stroke_width(mask)
    if width * DIGIT_BOX / side >= THIN_STROKE:
        return ink, False
    radius = max(0.5, (MNIST_STROKE * side / DIGIT_BOX - width) / 2)
    pad = int(np.ceil(radius)) + 1
    padded = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(cv2.bitwise_not(padded), cv2.DIST_L2, 3)  # to the nearest stroke pixel
    thick = np.float32(radius + 0.5) - distance
    np.clip(thick, 0.0, 1.0, out=thick)
    return thick, True


def _mass_bounds(mass: np.ndarray, cut: float = 0.002) -> tuple[int, int]:
    """First and last index holding the central (1 - 2*cut) of the mass: a faint fringe falls outside."""
    cum = np.cumsum(mass, dtype=np.float64)
    lo, hi = np.searchsorted(cum, [cut * cum[-1], (1 - cut) * cum[-1]])
    return int(lo), int(min(hi, len(mass) - 1))


def fit_and_centre(ink: np.ndarray) -> np.ndarray:
    """A digit's ink float32 [h,w] in [0,1] -> uint8 [28,28] in MNIST's layout.

    As MNIST was made: the ink's bounding box (the central 99.6% of its mass, so that a faint fringe
    does not shrink the digit) scaled to fit a 20x20 box keeping the aspect ratio (area averaging when
    shrinking), then placed so that its centre of mass is at (14, 14), kept in frame.
    """
    rows, cols = ink.sum(axis=1), ink.sum(axis=0)
    if rows.sum() <= 0:
        raise _no_digit("no ink left after cleaning")
    y, y1 = _mass_bounds(rows)
    x, x1 = _mass_bounds(cols)
    crop = ink[y : y1 + 1, x : x1 + 1]
    bh, bw = crop.shape
    scale = DIGIT_BOX / max(bh, bw)
    new_h, new_w = max(1, round(bh * scale)), max(1, round(bw * scale))
    digit = cv2.resize(crop, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    digit = cv2.convertScaleAbs(digit, alpha=255.0)  # rounds and saturates to uint8
    m = cv2.moments(digit)
    if m["m00"] <= 0:
        raise _no_digit("no ink left after cleaning")
    cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
    top = min(max(int(round(IMAGE_SIZE / 2 - cy)), 0), IMAGE_SIZE - new_h)  # keep the whole digit in frame
    left = min(max(int(round(IMAGE_SIZE / 2 - cx)), 0), IMAGE_SIZE - new_w)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    out[top : top + new_h, left : left + new_w] = digit
    return out


@dataclass(frozen=True)
class Prepared:
    """What preprocessing made of one image: its digit(s) in MNIST's layout, and what it noticed."""

    digits: np.ndarray  # uint8 [k,28,28], k >= 1, left to right; k > 1 only when asked for several digits
    warnings: tuple[str, ...] = ()  # infer.contract.WARN_* codes, in the order the steps fired


# A small digit on a large page (kinds `small-on-page`, `small-on-lined-page`): at WORK_SIDE px a 1-cm
# digit on an A4 scan is 9 px tall, under MIN_DIGIT_SIDE and as thin as a notebook's rules.
ZOOM_INK = 0.15  # ink spanning at most this fraction of the page's longer side is looked at closer ...
ZOOM_GAIN = 2  # ... on a page at least this many times WORK_SIDE px (a closer look gains that much)
ZOOM_CONTEXT = 1.0  # paper kept around the ink, each side, in units of the ink's longer side ...
ZOOM_MIN_CROP = 0.25  # ... and the closer look at least this fraction of the page (dust never fills it)
ZOOM_PEAK_RANK = 16  # the page's strongest ink: its 16th-strongest pixel (a hot pixel or two do not count)


@dataclass(frozen=True)
class _Source:
    """More pixels of a page than `prepare` was handed: a JPEG decoded at 1/scale (`_prepare_in_detail`)."""

    data: bytes
    scale: int

    def full(self) -> np.ndarray:
        return _decode(self.data, "mnist", 1 << 30)[0]  # jpeg_scale: 1 for any side below 2^30 px


def small_ink_box(ink: np.ndarray, cleaned: np.ndarray, level: int) -> tuple[int, int, int, int] | None:
    """Ink uint8 [H,W] (paper subtracted), the same with rules removed, the ink level -> the box
    (x0, y0, x1, y1), in its pixels, of the one small mark worth a closer look at more pixels; None
    when there is none, or the ink is large or spread.

    The mark is found in the strong ink: over half the page's strongest (its ZOOM_PEAK_RANK-th
    pixel), where a pen's digit stands and a notebook's rules and dots, thinner and paler and
    averaged away at the working size, do not (`remove_rules` would take a small digit's strokes
    with them). It is the largest strong component of 3 px or more that neither touches the image's
    edge (a page edge, the table, a shadow) nor is a dash (over 3 times wider than tall), with the
    strong components near it (within its own size: the pieces of a 5, a second digit). None when
    that group spans over ZOOM_INK of the image's longer side (the steps see it well enough as it
    is), when another strong mark half its size lies elsewhere (a dot grid, a page of writing), or
    when a sizeable mark of the cleaned ink (over ZOOM_INK, not a line) reaches into the closer
    look's window (`zoom_box`): part of a large digit would be read as a digit.
    """
    h, w = ink.shape
    peak = _ranked(ink, (max(0, ink.size - ZOOM_PEAK_RANK),))[0]
    n, _, stats = _components(cv2.compare(ink, max(level, peak // 2), cv2.CMP_GT))
    if n <= 1:
        return None
    x0, y0, bw, bh, area = stats[1:].astype(np.int64).T
    x1, y1 = x0 + bw, y0 + bh
    inner = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h) & (bw <= 3 * bh)
    anchors = np.flatnonzero(inner & (area >= 3))
    if len(anchors) == 0:
        return None
    a = anchors[np.argmax(area[anchors])]
    box = [int(x0[a]), int(y0[a]), int(x1[a]), int(y1[a])]
    near = inner & (area >= 2)
    joined = near
    for _ in range(3):  # grow the group while pieces within reach join it
        reach = max(3, box[2] - box[0], box[3] - box[1])
        joined = near & (x1 >= box[0] - reach) & (x0 <= box[2] + reach) & (y1 >= box[1] - reach) & (y0 <= box[3] + reach)
        grown = [int(x0[joined].min()), int(y0[joined].min()), int(x1[joined].max()), int(y1[joined].max())]
        if grown == box:
            break
        box = grown
    long = max(h, w)
    if max(box[2] - box[0], box[3] - box[1]) > ZOOM_INK * long or (inner & ~joined & (2 * area >= area[a])).any():
        return None
    cx0, cy0, cx1, cy1 = zoom_box(box, w, h)
    _, _, stats = _components(cv2.compare(cleaned, level, cv2.CMP_GT))
    x0, y0, bw, bh = stats[1:, :4].astype(np.int64).T
    sizeable = (np.maximum(bw, bh) > ZOOM_INK * long) & (np.minimum(bw, bh) > 3)
    overlaps = sizeable & (x0 + bw > cx0) & (x0 < cx1) & (y0 + bh > cy0) & (y0 < cy1)
    return None if overlaps.any() else (box[0], box[1], box[2], box[3])


def zoom_box(box: tuple[int, int, int, int] | list[int], w: int, h: int) -> tuple[float, float, float, float]:
    """The square window (x0, y0, x1, y1) around an ink box for the closer look, in the same pixels:
    ZOOM_CONTEXT of the ink's size around it, at least ZOOM_MIN_CROP of the image's longer side,
    moved (not cut) to stay inside a w x h image where it fits."""
    side = max((1 + 2 * ZOOM_CONTEXT) * max(box[2] - box[0], box[3] - box[1]), ZOOM_MIN_CROP * max(w, h))
    out = []
    for lo, hi, size in ((box[0], box[2], w), (box[1], box[3], h)):
        s = min(side, size)
        start = min(max((lo + hi - s) / 2, 0), size - s)
        out.append((start, start + s))
    (x0, x1), (y0, y1) = out
    return x0, y0, x1, y1


def zoom_to_ink(grey: np.ndarray, work: np.ndarray, ink: np.ndarray, cleaned: np.ndarray, level: int,
                source: _Source | None, multi_digit: bool, lap) -> Prepared | None:
    """Named step: a small digit on a large page, read from the page's own pixels around it.

    A 1-cm digit in the corner of a scanned A4 form, a phone photo of a sheet with one small number,
    a digit on a whole notebook page: shrunk to WORK_SIDE px the digit is a few pixels tall (under
    MIN_DIGIT_SIDE: "only specks") or its strokes as thin as the rules they cross. When the page is
    at least ZOOM_GAIN * WORK_SIDE px (a 256x256 scan never pays for this step) and its ink is one small mark
    (`small_ink_box`), the window `zoom_box` around it is cut from the full-resolution page (a JPEG
    decoded at reduced scale is decoded again whole, `_Source`) and the steps run on that window
    alone. None (the page's own steps go on) when there is no such mark, or the window holds no digit
    (dust, a speck: ImageError), so blank pages stay blank. Kinds: `small-on-page`,
    `small-on-lined-page`, `blank-large-page`.
    """
    scale = source.scale if source is not None else 1
    if max(grey.shape) * scale < ZOOM_GAIN * WORK_SIDE:
        return None
    box = small_ink_box(ink, cleaned, level)
    lap("zoom_to_ink")
    if box is None:
        return None
    page = source.full() if source is not None else grey
    h, w = work.shape
    fy, fx = page.shape[0] / h, page.shape[1] / w
    x0, y0, x1, y1 = zoom_box(box, w, h)
    window = page[int(y0 * fy) : math.ceil(y1 * fy), int(x0 * fx) : math.ceil(x1 * fx)]
    lap("zoom_window")  # the step `_prepare_in_detail` looks for: the page was read at full resolution
    try:
        return _prepare_steps(window, multi_digit, lap, zoom=False)
    except ImageError:
        return None


def _no_lap(step: str) -> None:
    pass


def mnist_layout_small(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first steps for 28x28 images, on a whole uint8 stack [n,28,28] -> (taken bool [n], digits
    uint8 [n,28,28]): `is_mnist_format` (passed through untouched), else `centre_by_shift`. An image
    not taken goes through the pipeline's steps alone; its row of `digits` is zeros."""
    dark, ink = _ink_bright(stack)
    lay = _layout(ink)
    # is_mnist_format of each image as it is: where the ink is light, `ink` is the image itself; where
    # it is dark, only an image with at most half its pixels lit can be (an inverted digit never is).
    passed = _in_mnist_format(lay) & ~dark
    maybe = np.flatnonzero(dark & (np.count_nonzero(stack.reshape(len(stack), -1), axis=1) <= IMAGE_SIZE ** 2 // 2))
    if len(maybe):
        passed[maybe] = _mnist_format_many(stack[maybe])
    taken, digits = _shift_to_centre(ink, lay)
    digits[passed] = stack[passed]
    return taken | passed, digits


def _prepare(grey: np.ndarray, multi_digit: bool, lap, source: _Source | None = None) -> Prepared:
    if is_mnist_format(grey):
        return Prepared(grey[None])  # untouched: the caller's own array
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        taken, digits = centre_by_shift(grey[None])
        lap("centre_by_shift")
        if taken[0]:
            return Prepared(digits)
    return _prepare_steps(grey, multi_digit, lap, source=source)


def _prepare_steps(grey: np.ndarray, multi_digit: bool, lap, *, source: _Source | None = None,
                   zoom: bool = True) -> Prepared:
    """The pipeline's steps, for an image that is not a 28x28 digit `mnist_layout_small` takes
    (`zoom`: whether `zoom_to_ink` may look closer; `source`: where a reduced JPEG's pixels are)."""
    if min(grey.shape) < 3:
        raise ImageError(f"image is {grey.shape[1]}x{grey.shape[0]} pixels: too small to hold a digit")
    noticed: list[str] = []
    work = to_working_size(grey)
    lap("to_working_size")
    dark_ink = ink_is_dark(work)
    framed = not dark_ink and framed_paper(work)  # light paper in a frame that outweighs it
    dark_ink |= framed
    lap("ink_is_dark")
    even = None if framed else _even_paper(cv2.bitwise_not(work) if dark_ink else work)
    ink, noise = subtract_paper(work, dark_ink, even)
    table_removed = False
    # Evenly lit paper all along the image's edges is no photo of a sheet on a table.
    beyond = beyond_the_page(work) if dark_ink and even is None else None
    if beyond is not None:
        table = cv2.bitwise_and(ink, beyond)
        ink = cv2.subtract(ink, table)
        # A dark table or corner left out: said as the marks dropped below are.
        table_removed = cv2.countNonZero(cv2.compare(table, MIN_INK_LEVEL, cv2.CMP_GT)) > 0.01 * table.size
    level = ink_level(ink, noise)
    lap("subtract_paper")
    cleaned, lines = remove_rules(ink, level)
    lap("remove_rules")
    if zoom and (zoomed := zoom_to_ink(grey, work, ink, cleaned, level, source, multi_digit, lap)) is not None:
        return zoomed
    try:
        masks, marks = keep_digit_components(cleaned, level, noise, ruled=lines > 0)
    except ImageError:
        if lines != 1 or not _could_be_a_one(ink, cleaned):
            raise
        # One upright straight line in the middle and nothing else: a 1 drawn top to bottom (a canvas,
        # a tight crop) rather than a rule on empty paper.
        cleaned, lines = ink, 0
        masks, marks = keep_digit_components(cleaned, level, noise, ruled=lines > 0)
    ink = cleaned
    if lines:
        noticed.append(WARN_LINES_REMOVED)
    if marks or table_removed:
        noticed.append(WARN_MARKS_REMOVED)
    as_one = len(masks) > 1 and not multi_digit
    if len(masks) > 1:
        noticed.append(WARN_SEVERAL_DIGITS)
        if as_one:  # read as one image, as asked; the warning says why it may be wrong
            masks = [functools.reduce(cv2.bitwise_or, masks)]
    lap("keep_digit_components")
    haze = max(3.0 * noise, paper_haze(ink, masks))
    digits, faint, thin = [], False, False
    for mask in masks:
        digit_ink, digit_mask = crop_digit(ink, mask)
        digit, contrast = normalise_contrast(digit_ink, digit_mask, haze)
        faint |= contrast < FAINT_CONTRAST
        lap("normalise_contrast")
        if not as_one:  # several digits squeezed into one box are no digit's strokes
            digit, thickened = normalise_strokes(digit, digit_mask)
            thin |= thickened
        lap("normalise_strokes")
        digits.append(fit_and_centre(digit))
        lap("fit_and_centre")
    noticed += [WARN_FAINT_INK] * faint + [WARN_THIN_STROKES] * thin
    return Prepared(np.stack(digits), tuple(noticed))


def prepare(grey: np.ndarray, *, multi_digit: bool = False) -> Prepared:
    """A uint8 grey image [H,W], any size and polarity -> Prepared: uint8 [k,28,28] digits and warning codes.

    The pipeline of named steps above (deskewing is the model's business, not done here). With
    multi_digit=False several digits side by side are read as one image (k = 1) and carry
    `several-digits`; with multi_digit=True each is returned, left to right (k >= 2).
    Raises ImageError("no digit found: ...") when there is nothing digit-like to read.
    """
    return _prepare(grey, multi_digit, _no_lap)


@dataclass(frozen=True)
class PreparedBatch:
    """What preprocessing made of many images, as arrays: n images, m digits in all.

    `batch[i]` is image i's Prepared, or the ImageError that says why it has no digit.
    """

    digits: np.ndarray  # uint8 [m,28,28]: every image's digit(s), in order
    counts: np.ndarray  # int32 [n]: digits per image (0: an error)
    warnings: dict[int, tuple[str, ...]]  # image index -> warning codes, for images where some fired
    errors: dict[int, ImageError]  # image index -> why it has no digit

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, i: int) -> Prepared | ImageError:
        if i in self.errors:
            return self.errors[i]
        start = int(self.counts[:i].sum())
        return Prepared(self.digits[start : start + self.counts[i]], self.warnings.get(i, ()))


def prepare_many(greys: Sequence[np.ndarray], *, multi_digit: bool = False) -> PreparedBatch:
    """`prepare` over many uint8 grey images -> PreparedBatch (errors as values, never raised).

    The same results as one `prepare` call per image, whatever the batch: the 28x28 images' first
    steps (`mnist_layout_small`) run on all of them as one array; every other image, and each small
    one those steps do not take, goes through the pipeline's steps alone.
    """
    out = _Collector(len(greys))
    for i, grey in enumerate(greys):
        if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
            out.small(i, grey)
        else:
            out.prepare(i, grey, multi_digit)
    return out.finish(multi_digit)


def prepare_files(sources: Sequence[str | os.PathLike | BinaryIO], mode: str = "mnist", *,
                  multi_digit: bool = False) -> PreparedBatch:
    """`prepare_file` over many files -> PreparedBatch (ImageErrors as values; other exceptions propagate).

    The same results as one `prepare_file` call per file. Files are decoded one after another and
    their pages prepared in runs of up to HELD_BYTES (a large page at once: memory holds one large
    image at a time); the 28x28 ones are prepared together at the end, as one array (`prepare_many`).
    """
    out = _Collector(len(sources))
    held: list[tuple[int, np.ndarray, bytes | None, int]] = []
    held_bytes = 0
    for i, source in enumerate(sources):
        try:
            data = _load(source)
            grey, scale = (_read_large(source, mode), 1) if data is None else _decode(data, mode, DRAFT_SIZE)
        except ImageError as exc:
            out.errors[i] = exc
            continue
        if mode != "mnist":
            out.parts[i] = resize_raw(grey)[None]
        elif grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
            out.small(i, grey)
        else:
            held.append((i, grey, data, scale))
            held_bytes += grey.nbytes + len(data or b"")
            if held_bytes > HELD_BYTES:
                for page in held:
                    out.prepare(*page[:2], multi_digit, *page[2:])
                held, held_bytes = [], 0
    for page in held:
        out.prepare(*page[:2], multi_digit, *page[2:])
    return out.finish(multi_digit)


# Decoded pages (with their files' bytes, for `_prepare_in_detail`) held back to be prepared one after
# another once a run of files is decoded: the decoder's and the steps' code and tables each stay in
# the CPU's caches, ~10% less time a page on 256x256 JPEG scans (bench/infer_throughput.py).
HELD_BYTES = 8 << 20


class _Collector:
    """Builds a PreparedBatch image by image, holding the 28x28 images back to prepare them together."""

    def __init__(self, n: int):
        self.parts: list[np.ndarray | None] = [None] * n  # each image's digits, uint8 [k,28,28]
        self.warnings: dict[int, tuple[str, ...]] = {}
        self.errors: dict[int, ImageError] = {}
        self.small_index: list[int] = []
        self.small_greys: list[np.ndarray] = []

    def small(self, i: int, grey: np.ndarray) -> None:
        self.small_index.append(i)
        self.small_greys.append(grey)

    def prepare(self, i: int, grey: np.ndarray, multi_digit: bool, data: bytes | None = None, scale: int = 1) -> None:
        try:
            prepared = _prepare_in_detail(grey, data, scale, multi_digit)
        except ImageError as exc:
            self.errors[i] = exc
            return
        self.parts[i] = prepared.digits
        if prepared.warnings:
            self.warnings[i] = prepared.warnings

    def finish(self, multi_digit: bool) -> PreparedBatch:
        n = len(self.parts)
        if self.small_index:
            taken, digits = mnist_layout_small(np.stack(self.small_greys))
            if len(self.small_index) == n and taken.all():  # a folder of tiny digits: the stack is the batch
                return PreparedBatch(digits, np.ones(n, np.int32), {}, {})
            for j, i in enumerate(self.small_index):
                if taken[j]:
                    self.parts[i] = digits[j : j + 1]
                else:
                    self.prepare(i, self.small_greys[j], multi_digit)
        counts = np.array([0 if p is None else len(p) for p in self.parts], np.int32)
        kept = [p for p in self.parts if p is not None]
        digits = np.concatenate(kept) if kept else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        return PreparedBatch(digits, counts, self.warnings, self.errors)


def profile_prepare(grey: np.ndarray, times: dict[str, float], *, multi_digit: bool = False) -> Prepared:
    """`prepare`, adding the seconds spent in each step to `times` (also when it raises ImageError)."""
    last = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        times[step] = times.get(step, 0.0) + now - last[0]
        last[0] = now

    return _prepare(grey, multi_digit, lap)


def to_mnist(grey: np.ndarray) -> np.ndarray:
    """A uint8 grey image of a single digit -> uint8 [28,28] in MNIST's layout (MNIST's own: the same array)."""
    if is_mnist_format(grey):
        return grey
    return prepare(grey).digits[0]


_CENTRE = IMAGE_SIZE / 2  # MNIST's centre of mass sits at pixel coordinate 14 (is_mnist_format)


DESKEW_BLOCK = 512  # digits whose moments are taken together (the int64 temporaries stay in cache)


def _deskew_matrices(stack: np.ndarray) -> np.ndarray:
    """Each digit's inverse warp for `deskew`, from its image moments: uint8 [n,28,28] -> float64 [n,2,3].

    The raw moments m00, m10, m01, m11, m02 of all the digits at once, as int64 sums (exact), then
    the central moments as cv2.moments derives them (mu = m - m_i * (m_j * (1 / m00))), so that each
    matrix is bit for bit the one cv2.moments would give. (No matrix product: in a decode worker,
    OpenBLAS's threads would spin on the other workers' cores.)
    """
    rows = np.add.reduce(stack, axis=2, dtype=np.int64)  # [n,28]: each row's mass
    cols = np.add.reduce(stack, axis=1, dtype=np.int64)
    row_x = np.add.reduce(stack * _INDEX.astype(np.int32), axis=2)  # [n,28]: each row's sum of x * pixel
    m00, m10, m01 = rows.sum(1), (cols * _INDEX).sum(1), (rows * _INDEX).sum(1)
    m11, m02 = (row_x * _INDEX).sum(1), (rows * _INDEX * _INDEX).sum(1)
    m00, m10, m01, m11, m02 = (m.astype(np.float64) for m in (m00, m10, m01, m11, m02))
    with np.errstate(invalid="ignore", divide="ignore"):  # blank digits: NaN, not warped
        inv_m00 = 1.0 / m00
        mu11 = m11 - m10 * (m01 * inv_m00)
        mu02 = m02 - m01 * (m01 * inv_m00)
        cy, cx = m01 / m00, m10 / m00
        alpha = np.where(mu02 > 1e-6, mu11 / np.where(mu02 > 1e-6, mu02, 1.0), 0.0)
    # Output pixel (oy, ox) reads input (oy - 14 + cy, ox - 14 + cx + alpha * (oy - 14)).
    matrices = np.zeros((len(stack), 2, 3))
    matrices[:, 0, 0] = matrices[:, 1, 1] = 1.0
    matrices[:, 0, 1] = alpha
    matrices[:, 0, 2] = cx - _CENTRE - alpha * _CENTRE
    matrices[:, 1, 2] = cy - _CENTRE
    return matrices


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
    stack = digits.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    out = np.zeros_like(stack)
    for start in range(0, len(stack), DESKEW_BLOCK):
        block = stack[start : start + DESKEW_BLOCK]
        matrices = _deskew_matrices(block)
        for i in np.flatnonzero(block.any(axis=(1, 2))).tolist():  # an empty image stays empty
            cv2.warpAffine(block[i], matrices[i], (IMAGE_SIZE, IMAGE_SIZE), dst=out[start + i],
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    return out.reshape(digits.shape)


def resize_raw(grey: np.ndarray) -> np.ndarray:
    """`--preprocess none`: the whole image resized to 28x28, nothing else."""
    if grey.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return grey
    from PIL import Image

    return np.asarray(Image.fromarray(grey).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def prepare_file(source: str | os.PathLike | BinaryIO, mode: str = "mnist", *, multi_digit: bool = False) -> Prepared:
    """Image file -> Prepared: MNIST-layout digit(s), or with mode='none' the whole image resized to 28x28.

    `read_grey`, then `prepare` (a JPEG whose page needs more pixels than it was decoded with is
    decoded again: `_prepare_in_detail`). Raises ImageError.
    """
    data = _load(source)
    grey, scale = (_read_large(source, mode), 1) if data is None else _decode(data, mode, DRAFT_SIZE)
    if mode != "mnist":
        return Prepared(resize_raw(grey)[None])
    return _prepare_in_detail(grey, data, scale, multi_digit)


def _prepare_in_detail(grey: np.ndarray, data: bytes | None, scale: int, multi_digit: bool) -> Prepared:
    """`prepare`; for a JPEG decoded at reduced scale (`jpeg_scale`) whose page has lines, again from
    the file decoded with WORK_SIDE px, and that answer stands.

    The working size is what the page needs: a digit on plain paper reads the same at 64 px as at
    256, and decodes and prepares in a fraction of the time; ruled and squared paper does not: at a
    quarter or an eighth of their size its rules are as thin and faint as the strokes, and part of
    the digit goes with them. A page where `remove_rules` found lines is decoded again at the size
    every other format is prepared at (`to_working_size`). On bench/real_world.py's JPEGs (seeds 0,
    1, 2; 60 images per kind) this reads `ruled` 96.7/95.0/91.7% -> 98.3/100/96.7%, `squared`
    88.3/91.7/98.3% -> 88.3/95.0/98.3%, `boxed` 98.3% -> 100% at seed 0, and no kind worse. (Decoding
    again pages where nothing digit-like was found as well reads a blank form cell as a digit.)
    A small digit on a large page is read from the file decoded whole (`zoom_to_ink`, `_Source`),
    and that answer stands.
    """
    steps: set[str] = set()
    prepared = _prepare(grey, multi_digit, steps.add, _Source(data, scale) if scale > 1 else None)
    if scale == 1 or WARN_LINES_REMOVED not in prepared.warnings or "zoom_window" in steps:
        return prepared
    finer, finer_scale = _decode(data, "mnist", WORK_SIDE)
    if finer_scale == scale:  # already as fine as a decode gets (a JPEG over 2048 px a side)
        return prepared
    return _prepare(finer, multi_digit, _no_lap, _Source(data, finer_scale) if finer_scale > 1 else None)


def load_digit(source: str | os.PathLike | BinaryIO, mode: str = "mnist") -> np.ndarray:
    """Image file -> uint8 [28,28] model-ready digit (MNIST layout, or a raw resize with mode='none')."""
    return prepare_file(source, mode).digits[0]
