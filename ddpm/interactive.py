"""The non-UI logic behind the Gradio app: inputs to tensors, previews, trajectories, remixes.

app.py only wires widgets to these functions, so everything here is plain Python that the tests
call directly. Errors a user can cause raise ValueError (or DataError, a ValueError) with a
message meant for that user; the app shows it as a gr.Error.
"""
from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .data import DataError, MAX_IMAGE_PIXELS, open_image, sprite_from_image
from .conditioning import ALL_CLASSES, check_class, context_for
from .images import from_uint8, gif_bytes, snap_to_palette, sprite_sheet, to_uint8
from .limits import MAX_SPRITES, check_batch, check_guidance, check_number, check_seed, check_steps
from .model import inference_model
from .sampling import Refiner, Step, check_refiner, predict_noise, predictor_at, sample_steps
from .schedule import NoiseSchedule

MAX_FRAMES = 120        # frames kept per trajectory: 16 sprites x 3 images x 768 B x 120 ~ 4.4 MB per session




# --- images in ---------------------------------------------------------------------------------
def sprite_from_upload(path: str | os.PathLike | None, height: int) -> np.ndarray:
    """An uploaded file as an (height, height, 3) uint8 sprite.

    open_image refuses non-images, corrupt files and decompression bombs before decoding;
    to_rgb (via sprite_from_image) handles grey, palette and transparent images.
    """
    if path is None:
        raise ValueError("upload an image first")
    try:
        return sprite_from_image(open_image(path), height)
    except DataError as e:  # name the file as the user knows it, not the server's temp path
        raise DataError(str(e).replace(str(path), Path(path).name)) from None


