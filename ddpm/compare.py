"""Side by side: a race between samplers, a guidance sweep, and morphs between seeds and classes.

Each shows what one choice changes while everything else stays fixed: the race gives every sampler
the same starting noise, the sweep the same noise (and, for DDPM, the same noise at every step) at
each guidance value, the morph the same sampler while the noise, the class or both slide from one
end to the other. Everything is deterministic for a seed; the pictures are plain PIL images with
ASCII captions, so they read the same on the page, in a download and in a GIF.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .conditioning import context_for
from .images import gif_bytes, to_uint8
from .interactive import MAX_FRAMES, thin
from .limits import MAX_SEED, check_guidance, check_number, check_seed, check_steps
from .sampling import SAMPLER_ALIASES, Refiner, Step, initial_noise, make_sampler, sample_steps
from .schedule import NoiseSchedule

MIN_RACERS, MAX_RACERS = 2, 4            # columns of a race: fewer is no race, more no longer fits a phone
DEFAULT_RACE = (("ddpm", 50), ("ddpm-beta", 50), ("ddim", 10), ("dpm++", 10))
DEFAULT_GUIDANCES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
MAX_SWEEP_VALUES = 12                    # columns of a sweep
MAX_SWEEP_ROWS = 4                       # seeds of a sweep, one row each
MIN_MORPH_FRAMES, MAX_MORPH_FRAMES = 8, 32
# A morph must not add fresh noise on the way, or neighbouring frames would differ by more than the
# interpolation: DDIM with eta 0 and DPM-Solver++ map noise to a sprite deterministically.
MORPH_SAMPLERS = ("ddim", "dpm++")
SCALE = 6                                # nearest-neighbour enlargement of the sprites in these pictures
RACE_SCALE = 8                           # a race has at most four columns: room for larger sprites


# --- interpolation ---------------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, frac: float) -> torch.Tensor:
    """Spherical interpolation from a (frac 0) to b (frac 1), over all elements as one vector.

    Two Gaussian noises are almost orthogonal and of almost equal length; a straight line between
    them passes through shorter vectors (at the middle about 0.71 times as long), which the model
    never saw as x_T, so its sprites fade. The great circle keeps the length. Computed in float64;
    the end points are a and b exactly.
    """
    frac = check_number(frac, "the interpolation fraction", 0, 1)
    if a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    cos = (a64.flatten() @ b64.flatten()) / (a64.norm() * b64.norm()).clamp(min=1e-300)
    theta = torch.arccos(cos.clamp(-1, 1))
    if float(theta.sin()) < 1e-6:  # (anti)parallel: every great circle would do; the line is one
        return ((1 - frac) * a64 + frac * b64).to(a.dtype)
    wa, wb = torch.sin((1 - frac) * theta) / theta.sin(), torch.sin(frac * theta) / theta.sin()
    return (wa * a64 + wb * b64).to(a.dtype)


def fractions(n: int) -> list[float]:
    """n evenly spaced fractions from 0 to 1, both included."""
    return [i / (n - 1) for i in range(n)]


# --- pictures ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default(size)


def captioned_grid(cells: Sequence[Sequence[np.ndarray | None]], col_labels: Sequence[str] = (),
                   row_labels: Sequence[str] = (), footers: Sequence[Sequence[str]] = (),
                   scale: int = SCALE, pad: int = 6, empty_size: int = 16) -> Image.Image:
    """Rows of (H, W, 3) uint8 sprites (None: an empty grey cell, empty_size pixels when all are) on white, enlarged crisply, with a
    caption above each column, a label left of each row and lines of text below each column.

    Captions sit outside the sprites, so nothing on the page or in a download covers a pixel.
    """
    rows = [list(r) for r in cells]
    first = next((c for r in rows for c in r if c is not None), None)
    size = first.shape[:2] if first is not None else (empty_size, empty_size)
    h, w = size[0] * scale, size[1] * scale
    ncols = max(len(r) for r in rows)
    font = _font(15)
    line = 19
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = lambda s: int(probe.textlength(s, font=font))  # noqa: E731
    cell_w = max([w] + [text_w(s) + 4 for s in col_labels] + [text_w(s) + 4 for f in footers for s in f])
    left = max([0] + [text_w(s) + pad for s in row_labels])
    top = line + 2 if col_labels else 0
    foot = max([0] + [len(f) for f in footers]) * line
    width = left + ncols * (cell_w + pad) + pad
    height = top + len(rows) * (h + pad) + pad + foot
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for j in range(ncols):
        x = left + pad + j * (cell_w + pad)
        if j < len(col_labels):
            draw.text((x + cell_w / 2, 2), col_labels[j], fill=(20, 12, 28), font=font, anchor="ma")
        for i, row in enumerate(rows):
            y = top + pad + i * (h + pad)
            sprite = row[j] if j < len(row) else None
            x0 = x + (cell_w - w) // 2
            # a thin frame: DawnLike sprites are drawn on white, like the page
            draw.rectangle((x0 - 1, y - 1, x0 + w, y + h), outline=(210, 210, 215))
            if sprite is None:
                draw.rectangle((x0, y, x0 + w - 1, y + h - 1), fill=(225, 225, 225))
            else:
                im.paste(Image.fromarray(np.ascontiguousarray(sprite)).resize((w, h), Image.NEAREST), (x0, y))
        if j < len(footers):
            for k, text in enumerate(footers[j]):
                draw.text((x + cell_w / 2, height - foot + k * line), text, fill=(60, 60, 60), font=font, anchor="ma")
    for i, label in enumerate(row_labels):
        y = top + pad + i * (h + pad) + h // 2
        draw.text((pad, y), label, fill=(20, 12, 28), font=font, anchor="lm")
    return im


# --- the sampler race --------------------------------------------------------------------------------
def check_racers(entries: Sequence[tuple[str, int]], T: int) -> list[tuple[str, int]]:
    """2 to 4 (sampler, steps) pairs with known samplers and 1..T steps; the same sampler may run twice."""
    entries = list(entries)
    if not MIN_RACERS <= len(entries) <= MAX_RACERS:
        raise ValueError(f"a race needs {MIN_RACERS} to {MAX_RACERS} samplers, got {len(entries)}")
    out = []
    for k, (name, steps) in enumerate(entries, 1):
        key = SAMPLER_ALIASES.get(str(name).lower())
        if key is None:
            raise ValueError(f"unknown sampler {name!r} in column {k}; choose one of "
                             f"{', '.join(sorted(set(SAMPLER_ALIASES.values())))}")
        out.append((key, check_number(steps, f"the steps of column {k}", 1, T, integer=True)))
    return out


@dataclass
class RaceColumn:
    """One sampler's state after a tick: x_t at time t and the model's x0 prediction at that x_t."""

    sampler: str
    steps: int
    taken: int                 # steps taken so far
    t: int
    x_t: np.ndarray            # (H, W, 3) uint8
    x0: np.ndarray             # (H, W, 3) uint8
    seconds: float             # wall time of this sampler's network passes and steps so far

    @property
    def done(self) -> bool:
        return self.taken == self.steps


@dataclass
class RaceFrame:
    tick: int
    ticks: int
    columns: list[RaceColumn]

    @property
    def done(self) -> bool:
        return self.tick == self.ticks


class _Racer:
    """One sampler's step generator, run one step ahead like ddpm.interactive.ReverseRun: the step
    already computed holds the model's prediction at the x_t on show."""

    def __init__(self, steps_iter: Iterator[Step], sampler: str, steps: int):
        self.it, self.sampler, self.steps = steps_iter, sampler, steps
        self.seconds, self.taken = 0.0, 0
        self.pending = self._next()
        self.x_t, self.x0, self.t = to_uint8(self.pending.x_t)[0], to_uint8(self.pending.x0)[0], self.pending.t

    def _next(self) -> Step:
        start = time.perf_counter()
        s = next(self.it)
        self.seconds += time.perf_counter() - start
        return s

    def advance(self) -> None:
        s = self.pending
        self.taken, self.t, self.x_t = s.index + 1, s.t_prev, to_uint8(s.x_prev)[0]
        if self.taken == self.steps:
            self.pending, self.x0 = None, self.x_t  # the end: the sprite is its own prediction
        else:
            self.pending = self._next()
            self.x0 = to_uint8(self.pending.x0)[0]

    def column(self) -> RaceColumn:
        return RaceColumn(self.sampler, self.steps, self.taken, self.t, self.x_t, self.x0, self.seconds)


