"""Data loading: the course's .npy format, image folders, dispatch, and DawnLike when present."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm.data import DAWNLIKE_CLASSES, DAWNLIKE_DIR, DataError, SpriteData, load_dawnlike, load_data, \
    load_image_folder, load_npy

from helpers import write_npy_dataset


def expect_data_error(fn, *args, names, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for name in ([names] if isinstance(names, (str, Path)) else names):
        assert str(name) in message, message
    return message


# --- the .npy format ------------------------------------------------------------------------------------
def test_npy_loads_sprites_labels_and_class_names(npy_dataset):
    data = load_npy(npy_dataset)
    sprites = np.load(npy_dataset / "sprites.npy")
    assert data.images.shape == (64, 16, 16, 3) and data.images.dtype == np.uint8
    assert np.array_equal(data.images, sprites)
    assert data.labels.dtype == np.int64
    assert np.array_equal(data.labels, np.arange(64) % 5)
    assert data.class_names == DAWNLIKE_CLASSES
    assert data.counts() == {name: (13 if i < 4 else 12) for i, name in enumerate(DAWNLIKE_CLASSES)}
    x, y = data.to_tensors()
    assert tuple(x.shape) == (64, 3, 16, 16) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert y.tolist() == data.labels.tolist()


def test_npy_other_class_count_and_bool_labels(tmp_path):
    write_npy_dataset(tmp_path, n=12, n_classes=3)
    labels = np.load(tmp_path / "labels.npy").astype(bool)
    np.save(tmp_path / "labels.npy", labels)
    data = load_npy(tmp_path)
    assert data.class_names == ["class_0", "class_1", "class_2"]
    assert load_npy(tmp_path, class_names=["a", "b", "c"]).class_names == ["a", "b", "c"]
    expect_data_error(load_npy, tmp_path, ["a", "b"], names=tmp_path / "labels.npy")


@pytest.mark.parametrize("sprites", [
    np.zeros((8, 16, 16), np.uint8),
    np.zeros((8, 16, 16, 4), np.uint8),
    np.zeros((8, 16, 8, 3), np.uint8),
    np.zeros((16, 16, 3), np.uint8),
])
def test_npy_wrong_shape(npy_dataset, sprites):
    np.save(npy_dataset / "sprites.npy", sprites)
    expect_data_error(load_npy, npy_dataset, names=[npy_dataset / "sprites.npy", "shape"])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16])
def test_npy_wrong_dtype(npy_dataset, dtype):
    sprites = np.load(npy_dataset / "sprites.npy")
    np.save(npy_dataset / "sprites.npy", sprites.astype(dtype))
    expect_data_error(load_npy, npy_dataset, names=[npy_dataset / "sprites.npy", "uint8"])


def test_npy_label_count_mismatch(npy_dataset):
    labels = np.load(npy_dataset / "labels.npy")
    np.save(npy_dataset / "labels.npy", labels[:-3])
    expect_data_error(load_npy, npy_dataset, names=[npy_dataset / "labels.npy", "61", "64"])


@pytest.mark.parametrize("row", [
    [0, 0, 0, 0, 0],          # no class
    [1, 1, 0, 0, 0],          # two classes
    [0.5, 0.5, 0, 0, 0],      # a mix
    [0, 2, 0, 0, 0],          # not 0/1
    [0, 0.9, 0, 0, 0],
    [np.nan, 1, 0, 0, 0],
    [-1, 1, 1, 0, 0],
])
def test_npy_not_one_hot(npy_dataset, row):
    labels = np.load(npy_dataset / "labels.npy")
    labels[5] = row
    np.save(npy_dataset / "labels.npy", labels)
    expect_data_error(load_npy, npy_dataset, names=[npy_dataset / "labels.npy", "one-hot"])


def test_npy_labels_not_numbers_or_not_2d(npy_dataset):
    np.save(npy_dataset / "labels.npy", np.array(["hero"] * 64))
    expect_data_error(load_npy, npy_dataset, names=npy_dataset / "labels.npy")
    np.save(npy_dataset / "labels.npy", np.full((64, 5), "x"))
    expect_data_error(load_npy, npy_dataset, names=npy_dataset / "labels.npy")


@pytest.mark.parametrize("name", ["sprites.npy", "labels.npy"])
def test_npy_missing_or_unreadable_file(npy_dataset, name):
    (npy_dataset / name).unlink()
    expect_data_error(load_npy, npy_dataset, names=npy_dataset / name)
    (npy_dataset / name).write_bytes(b"\x93NUMPY garbage")
    expect_data_error(load_npy, npy_dataset, names=npy_dataset / name)
    np.save(npy_dataset / name, np.array([{"a": 1}], dtype=object))  # would need pickle
    expect_data_error(load_npy, npy_dataset, names=npy_dataset / name)


def test_sprite_data_refuses_empty_sets_and_mismatched_labels():
    with pytest.raises(DataError, match="empty"):
        SpriteData(np.zeros((0, 16, 16, 3), np.uint8), np.zeros(0, np.int64), ["a"])
    with pytest.raises(DataError, match="labels"):
        SpriteData(np.zeros((2, 16, 16, 3), np.uint8), np.zeros(3, np.int64), ["a"])


# --- image folders ------------------------------------------------------------------------------------
def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def make_image_folder(root: Path) -> dict[str, np.ndarray]:
    """Two classes with every awkward kind of image; returns the expected RGB sprite per file stem."""
    expected = {}
    # RGBA with a transparent half: the transparent part becomes white
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (200, 30, 40)
    rgba[:, :8, 3] = 255
    save(Image.fromarray(rgba, "RGBA"), root / "alpha" / "a_rgba.png")
    e = np.full((16, 16, 3), 255, np.uint8)
    e[:, :8] = (200, 30, 40)
    expected["a_rgba"] = e
    # palette image with a transparent index
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 60] + [0] * 762)
    pal.paste(0, (0, 0, 16, 4))
    save(pal, root / "alpha" / "b_palette.png", transparency=0)
    e = np.full((16, 16, 3), (10, 200, 60), np.uint8)
    e[:4] = 255
    expected["b_palette"] = e
    # greyscale
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    save(Image.fromarray(grey, "L"), root / "plain" / "c_grey.png")
    expected["c_grey"] = np.repeat(grey[..., None], 3, -1)
    # 16-bit greyscale: full range and a dark image whose values all lie below 256
    g16 = (np.tile(np.arange(16, dtype=np.uint16), (16, 1)) * 4369)  # 0..65535
    save(Image.fromarray(g16), root / "plain" / "d_grey16.png")
    expected["d_grey16"] = np.repeat((np.tile(np.arange(16), (16, 1)) * 17).astype(np.uint8)[..., None], 3, -1)
    dark = np.full((16, 16), 200, np.uint16)  # 200 / 65535: black in 8 bits
    save(Image.fromarray(dark), root / "plain" / "e_dark16.png")
    expected["e_dark16"] = np.zeros((16, 16, 3), np.uint8)
    # a larger image (box-filtered down) and a non-square one (centre-cropped)
    big = np.zeros((32, 32, 3), np.uint8)
    big[:16] = 255
    save(Image.fromarray(big), root / "plain" / "f_big.png")
    e = np.zeros((16, 16, 3), np.uint8)
    e[:8] = 255
    expected["f_big"] = e
    wide = np.zeros((16, 24, 3), np.uint8)
    wide[:, 4:20] = (1, 2, 3)
    wide[:, :4] = wide[:, 20:] = 255  # cropped away
    save(Image.fromarray(wide), root / "plain" / "g_wide.png")
    expected["g_wide"] = np.full((16, 16, 3), (1, 2, 3), np.uint8)
    # a small one (nearest-neighbour up) and a notes file that is not an image
    small = np.zeros((8, 8, 3), np.uint8)
    small[:4, :4] = (9, 99, 199)
    save(Image.fromarray(small), root / "plain" / "h_small.bmp")
    expected["h_small"] = np.zeros((16, 16, 3), np.uint8)
    expected["h_small"][:8, :8] = (9, 99, 199)
    (root / "plain" / "notes.txt").write_text("not an image")
    return expected


def test_image_folder_turns_every_kind_of_image_into_a_sprite(tmp_path):
    expected = make_image_folder(tmp_path)
    data = load_image_folder(tmp_path, height=16)
    assert data.class_names == ["alpha", "plain"]
    assert data.images.shape == (len(expected), 16, 16, 3) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0] + [1] * (len(expected) - 2)
    for image, stem in zip(data.images, sorted(expected)):
        np.testing.assert_allclose(image.astype(int), expected[stem].astype(int), atol=1, err_msg=stem)


def test_image_folder_other_height(tmp_path):
    make_image_folder(tmp_path)
    data = load_image_folder(tmp_path, height=32)
    assert data.images.shape[1:] == (32, 32, 3)


def test_image_folder_empty_class(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    expect_data_error(load_image_folder, tmp_path, names=[tmp_path / "empty", "no images"])


def test_image_folder_without_classes(tmp_path):
    expect_data_error(load_image_folder, tmp_path, names=tmp_path)
    expect_data_error(load_image_folder, tmp_path / "missing", names=tmp_path / "missing")


def bad_images(folder: Path) -> dict[str, bytes]:
    good = folder.parent / "good.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(good)
    png = good.read_bytes()

    def claiming(side):  # a PNG whose header claims side x side pixels, with a tiny body
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:])

    corrupt = bytearray(png)
    corrupt[41:45] = b"\xff" * 4  # inside the compressed pixel data
    bad_header = bytearray(png)
    bad_header[20] ^= 0xFF  # IHDR no longer matches its CRC
    return {"zero.png": b"", "random.png": bytes(range(256)) * 4, "truncated.png": png[: len(png) // 2],
            "corrupt.png": bytes(corrupt), "bad_header.png": bytes(bad_header),
            # above our limit but below Pillow's own bomb check, and far above both
            "bomb.png": claiming(5000), "huge_bomb.png": claiming(20000)}


@pytest.mark.parametrize("name", ["zero.png", "random.png", "truncated.png", "corrupt.png", "bad_header.png",
                                  "bomb.png", "huge_bomb.png"])
def test_image_folder_bad_image(tmp_path, name):
    root = tmp_path / "data"
    make_image_folder(root)
    path = root / "plain" / name
    path.write_bytes(bad_images(tmp_path)[name])
    message = expect_data_error(load_image_folder, root, names=path)
    if name == "bomb.png":
        assert "5000x5000" in message


# --- dispatch ----------------------------------------------------------------------------------------
def test_load_data_picks_the_loader_from_its_argument(tmp_path, npy_dataset):
    assert len(load_data(npy_dataset).images) == 64
    make_image_folder(tmp_path / "folder")
    assert load_data(tmp_path / "folder").class_names == ["alpha", "plain"]
    assert load_data(str(tmp_path / "folder"), height=32).height == 32
    expect_data_error(load_data, tmp_path / "nothing", names=tmp_path / "nothing")
    expect_data_error(load_data, npy_dataset, height=32, names=[npy_dataset, "16 px", "32 px"])


# --- DawnLike -------------------------------------------------------------------------------------------
needs_dawnlike = pytest.mark.skipif(not DAWNLIKE_DIR.is_dir(),
                                    reason=f"DawnLike sheets not found at {DAWNLIKE_DIR} (../shared/data/dawnlike)")


@needs_dawnlike
def test_dawnlike_has_every_class_without_duplicates_or_empty_cells(dawnlike):
    data = dawnlike
    assert data.class_names == DAWNLIKE_CLASSES
    assert data.images.shape[1:] == (16, 16, 3)
    assert 2000 <= len(data.images) <= 2800, len(data.images)
    counts = data.counts()
    assert all(n >= 50 for n in counts.values()), counts
    flat = data.images.reshape(len(data.images), -1)
    assert len(np.unique(flat, axis=0)) == len(flat), "duplicates left in"
    white = (data.images == 255).all(-1)
    assert not white.all(axis=(1, 2)).any(), "empty (all-background) cells left in"
    corners = white[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.all(1).mean() > 0.8, "sprites should sit on a white background"


@needs_dawnlike
def test_load_data_dawnlike(dawnlike):
    data = load_data("dawnlike")
    assert np.array_equal(data.images, dawnlike.images) and np.array_equal(data.labels, dawnlike.labels)
    expect_data_error(load_data, "dawnlike", height=32, names=["16 px", "32 px"])


def test_dawnlike_missing_folder(tmp_path):
    expect_data_error(load_dawnlike, tmp_path / "nope", names=tmp_path / "nope")
