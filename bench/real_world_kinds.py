"""Real-world digit images of every kind in issue #9, made from digits the model reads right as plain MNIST.

Each kind is a seeded generator of encoded files (PNG or JPEG bytes, as a user would have them) with
their truth: one digit, several digits side by side ("17"), or nothing to read (""). The digit
shapes come from `DigitShapes`: MNIST test digits, their skeletons drawn as thin lines, and digits
printed in the machine's fonts, each kept only if the model reads it right when it is laid out as
MNIST is (`ideal_mnist`): so a wrong answer on a generated image is the preprocessing's.

    shapes = DigitShapes(images, labels, read)      # read: uint8 [N,28,28] -> predicted labels
    for sample in make_samples(KINDS_BY_NAME["canvas-1px"], shapes, n=40, seed=0): ...

Used by bench/real_world.py (the table), tests/test_preprocess.py and the README's contact sheet.
Kinds vary size, position, contrast, noise, blur and format, so that a fix is for the kind, not one look.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.realistic import fonts, photo_like, scan_like, transparent_like

Reader = Callable[[np.ndarray], np.ndarray]  # uint8 [N,28,28] MNIST layout -> predicted labels [N]


@dataclass(frozen=True)
class Sample:
    """One generated file: its bytes, its extension and the truth ("7"; "17" side by side; "" nothing)."""

    data: bytes
    ext: str
    truth: str

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


@dataclass(frozen=True)
class Kind:
    name: str
    family: str  # handled | thin strokes | lines | uneven light | marks | small on page | no digit | several digits
    description: str
    make: Callable[["DigitShapes", np.random.Generator], Sample]

    @property
    def expects(self) -> str:
        """'digit', 'none' (an error row is right) or 'several' (flagged; read with multi_digit)."""
        return {"no digit": "none", "several digits": "several"}.get(self.family, "digit")


# --- digit shapes the model reads right -------------------------------------------------------------


def ideal_mnist(coverage: np.ndarray) -> np.ndarray:
    """Ink coverage float [h,w] in [0,1] (white ink) -> uint8 [28,28] laid out as MNIST was made:
    bounding box scaled into 20x20 keeping the aspect ratio (area averaging), centre of mass at 14."""
    ys, xs = np.nonzero(coverage > 0.02)
    crop = coverage[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    s = 20.0 / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    small = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    m = cv2.moments(small)
    cy, cx = m["m01"] / m["m00"], m["m10"] / m["m00"]
    top, left = min(max(round(14 - cy), 0), 28 - nh), min(max(round(14 - cx), 0), 28 - nw)
    out = np.zeros((28, 28), np.uint8)
    out[top : top + nh, left : left + nw] = small
    return out


def zhang_suen(mask: np.ndarray) -> np.ndarray:
    """One-pixel skeleton of a bool mask (Zhang & Suen 1984), whole-array numpy passes."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4, p5 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:]
            p6, p7, p8, p9 = img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            b = sum(ring[:8])
            a = sum((ring[i] == 0) & (ring[i + 1] == 1) for i in range(8))
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            kill = (img[1:-1, 1:-1] == 1) & (b >= 2) & (b <= 6) & (a == 1) & cond
            if kill.any():
                img[1:-1, 1:-1][kill] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def skeleton_segments(digit: np.ndarray, scale: int = 4) -> np.ndarray:
    """An MNIST digit -> its centre line as segments [n, 2, 2] (x, y) in a unit box (longest side 1).

    The digit is enlarged `scale` times, thresholded and thinned; neighbouring skeleton pixels are
    joined (diagonals only where no corner path exists), as a pen's path would pass through them."""
    big = cv2.resize(digit, (28 * scale, 28 * scale), interpolation=cv2.INTER_CUBIC)
    skel = zhang_suen(big > 110)
    ys, xs = np.nonzero(skel)
    on = set(zip(ys.tolist(), xs.tolist()))
    segs = []
    for y, x in on:
        for dy, dx in ((0, 1), (1, 0)):
            if (y + dy, x + dx) in on:
                segs.append(((x, y), (x + dx, y + dy)))
        for dx in (1, -1):  # diagonal to (y + 1, x + dx), unless an orthogonal path already joins them
            if (y + 1, x + dx) in on and (y, x + dx) not in on and (y + 1, x) not in on:
                segs.append(((x, y), (x + dx, y + 1)))
    s = np.array(segs, np.float64).reshape(-1, 2, 2)
    lo = s.reshape(-1, 2).min(0)
    span = max(np.ptp(s.reshape(-1, 2), axis=0).max(), 1.0)
    return (s - lo) / span


def draw_segments(segments: np.ndarray, height: float, thickness: int, canvas_hw: tuple[int, int],
                  top_left: tuple[float, float]) -> np.ndarray:
    """Unit-box segments drawn with an antialiased pen of `thickness` px: uint8 coverage [H,W] (255 = ink)."""
    canvas = np.zeros(canvas_hw, np.uint8)
    pts = np.round((segments * height + np.array(top_left[::-1])) * 16).astype(np.int32)  # 4 fractional bits
    for (x0, y0), (x1, y1) in pts:
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, thickness, cv2.LINE_AA, shift=4)
    return canvas


