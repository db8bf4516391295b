"""Plain helpers and constants that several test files use: tiny models and data sets, training
arguments, awkward files, a free port, and the browser tests' page helpers. Fixtures are in conftest.py."""
from __future__ import annotations

import csv
import io
import os
import signal
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
CLASSES = ["hero", "creature", "food", "spell", "item"]


# --- models and data ------------------------------------------------------------------------------------
def make_tiny_unet(seed: int = 0, **kwargs):
    """A small randomly initialised ContextUnet (n_feat 16 unless given), in eval mode."""
    from ddpm.model import ContextUnet

    torch.manual_seed(seed)
    config = dict(n_feat=16, n_classes=len(CLASSES), height=16, class_names=list(CLASSES))
    config.update(kwargs)
    model = ContextUnet(**config)
    # Random BatchNorm statistics so eval mode does not hide the shortcut or normalisation paths.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def write_npy_dataset(folder, n: int = 64, height: int = 16, n_classes: int = 5, seed: int = 0):
    """sprites.npy and labels.npy in the course's format: class k is a coloured square on white."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(n) % n_classes
    sprites = np.full((n, height, height, 3), 255, np.uint8)
    palette = rng.integers(0, 200, (n_classes, 3))
    for i, k in enumerate(labels):
        lo = 2 + (i % 3)
        sprites[i, lo:height - lo, lo:height - lo] = palette[k]
    np.save(folder / "sprites.npy", sprites)
    np.save(folder / "labels.npy", np.eye(n_classes)[labels])
    return sprites, labels


# --- training runs --------------------------------------------------------------------------------------
def train_args(data, out, steps, *extra) -> list[str]:
    """ddpm.train arguments for a tiny run (n_feat 16, batch 16, one thread) that never samples."""
    return ["--data", str(data), "--out", str(out), "--steps", str(steps), "--n-feat", "16", "--batch-size", "16",
            "--threads", "1", "--warmup", "3", "--lr", "2e-3", "--sample-every", "0", *map(str, extra)]


# The runs test_train_faults.py interrupts, and the uninterrupted one they must match (conftest.py).
FAULT_RUN_STEPS, FAULT_RUN_EVERY = 12, 3


def fault_run_args(data, out, *extra) -> list[str]:
    """A FAULT_RUN_STEPS-step tiny run with a checkpoint every FAULT_RUN_EVERY steps."""
    return train_args(data, out, FAULT_RUN_STEPS, "--checkpoint-every", FAULT_RUN_EVERY, *extra)


def read_log(out: Path) -> list[dict]:
    """The rows of a training run's log.csv."""
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def stop_after(monkeypatch, n_updates: int) -> None:
    """Deliver SIGTERM (as a user's kill would) during the n-th optimizer step of ddpm.train: the run
    finishes that step, saves and stops."""
    import ddpm.train as train

    original, calls = train.update_ema, [0]

    def update_ema(*a, **kw):
        calls[0] += 1
        if calls[0] == n_updates:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **kw)

    monkeypatch.setattr(train, "update_ema", update_ema)


# --- files and the network ------------------------------------------------------------------------------
def huge_png_header(width: int = 10000, height: int = 10000) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a 1-pixel body: a cheap bomb."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def png(path) -> np.ndarray:
    """A picture the app returned, which must be a PNG, as an int16 RGB array."""
    im = Image.open(path)
    assert im.format == "PNG", f"{path} is {im.format}, not PNG"
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def free_port() -> int:
    """A local TCP port nobody listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the app in Chromium (Playwright) -------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("SCREENSHOT_DIR", PROJECT / "screenshots"))


def open_page(browser, server, width: int, height: int):
    """A new page of the served app at this viewport, once its first picture is there; page errors are
    collected in page.errors."""
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(30_000)
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.goto(server, wait_until="domcontentloaded")  # "networkidle" never settles: Gradio keeps a stream open
    pg.wait_for_selector("#f-xt img")
    return pg


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def src(page, elem_id: str) -> str:
    page.wait_for_selector(f"#{elem_id} img")
    return page.locator(f"#{elem_id} img").first.get_attribute("src")


def pixels(page, elem_id: str) -> np.ndarray:
    body = page.request.get(src(page, elem_id)).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def wait_new_src(page, elem_id: str, old: str) -> str:
    page.wait_for_function(
        "([id, old]) => { const i = document.querySelector(`#${id} img`); return i && i.src !== old; }",
        arg=[elem_id, old])
    return src(page, elem_id)


def wait_text(page, elem_id: str, pattern: str) -> str:
    page.wait_for_function("([id, pat]) => new RegExp(pat).test(document.querySelector(`#${id}`).innerText)",
                           arg=[elem_id, pattern])
    return page.locator(f"#{elem_id}").inner_text()
