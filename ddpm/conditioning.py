"""Class conditioning: the context vector the network is given, from a class name, an index or a mix.

The network sees one row of class weights per sprite (one-hot for a class, a normalised mix of
classes otherwise); an all-zero row is the unconditional model that classifier-free guidance uses.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .limits import check_number

MIX = "mix"             # the class choice that means "use the mix weights"
ALL_CLASSES = "all classes"


def class_weights(class_names: Sequence[str], choice: str | int | dict[str, float]) -> torch.Tensor:
    """A context vector from a class name or index, or a mix {name: weight} (normalised to sum 1)."""
    n = len(class_names)
    if isinstance(choice, dict):
        # float64: finite weights beyond float32's range (1e39) would otherwise turn into inf and NaN
        w = torch.zeros(n, dtype=torch.float64)
        for name, weight in choice.items():
            w[class_index(class_names, name)] += _check_weight(weight, name)
        if w.sum() <= 0:
            raise ValueError("a class mix needs at least one positive weight")
        w = w / w.max()  # then even weights near float64's limit cannot overflow the sum
        return (w / w.sum()).float()
    w = torch.zeros(n)
    w[class_index(class_names, choice)] = 1.0
    return w


def _check_weight(weight: float, name: str) -> float:
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"the weight of {name!r} must be a finite non-negative number, got {weight}")
    return weight


def class_index(class_names: Sequence[str], choice: str | int) -> int:
    if isinstance(choice, (int,)) and not isinstance(choice, bool):
        if 0 <= choice < len(class_names):
            return choice
        raise ValueError(f"class index {choice} out of range 0..{len(class_names) - 1}")
    if choice in class_names:
        return list(class_names).index(choice)
    raise ValueError(f"unknown class {choice!r}; the classes are {', '.join(class_names)}")


def check_class(class_names: Sequence[str], choice: Any, allowed_extra: Sequence[str] = ()) -> str:
    """A class name (or one of allowed_extra such as MIX), or ValueError listing the choices."""
    if isinstance(choice, str) and (choice in class_names or choice in allowed_extra):
        return choice
    choices = ", ".join(list(class_names) + list(allowed_extra))
    raise ValueError(f"unknown class {choice!r}; choose one of: {choices}")


def context_for(class_names: Sequence[str], choice: str, n: int,
                mix: Sequence[float] | None = None) -> torch.Tensor:
    """(n, classes) context rows: one class, or the normalised mix of classes when choice == MIX."""
    choice = check_class(class_names, choice, (MIX,))
    if choice == MIX:
        if mix is None or len(mix) != len(class_names):
            raise ValueError(f"a mix needs one weight per class ({len(class_names)})")
        weights = {name: check_number(w, f"the weight of {name}", 0, 1) for name, w in zip(class_names, mix)}
        if sum(weights.values()) <= 0:
            raise ValueError("a mix needs at least one class with a weight above 0")
        row = class_weights(class_names, weights)
    else:
        row = class_weights(class_names, choice)
    return row.repeat(n, 1)
