"""Pictures for evaluation reports, drawn with Pillow alone: confusion matrix and contact sheets."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 44


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow without sized default font
        return ImageFont.load_default()


def render_confusion(confusion: np.ndarray, labels: Sequence[str], title: str) -> Image.Image:
    """Confusion matrix [true][predicted] as a heat map with counts; rows normalised for the colour."""
    k = len(labels)
    margin_left, margin_top = 70, 70
    width, height = margin_left + k * CELL + 20, margin_top + k * CELL + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((margin_left + k * CELL // 2 - 30, 30), "predicted", fill="black", font=small)
    draw.text((8, margin_top + k * CELL // 2), "true", fill="black", font=small)
    row_sums = confusion.sum(axis=1, keepdims=True).clip(min=1)
    for t in range(k):
        draw.text((margin_left - 20, margin_top + t * CELL + CELL // 2 - 7), labels[t], fill="black", font=small)
        draw.text((margin_left + t * CELL + CELL // 2 - 4, margin_top - 18), labels[t], fill="black", font=small)
        for p in range(k):
            frac = confusion[t, p] / row_sums[t, 0]
            if t == p:
                colour = (int(255 - 180 * frac), int(255 - 60 * frac), int(255 - 180 * frac))
            else:
                frac = min(1.0, frac * 10)  # errors are rare: stretch their scale to be visible
                colour = (255, int(255 - 200 * frac), int(255 - 200 * frac))
            x0, y0 = margin_left + p * CELL, margin_top + t * CELL
            draw.rectangle([x0, y0, x0 + CELL - 1, y0 + CELL - 1], fill=colour, outline=(220, 220, 220))
            text = str(int(confusion[t, p]))
            draw.text((x0 + 4, y0 + CELL // 2 - 7), text, fill="black", font=small)
    return img


def render_contact_sheet(
    tiles: Sequence[tuple[np.ndarray, str]], columns: int = 10, scale: int = 3
) -> Image.Image:
    """A grid of 28x28 model inputs (float [0,1]) each with a caption such as 'true 3 -> 5 (0.91)'."""
    tile_w, caption_h = 28 * scale + 24, 16
    rows = max(1, -(-len(tiles) // columns))
    img = Image.new("RGB", (columns * tile_w, rows * (28 * scale + caption_h + 6)), "white")
    draw = ImageDraw.Draw(img)
    font = _font(10)
    for i, (pixels, caption) in enumerate(tiles):
        r, c = divmod(i, columns)
        x0, y0 = c * tile_w + 12, r * (28 * scale + caption_h + 6) + 3
        digit = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8), "L")
        img.paste(digit.resize((28 * scale, 28 * scale), Image.NEAREST), (x0, y0))
        draw.text((x0 - 10, y0 + 28 * scale + 2), caption, fill="black", font=font)
    return img
