"""Pictures for evaluation reports, drawn with Pillow alone: confusion matrix and contact sheets."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 44
SCALE = 4  # a 28x28 model input drawn at 112x112
TILE_W = 28 * SCALE + 40  # room for a caption line under each digit
LINE_H = 15


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow without sized default font
        return ImageFont.load_default()


def _centred(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font, fill="black") -> None:
    """Draw `text` with its ink's bounding box centred on `centre` (font metrics alone leave digits high)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, anchor="lt")
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, fill=fill, font=font,
              anchor="lt")


def render_confusion(confusion: np.ndarray, labels: Sequence[str], title: str) -> Image.Image:
    """Confusion matrix [true][predicted] as a heat map with counts centred in their cells; rows
    normalised for the colour. (Also drawn by mnist-train for the test set.)"""
    k = len(labels)
    margin_left, margin_top = 70, 70
    width, height = margin_left + k * CELL + 20, margin_top + k * CELL + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((margin_left + k * CELL // 2, 34), "predicted", fill="black", font=small, anchor="mm")
    draw.text((28, margin_top + k * CELL // 2), "true", fill="black", font=small, anchor="mm")
    row_sums = confusion.sum(axis=1, keepdims=True).clip(min=1)
    for t in range(k):
        _centred(draw, (margin_left - 14, margin_top + t * CELL + CELL / 2), labels[t], small)
        _centred(draw, (margin_left + t * CELL + CELL / 2, margin_top - 12), labels[t], small)
        for p in range(k):
            frac = confusion[t, p] / row_sums[t, 0]
            if t == p:
                colour = (int(255 - 180 * frac), int(255 - 60 * frac), int(255 - 180 * frac))
            else:
                frac = min(1.0, frac * 10)  # errors are rare: stretch their scale to be visible
                colour = (255, int(255 - 200 * frac), int(255 - 200 * frac))
            x0, y0 = margin_left + p * CELL, margin_top + t * CELL
            draw.rectangle([x0, y0, x0 + CELL - 1, y0 + CELL - 1], fill=colour, outline=(220, 220, 220))
            _centred(draw, (x0 + CELL / 2, y0 + CELL / 2), str(int(confusion[t, p])), small)
    return img


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, shortened in the middle with an ellipsis until it fits `width` pixels (file names keep their ends)."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head = (keep + 1) // 2
        short = text[:head] + "…" + text[len(text) - (keep - head):]
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def render_contact_sheet(tiles: Sequence[tuple[np.ndarray, Sequence[str]]], columns: int = 8,
                         empty: str = "nothing to show") -> Image.Image:
    """A grid of 28x28 model inputs (uint8, or float in [0,1]), each above its caption lines.

    As many columns as tiles, up to `columns`; no tiles: a small picture that says `empty`."""
    font = _font(12)
    if not tiles:
        img = Image.new("RGB", (360, 60), "white")
        _centred(ImageDraw.Draw(img), (180, 30), empty, _font(14))
        return img
    cols = min(columns, len(tiles))
    lines = max(len(caption) for _, caption in tiles)
    tile_h = 28 * SCALE + 8 + lines * LINE_H + 8
    rows = -(-len(tiles) // cols)
    img = Image.new("RGB", (cols * TILE_W, rows * tile_h), "white")
    draw = ImageDraw.Draw(img)
    for i, (pixels, caption) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = c * TILE_W, r * tile_h
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            pixels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
        digit = Image.fromarray(pixels, "L").resize((28 * SCALE, 28 * SCALE), Image.NEAREST)
        img.paste(digit, (x0 + (TILE_W - 28 * SCALE) // 2, y0 + 4))
        for j, line in enumerate(caption):
            text = _fit(draw, line, font, TILE_W - 6)
            draw.text((x0 + TILE_W / 2, y0 + 28 * SCALE + 8 + j * LINE_H), text, fill="black", font=font, anchor="ma")
    return img


def render_misclassified(misread: Sequence[tuple[np.ndarray, str, str, str, float]], labelled: int) -> Image.Image:
    """The report's misclassified.png: each misread input as the model saw it, with the true label,
    the prediction, its confidence and the file's name; or a picture saying there were none."""
    tiles = [(pixels, [f"true {label}, predicted {prediction}", f"confidence {confidence:.2f}",
                       os.path.basename(path)])
             for pixels, path, label, prediction, confidence in misread]
    noun = "image" if labelled == 1 else "images"
    return render_contact_sheet(tiles, empty=f"no misclassified images ({labelled} labelled {noun})")
