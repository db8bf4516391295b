"""Saving and loading models in Hub format: config.json, model.safetensors, scheduler_config.json.

Loading is strict (every weight present, no extras, shapes equal) and never unpickles: a folder
with only pytorch_model.bin is refused. Every failure is a CheckpointError naming the file.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch

from .model import ContextUnet
from .schedule import NoiseSchedule

CONFIG, WEIGHTS, SCHEDULER_CONFIG = "config.json", "model.safetensors", "scheduler_config.json"
PALETTE = "palette.json"  # optional: the training data's colours, for snapping samples to them
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt")
HUB_FILES = [CONFIG, WEIGHTS, SCHEDULER_CONFIG, PALETTE, "README.md", "*.png"]


class CheckpointError(RuntimeError):
    """A model that cannot be loaded; the message says what is wrong and with which file."""


def resolve(source: str | os.PathLike, local_files_only: bool = False, revision: str | None = None,
            cache_dir: str | None = None) -> Path:
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
                                      local_files_only=local_files_only))
    except HFValidationError:
        raise CheckpointError(f"{source}: no such directory, and not a valid Hub repo id") from None
    except Exception as e:  # network, missing repo, offline without cache: all the same to a user
        hint = " (offline and not in the local Hub cache)" if "offline" in str(e).lower() or "local" in type(e).__name__.lower() else ""
        raise CheckpointError(f"{source}: no such directory, and the Hub repo could not be fetched{hint}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model directory holds {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    known = set(inspect.signature(ContextUnet.__init__).parameters) - {"self"}
    unknown = set(config) - known
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {sorted(unknown)}; this is not a ContextUnet config")
    return config


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", local_files_only: bool = False,
               revision: str | None = None, cache_dir: str | None = None) -> ContextUnet:
    """Build a ContextUnet from a model directory or Hub repo id, strictly, in eval mode."""
    folder = resolve(source, local_files_only, revision, cache_dir)
    config = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
        if pickles:
            raise CheckpointError(f"{folder / pickles[0]}: pickle checkpoints are refused (loading them can run "
                                  f"code); convert it to {WEIGHTS}")
        raise CheckpointError(f"{weights}: missing")
    try:
        model = ContextUnet(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: invalid config ({e})") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file, perhaps truncated ({e})") from None
    expected = model.state_dict()
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
    model.load_state_dict(state, strict=True)
    model.source = str(source)
    return model.to(device).eval()


def load_schedule(source: str | os.PathLike) -> NoiseSchedule:
    """The noise schedule the model was trained with (the seed's linear T=500 when unrecorded)."""
    folder = resolve(source)
    path = folder / SCHEDULER_CONFIG
    if not path.exists():
        return NoiseSchedule()
    try:
        return NoiseSchedule(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid schedule ({e})") from None


def load_palette(source: str | os.PathLike) -> np.ndarray | None:
    """The training data's colours as (K, 3) uint8 from palette.json, or None when the model has none."""
    path = resolve(source) / PALETTE
    if not path.exists():
        return None
    try:
        palette = np.asarray(json.loads(path.read_text()), dtype=np.int64)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid palette ({e})") from None
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0 or palette.min() < 0 or palette.max() > 255:
        raise CheckpointError(f"{path}: expected a list of [r, g, b] colours with values 0..255")
    return palette.astype(np.uint8)


def save_model(model: ContextUnet, schedule: NoiseSchedule, folder: str | os.PathLike,
               model_card: str | None = None, palette: np.ndarray | None = None) -> Path:
    """Write config.json, model.safetensors, scheduler_config.json, README.md (and palette.json) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, config=model.config_dict)
    (folder / SCHEDULER_CONFIG).write_text(json.dumps(schedule.config(), indent=2) + "\n")
    if model_card is not None:
        (folder / "README.md").write_text(model_card)
    if palette is not None:
        (folder / PALETTE).write_text(json.dumps([[int(v) for v in c] for c in palette]) + "\n")
    return folder