class DigitShapes:
    """Digit shapes that `read` (the model on MNIST-layout uint8 [N,28,28]) gets right as plain MNIST."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, read: Reader):
        right = np.asarray(read(images)) == labels
        self.images, self.labels = images[right], labels[right].astype(int)
        self.read = read
        self._segments: dict[int, np.ndarray | None] = {}
        self._glyphs: list[tuple[np.ndarray, int]] | None = None

    def reads_right(self, coverage: np.ndarray, label: int) -> bool:
        """Whether the model reads this ink shape (float [h,w] in [0,1]) as `label` when laid out as MNIST."""
        return int(self.read(ideal_mnist(coverage)[None])[0]) == label

    def mnist(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A random MNIST test digit (uint8 [28,28], white on black) and its label."""
        i = int(rng.integers(len(self.images)))
        return self.images[i], int(self.labels[i])

    def strokes(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A digit's centre line (segments in a unit box, see skeleton_segments) that the model reads
        right when drawn at MNIST's stroke width and laid out as MNIST."""
        while True:
            i = int(rng.integers(len(self.images)))
            if i not in self._segments:
                segs = skeleton_segments(self.images[i])
                drawn = draw_segments(segs, 100, 15, (130, 130), (15, 15))  # MNIST's ~3/20 stroke
                ok = int(self.read(ideal_mnist(drawn / 255.0)[None])[0]) == self.labels[i]
                self._segments[i] = segs if ok and len(segs) else None
            if self._segments[i] is not None:
                return self._segments[i], int(self.labels[i])

    def printed(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A digit printed in one of the machine's fonts: coverage float32 [h,w] (tight box) and its label."""
        if self._glyphs is None:
            self._glyphs = []
            for path in fonts() or [None]:
                font = ImageFont.truetype(path, 160) if path else ImageFont.load_default(size=160)
                for label in range(10):
                    img = Image.new("L", (220, 220), 0)
                    ImageDraw.Draw(img).text((30, 10), str(label), fill=255, font=font)
                    cov = np.asarray(img, np.float32) / 255.0
                    ys, xs = np.nonzero(cov > 0.02)
                    cov = cov[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                    if int(self.read(ideal_mnist(cov)[None])[0]) == label:
                        self._glyphs.append((cov, label))
        cov, label = self._glyphs[int(rng.integers(len(self._glyphs)))]
        return cov, label

    def any_digit(self, rng: np.random.Generator, printed_share: float = 0.0) -> tuple[np.ndarray, int]:
        """Coverage float32 [h,w] (tight box) of an MNIST digit, or with `printed_share` a printed one."""
        if rng.random() < printed_share:
            return self.printed(rng)
        digit, label = self.mnist(rng)
        return tight(digit / 255.0), label


# --- drawing helpers ----------------------------------------------------------------------------------


def tight(coverage: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(coverage > 0.02)
    return coverage[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)


def scaled(coverage: np.ndarray, height: float) -> np.ndarray:
    """Coverage resized so that it is `height` px tall (aspect kept), smooth, in [0,1]."""
    h, w = coverage.shape
    f = height / h
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = cv2.resize(coverage.astype(np.float32), size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    return np.clip(out, 0, 1)


def paste(canvas: np.ndarray, coverage: np.ndarray, top: int, left: int, colour) -> None:
    """Lay ink of `colour` (grey level or RGB) over canvas (float32 [H,W] or [H,W,3]) where coverage says."""
    h, w = coverage.shape
    top, left = int(top), int(left)
    y0, x0, y1, x1 = max(0, top), max(0, left), min(canvas.shape[0], top + h), min(canvas.shape[1], left + w)
    if y0 >= y1 or x0 >= x1:
        return
    c = coverage[y0 - top : y1 - top, x0 - left : x1 - left]
    region = canvas[y0:y1, x0:x1]
    if canvas.ndim == 3:
        c = c[..., None]
    region[:] = region * (1 - c) + np.asarray(colour, np.float32) * c


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return img + rng.normal(0, sigma, img.shape).astype(np.float32) if sigma > 0 else img


def to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def encode(img: np.ndarray | Image.Image, fmt: str, quality: int = 90,
           exif: Image.Exif | None = None) -> tuple[bytes, str]:
    """Array (grey, RGB or RGBA, float or uint8) or PIL image -> (file bytes, extension)."""
    im = img if isinstance(img, Image.Image) else Image.fromarray(to_u8(img) if img.dtype != np.uint8 else img)
    buf = io.BytesIO()
    if fmt == "jpg":
        kw = {"exif": exif} if exif is not None else {}
        im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode).save(buf, "JPEG", quality=quality, **kw)
    else:
        im.save(buf, "PNG")
    return buf.getvalue(), "." + fmt


def sample(img, truth: str, rng: np.random.Generator, jpeg_share: float = 0.5, quality=(70, 95)) -> Sample:
    fmt = "jpg" if rng.random() < jpeg_share else "png"
    data, ext = encode(img, fmt, int(rng.integers(*quality)))
    return Sample(data, ext, truth)


def place(rng: np.random.Generator, size: int, extent: int, margin: int = 0) -> int:
    """A random offset that keeps `extent` px inside `size` with `margin` px to spare on each side."""
    return int(rng.integers(margin, max(margin + 1, size - extent - margin + 1)))


def ruled_paper(h: int, w: int, rng: np.random.Generator, rgb: bool = True) -> tuple[np.ndarray, int]:
    """Ruled notebook paper (light lines every 18-36 px, sometimes a red margin line): float32, spacing."""
    paper = np.array([rng.uniform(235, 255), rng.uniform(235, 255), rng.uniform(228, 252)], np.float32)
    canvas = np.ones((h, w, 3), np.float32) * paper
    spacing = int(rng.integers(18, 37))
    line = np.array([rng.uniform(120, 200), rng.uniform(160, 215), rng.uniform(215, 255)], np.float32)
    if rng.random() < 0.3:  # grey rules
        line[:] = rng.uniform(110, 200)
    thickness = int(rng.integers(1, 3))
    for y in range(int(rng.integers(3, spacing)), h, spacing):
        canvas[y : y + thickness] = canvas[y : y + thickness] * 0.3 + line * 0.7
    if rng.random() < 0.5:
        x = int(w * rng.uniform(0.08, 0.2))
        canvas[:, x : x + thickness] = np.array([220, 70, 80], np.float32)
    return (canvas if rgb else canvas.mean(axis=2)), spacing


def squared_paper(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Squared (graph) paper: light blue or grey lines every 14-30 px in both directions, RGB float32."""
    paper = np.float32(rng.uniform(238, 255))
    canvas = np.full((h, w, 3), paper, np.float32)
    spacing = int(rng.integers(14, 31))
    line = np.array([rng.uniform(140, 200), rng.uniform(150, 205), rng.uniform(200, 240)], np.float32)
    if rng.random() < 0.4:
        line[:] = rng.uniform(150, 210)
    oy, ox = int(rng.integers(0, spacing)), int(rng.integers(0, spacing))
    for y in range(oy, h, spacing):
        canvas[y] = line
    for x in range(ox, w, spacing):
        canvas[:, x] = line
    return canvas, spacing


def lighting(h: int, w: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A multiplicative light field [H,W]: 'shadow' (soft, over one corner), 'vignette', 'gradient'."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "shadow":
        cy, cx = (0 if rng.random() < 0.5 else h), (0 if rng.random() < 0.5 else w)
        angle = rng.uniform(0.2, 1.37)  # the shadow's edge, a line across the corner
        nx, ny = np.cos(angle) * (1 if cx == 0 else -1), np.sin(angle) * (1 if cy == 0 else -1)
        depth = rng.uniform(0.25, 0.5) * min(h, w) / max(abs(np.cos(angle)), abs(np.sin(angle)), 0.5)
        signed = (xx - cx) * nx + (yy - cy) * ny - depth  # < 0 inside the shadow
        softness = rng.uniform(0.05, 0.15) * min(h, w)  # a soft penumbra: a hand or a phone, not the sun
        inside = 1 / (1 + np.exp(signed / softness))
        return 1 - rng.uniform(0.35, 0.65) * inside
    if kind == "vignette":
        r2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
        return 1 - rng.uniform(0.3, 0.6) * (r2 / 2) ** rng.uniform(0.75, 1.25)
    return 0.8 + 0.2 * (rng.uniform(-1, 1) * xx / w + rng.uniform(-1, 1) * yy / h)


def photo_finish(canvas: np.ndarray, rng: np.random.Generator, blur=(0.4, 1.2), noise=(1.5, 4.0)) -> np.ndarray:
    sigma = rng.uniform(*blur)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigma) if sigma > 0.3 else canvas
    return add_noise(canvas, rng.uniform(*noise), rng)


def single_digit_page(shapes: DigitShapes, rng: np.random.Generator, h: int, w: int, height_frac=(0.35, 0.7),
                      printed_share: float = 0.0, avoid: np.ndarray | None = None):
    """(coverage, label, top, left) for one digit placed at random on an h x w page."""
    cov, label = shapes.any_digit(rng, printed_share)
    ink = scaled(cov, rng.uniform(*height_frac) * min(h, w))
    for _ in range(50):
        top, left = place(rng, h, ink.shape[0], 2), place(rng, w, ink.shape[1], 2)
        if avoid is None or not avoid[top : top + ink.shape[0], left : left + ink.shape[1]].any():
            break
    return ink, label, top, left


# --- the kinds ----------------------------------------------------------------------------------------


def _scan(shapes, rng):
    digit, label = shapes.mnist(rng)
    img = scan_like(digit, rng, int(rng.integers(160, 400)), noise=rng.uniform(0, 6))
    return sample(np.asarray(img), str(label), rng, jpeg_share=0.8, quality=(60, 95))


def _photo(shapes, rng):
    digit, label = shapes.mnist(rng)
    return sample(np.asarray(photo_like(digit, rng, int(rng.integers(200, 480)))), str(label), rng, 1.0)


def _transparent(shapes, rng):
    digit, label = shapes.mnist(rng)
    data, ext = encode(transparent_like(digit, rng, int(rng.integers(120, 300))), "png")
    return Sample(data, ext, str(label))


EXIF_TURNS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _exif_rotated(shapes, rng):
    digit, label = shapes.mnist(rng)
    upright = scan_like(digit, rng, int(rng.integers(160, 320)))
    if rng.random() < 0.5:
        upright = Image.fromarray(np.stack([np.asarray(upright)] * 3, -1))
    orientation = int(rng.choice(list(EXIF_TURNS)))
    stored = upright.transpose(EXIF_TURNS[orientation])  # what a phone stores; the tag says how to view it
    exif = Image.Exif()
    exif[0x0112] = orientation
    data, ext = encode(stored, "jpg", int(rng.integers(80, 96)), exif=exif)
    return Sample(data, ext, str(label))


def _inverted(shapes, rng):
    digit, label = shapes.mnist(rng)
    img = 255 - np.asarray(scan_like(digit, rng, int(rng.integers(120, 320))), np.float32)
    return sample(img, str(label), rng)


def _coloured_ink(shapes, rng):
    size = int(rng.integers(160, 360))
    papers = [(250, 250, 250), (250, 240, 210), (220, 235, 250), (250, 225, 230), (225, 245, 225)]
    inks = [(20, 40, 160), (190, 20, 30), (20, 120, 40), (90, 30, 120), (30, 30, 30)]
    canvas = np.ones((size, size, 3), np.float32) * np.array(papers[rng.integers(len(papers))], np.float32)
    ink, label, top, left = single_digit_page(shapes, rng, size, size)
    paste(canvas, ink, top, left, inks[rng.integers(len(inks))])
    return sample(photo_finish(canvas, rng, blur=(0, 0.8), noise=(0, 4)), str(label), rng, 0.7)


def _printed(shapes, rng):
    size = int(rng.integers(120, 260))
    canvas = np.full((size, size), rng.uniform(220, 255), np.float32)
    ink, label, top, left = single_digit_page(shapes, rng, size, size, (0.3, 0.75), printed_share=1.0)
    paste(canvas, ink, top, left, rng.uniform(0, 50))
    return sample(add_noise(canvas, rng.uniform(0, 3), rng), str(label), rng, 0.5)


def _corners(shapes, rng):
    h, w = int(rng.integers(300, 600)), int(rng.integers(300, 600))
    canvas = np.full((h, w), rng.uniform(200, 250), np.float32)
    cov, label = shapes.any_digit(rng, 0.2)
    ink = scaled(cov, rng.uniform(0.12, 0.25) * min(h, w))
    my, mx = int(rng.uniform(0, 0.08) * h), int(rng.uniform(0, 0.08) * w)
    top = my if rng.random() < 0.5 else h - ink.shape[0] - my
    left = mx if rng.random() < 0.5 else w - ink.shape[1] - mx
    paste(canvas, ink, top, left, rng.uniform(0, 60))
    return sample(add_noise(canvas, rng.uniform(0, 5), rng), str(label), rng)


def _ruled(shapes, rng, with_digit: bool = True):
    h, w = int(rng.integers(180, 400)), int(rng.integers(180, 400))
    canvas, spacing = ruled_paper(h, w, rng)
    truth = ""
    if with_digit:
        cov, label = shapes.any_digit(rng)
        ink = scaled(cov, min(rng.uniform(1.3, 3.0) * spacing, 0.8 * min(h, w)))
        paste(canvas, ink, place(rng, h, ink.shape[0], 2), place(rng, w, ink.shape[1], 2), rng.uniform(0, 70))
        truth = str(label)
    return sample(photo_finish(canvas, rng, blur=(0, 0.8), noise=(0, 4)), truth, rng)


def _draw_cell(canvas: np.ndarray, rng: np.random.Generator, sides: list[str], inset: int, thickness: int, colour):
    """Form-cell lines on the given sides ('top', 'bottom', 'left', 'right'), running the full length."""
    h, w = canvas.shape[:2]
    for side in sides:
        if side == "top":
            canvas[inset : inset + thickness] = colour
        elif side == "bottom":
            canvas[h - inset - thickness : h - inset] = colour
        elif side == "left":
            canvas[:, inset : inset + thickness] = colour
        else:
            canvas[:, w - inset - thickness : w - inset] = colour


def _cell_digit(shapes, rng, canvas: np.ndarray, height_frac: tuple[float, float], jitter: int) -> str:
    """A digit (a third of them printed) near the middle of a cell, `height_frac` of its shorter side tall,
    off centre by up to 1/`jitter` of the cell; returns its label."""
    h, w = canvas.shape[:2]
    cov, label = shapes.any_digit(rng, 0.3)
    ink = scaled(cov, rng.uniform(*height_frac) * min(h, w))
    top = (h - ink.shape[0]) // 2 + int(rng.integers(-h // jitter, h // jitter + 1))
    left = (w - ink.shape[1]) // 2 + int(rng.integers(-w // jitter, w // jitter + 1))
    paste(canvas, ink, top, left, rng.uniform(0, 60))
    return str(label)


def _grid_cell(shapes, rng, n_sides: int = 4, with_digit: bool = True):
    h = int(rng.integers(48, 161))
    w = int(h * rng.uniform(0.8, 1.25))
    canvas = np.full((h, w), rng.uniform(215, 255), np.float32)
    thickness = int(rng.integers(1, max(2, min(4, min(h, w) // 20) + 1)))
    colour = rng.uniform(0, 120)
    truth = _cell_digit(shapes, rng, canvas, (0.45, 0.75), 12) if with_digit else ""
    if n_sides == 4:
        sides = ["top", "bottom", "left", "right"]
    elif rng.random() < 0.75:
        sides = [["top", "bottom"][rng.integers(2)], ["left", "right"][rng.integers(2)]]
    else:
        sides = [["top", "bottom"], ["left", "right"]][rng.integers(2)]
    _draw_cell(canvas, rng, sides, int(rng.integers(0, 4)), thickness, colour)
    return sample(add_noise(canvas, rng.uniform(0, 4), rng), truth, rng)


def _box_lines(rng, x0, y0, x1, y1, hand: bool) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if hand:  # drawn freehand with a ruler-less hand: corners off by a few pixels, overshooting
        corners = [(x + rng.normal(0, 2), y + rng.normal(0, 2)) for x, y in corners]
    return [(corners[i], corners[(i + 1) % 4]) for i in range(4)]


def _boxed(shapes, rng, with_digit: bool = True):
    size = int(rng.integers(160, 320))
    canvas = np.full((size, size), rng.uniform(210, 255), np.float32)
    cov, label = shapes.any_digit(rng, 0.2)
    ink = scaled(cov, rng.uniform(0.35, 0.55) * size)
    m = rng.uniform(0.1, 0.3) * ink.shape[0]
    top = place(rng, size, int(ink.shape[0] + 2 * m), 4) + int(m)
    left = place(rng, size, int(ink.shape[1] + 2 * m), 4) + int(m)
    truth = ""
    if with_digit:
        paste(canvas, ink, top, left, rng.uniform(0, 60))
        truth = str(label)
    box = np.zeros((size, size), np.uint8)
    hand = rng.random() < 0.35
    thickness = int(rng.integers(1, 4))
    for (ax, ay), (bx, by) in _box_lines(rng, left - m, top - m, left + ink.shape[1] + m, top + ink.shape[0] + m, hand):
        cv2.line(box, (round(ax * 16), round(ay * 16)), (round(bx * 16), round(by * 16)), 255, thickness,
                 cv2.LINE_AA, shift=4)
    paste(canvas, box / 255.0, 0, 0, rng.uniform(0, 80))
    return sample(add_noise(canvas, rng.uniform(0, 4), rng), truth, rng)


def _squared(shapes, rng, with_digit: bool = True):
    h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
    canvas, spacing = squared_paper(h, w, rng)
    truth = ""
    if with_digit:
        cov, label = shapes.any_digit(rng)
        ink = scaled(cov, min(rng.uniform(2.0, 4.5) * spacing, 0.8 * min(h, w)))
        paste(canvas, ink, place(rng, h, ink.shape[0], 2), place(rng, w, ink.shape[1], 2),
              (rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(0, 120)))
        truth = str(label)
    return sample(photo_finish(canvas, rng, blur=(0, 0.7), noise=(0, 3)), truth, rng)


def _canvas(shapes, rng, thickness: int):
    segs, label = shapes.strokes(rng)
    size = 280
    height = rng.uniform(110, 230)
    extent = segs.reshape(-1, 2).max(0) * height
    top_left = (place(rng, size, int(extent[1]) + 2 * thickness, thickness + 2),
                place(rng, size, int(extent[0]) + 2 * thickness, thickness + 2))
    stroke = draw_segments(segs, height, thickness, (size, size), top_left)
    if rng.random() < 0.5:  # canvas.toDataURL() without a background: black strokes on transparency
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 3] = stroke
        data, ext = encode(rgba, "png")
    else:  # the page filled white first
        data, ext = encode(255 - stroke, "png")
    return Sample(data, ext, str(label))


def _thin_pen_scan(shapes, rng):
    segs, label = shapes.strokes(rng)
    h, w = int(rng.integers(800, 1500)), int(rng.integers(800, 1500))
    height = rng.uniform(0.3, 0.6) * min(h, w)
    extent = segs.reshape(-1, 2).max(0) * height
    pen = int(rng.integers(2, 6))
    top_left = (place(rng, h, int(extent[1]), 10), place(rng, w, int(extent[0]), 10))
    stroke = draw_segments(segs, height, pen, (h, w), top_left)
    canvas = np.full((h, w), rng.uniform(200, 245), np.float32)
    paste(canvas, stroke / 255.0, 0, 0, rng.uniform(10, 90))
    return sample(add_noise(canvas, rng.uniform(1, 6), rng), str(label), rng, jpeg_share=0.5, quality=(85, 96))


def _photo_page(shapes, rng, light: str, with_digit: bool = True):
    h, w = int(rng.integers(240, 480)), int(rng.integers(240, 480))
    paper = np.array([rng.uniform(200, 245), rng.uniform(200, 245), rng.uniform(195, 240)], np.float32)
    canvas = np.ones((h, w, 3), np.float32) * paper
    truth = ""
    if with_digit:
        ink, label, top, left = single_digit_page(shapes, rng, h, w, (0.3, 0.65))
        paste(canvas, ink, top, left, rng.uniform(10, 70))
        truth = str(label)
    canvas *= lighting(h, w, rng, light)[..., None]
    if light != "gradient" and rng.random() < 0.5:
        canvas *= lighting(h, w, rng, "gradient")[..., None]
    return sample(photo_finish(canvas, rng), truth, rng, jpeg_share=1.0)


def _dark_corner(shapes, rng):
    h, w = int(rng.integers(240, 480)), int(rng.integers(240, 480))
    canvas = np.ones((h, w, 3), np.float32) * np.array([rng.uniform(200, 245)] * 3, np.float32)
    a, b = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h  # where the paper's edge cuts the sides
    cx, cy = (0 if rng.random() < 0.5 else w), (0 if rng.random() < 0.5 else h)
    ax, by = abs(cx - a), abs(cy - b)
    table = np.zeros((h, w), np.uint8)
    cv2.fillPoly(table, [np.array([(cx, cy), (ax, cy), (cx, by)], np.int32)], 255, cv2.LINE_AA)
    table_f = cv2.GaussianBlur(table.astype(np.float32) / 255.0, (0, 0), rng.uniform(0.5, 2.0))
    near_table = cv2.dilate(table, np.ones((9, 9), np.uint8)) > 0
    ink, label, top, left = single_digit_page(shapes, rng, h, w, (0.3, 0.55), avoid=near_table)
    paste(canvas, ink, top, left, rng.uniform(10, 70))
    dark = rng.uniform(10, 70) + add_noise(np.zeros((h, w), np.float32), rng.uniform(2, 10), rng)
    canvas = canvas * (1 - table_f[..., None]) + dark[..., None] * table_f[..., None]
    canvas *= lighting(h, w, rng, "gradient")[..., None]
    return sample(photo_finish(canvas, rng), str(label), rng, jpeg_share=1.0)


def _specks(canvas: np.ndarray, rng: np.random.Generator, count: int, radius: tuple[float, float], avoid=None,
            colour=(0, 80), scratches: float = 0.3):
    """Dots, blots and (a `scratches` share of) short scratches, dark, none of them touching `avoid`
    (bool [H,W]: the digit's surroundings)."""
    h, w = canvas.shape[:2]
    marks = np.zeros((h, w), np.uint8)
    for _ in range(count):
        for _ in range(30):
            mark = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            r = rng.uniform(*radius)
            if rng.random() < scratches:  # a short scratch or hair: thin (a thick straight stroke is a 1)
                angle = rng.uniform(0, np.pi)
                dx, dy = np.cos(angle) * r * 2.5, np.sin(angle) * r * 2.5
                cv2.line(mark, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), 255, int(rng.integers(1, 3)),
                         cv2.LINE_AA)
            else:
                cv2.ellipse(mark, (x, y), (max(1, int(r)), max(1, int(r * rng.uniform(0.5, 1.0)))), rng.uniform(0, 180),
                            0, 360, 255, -1, cv2.LINE_AA)
            if avoid is None or not avoid[mark > 0].any():
                np.maximum(marks, mark, out=marks)
                break
    paste(canvas, marks / 255.0, 0, 0, rng.uniform(*colour) if canvas.ndim == 2 else [rng.uniform(*colour)] * 3)


def _specks_page(shapes, rng):
    size = int(rng.integers(200, 400))
    canvas = np.full((size, size), rng.uniform(200, 250), np.float32)
    ink, label, top, left = single_digit_page(shapes, rng, size, size, (0.3, 0.55))
    paste(canvas, ink, top, left, rng.uniform(0, 60))
    avoid = np.zeros((size, size), bool)
    m = int(0.2 * ink.shape[0])
    avoid[max(0, top - m) : top + ink.shape[0] + m, max(0, left - m) : left + ink.shape[1] + m] = True
    _specks(canvas, rng, int(rng.integers(4, 20)), (1, 0.05 * size), avoid)
    return sample(add_noise(canvas, rng.uniform(0, 5), rng), str(label), rng)


def _highlighter(shapes, rng):
    size = int(rng.integers(160, 360))
    canvas = np.full((size, size, 3), rng.uniform(240, 255), np.float32)
    while True:  # a broad felt tip along the digit's centre line; kept if its shape still reads right
        segs, label = shapes.strokes(rng)
        height = rng.uniform(0.35, 0.65) * size
        pen = max(2, int(rng.uniform(0.1, 0.18) * height))
        extent = (segs.reshape(-1, 2).max(0) * height).astype(int) + 2 * pen
        ink = draw_segments(segs, height, pen, (extent[1], extent[0]), (pen, pen)) / np.float32(255)
        if shapes.reads_right(ink, label):
            break
    yellow = np.array([255, rng.uniform(215, 245), rng.uniform(20, 90)], np.float32) / 255.0
    top, left = place(rng, size, ink.shape[0], 2), place(rng, size, ink.shape[1], 2)
    region = canvas[top : top + ink.shape[0], left : left + ink.shape[1]]
    region *= 1 - ink[: region.shape[0], : region.shape[1], None] * (1 - yellow)  # translucent: the paper shows through
    if rng.random() < 0.4:
        avoid = np.zeros((size, size), bool)
        avoid[max(0, top - 20) : top + ink.shape[0] + 20, max(0, left - 20) : left + ink.shape[1] + 20] = True
        _specks(canvas, rng, int(rng.integers(1, 4)), (1, 3), avoid)
    return sample(photo_finish(canvas, rng, blur=(0, 0.8), noise=(0.5, 3)), str(label), rng, 0.5, (85, 96))


def _alpha_speckle(shapes, rng):
    size = int(rng.integers(120, 300))
    ink, label, top, left = single_digit_page(shapes, rng, size, size, (0.25, 0.6))
    alpha = np.zeros((size, size), np.float32)
    paste(alpha, ink, top, left, 255)
    density = rng.uniform(0.05, 0.4)
    speckle = (rng.random((size, size)) < density) * rng.uniform(15, rng.uniform(40, 90), (size, size))
    alpha = np.maximum(alpha, speckle)
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = int(rng.integers(0, 40))
    rgba[..., 3] = to_u8(alpha)
    data, ext = encode(rgba, "png")
    return Sample(data, ext, str(label))


def _blank_paper(shapes, rng):
    h, w = int(rng.integers(120, 600)), int(rng.integers(120, 600))
    canvas = np.full((h, w), rng.uniform(180, 250), np.float32)
    if rng.random() < 0.5:  # dust; no scratches: a lone hair can be a thin 1
        _specks(canvas, rng, int(rng.integers(1, 10)), (0.5, 2.5), scratches=0.0)
    return sample(add_noise(canvas, rng.uniform(0, 6), rng), "", rng)


def _blank_cell(shapes, rng):
    if rng.random() < 0.3:
        return _boxed(shapes, rng, with_digit=False)
    return _grid_cell(shapes, rng, int(rng.choice([2, 4])), with_digit=False)


def _several(shapes, rng, count: int):
    height = rng.uniform(50, 130)
    digits = [shapes.any_digit(rng, 0.1) for _ in range(count)]
    inks = [scaled(cov, height * rng.uniform(0.9, 1.1)) for cov, _ in digits]
    gaps = [rng.uniform(0.15, 0.8) * height for _ in range(count - 1)]
    width = sum(i.shape[1] for i in inks) + sum(gaps)
    h = int(height * rng.uniform(1.3, 2.2))
    w = int(width + height * rng.uniform(0.3, 1.2))
    canvas = np.full((h, w), rng.uniform(200, 250), np.float32)
    x = place(rng, w, int(width), 2)
    base = (h - height) / 2
    for i, ink in enumerate(inks):
        top = int(base + rng.uniform(-0.08, 0.08) * height + (height - ink.shape[0]) / 2)
        paste(canvas, ink, top, x, rng.uniform(0, 60))
        x += ink.shape[1] + (gaps[i] if i < len(gaps) else 0)
    return sample(add_noise(canvas, rng.uniform(0, 5), rng), "".join(str(label) for _, label in digits), rng)


def _on_table(shapes, rng, with_digit: bool = True):
    """A phone photo of a sheet lying askew on a darker table: the sheet turned 4-20 degrees and a
    little smaller than the frame, so the table shows in wedges along the edges."""
    h, w = int(rng.integers(240, 520)), int(rng.integers(240, 520))
    paper = np.array([rng.uniform(195, 245), rng.uniform(195, 245), rng.uniform(190, 240)], np.float32)
    canvas = np.ones((h, w, 3), np.float32) * paper
    truth = ""
    if with_digit:
        margin = np.zeros((h, w), bool)
        margin[int(0.2 * h) : int(0.8 * h), int(0.2 * w) : int(0.8 * w)] = True  # where turning keeps it
        ink, label, top, left = single_digit_page(shapes, rng, h, w, (0.2, 0.4), avoid=~margin)
        paste(canvas, ink, top, left, rng.uniform(10, 70))
        truth = str(label)
    angle = rng.uniform(4, 20) * rng.choice([-1, 1])
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, rng.uniform(0.8, 0.97))
    table = tuple(float(v) for v in rng.uniform(20, 120, 3))
    canvas = cv2.warpAffine(canvas, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=table)
    if rng.random() < 0.5:
        canvas *= lighting(h, w, rng, "gradient")[..., None]
    return sample(photo_finish(canvas, rng), truth, rng, jpeg_share=1.0)


def _thick_cell(shapes, rng, with_digit: bool = True):
    """A Sudoku or form cell whose lines are heavy: 6-10% of the cell's side, on three or four sides."""
    h = int(rng.integers(60, 200))
    w = int(h * rng.uniform(0.85, 1.15))
    canvas = np.full((h, w), rng.uniform(215, 255), np.float32)
    truth = _cell_digit(shapes, rng, canvas, (0.45, 0.65), 16) if with_digit else ""
    sides = ["top", "bottom", "left", "right"]
    if rng.random() < 0.3:
        sides.remove(str(rng.choice(sides)))
    thickness = max(3, round(rng.uniform(0.06, 0.10) * min(h, w)))
    _draw_cell(canvas, rng, sides, 0, thickness, rng.uniform(0, 90))
    return sample(add_noise(canvas, rng.uniform(0, 4), rng), truth, rng)


def _underlined(shapes, rng):
    """A digit underlined by hand: a stroke below it, from touching it to a tenth of its height away,
    reaching well beyond it on both sides."""
    height = rng.uniform(60, 160)
    cov, label = shapes.any_digit(rng, 0.1)
    ink = scaled(cov, height)
    dh, dw = ink.shape
    beyond = [rng.uniform(0.3, 0.8) * dw for _ in range(2)]
    thickness = max(2, round(rng.uniform(0.06, 0.12) * height))
    gap = rng.uniform(-0.02, 0.10) * height  # negative: the line crosses the digit's lowest stroke
    h = int(height * rng.uniform(1.5, 2.2))
    w = int(dw + sum(beyond) + height * rng.uniform(0.3, 0.8))
    canvas = np.full((h, w), rng.uniform(200, 250), np.float32)
    top = int((h - height - gap - thickness) / 2)
    left = int((w - dw) / 2)
    colour = rng.uniform(0, 60)
    paste(canvas, ink, top, left, colour)
    y = top + dh + gap + thickness / 2
    x0, x1 = left - beyond[0], left + dw + beyond[1]
    tilt = rng.uniform(-0.03, 0.03) * (x1 - x0)
    line = np.zeros((h, w), np.float32)
    cv2.line(line, (int(x0 * 16), int(y * 16)), (int(x1 * 16), int((y + tilt) * 16)), 1.0, thickness, cv2.LINE_AA, 4)
    paste(canvas, np.clip(line, 0, 1), 0, 0, colour)
    return sample(add_noise(canvas, rng.uniform(0, 4), rng), str(label), rng)


def _blank_one_line(shapes, rng):
    """An empty page but for one straight line: a notebook's margin rule, a lone rule, a fold photographed
    across the page, or the page's edge with the table beyond."""
    h, w = int(rng.integers(150, 700)), int(rng.integers(150, 700))
    paper = rng.uniform(190, 250)
    canvas = np.full((h, w), paper, np.float32)
    what = rng.choice(["margin", "rule", "fold", "edge"])
    line = np.zeros((h, w), np.float32)
    thickness = int(rng.integers(1, 4))
    if what == "margin":  # vertical, near the left or right side
        x = rng.uniform(0.06, 0.2) * w
        x = x if rng.random() < 0.5 else w - x
        cv2.line(line, (int(x), 0), (int(x + rng.uniform(-2, 2)), h), 1.0, thickness, cv2.LINE_AA)
    elif what == "rule":  # horizontal, anywhere
        y = rng.uniform(0.1, 0.9) * h
        cv2.line(line, (0, int(y)), (w, int(y + rng.uniform(-2, 2))), 1.0, thickness, cv2.LINE_AA)
    elif what == "fold":  # a straight crease at any slant, edge to edge, faint
        angle = rng.uniform(0, np.pi)
        cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, 2 * (h + w)
        p0 = (int(cx - r * np.cos(angle)), int(cy - r * np.sin(angle)))
        p1 = (int(cx + r * np.cos(angle)), int(cy + r * np.sin(angle)))
        cv2.line(line, p0, p1, rng.uniform(0.3, 0.7), thickness, cv2.LINE_AA)
    else:  # the page's edge: the dark table beyond one side
        depth = int(rng.uniform(0.03, 0.15) * (w if rng.random() < 0.5 else h))
        side = rng.integers(4)
        (line[:, :depth] if side == 0 else line[:, w - depth :] if side == 1 else
         line[:depth] if side == 2 else line[h - depth :])[:] = 1.0
    paste(canvas, line, 0, 0, rng.uniform(20, paper - 60))
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.3, 1.0))
    return sample(add_noise(canvas, rng.uniform(0, 5), rng), "", rng)


def _touching(shapes, rng):
    """Two digits written so close that they touch or overlap (up to a tenth of their height)."""
    height = rng.uniform(50, 130)
    digits = [shapes.any_digit(rng, 0.0) for _ in range(2)]
    inks = [scaled(cov, height * rng.uniform(0.92, 1.08)) for cov, _ in digits]
    gap = rng.uniform(-0.10, 0.0) * height
    width = inks[0].shape[1] + inks[1].shape[1] + gap
    h = int(height * rng.uniform(1.3, 2.0))
    w = int(width + height * rng.uniform(0.3, 1.0))
    canvas = np.full((h, w), rng.uniform(200, 250), np.float32)
    coverage = np.zeros((h, w), np.float32)
    x = place(rng, w, int(width), 2)
    for ink in inks:
        top = int((h - ink.shape[0]) / 2 + rng.uniform(-0.05, 0.05) * height)
        region = coverage[top : top + ink.shape[0], x : x + ink.shape[1]]
        region[:] = np.maximum(region, ink[: region.shape[0], : region.shape[1]])
        x += int(ink.shape[1] + gap)
    paste(canvas, coverage, 0, 0, rng.uniform(0, 60))
    return sample(add_noise(canvas, rng.uniform(0, 5), rng), "".join(str(label) for _, label in digits), rng)


# --- small digits on whole pages ------------------------------------------------------------------


def _page_shape(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a page: A4-like (sides 0.7-0.8 apart), portrait or landscape, longer side in `long_side`."""
    long = int(rng.integers(*long_side))
    short = int(long * rng.uniform(0.7, 0.8))
    return (long, short) if rng.random() < 0.65 else (short, long)


def _pen_or_mnist(shapes: DigitShapes, rng: np.random.Generator, height: float) -> tuple[np.ndarray, int]:
    """A digit `height` px tall as coverage float32 in [0,1]: half the time an MNIST digit enlarged,
    else its centre line drawn with a pen 6-12% of the height wide (at least 2 px: a ballpoint)."""
    if rng.random() < 0.5:
        cov, label = shapes.any_digit(rng, 0.15)
        return scaled(cov, height), label
    segs, label = shapes.strokes(rng)
    pen = max(2, int(round(height * rng.uniform(0.06, 0.12))))
    extent = (segs.reshape(-1, 2).max(0) * height).astype(int) + 2 * pen + 2
    return draw_segments(segs, height, pen, (extent[1], extent[0]), (pen + 1, pen + 1)) / np.float32(255), label


def _dust(canvas: np.ndarray, rng: np.random.Generator, avoid: np.ndarray | None, scale: float) -> None:
    """Dust and dots of a scanner's glass or a page, 0.5-2.5 px at 1000 px (scaled with the page), none
    touching `avoid`."""
    _specks(canvas, rng, int(rng.integers(1, 12)), (0.5 * scale, 2.5 * scale), avoid, scratches=0.0)


def _finish_page(canvas: np.ndarray, rng: np.random.Generator, photo: bool) -> np.ndarray:
    """A page as a flatbed scan (even light, paper texture, noise) or a phone photo (light gradient
    or vignette, blur, noise); float32 [H,W] or [H,W,3]."""
    h, w = canvas.shape[:2]
    grain = cv2.resize(rng.normal(0, 1, (max(2, h // 40), max(2, w // 40))).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC) * rng.uniform(0, 3)  # fibre: low-frequency unevenness
    canvas = canvas + (grain[..., None] if canvas.ndim == 3 else grain)
    if photo:
        light = lighting(h, w, rng, str(rng.choice(["gradient", "vignette"])))
        canvas = canvas * (light[..., None] if canvas.ndim == 3 else light)
        return photo_finish(canvas, rng, blur=(0.3, 1.2), noise=(1.0, 4.0))
    return add_noise(canvas, rng.uniform(0, 4), rng)


def _small_on_page(shapes, rng, with_digit: bool = True):
    h, w = _page_shape(rng, (1000, 2501))
    photo = rng.random() < 0.35
    paper = rng.uniform(215, 250)
    canvas = np.full((h, w, 3) if photo else (h, w), paper, np.float32)
    avoid, truth = None, ""
    if with_digit:
        ink, label = _pen_or_mnist(shapes, rng, rng.uniform(0.02, 0.05) * max(h, w))
        m = int(0.02 * max(h, w))
        top, left = place(rng, h, ink.shape[0], m), place(rng, w, ink.shape[1], m)
        colour = rng.uniform(0, 70)
        paste(canvas, ink, top, left, [colour, colour, colour + rng.uniform(0, 80)] if photo else colour)
        avoid = np.zeros((h, w), bool)
        r = ink.shape[0]
        avoid[max(0, top - r) : top + 2 * r, max(0, left - r) : left + ink.shape[1] + r] = True
        truth = str(label)
    if rng.random() < 0.5:
        _dust(canvas, rng, avoid, max(h, w) / 1000)
    return sample(_finish_page(canvas, rng, photo), truth, rng, jpeg_share=0.5, quality=(75, 95))


def _notebook_paper(h: int, w: int, rng: np.random.Generator, spacing: int, style: str) -> np.ndarray:
    """A whole notebook page, RGB float32: 'ruled' (rules every `spacing` px, 1-3 px thick, blue or
    grey, mostly a red margin line), 'squared' (a grid) or 'dotted' (a dot grid, a bullet journal)."""
    paper = np.array([rng.uniform(235, 255), rng.uniform(235, 255), rng.uniform(228, 252)], np.float32)
    canvas = np.ones((h, w, 3), np.float32) * paper
    line = np.array([rng.uniform(120, 200), rng.uniform(160, 215), rng.uniform(215, 255)], np.float32)
    if rng.random() < 0.3:
        line[:] = rng.uniform(110, 200)
    thickness = int(rng.integers(1, 4))
    if style == "dotted":
        dots = np.zeros((h, w), np.uint8)
        ox = int(rng.integers(0, spacing))
        for y in range(int(rng.integers(0, spacing)), h, spacing):
            for x in range(ox, w, spacing):
                cv2.circle(dots, (x, y), thickness, 255, -1, cv2.LINE_AA)
        paste(canvas, dots / np.float32(255), 0, 0, line)
        return canvas
    for y in range(int(rng.integers(0, spacing)), h, spacing):
        canvas[y : y + thickness] = canvas[y : y + thickness] * 0.3 + line * 0.7
    if style == "squared":
        for x in range(int(rng.integers(0, spacing)), w, spacing):
            canvas[:, x : x + thickness] = canvas[:, x : x + thickness] * 0.3 + line * 0.7
    elif rng.random() < 0.7:
        x = int(w * rng.uniform(0.08, 0.15))
        canvas[:, x : x + thickness + 1] = np.array([220, 70, 80], np.float32)
    return canvas


def _small_on_lined_page(shapes, rng, with_digit: bool = True):
    h, w = _page_shape(rng, (900, 1801))
    style = str(rng.choice(["ruled", "ruled", "squared", "dotted"]))
    long = max(h, w)
    spacing = max(8, int(long * (rng.uniform(0.022, 0.035) if style == "ruled" else rng.uniform(0.015, 0.025))))
    canvas = _notebook_paper(h, w, rng, spacing, style)
    truth = ""
    if with_digit:
        ink, label = _pen_or_mnist(shapes, rng, rng.uniform(0.05, 0.10) * long)
        colour = rng.uniform(0, 60)
        paste(canvas, ink, place(rng, h, ink.shape[0], 4), place(rng, w, ink.shape[1], 4),
              [colour, colour, colour + rng.uniform(0, 100)])
        truth = str(label)
    return sample(_finish_page(canvas, rng, rng.random() < 0.35), truth, rng, jpeg_share=0.5, quality=(75, 95))


def _blank_large_page(shapes, rng):
    if rng.random() < 0.5:
        return _small_on_page(shapes, rng, with_digit=False)
    return _small_on_lined_page(shapes, rng, with_digit=False)


KINDS = [
    Kind("scan", "handled", "black ink on off-white paper, enlarged, off-centre, noise, JPEG", _scan),
    Kind("photo", "handled", "phone photo: RGB, light gradient, blur, JPEG", _photo),
    Kind("transparent", "handled", "drawing-app PNG: dark strokes on a transparent canvas", _transparent),
    Kind("exif-rotated", "handled", "phone JPEG stored turned, EXIF orientation 3, 6 or 8", _exif_rotated),
    Kind("inverted", "handled", "white ink on dark paper (a blackboard, an inverted scan)", _inverted),
    Kind("coloured-ink", "handled", "blue, red, green or purple ink on tinted paper, RGB", _coloured_ink),
    Kind("printed", "handled", "a digit printed in one of the machine's fonts", _printed),
    Kind("corners", "handled", "a small digit in a corner of a large page", _corners),
    Kind("ruled", "handled", "written across ruled notebook lines (blue or grey, red margin)", _ruled),
    Kind("canvas-1px", "thin strokes", "drawn with a 1-px line on a 280x280 canvas (HTML canvas default)",
         lambda s, r: _canvas(s, r, 1)),
    Kind("canvas-3px", "thin strokes", "drawn with a 3-px line on a 280x280 canvas", lambda s, r: _canvas(s, r, 3)),
    Kind("thin-pen-scan", "thin strokes", "a 2-5 px pen on an 800-1500 px scan", _thin_pen_scan),
    Kind("grid-cell-4", "lines", "a form or Sudoku cell, its lines on all four sides",
         lambda s, r: _grid_cell(s, r, 4)),
    Kind("grid-cell-2", "lines", "a form cell with its lines on two sides", lambda s, r: _grid_cell(s, r, 2)),
    Kind("boxed", "lines", "a box drawn around the digit (ruler or freehand)", _boxed),
    Kind("squared", "lines", "written on squared (graph) paper", _squared),
    Kind("grid-cell-thick", "lines", "a Sudoku or form cell with heavy lines (6-10% of its side), 3 or 4 sides",
         _thick_cell),
    Kind("underlined", "marks", "a digit underlined by hand, the line touching it or close below", _underlined),
    Kind("shadow", "uneven light", "phone photo with a soft shadow over one corner",
         lambda s, r: _photo_page(s, r, "shadow")),
    Kind("vignette", "uneven light", "phone photo with dark corners (vignetting)",
         lambda s, r: _photo_page(s, r, "vignette")),
    Kind("page-on-table", "marks", "phone photo of a sheet lying askew on a darker table", _on_table),
    Kind("dark-corner", "marks", "phone photo showing the dark table beyond the paper's corner", _dark_corner),
    Kind("specks", "marks", "dust, dots and scratches away from the digit", _specks_page),
    Kind("highlighter", "marks", "a yellow highlighter digit on white paper", _highlighter),
    Kind("alpha-speckle", "marks", "transparent canvas with faint alpha speckle (cf. samples/0/drawn-00003.png)",
         _alpha_speckle),
    Kind("blank-paper", "no digit", "plain paper, noise, sometimes a few specks", _blank_paper),
    Kind("blank-ruled", "no digit", "empty ruled paper", lambda s, r: _ruled(s, r, with_digit=False)),
    Kind("blank-squared", "no digit", "empty squared paper", lambda s, r: _squared(s, r, with_digit=False)),
    Kind("blank-cell", "no digit", "an empty form cell or box", _blank_cell),
    Kind("blank-photo", "no digit", "phone photo of a blank page: shadow or vignette",
         lambda s, r: _photo_page(s, r, str(r.choice(["shadow", "vignette", "gradient"])), with_digit=False)),
    Kind("blank-on-table", "no digit", "phone photo of an empty sheet lying askew on a table",
         lambda s, r: _on_table(s, r, with_digit=False)),
    Kind("blank-one-line", "no digit", "an empty page but for one line: a margin rule, a rule, a fold, the page's edge",
         _blank_one_line),
    Kind("blank-large-page", "no digit",
         "a whole 900-2500 px page, clean, dusty, ruled, squared or dotted; nothing on it",
         _blank_large_page),
    Kind("small-on-page", "small on page", "a digit 2-5% of a 1000-2500 px page's longer side, anywhere; "
         "scan or photo, some dust", _small_on_page),
    Kind("small-on-lined-page", "small on page",
         "a whole ruled, squared or dotted notebook page, the digit 5-10% of it",
         _small_on_lined_page),
    Kind("two-digits", "several digits", "two digits side by side, gaps 0.15-0.8 of their height",
         lambda s, r: _several(s, r, 2)),
    Kind("three-digits", "several digits", "three digits side by side", lambda s, r: _several(s, r, 3)),
    Kind("two-digits-touching", "several digits", "two digits written touching or overlapping", _touching),
]
KINDS_BY_NAME = {k.name: k for k in KINDS}


def make_samples(kind: Kind, shapes: DigitShapes, n: int, seed: int = 0) -> Iterator[Sample]:
    """n samples of one kind; the same (kind, n, seed) always gives the same files, whatever else is made."""
    rng = np.random.default_rng([seed, zlib.crc32(kind.name.encode())])
    for _ in range(n):
        yield kind.make(shapes, rng)
