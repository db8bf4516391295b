"""Shared fixtures for the ddpm library tests (tiny models so the suite stays fast on two cores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

LIB_CLASSES = ["hero", "creature", "food", "spell", "item"]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Every test runs on one torch thread, set here at the start of the session, before any module's
    server starts. The tests run on a busy two-core machine (a training run may hold the other core):
    OpenMP threads that outnumber the free cores spin against each other, and every network call to a
    served app then gets far slower (up to ~50x), which is what makes a suite slow or time out."""
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


def make_tiny_unet(seed: int = 0, **kwargs):
    """A small randomly initialised ContextUnet (n_feat 16 unless given), in eval mode."""
    from ddpm.model import ContextUnet

    torch.manual_seed(seed)
    config = dict(n_feat=16, n_classes=len(LIB_CLASSES), height=16, class_names=list(LIB_CLASSES))
    config.update(kwargs)
    model = ContextUnet(**config)
    # Random BatchNorm statistics so eval mode does not hide the shortcut or normalisation paths.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def lib_tiny_unet():
    return make_tiny_unet()


@pytest.fixture(scope="session")
def lib_tiny_model_dir(tmp_path_factory):
    """A saved tiny model directory (config.json, model.safetensors, scheduler_config.json, README.md)."""
    from ddpm.checkpoint import save_model
    from ddpm.schedule import NoiseSchedule

    folder = tmp_path_factory.mktemp("lib_tiny_model") / "model"
    save_model(make_tiny_unet(seed=1), NoiseSchedule(), folder, model_card="# tiny test model\n")
    return folder


def stop_after(monkeypatch, n_updates: int) -> None:
    """Deliver SIGTERM (as a user's kill would) during the n-th optimizer step of ddpm.train: the run
    finishes that step, saves and stops."""
    import os
    import signal

    import ddpm.train as train

    original, calls = train.update_ema, [0]

    def update_ema(*a, **kw):
        calls[0] += 1
        if calls[0] == n_updates:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*a, **kw)

    monkeypatch.setattr(train, "update_ema", update_ema)


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


@pytest.fixture
def lib_npy_dataset(tmp_path):
    folder = tmp_path / "npy_data"
    write_npy_dataset(folder)
    return folder