class SamplerRace:
    """Two to four samplers from the same starting noise, advanced in lockstep.

    Tick k of K = the largest step count moves every sampler to the last of its steps that is no
    further than k/K of the way from T to 0 (their time grids are evenly spaced, so steps and t
    agree), so the sampler with the most steps moves on every tick and the others when their
    next step is due. Frames (at most MAX_FRAMES, thinned from the middle) are kept for the GIF.
    The lock keeps a Step click from racing a Run on the same visitor's race.
    """

    def __init__(self, model: torch.nn.Module, schedule: NoiseSchedule, context: torch.Tensor,
                 entries: Sequence[tuple[str, int]], guidance: float, seed: int, precision: str = "fp32",
                 settings: dict | None = None, refiner: Refiner | None = None):
        entries = check_racers(entries, schedule.T)
        guidance = check_guidance(guidance)
        seed = check_seed(seed)
        self.settings = settings if settings is not None else dict(entries=entries, guidance=guidance, seed=seed)
        self.lock = threading.Lock()
        self.racers = [_Racer(sample_steps(model, schedule, context[:1], sampler=make_sampler(name, schedule),
                                           steps=steps, guidance=guidance, seed=seed, precision=precision,
                                           refiner=refiner),
                              name, steps) for name, steps in entries]
        self.ticks, self.tick = max(s for _, s in entries), 0
        self.frames: list[RaceFrame] = [self.frame()]

    def __deepcopy__(self, memo):  # gr.State may copy; live generators cannot be copied
        return self

    @property
    def done(self) -> bool:
        return self.tick == self.ticks

    def frame(self) -> RaceFrame:
        return RaceFrame(self.tick, self.ticks, [r.column() for r in self.racers])

    def advance(self) -> RaceFrame:
        """One tick (nothing once done); returns the newest frame."""
        if not self.done:
            self.tick += 1
            for r in self.racers:
                target = self.tick * r.steps // self.ticks
                while r.taken < target:
                    r.advance()
            self.frames = thin(self.frames + [self.frame()], MAX_FRAMES)
        return self.frames[-1]


