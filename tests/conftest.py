"""Every fixture of the test suite. Plain helpers and constants are in helpers.py.

Tiny random-weights models keep each call cheap, so the suite stays fast on a busy two-core machine.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CHROMIUM, fault_run_args, free_port, huge_png_header, make_tiny_unet, \
    open_page, write_npy_dataset

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- one torch thread -----------------------------------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test runs on one torch thread, set here at the start of the session, before any module's
    server starts. The tests run on a busy two-core machine (a training run may hold the other core):
    OpenMP threads that outnumber the free cores spin against each other, and every network call to a
    served app then gets far slower (up to ~50x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def back_to_one_torch_thread(one_torch_thread):
    """After a test that changed the thread count (ddpm.train.main --threads N does), back to one."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


# --- models, schedules and data -------------------------------------------------------------------------
@pytest.fixture
def tiny_unet():
    """A fresh make_tiny_unet() (seed 0) for each test, which may change it."""
    return make_tiny_unet()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """make_tiny_unet(seed=1) saved in Hub format (config.json, model.safetensors, scheduler_config.json,
    README.md, samples.png): the one saved model of the app's tests and the library's. Its BatchNorm
    statistics are random, so outputs depend on their being saved and loaded; its card has front matter,
    which the app's Model tab leaves out, a picture it shows, and one that is not in the folder."""
    from ddpm.checkpoint import save_model
    from ddpm.schedule import NoiseSchedule

    folder = tmp_path_factory.mktemp("tiny_model") / "model"
    card = ("---\nlicense: cc-by-4.0\n---\n# Test card\n\nRandom weights for tests.\n![samples](samples.png)\n"
            "![before and after](before_after.png)\n")
    save_model(make_tiny_unet(seed=1), NoiseSchedule(), folder, model_card=card)
    Image.fromarray(np.full((32, 48, 3), (200, 40, 40), np.uint8)).save(folder / "samples.png")
    return folder


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A writable copy of the tiny saved model, to break in various ways."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


@pytest.fixture(params=["from_pretrained", "load_model"])
def loader(request):
    """Each way to load a model folder: ddpm.checkpoint.load_model and ContextUnet.from_pretrained."""
    from ddpm.checkpoint import load_model
    from ddpm.model import ContextUnet

    return {"load_model": load_model, "from_pretrained": ContextUnet.from_pretrained}[request.param]


@pytest.fixture(scope="module")
def default_schedule():
    """NoiseSchedule() as the app and the CLIs use it: T = 500, linear."""
    from ddpm.schedule import NoiseSchedule

    return NoiseSchedule()


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request):
    """A T = 500 schedule of each kind: a test that takes it runs once per kind."""
    from ddpm.schedule import NoiseSchedule

    return NoiseSchedule(500, request.param)


@pytest.fixture
def npy_dataset(tmp_path):
    """A writable 64-sprite data set in the .npy format (write_npy_dataset)."""
    folder = tmp_path / "npy_data"
    write_npy_dataset(folder)
    return folder


@pytest.fixture
def benchmark_inputs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(model folder, data folder) for a benchmark's end-to-end smoke run: an n_feat 8 model and 40 sprites,
    with ddpm.evaluate's classifiers trained for 3 epochs into a cache inside tmp_path."""
    import ddpm.evaluate
    from ddpm.checkpoint import save_model
    from ddpm.model import ContextUnet
    from ddpm.schedule import NoiseSchedule
    from helpers import CLASSES

    monkeypatch.setattr(ddpm.evaluate, "CACHE_DIR", tmp_path / "cache")
    train = ddpm.evaluate.train_classifier
    monkeypatch.setattr(ddpm.evaluate, "train_classifier", lambda data, **kw: train(data, epochs=3, **kw))
    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=8, class_names=CLASSES), NoiseSchedule(500), tmp_path / "model")
    write_npy_dataset(tmp_path / "data", n=40)
    return tmp_path / "model", tmp_path / "data"


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """48 sprites to train tiny models on; the tests only read it."""
    folder = tmp_path_factory.mktemp("train_data")
    write_npy_dataset(folder, n=48)
    return folder


