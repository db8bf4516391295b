"""Sprite data sets: DawnLike sheets, the course's .npy format, and image folders.

Every loader returns a SpriteData: uint8 images (N, H, W, 3), int64 labels (N,) and the class
names. Bad input raises DataError with a message that names the file.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DAWNLIKE_DIR = PROJECT_ROOT.parent / "shared" / "data" / "dawnlike"
DAWNLIKE_CLASSES = ["hero", "creature", "food", "spell", "item"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}
MAX_IMAGE_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding
TILE = 16


class DataError(ValueError):
    """A data set that cannot be used; the message names the file and the problem."""


@dataclass
class SpriteData:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64 class indices
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 of shape (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.labels)} labels for {len(self.images)} images")
        if len(self.images) == 0:
            raise DataError("the data set is empty")

    @property
    def height(self) -> int:
        return self.images.shape[1]

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels.tolist())
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}

    def palette(self, max_colors: int = 64) -> np.ndarray | None:
        """The data's colours as (K, 3) uint8 when there are at most max_colors (pixel art), else None."""
        colors = np.unique(self.images.reshape(-1, 3), axis=0)
        return colors if len(colors) <= max_colors else None

    def to_tensors(self):
        """Images as float (N, 3, H, W) in [-1, 1] and labels as a long tensor."""
        import torch

        from .images import from_uint8

        return from_uint8(self.images), torch.from_numpy(self.labels)


# --- images --------------------------------------------------------------------------------
def open_image(path: Path | str) -> Image.Image:
    """Open an image file fully, refusing unreadable files and decompression bombs."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: image is {w}x{h}, larger than the {MAX_IMAGE_PIXELS:,} pixels allowed")
            im.load()
            return im.copy()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({e.__class__.__name__}: {e})") from None


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any mode (palette, 16-bit, grey, with alpha) to RGB, compositing transparency onto background."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit modes span 0..65535 even when an image is dark (all values below 256)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray((arr / top * 255).round().clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        im = Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8), "L")
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def sprite_from_image(im: Image.Image, height: int) -> np.ndarray:
    """An arbitrary image as an (height, height, 3) uint8 sprite: centre-crop to square, resize."""
    im = to_rgb(im)
    w, h = im.size
    side = min(w, h)
    im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != height:
        # Box filter when shrinking keeps thin pixel-art lines; nearest when enlarging keeps them crisp.
        im = im.resize((height, height), Image.BOX if side > height else Image.NEAREST)
    return np.asarray(im, dtype=np.uint8)


# --- DawnLike ---------------------------------------------------------------------------------
def dawnlike_class(sheet: Path) -> str | None:
    """Our class for a sheet, from its folder and name; None for sheets we do not use."""
    folder, stem = sheet.parent.name, sheet.stem.rstrip("01")
    if folder == "Characters":
        return "hero" if stem in ("Player", "Humanoid") else "creature"
    if folder == "Items":
        if stem in ("Food", "Flesh"):
            return "food"
        if stem in ("Scroll", "Book", "Wand"):
            return "spell"
        return "item"
    if folder == "Objects" and stem == "Effect":
        return "spell"
    return None


def slice_sheet(im: Image.Image, tile: int = TILE) -> list[Image.Image]:
    """Non-empty tile x tile RGBA cells of a sheet, in reading order."""
    rgba = im.convert("RGBA")
    arr = np.asarray(rgba)
    cells = []
    for y in range(0, arr.shape[0] - tile + 1, tile):
        for x in range(0, arr.shape[1] - tile + 1, tile):
            cell = arr[y:y + tile, x:x + tile]
            if cell[..., 3].max() > 0:  # drop fully transparent cells
                cells.append(Image.fromarray(cell, "RGBA"))
    return cells


def load_dawnlike(root: Path | str = DAWNLIKE_DIR, verbose: bool = False) -> SpriteData:
    """Build the five-class data set from the DawnLike sheets, dropping empty cells and exact duplicates."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DawnLike folder not found (expected ../shared/data/dawnlike next to the project)")
    images, labels, seen = [], [], set()
    for sheet in sorted(root.glob("*/*.png")):
        name = dawnlike_class(sheet)
        if name is None:
            continue
        for cell in slice_sheet(open_image(sheet)):
            rgb = np.asarray(to_rgb(cell), dtype=np.uint8)
            key = hashlib.sha1(rgb.tobytes()).digest()
            if key in seen:  # the two animation frames are often identical
                continue
            seen.add(key)
            images.append(rgb)
            labels.append(DAWNLIKE_CLASSES.index(name))
    if not images:
        raise DataError(f"{root}: no sprites found")
    data = SpriteData(np.stack(images), np.asarray(labels, dtype=np.int64), list(DAWNLIKE_CLASSES))
    if verbose:
        print(f"DawnLike: {len(data.images)} sprites", data.counts())
    return data


