"""The limits on what callers may ask for, and their validation: one place for the library, the CLIs
and the app, so the same bad value gets the same message everywhere.

Values can come from a slider, a command line or an HTTP API call, so the checks accept anything and
raise ValueError with a message naming the field; nothing here knows about the UI.
"""
from __future__ import annotations

import math
from typing import Any

# Classifier-free guidance beyond this only oversaturates 16x16 sprites; the app's sliders end here too.
MAX_GUIDANCE = 10.0
# Sprites in one sampling batch (library and CLI): bounds memory, not quality.
MAX_BATCH = 1024
# Sprites per row of one app request (Generate, Reverse): keeps a request short on a CPU.
MAX_SPRITES = 16
# RNG seeds: what torch.Generator.manual_seed and a browser's number box both take exactly.
MAX_SEED = 2 ** 31 - 1


def check_number(value: Any, name: str, lo: float, hi: float, integer: bool = False) -> float | int:
    """A finite number in [lo, hi] (an int when `integer`), or ValueError naming the field.

    API callers can send NaN, inf, strings or None where a slider would never allow them.
    """
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not lo <= x <= hi:
        raise ValueError(f"{name} must lie between {_shown(lo)} and {_shown(hi)}, got {_shown(x)}")
    if integer:
        if x != round(x):
            raise ValueError(f"{name} must be a whole number, got {_shown(x)}")
        return int(round(x))
    return x


def _shown(x: float) -> str:
    """A number as a user typed it: whole numbers in full (2147483647, not 2.14748e+09)."""
    return str(int(x)) if math.isfinite(x) and x == int(x) and abs(x) < 1e15 else f"{x:g}"


def check_guidance(guidance: Any) -> float:
    """A classifier-free guidance scale in [0, MAX_GUIDANCE]."""
    return check_number(guidance, "guidance", 0, MAX_GUIDANCE)


def check_seed(seed: Any, name: str = "seed") -> int:
    """An RNG seed in [0, MAX_SEED]."""
    return check_number(seed, name, 0, MAX_SEED, integer=True)


def check_steps(steps: Any, T: int) -> int:
    """A number of sampling steps: at least 1, at most one per time step of the schedule."""
    return check_number(steps, "steps", 1, T, integer=True)


def check_batch(n: Any, name: str = "sprites", limit: int = MAX_BATCH) -> int:
    """How many sprites in one call: 1 to `limit`."""
    return check_number(n, name, 1, limit, integer=True)
