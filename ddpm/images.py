"""Images: the one conversion between the model's [-1, 1] tensors and uint8 sprites, crisp upscales,
sprite sheets, and PNG / animated GIF bytes."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] to (B, H, W, C) uint8."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def from_uint8(sprites: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 to a (1 or B, 3, H, W) float tensor in [-1, 1], the model's range."""
    sprites = np.asarray(sprites, dtype=np.uint8)
    if sprites.ndim == 3:
        sprites = sprites[None]
    if sprites.ndim != 4 or sprites.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (B, H, W, 3) sprites, got shape {sprites.shape}")
    return torch.from_numpy(sprites.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1


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


def nearest_colour(pixels: torch.Tensor | np.ndarray, palette: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Index of the palette colour (K, C) nearest to each pixel (..., C) (Euclidean; the first on a tie),
    shaped like pixels without their last axis. Distances are exact for 8-bit colours."""
    pixels, palette = torch.as_tensor(pixels), torch.as_tensor(palette)
    flat = pixels.reshape(-1, pixels.shape[-1]).double()
    d2 = (flat[:, None, :] - palette.to(flat)[None, :, :]).pow(2).sum(-1)
    return d2.argmin(1).reshape(pixels.shape[:-1])


def snap_to_palette(sprites: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Replace every pixel of (..., 3) uint8 sprites by the nearest palette colour (Euclidean RGB).

    Pixel art uses a handful of colours (DawnLike: 18); a diffusion model's output is continuous,
    so near-palette colours show as speckle. Snapping removes it without moving any shape.
    """
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return palette[nearest_colour(np.asarray(sprites), palette).numpy()]


def gif_bytes(images: Sequence[Image.Image], ms: int = 90, hold_ms: int = 1500) -> bytes:
    """An animated GIF that loops over the images, `ms` per frame, holding the last one for `hold_ms`."""
    if not images:
        raise ValueError("no frames to animate")
    durations = [ms] * (len(images) - 1) + [hold_ms]
    # Our own palette per frame, without dithering: pixel art keeps flat colours, and it is about 4x
    # faster than leaving the RGB-to-palette conversion to the GIF writer.
    images = [im if im.mode == "P" else im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE,
                                                                   dither=Image.Dither.NONE) for im in images]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