# --- the course's .npy format ----------------------------------------------------------------------
def load_npy(folder: Path | str, class_names: list[str] | None = None) -> SpriteData:
    """sprites.npy (N, H, W, 3) uint8 and labels.npy (N, C) one-hot, as in the course's data set."""
    folder = Path(folder)
    sprites_path, labels_path = folder / "sprites.npy", folder / "labels.npy"
    arrays = {}
    for path in (sprites_path, labels_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            arrays[path.name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
    sprites, onehot = arrays["sprites.npy"], arrays["labels.npy"]
    if sprites.ndim != 4 or sprites.shape[-1] != 3 or sprites.shape[1] != sprites.shape[2]:
        raise DataError(f"{sprites_path}: expected shape (N, H, H, 3), got {sprites.shape}")
    if sprites.dtype != np.uint8:
        raise DataError(f"{sprites_path}: expected dtype uint8, got {sprites.dtype}")
    if onehot.ndim != 2 or not (np.issubdtype(onehot.dtype, np.number) or onehot.dtype == np.bool_):
        raise DataError(f"{labels_path}: expected a one-hot array of shape (N, classes), got {onehot.shape}")
    if len(onehot) != len(sprites):
        raise DataError(f"{labels_path}: {len(onehot)} labels for {len(sprites)} sprites in {sprites_path.name}")
    values = onehot.astype(np.float64)
    if not (((values == 0) | (values == 1)).all() and (values.sum(1) == 1).all()):
        bad = int(np.flatnonzero(~(((values == 0) | (values == 1)).all(1) & (values.sum(1) == 1)))[0])
        raise DataError(f"{labels_path}: every row must be a one-hot vector (a single 1, zeros elsewhere); "
                        f"row {bad} is {onehot[bad].tolist()}")
    n_classes = onehot.shape[1]
    if class_names is None:
        class_names = DAWNLIKE_CLASSES if n_classes == 5 else [f"class_{i}" for i in range(n_classes)]
    if len(class_names) != n_classes:
        raise DataError(f"{labels_path}: {n_classes} classes but {len(class_names)} class names")
    return SpriteData(np.ascontiguousarray(sprites), onehot.argmax(1).astype(np.int64), list(class_names))


# --- image folders ----------------------------------------------------------------------------
def load_image_folder(folder: Path | str, height: int = 16) -> SpriteData:
    """One subfolder per class (sorted by name), images resized to height x height."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{folder}: no class subfolders (expected one subfolder of images per class)")
    images, labels = [], []
    for i, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{d}: no images in class folder (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            images.append(sprite_from_image(open_image(f), height))
            labels.append(i)
    return SpriteData(np.stack(images), np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs])


def load_data(spec: str | Path, height: int = 16) -> SpriteData:
    """'dawnlike', a folder with sprites.npy + labels.npy, or an image folder with class subfolders."""
    path = Path(spec)
    if str(spec) == "dawnlike":
        data = load_dawnlike()  # checked against height below like every other source
    elif not path.exists():
        raise DataError(f"{path}: not found (give 'dawnlike', a folder with sprites.npy and labels.npy, "
                        "or a folder with one subfolder of images per class)")
    elif path.is_dir() and (path / "sprites.npy").exists():
        data = load_npy(path)
    elif path.is_dir() and (path / "Characters").is_dir() and (path / "Items").is_dir():
        data = load_dawnlike(path)
    else:
        data = load_image_folder(path, height)
    if data.height != height:
        raise DataError(f"{path}: sprites are {data.height} px but the model is {height} px")
    return data
