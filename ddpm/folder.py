"""The model folder format, on disk or on the Hub: which files it holds, how each is read and written.

  config.json             the network's constructor arguments
  model.safetensors       the weights (pickle checkpoints are refused, never loaded)
  scheduler_config.json   the noise schedule, in diffusers' format (ddpm.schedule)
  palette.json            optional: the training data's colours, for snapping samples to them
  training.json           optional: the training history (ddpm.history)
  README.md               the model card (ddpm.card)

Every failure is a CheckpointError whose one-line message names the file. This module knows no
network class: ddpm.model builds the ContextUnet from what it reads here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .history import TRAINING_INFO, HistoryError, check_history, write_history
from .schedule import NoiseSchedule, ScheduleConfigError

CONFIG, WEIGHTS, SCHEDULER_CONFIG, PALETTE, CARD = (
    "config.json", "model.safetensors", "scheduler_config.json", "palette.json", "README.md")
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt")
HUB_FILES = [CONFIG, WEIGHTS, SCHEDULER_CONFIG, PALETTE, TRAINING_INFO, CARD, "*.png"]


class CheckpointError(RuntimeError):
    """A model that cannot be loaded; the message says what is wrong and with which file."""


def resolve(source: str | os.PathLike, local_files_only: bool = False, revision: str | None = None,
            cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
            force_download: bool = False) -> Path:
    """A local directory, or a Hub repo id downloaded (or found in the local Hub cache)."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a model directory (with {CONFIG} and {WEIGHTS}), got a file")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(str(source), allow_patterns=HUB_FILES, revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only, token=token, force_download=force_download))
    except HFValidationError:
        raise CheckpointError(f"{source}: no such directory, and not a valid Hub repo id") from None
    except Exception as e:  # network, missing repo, offline without cache: all the same to a user
        hint = " (offline and not in the local Hub cache)" if "offline" in str(e).lower() or "local" in type(e).__name__.lower() else ""
        raise CheckpointError(f"{source}: no such directory, and the Hub repo could not be fetched{hint}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_config(folder: Path, known: set[str]) -> dict:
    """config.json as a dict whose keys are all in `known` (the network's constructor arguments)."""
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model directory holds {CONFIG} and {WEIGHTS}")
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    unknown = set(config) - known
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {sorted(unknown)}; this is not a ContextUnet config")
    return config


def read_weights(folder: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """model.safetensors, checked against `expected` (a state_dict): same keys, same shapes, all finite."""
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise CheckpointError(f"{folder / pickles[0]}: pickle checkpoints are refused (loading them can run "
                                  f"code); convert it to {WEIGHTS}")
        raise CheckpointError(f"{weights}: missing")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file, perhaps truncated ({e})") from None
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(expected[k].shape)} for the config)")
        raise CheckpointError(f"{weights}: does not match {CONFIG}: " + "; ".join(parts))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{weights}: weights contain NaN or inf (e.g. {bad[0]})")
    return state


def read_schedule(folder: Path) -> NoiseSchedule:
    """The noise schedule the model was trained with. Required: no default stands in for it."""
    path = folder / SCHEDULER_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model directory records the noise schedule it was trained with")
    try:
        return NoiseSchedule.from_config(read_json(path))
    except ScheduleConfigError as e:
        raise CheckpointError(f"{path}: invalid schedule ({e})") from None


def read_palette(folder: Path) -> np.ndarray | None:
    """The training data's colours as (K, 3) uint8 from palette.json, or None when the model has none."""
    path = folder / PALETTE
    if not path.exists():
        return None
    try:
        palette = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid palette ({e})") from None
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or palette.min() < 0 or palette.max() > 255:
        raise CheckpointError(f"{path}: expected a list of [r, g, b] colours with values 0..255")
    return palette.astype(np.uint8)


def read_training_info(folder: Path) -> dict | None:
    """The training history from training.json (ddpm.history), or None when the model has none."""
    path = folder / TRAINING_INFO
    if not path.is_file():
        return None
    try:
        return check_history(read_json(path))
    except HistoryError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_card(folder: Path) -> str | None:
    path = folder / CARD
    return path.read_text(errors="replace") if path.is_file() else None


def write_extras(folder: Path, schedule: NoiseSchedule, palette: np.ndarray | None = None,
                 training_info: dict | None = None) -> None:
    """Everything beside config.json, the weights and the card: the schedule, and the palette and history when known."""
    (folder / SCHEDULER_CONFIG).write_text(json.dumps(schedule.scheduler_config(), indent=2) + "\n")
    if palette is not None:
        (folder / PALETTE).write_text(json.dumps([[int(v) for v in c] for c in palette]) + "\n")
    if training_info is not None:
        write_history(folder, training_info)
