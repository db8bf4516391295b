"""The training history of an exported model: training.json beside its weights.

It holds the totals over the model's whole training (steps, images, seconds), the recipe of the
last run, and one entry per stage (a run started from scratch or with --init-from) with its own
totals, recipe and precision. The trainer writes it, the model card and the evaluation read it.
"""
from __future__ import annotations

import json
from pathlib import Path

TRAINING_INFO = "training.json"
TOTALS = ("steps", "images", "seconds")


class HistoryError(ValueError):
    """A training.json that is not a training history."""


def training_stages(info: dict) -> list[dict]:
    """The stages behind an exported model's training.json, each with its steps, images, seconds and recipe.

    A training.json written before stages were recorded is one stage: its totals and its recipe.
    """
    if "stages" in info:
        return [dict(stage) for stage in info["stages"]]
    return [dict({k: info.get(k, 0) for k in TOTALS}, recipe=info.get("recipe", {}))]


def stage_since(history: dict, recipe: dict) -> dict:
    """This run's stage: the totals in history minus those of the stages before it."""
    before = history.get("prior_stages", [])
    stage = {k: history[k] - sum(s[k] for s in before) for k in TOTALS}
    return dict(stage, recipe=recipe)


def check_history(info: object) -> dict:
    """info if it is a training history (an object with the totals), else HistoryError."""
    if not isinstance(info, dict):
        raise HistoryError("expected a JSON object")
    missing = [k for k in TOTALS if not isinstance(info.get(k), (int, float))]
    if missing:
        raise HistoryError(f"not a training history (missing {missing[0]!r})")
    return info


def write_history(folder: str | Path, info: dict) -> Path:
    path = Path(folder) / TRAINING_INFO
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
