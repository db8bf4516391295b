"""Fixtures for the app tests (imported by tests/test_app*.py): a cheap random-weights model, awkward images, a served app."""
from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSES = ["hero", "creature", "food", "spell", "item"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A ContextUnet with random weights (n_feat=16 keeps every call cheap) saved in Hub format."""
    import torch
    from ddpm.checkpoint import save_model
    from ddpm.model import ContextUnet
    from ddpm.schedule import NoiseSchedule

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(ContextUnet(n_feat=16, class_names=CLASSES), NoiseSchedule(), folder,
               model_card="---\nlicense: cc-by-4.0\n---\n# Test card\n\nRandom weights for tests.\n![samples](samples.png)\n")
    return folder


@pytest.fixture(scope="session")
def lab(model_dir):
    import app

    return app.create_lab(str(model_dir), "cpu")


def huge_png_header(width: int = 10000, height: int = 10000) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a 1-pixel body: a cheap bomb."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, Path]:
    """name -> file: good RGB, grayscale, transparent, palette; and corrupt, text, huge-header bad ones."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = {}
    rgb = rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(files.setdefault("rgb", d / "rgb.png"))
    Image.fromarray(rgb[..., 0]).save(files.setdefault("gray", d / "gray.png"))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (20, 200, 40, 255)  # a green square on a fully transparent background
    Image.fromarray(rgba, "RGBA").save(files.setdefault("transparent", d / "transparent.png"))
    Image.fromarray(rgb).convert("P").save(files.setdefault("palette", d / "palette.gif"))
    good = (d / "rgb.png").read_bytes()
    (files.setdefault("corrupt", d / "corrupt.png")).write_bytes(good[:60])
    (files.setdefault("text", d / "notes.png")).write_text("this is not an image\n")
    (files.setdefault("huge", d / "huge.png")).write_bytes(huge_png_header())
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(lab):
    """The app served on a free local port; yields its URL."""
    import app

    demo = app.build_demo(lab)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.LAUNCH_KWARGS)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
