"""Saving and loading models in Hub format: the functions the CLIs, the app and the trainer call.

The folder format and its strict readers live in ddpm.folder; ContextUnet.from_pretrained and
save_pretrained (ddpm.model) use them, and these functions are thin, stable entry points over both.
Loading is strict (every weight present, no extras, shapes equal) and never unpickles: a folder
with only pytorch_model.bin is refused. Every failure is a CheckpointError naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .folder import CheckpointError, read_palette, read_schedule, read_training_info, resolve
from .limits import check_number
from .model import ContextUnet
from .sampling import DEFAULT_REFINER_T_MAX, Refiner, check_refiner
from .schedule import NoiseSchedule

__all__ = ["load_model", "load_schedule", "load_palette", "load_training_info", "save_model"]


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", local_files_only: bool = False,
               revision: str | None = None, cache_dir: str | os.PathLike | None = None,
               token: str | bool | None = None) -> ContextUnet:
    """Build a ContextUnet from a model directory or Hub repo id, strictly, in eval mode."""
    return ContextUnet.from_pretrained(source, local_files_only=local_files_only, revision=revision,
                                       cache_dir=cache_dir, token=token).to(device).eval()


def load_schedule(source: str | os.PathLike) -> NoiseSchedule:
    """The noise schedule the model was trained with; a folder without scheduler_config.json is an error."""
    return read_schedule(resolve(source))


def load_refiner(source: str | os.PathLike, model: ContextUnet, schedule: NoiseSchedule, t_max: int | None = None,
                 device: str | torch.device = "cpu", t_max_name: str = "the refiner's t_max") -> Refiner:
    """The model at `source` as the refiner of `model` for the steps at t <= t_max (DEFAULT_REFINER_T_MAX when
    None), checked against it (check_refiner). t_max_name: what a bad t_max is called in the message (a
    command line's flag). CheckpointError or ValueError naming the refiner on failure."""
    t_max = DEFAULT_REFINER_T_MAX if t_max is None else check_number(t_max, t_max_name, 1, schedule.T, integer=True)
    try:
        refiner = Refiner(load_model(source, device=device), load_schedule(source), t_max)
    except CheckpointError as e:
        raise CheckpointError(f"the refiner {str(source)!r}: {e}") from None
    try:
        return check_refiner(refiner, model, schedule)
    except ValueError as e:
        raise ValueError(f"the refiner {str(source)!r}: {e}") from None


def load_palette(source: str | os.PathLike) -> np.ndarray | None:
    """The training data's colours as (K, 3) uint8 from palette.json, or None when the model has none."""
    return read_palette(resolve(source))


def load_training_info(source: str | os.PathLike) -> dict | None:
    """The model's training.json (ddpm.history), or None when it has none."""
    return read_training_info(resolve(source))


def save_model(model: ContextUnet, schedule: NoiseSchedule, folder: str | os.PathLike,
               model_card: str | None = None, palette: np.ndarray | None = None,
               training_info: dict | None = None) -> Path:
    """Write the complete model folder: config.json, model.safetensors, scheduler_config.json, README.md,
    and palette.json / training.json when given or already carried by the model.

    The schedule, palette and history are set on the model, so a later save_pretrained or push_to_hub
    writes the same folder. model_card replaces the generated card (tests use a short one).
    """
    folder = Path(folder)
    model.noise_schedule = schedule
    if palette is not None:
        model.palette = palette
    if training_info is not None:
        model.training_info = training_info
    model.save_pretrained(folder)
    if model_card is not None:
        (folder / "README.md").write_text(model_card)
    return folder
