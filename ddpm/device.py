"""Where the network runs and in what precision, for training, sampling and the app alike.

Precisions are named "fp32", "bf16" and "fp16" everywhere in the project: bf16 and fp16 mean
autocast (the network's convolutions in that type, its weights and the sampler's arithmetic in
fp32). Sampling offers fp32 and bf16; training also fp16 (on GPUs). Accelerate calls fp32 "no":
the trainer translates at the Accelerator, and training.json files written with "no" still read
as fp32 (precision_label).
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16")                      # what the network can run in while sampling
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")     # what it can train in (--precision of ddpm.train)
_ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
_LABELS = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, else cuda, then mps, then cpu."""
    if requested:
        device = torch.device(requested)  # raises RuntimeError for nonsense names
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {requested!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 autocast beats fp32 on `device`: GPUs that support bf16, CPUs with AVX512_BF16/AMX.

    Elsewhere the CPU emulates bfloat16 and runs about 10x slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_description() -> str:
    """The CPU's model name and its bf16 and int8 dot-product features, e.g. 'AMD EPYC (avx512_bf16,
    avx512_vnni)': speed figures compare only between machines with the same ones."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    features = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(features) or 'no bf16 or int8 features'})"


def check_precision(precision: str) -> str:
    """precision if the network can sample in it, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def precision_autocast(precision: str, device_type: str = "cpu") -> torch.autocast:
    """The context the network samples in for `precision`: bf16 autocast, or (fp32) a disabled one."""
    return torch.autocast(device_type, torch.bfloat16, enabled=check_precision(precision) == "bf16")


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The sampling precision for `requested`: "auto" is bf16 where bf16_is_fast(device), else fp32;
    anything else must be in PRECISIONS."""
    if requested == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return check_precision(requested)


def training_precision(requested: str, device: torch.device, launcher: str | None = None) -> str:
    """The training precision for --precision (TRAINING_PRECISIONS or "auto").

    `launcher` is what `accelerate launch` passes on (ACCELERATE_MIXED_PRECISION, always set by it,
    "no" unless --mixed_precision says otherwise): "auto" defers to it; an explicit --precision wins.
    Otherwise "auto" is bf16 where it is fast, fp16 on GPUs without bf16, else fp32.
    """
    if requested != "auto":
        return requested
    if launcher:
        return from_accelerate(launcher)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_is_fast(device) else "fp32"


def to_accelerate(precision: str) -> str:
    """Accelerate's mixed_precision for a training precision: fp32 is "no"."""
    return _ACCELERATE_NAMES[precision]


def from_accelerate(mixed_precision: str) -> str:
    """The project's name for Accelerate's mixed_precision ("no" is fp32); unknown names pass through."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def precision_label(precision: str | None) -> str:
    """How a model card names a recorded precision; None (not recorded) and Accelerate's "no" are fp32."""
    precision = from_accelerate(precision or "fp32")
    return _LABELS.get(precision, precision)