def sampler_race(model: torch.nn.Module, schedule: NoiseSchedule, context: torch.Tensor,
                 entries: Sequence[tuple[str, int]], guidance: float, seed: int,
                 precision: str = "fp32", refiner: Refiner | None = None) -> Iterator[RaceFrame]:
    """Every frame of a race, from the shared pure noise (tick 0) to every column at t = 0."""
    race = SamplerRace(model, schedule, context, entries, guidance, seed, precision, refiner=refiner)
    yield race.frames[0]
    while not race.done:
        yield race.advance()


SAMPLER_LABELS = {"ddpm": "DDPM", "ddpm-beta": "DDPM beta", "ddim": "DDIM", "dpm++": "DPM-Solver++"}


def race_picture(frame: RaceFrame, scale: int = RACE_SCALE) -> Image.Image:
    """Columns of x_t over predicted x0, captioned with the sampler, its steps, t and its time so far."""
    cols = frame.columns
    # no row labels: a label column would cost a phone a fifth of the width (the page says which row is which)
    return captioned_grid([[c.x_t for c in cols], [c.x0 for c in cols]],
                          col_labels=[f"{SAMPLER_LABELS.get(c.sampler, c.sampler)} {c.steps}" for c in cols],
                          footers=[[f"step {c.taken}/{c.steps}", f"t = {c.t}", f"{c.seconds:.2f} s"] for c in cols],
                          scale=scale)


def race_gif(frames: Sequence[RaceFrame], scale: int = 4) -> bytes:
    """The race as an animated GIF, at half the picture's size: noisy frames barely compress (~40 KB a frame)."""
    return gif_bytes([race_picture(f, scale) for f in frames], ms=120, hold_ms=2500)


# --- the guidance sweep ------------------------------------------------------------------------------
def parse_numbers(text: str | Sequence[float], name: str, lo: float, hi: float, max_count: int) -> list[float]:
    """'0, 0.5, 1' (commas or spaces) or a list of numbers, each in [lo, hi], 1 to max_count of them."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    if not items:
        raise ValueError(f"give at least one value for {name}")
    if len(items) > max_count:
        raise ValueError(f"at most {max_count} values for {name}, got {len(items)}")
    return [check_number(v, f"each value of {name}", lo, hi) for v in items]


def sweep_seeds(seed: int, rows: int) -> list[int]:
    """The seeds of a sweep's rows: seed, seed + 1, ... (wrapping below MAX_SEED)."""
    seed = check_seed(seed)
    rows = check_number(rows, "rows", 1, MAX_SWEEP_ROWS, integer=True)
    return [(seed + i) % (MAX_SEED + 1) for i in range(rows)]


def seed_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """(len(seeds), *shape): each seed's x_T as plain sampling of one sprite draws it."""
    return torch.cat([initial_noise((1, *shape), s)[0] for s in seeds])