def sprite_from_drawing(value: Any, height: int) -> np.ndarray:
    """A Sketchpad value ({background, layers, composite}) or an array as an (height, height, 3) sprite."""
    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise ValueError("draw something on the canvas first")
    if isinstance(composite, Image.Image):
        im = composite
    else:
        arr = np.asarray(composite)
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise ValueError(f"the drawing is not an image (shape {arr.shape})")
        if arr.shape[0] * arr.shape[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"the drawing is {arr.shape[1]}x{arr.shape[0]}, larger than the "
                            f"{MAX_IMAGE_PIXELS:,} pixels allowed")
        if arr.dtype != np.uint8:
            arr = np.nan_to_num(arr.astype(np.float64)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
    # An untouched canvas is fully transparent (or all white once flattened): nothing to use.
    rgba = np.asarray(im.convert("RGBA"))
    if rgba[..., 3].max() == 0 or (rgba[..., :3].min() == 255 and rgba[..., 3].min() == 255):
        raise ValueError("the canvas is empty: draw something first")
    return sprite_from_image(im, height)


def sprite_from_picture(value: Any, height: int) -> np.ndarray:
    """A picture as the app shows it (an enlarged sprite, or any image an API caller sends) as an
    (height, height, 3) sprite. An exact nearest-neighbour enlargement shrinks back to the same pixels."""
    if value is None:
        raise ValueError("no sprite: choose, upload or draw one first")
    if isinstance(value, (str, os.PathLike)):
        return sprite_from_upload(value, height)
    if isinstance(value, Image.Image):
        im = value
    else:
        arr = np.asarray(value)
        if arr.ndim not in (2, 3) or arr.size == 0 or arr.dtype != np.uint8:
            raise ValueError(f"the sprite is not an 8-bit image (shape {arr.shape}, {arr.dtype})")
        if arr.shape[0] * arr.shape[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"the sprite is {arr.shape[1]}x{arr.shape[0]}, larger than the "
                            f"{MAX_IMAGE_PIXELS:,} pixels allowed")
        im = Image.fromarray(arr)
    return sprite_from_image(im, height)


def noise_to_uint8(eps: torch.Tensor) -> np.ndarray:
    """Noise (about N(0, 1)) as pictures: +-2.5 standard deviations fill the 0..255 range."""
    return to_uint8(eps / 2.5)


def maybe_snap(sprites: np.ndarray, palette: np.ndarray | None, snap: bool) -> np.ndarray:
    """Final sprites snapped to the model's palette (its palette.json) when asked and available;
    noisy intermediate frames are never snapped, they would lie about the process."""
    return snap_to_palette(sprites, palette) if snap and palette is not None else sprites


def grid(sprites: np.ndarray, cols: int | None = None, scale: int = 8, pad: int = 1) -> Image.Image:
    """(N, H, W, 3) uint8 sprites laid out in a near-square grid, enlarged crisply."""
    n = len(sprites)
    cols = cols or math.ceil(math.sqrt(n))
    rows = [sprites[i:i + cols] for i in range(0, n, cols)]
    return sprite_sheet(rows, scale=scale, pad=pad)


# --- the forward process -------------------------------------------------------------------------
def forward_noise(shape: Sequence[int], seed: int) -> torch.Tensor:
    """The fixed noise of the forward preview: one seed gives the same eps at every t, so sliding
    t fades the same noise in and out instead of flickering."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g)


@dataclass
class ForwardView:
    t: int
    x_t: np.ndarray            # (H, W, 3) uint8
    noise_level: float         # sqrt(1 - abar_t)
    abar: float
    snr: float
    eps_pred: np.ndarray | None = None   # what the model sees: its predicted noise ...
    x0_pred: np.ndarray | None = None    # ... and its predicted x0


@torch.inference_mode()
def forward_view(schedule: NoiseSchedule, sprite: np.ndarray, t: int, noise_seed: int,
                 model: torch.nn.Module | None = None, context: torch.Tensor | None = None,
                 refiner: Refiner | None = None) -> ForwardView:
    """x_t for the sprite at time t; with a model, also its noise and x0 predictions (guidance 0), or the
    refiner's where it predicts (t <= refiner.t_max)."""
    x0 = from_uint8(sprite)
    noise = forward_noise(x0.shape, noise_seed)
    x_t = schedule.add_noise(x0, noise, t)
    abar = float(schedule.alpha_bars[t])
    snr = math.inf if t == 0 else float(schedule.snr()[t])
    view = ForwardView(t, to_uint8(x_t)[0], schedule.noise_level(t), abar, snr)
    if model is not None and context is not None:
        device = next(model.parameters()).device
        x_in = x_t.to(device)
        refiner = None if refiner is None else check_refiner(refiner, model, schedule)
        net, net_schedule = predictor_at(t, model, schedule, refiner)
        # inference_model: the library's cached BatchNorm-folded copy, as sample_steps uses
        eps = predict_noise(inference_model(net), net_schedule, x_in, t, context.to(device, torch.float32),
                            guidance=0.0)
        view.eps_pred = noise_to_uint8(eps)[0]
        view.x0_pred = to_uint8(schedule.predict_x0(x_in, eps, t))[0]
    return view


# --- the reverse process ---------------------------------------------------------------------------
@dataclass
class Frame:
    """One point of a trajectory as small uint8 pictures (never float tensors: state stays small)."""

    step: int                  # steps taken so far (0 = pure noise)
    t: int
    x_t: np.ndarray            # (N, H, W, 3)
    x0: np.ndarray | None      # the prediction made at this x_t (None for the final frame)
    eps: np.ndarray | None


def thin(frames: list, cap: int) -> list:
    """At most cap items: drop every other one from the middle, always keeping the first and last."""
    while len(frames) > cap:
        frames = frames[:1] + frames[1:-1][1::2] + frames[-1:]
    return frames


@dataclass
class ReverseRun:
    """A reverse process a user steps through: the library's step generator plus the frames seen.

    The generator runs one step ahead: `pending` is the step from the newest frame, already
    computed, so every frame shows the model's predictions at its own x_t, and each Step click
    still costs exactly one network pass. Held in a gr.State per browser session; the lock keeps
    a Step click from racing a Run.
    """

    settings: dict
    steps: Iterator[Step]
    total: int
    pending: Step | None = None
    frames: list[Frame] = field(default_factory=list)
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __deepcopy__(self, memo):  # gr.State may copy; a live generator cannot be copied
        return self

    @property
    def taken(self) -> int:
        return self.frames[-1].step if self.frames else 0

    def frame_at(self, step: int | None = None) -> Frame:
        """The newest kept frame at or before `step` steps (the newest frame when None)."""
        if step is None:
            return self.frames[-1]
        kept = [f for f in self.frames if f.step <= step]
        return kept[-1] if kept else self.frames[0]

    def advance(self) -> Frame:
        """Take one step; returns the newest frame (the final image once done)."""
        if self.done:
            return self.frames[-1]
        s = self.pending
        new = Frame(s.index + 1, s.t_prev, to_uint8(s.x_prev), None, None)
        if s.index + 1 == s.steps:
            # At t = 0 there is no noise left to predict: the final frame keeps the last prediction
            # (made at the previous frame's t) so its panels are not blank.
            self.done, self.pending = True, None
            new.x0, new.eps = to_uint8(s.x0), noise_to_uint8(s.eps)
        else:
            self.pending = next(self.steps)
            new.x0, new.eps = to_uint8(self.pending.x0), noise_to_uint8(self.pending.eps)
        self.frames = thin(self.frames + [new], MAX_FRAMES)
        return new


def start_reverse(model: torch.nn.Module, schedule: NoiseSchedule, context: torch.Tensor, sampler: str,
                  steps: int, guidance: float, seed: int, precision: str = "fp32", refiner: Refiner | None = None,
                  **settings) -> ReverseRun:
    """A ReverseRun at pure noise x_T (frame 0, with the model's first predictions), not yet stepped
    (with `refiner` taking the low-noise steps, if given)."""
    steps = check_steps(steps, schedule.T)
    guidance = check_guidance(guidance)
    seed = check_seed(seed)
    it = sample_steps(model, schedule, context, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                      precision=precision, refiner=refiner)
    run = ReverseRun(dict(settings, sampler=sampler, steps=steps, guidance=guidance, seed=seed), it, steps)
    run.pending = first = next(it)
    run.frames.append(Frame(0, first.t, to_uint8(first.x_t), to_uint8(first.x0), noise_to_uint8(first.eps)))
    return run


def trajectory_gif(frames: Sequence[Frame], scale: int = 4, ms: int = 90, hold_ms: int = 1500) -> bytes:
    """An animated GIF of x_t over the frames (grid per frame), holding the last frame."""
    if not frames:
        raise ValueError("no steps taken yet: press Step or Run first")
    return gif_bytes([grid(f.x_t, scale=scale) for f in frames], ms, hold_ms)


# --- generating and remixing ---------------------------------------------------------------------
def generate_steps(model: torch.nn.Module, schedule: NoiseSchedule, class_names: Sequence[str], choice: str,
                   n: int, sampler: str, steps: int, guidance: float, seed: int, precision: str = "fp32",
                   refiner: Refiner | None = None) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """Generate with progress: (steps done, steps, rows) after every step, where rows are the model's
    current predictions of the final sprites, and the last item's rows are the sprites themselves.

    Rows are (n, H, W, 3) uint8: one row, or one per class for ALL_CLASSES."""
    choice = check_class(class_names, choice, (ALL_CLASSES,))
    n = check_batch(n, "sprites", MAX_SPRITES)
    steps = check_steps(steps, schedule.T)
    guidance = check_guidance(guidance)
    seed = check_seed(seed)
    names = list(class_names) if choice == ALL_CLASSES else [choice]
    context = torch.cat([context_for(class_names, name, n) for name in names])

    def rows(x: torch.Tensor) -> list[np.ndarray]:
        sprites = to_uint8(x)
        return [sprites[i * n:(i + 1) * n] for i in range(len(names))]

    last = None
    for last in sample_steps(model, schedule, context, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                             precision=precision, refiner=refiner):
        if last.index + 1 < last.steps:
            yield last.index + 1, last.steps, rows(last.x0)
    yield last.steps, last.steps, rows(last.x_prev)


def generate(model: torch.nn.Module, schedule: NoiseSchedule, class_names: Sequence[str], choice: str, n: int,
             sampler: str, steps: int, guidance: float, seed: int, precision: str = "fp32",
             refiner: Refiner | None = None) -> list[np.ndarray]:
    """Rows of (n, H, W, 3) uint8 sprites: one row, or one per class for ALL_CLASSES."""
    for *_, rows in generate_steps(model, schedule, class_names, choice, n, sampler, steps, guidance, seed,
                                   precision, refiner):
        pass
    return rows


def remix_start(strength: float, T: int) -> int:
    """SDEdit: noise the input to t_start = strength * T (at least 1), then denoise from there."""
    strength = check_number(strength, "strength", 0.01, 1)
    return max(1, min(T, round(strength * T)))


def remix_steps(steps: int, t_start: int, T: int) -> int:
    """Steps for a partial run from t_start: the stride of a full run of `steps` (as diffusers'
    img2img does), at least one and at most one per time step."""
    return max(1, min(t_start, round(steps * t_start / T)))


@dataclass
class Remix:
    result: np.ndarray         # (H, W, 3) uint8
    frames: list[np.ndarray]   # x_start noised to t_start, then each x_t, then the result
    t_start: int
    steps: int


def remix(model: torch.nn.Module, schedule: NoiseSchedule, sprite: np.ndarray, context: torch.Tensor,
          strength: float, sampler: str, steps: int, guidance: float, seed: int, precision: str = "fp32",
          refiner: Refiner | None = None) -> Remix:
    """SDEdit a sprite toward the context's class via sample_steps(x_start=..., t_start=...)."""
    steps = check_steps(steps, schedule.T)
    guidance = check_guidance(guidance)
    seed = check_seed(seed)
    t_start = remix_start(strength, schedule.T)
    n_steps = remix_steps(steps, t_start, schedule.T)
    x_start = from_uint8(sprite)
    frames, last = [], None
    for last in sample_steps(model, schedule, context[:1], sampler=sampler, steps=n_steps, guidance=guidance,
                             seed=seed, x_start=x_start, t_start=t_start, precision=precision, refiner=refiner):
        frames.append(to_uint8(last.x_t)[0])
    result = to_uint8(last.x_prev)[0]
    return Remix(result, frames + [result], t_start, n_steps)


# --- files handed to the browser ---------------------------------------------------------------
OUTPUT_DIR = Path(tempfile.gettempdir()) / "ddpm-sprite-lab"
OUTPUT_MAX_AGE_S = 3600


SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def write_named(data: bytes, name: str, folder: Path = OUTPUT_DIR) -> str:
    """Write bytes to folder/<new unique directory>/name atomically; return its path.

    The file keeps exactly the name given (what a browser's download saves it as), and its own
    directory keeps two requests for the same name apart. Anything but letters, digits, '.', '_'
    and '-' in the name becomes '-'.
    """
    name = SAFE_NAME.sub("-", name).strip(".-") or "picture"
    folder.mkdir(parents=True, exist_ok=True)
    prune(folder, OUTPUT_MAX_AGE_S)
    home = Path(tempfile.mkdtemp(dir=folder, prefix="out-"))
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".staging-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, home / name)
    return str(home / name)


def prune(folder: Path, max_age_s: float) -> None:
    """Remove files, and directories made by write_named, older than max_age_s."""
    cutoff = time.time() - max_age_s
    for p in folder.glob("*"):
        try:
            if p.stat().st_mtime >= cutoff:
                continue
            if p.is_file():
                p.unlink()
            elif p.is_dir() and p.name.startswith("out-"):
                for child in p.iterdir():
                    child.unlink()
                p.rmdir()
        except OSError:  # another worker removed it first
            pass