@pytest.fixture(scope="module")
def small_train_data(tmp_path_factory):
    """32 sprites: enough for two processes training with batches of 8; the tests only read it."""
    folder = tmp_path_factory.mktemp("accelerate_data")
    write_npy_dataset(folder, n=32)
    return folder


@pytest.fixture(scope="module")
def dawnlike():
    """The DawnLike sprites from ../shared/data/dawnlike (tests that use it skip when it is absent)."""
    from ddpm.data import DAWNLIKE_DIR, load_dawnlike

    if not DAWNLIKE_DIR.is_dir():
        pytest.skip(f"needs the DawnLike sheets at {DAWNLIKE_DIR} (../shared/data/dawnlike)")
    return load_dawnlike()


# --- training runs --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _signal_handlers_kept():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.fixture
def restore_signals():
    """The SIGTERM and SIGINT handlers as they were before the test, whatever a training run did."""
    with _signal_handlers_kept():
        yield


@pytest.fixture(scope="module")
def uninterrupted_fault_run(train_data, tmp_path_factory):
    """The run that test_train_faults interrupts, run without interruption: its log and final checkpoint."""
    import ddpm.train as train

    out = tmp_path_factory.mktemp("fault_ref") / "run"
    with _signal_handlers_kept():
        assert train.main(fault_run_args(train_data, out)) == 0
    return out


# --- the app --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lab(tiny_model_dir):
    """The app's handlers (app.SpriteLab) on the tiny model, on the CPU."""
    import app

    return app.create_lab(str(tiny_model_dir), "cpu")


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


@pytest.fixture(scope="module")
def awkward_images(tmp_path_factory) -> dict[str, Path]:
    """name -> file: a zero-byte file and a real decompression bomb (refused); 1x1, 4000x4000, 16-bit
    and transparent-palette pictures (accepted)."""
    d = tmp_path_factory.mktemp("awkward")
    files = {"zero-byte": d / "empty.png", "1x1": d / "one.png", "4000x4000": d / "big.png",
             "16-bit": d / "grey16.png", "palette": d / "palette.png", "bomb": d / "bomb.png"}
    files["zero-byte"].write_bytes(b"")
    Image.new("RGB", (1, 1), (200, 30, 40)).save(files["1x1"])
    big = Image.new("RGB", (4000, 4000), (255, 255, 255))
    big.paste((20, 40, 200), (0, 0, 4000, 2000))  # top half blue
    big.save(files["4000x4000"], compress_level=1)
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(files["16-bit"])  # mid grey in 16 bits
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 60] + [0] * 762)
    pal.paste(0, (0, 0, 16, 8))  # top half: the transparent index
    pal.save(files["palette"], transparency=0)
    Image.new("1", (5000, 5000)).save(files["bomb"])  # 25 Mpixel in a few KB
    return files


@contextlib.contextmanager
def _served(lab):
    """The app's page for these handlers, served on a free local port: yields (demo, port)."""
    import app

    demo = app.build_demo(lab)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.LAUNCH_KWARGS)
    try:
        yield demo, port
    finally:
        demo.close()


@pytest.fixture(scope="module")
def server(lab):
    """The app served on a free local port; yields its URL."""
    with _served(lab) as (demo, port):
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def client(server):
    """A gradio_client Client of the served app."""
    from gradio_client import Client

    return Client(server, verbose=False, analytics_enabled=False)


@pytest.fixture(scope="module")
def recording_server(lab):
    """The app served with handlers that note the path each upload arrives at: (handlers, demo, port, url)."""
    import app

    class RecordingLab(app.SpriteLab):
        def __init__(self, lab):
            super().__init__(lab.model, lab.schedule, lab.device, lab.source)
            self.uploads: list[str] = []

        @functools.wraps(app.SpriteLab.forward_upload)  # the same API signature
        def forward_upload(self, path, *rest, **kw):
            self.uploads.append(path)
            return super().forward_upload(path, *rest, **kw)

    rec = RecordingLab(lab)
    with _served(rec) as (demo, port):
        yield rec, demo, port, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (the browser tests skip when either is missing)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    """One desktop-sized page of the served app, shared by a module's tests in order."""
    pg = open_page(browser, server, 1400, 1000)
    yield pg
    pg.close()