def guidance_sweep(model: torch.nn.Module, schedule: NoiseSchedule, context: torch.Tensor,
                   guidances: Sequence[float], seeds: Sequence[int], sampler: str, steps: int,
                   precision: str = "fp32", refiner: Refiner | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(column, (rows, H, W, 3) uint8) for each guidance value in turn, as it finishes.

    One run per value, all with the same noise: rows are the seeds' x_T, and the generator of the
    later steps' noise is the first seed's, so with DDPM every column also gets the same noise at
    every step and the columns differ by guidance alone. With one row, column g is exactly the sprite
    plain sampling with that seed and guidance g gives.
    """
    noise = seed_noise(seeds, (model.in_channels, model.height, model.height))
    ctx = context[:1].repeat(len(seeds), 1)
    for j, g in enumerate(guidances):
        last = None
        for last in sample_steps(model, schedule, ctx, sampler=sampler, steps=steps, guidance=g, seed=seeds[0],
                                 noise=noise, precision=precision, refiner=refiner):
            pass
        yield j, to_uint8(last.x_prev)


def sweep_picture(columns: Sequence[np.ndarray | None], guidances: Sequence[float], seeds: Sequence[int],
                  scale: int = SCALE, height: int = 16, per_row: int = 4) -> Image.Image:
    """Guidance values across (per_row at a time, so a phone can show them large), seeds down;
    columns not computed yet are grey."""
    blocks = []
    for k in range(0, len(guidances), per_row):
        rows = [[None if c is None else c[i] for c in columns[k:k + per_row]] for i in range(len(seeds))]
        blocks.append(captioned_grid(rows, col_labels=[f"w = {g:g}" for g in guidances[k:k + per_row]],
                                     row_labels=[f"seed {s}" for s in seeds] if len(seeds) > 1 else [],
                                     scale=scale, empty_size=height))
    return stack(blocks)


def stack(images: Sequence[Image.Image]) -> Image.Image:
    """Pictures one below the other on white, left-aligned."""
    out = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), (255, 255, 255))
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


# --- morphs ------------------------------------------------------------------------------------------
@dataclass
class Morph:
    frames: np.ndarray         # (N, H, W, 3) uint8, from the first end to the second
    fractions: list[float]
    what: str                  # "seeds", "classes", "seeds and classes" or "nothing"


def morph_inputs(class_names: Sequence[str], class_a: str, class_b: str, seed_a: int, seed_b: int, n: int,
                 shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(noise (n, *shape), context (n, classes), fractions): slerp from seed_a's x_T to seed_b's,
    and class weights sliding linearly from class_a to class_b (a mix that always sums to 1)."""
    n = check_number(n, "frames", MIN_MORPH_FRAMES, MAX_MORPH_FRAMES, integer=True)
    a, b = seed_noise([seed_a], shape)[0], seed_noise([seed_b], shape)[0]
    wa, wb = context_for(class_names, class_a, 1)[0], context_for(class_names, class_b, 1)[0]
    fr = fractions(n)
    noise = torch.stack([slerp(a, b, f) for f in fr])
    context = torch.stack([(1 - f) * wa + f * wb for f in fr])
    return noise, context, fr


def morph(model: torch.nn.Module, schedule: NoiseSchedule, class_names: Sequence[str], class_a: str, class_b: str,
          seed_a: int, seed_b: int, n: int, sampler: str = "ddim", steps: int = 25, guidance: float = 1.5,
          precision: str = "fp32", refiner: Refiner | None = None) -> Morph:
    """n frames between (class_a, seed_a) and (class_b, seed_b), all sampled in one batch.

    The end frames are the sprites plain sampling gives for each end (the same noise, class and
    deterministic sampler); only float rounding of a larger batch can differ.
    """
    key = SAMPLER_ALIASES.get(str(sampler).lower())
    if key not in MORPH_SAMPLERS:
        raise ValueError(f"a morph needs a deterministic sampler ({', '.join(MORPH_SAMPLERS)}), got {sampler!r}: "
                         "DDPM adds fresh noise at every step, so neighbouring frames would jump")
    seed_a = check_seed(seed_a, "the first seed")
    seed_b = check_seed(seed_b, "the second seed")
    steps = check_steps(steps, schedule.T)
    guidance = check_guidance(guidance)
    noise, context, fr = morph_inputs(class_names, class_a, class_b, seed_a, seed_b, n,
                                      (model.in_channels, model.height, model.height))
    last = None
    for last in sample_steps(model, schedule, context, sampler=key, steps=steps, guidance=guidance, seed=seed_a,
                             noise=noise, precision=precision, refiner=refiner):
        pass
    what = [w for w, differs in (("seeds", seed_a != seed_b), ("classes", class_a != class_b)) if differs]
    return Morph(to_uint8(last.x_prev), fr, " and ".join(what) or "nothing")


def morph_picture(m: Morph, per_row: int | None = None, scale: int = SCALE) -> Image.Image:
    """The frames in rows of per_row (4 up to 16 frames, so a phone shows them large; else 8), each
    captioned with how far along it is (0 = the first end)."""
    per_row = per_row or (4 if len(m.frames) <= 16 else 8)
    labels = [f"{f:.2f}" for f in m.fractions]
    return stack([captioned_grid([list(m.frames[i:i + per_row])], col_labels=labels[i:i + per_row], scale=scale)
                  for i in range(0, len(m.frames), per_row)])


def morph_gif(m: Morph, scale: int = 16, ms: int = 110) -> bytes:
    """The frames forward then back, looping, one sprite enlarged per frame."""
    seq = list(m.frames) + list(m.frames[-2:0:-1])
    return gif_bytes([Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
                      for f in seq], ms=ms, hold_ms=ms)
