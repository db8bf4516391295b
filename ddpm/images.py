"""Turning sprite arrays into pictures: crisp upscales and sprite sheets."""
from __future__ import annotations

import numpy as np
from PIL import Image


def upscale(sprite: np.ndarray, scale: int) -> Image.Image:
    """An (H, W, 3|4) uint8 sprite enlarged by an integer factor with nearest-neighbour (crisp pixels)."""
    im = Image.fromarray(sprite)
    return im if scale == 1 else im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def make_transparent(sprite: np.ndarray, background: tuple[int, int, int] = (255, 255, 255),
                     tolerance: int = 8) -> np.ndarray:
    """RGBA copy where pixels within `tolerance` of the background colour are transparent."""
    diff = np.abs(sprite.astype(np.int16) - np.asarray(background, dtype=np.int16)).max(-1)
    alpha = np.where(diff <= tolerance, 0, 255).astype(np.uint8)
    return np.concatenate([sprite, alpha[..., None]], -1)


def sprite_sheet(rows: list[np.ndarray] | np.ndarray, scale: int = 1, pad: int = 0,
                 transparent: bool = False) -> Image.Image:
    """A grid image from rows of sprites: rows[r] is (n, H, W, 3) uint8. Rows may differ in length."""
    rows = [np.asarray(r) for r in rows]
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    channels = 4 if transparent else 3
    fill = 0 if transparent else 255
    sheet = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, channels), fill, np.uint8)
    for i, row in enumerate(rows):
        for j, sprite in enumerate(row):
            tile = make_transparent(sprite) if transparent else sprite
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y:y + h, x:x + w] = tile
    return upscale(sheet, scale)


def snap_to_palette(sprites: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Replace every pixel of (..., 3) uint8 sprites by the nearest palette colour (Euclidean RGB).

    Pixel art uses a handful of colours (DawnLike: 18); a diffusion model's output is continuous,
    so near-palette colours show as speckle. Snapping removes it without moving any shape.
    """
    palette = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    flat = sprites.reshape(-1, 3).astype(np.int32)
    d2 = ((flat[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    return palette[d2.argmin(1)].astype(np.uint8).reshape(sprites.shape)
