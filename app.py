"""DDPM Sprite Lab: watch, step and steer a sprite diffusion model in the browser.

    python app.py                        # serves the shipped weights/ on http://127.0.0.1:7860
    python app.py --model user/repo      # or a local model directory (env DDPM_MODEL works too)

This file is UI only: every computation is a call into the `ddpm` library (ddpm/interactive.py
holds the app-specific pieces), so handlers here validate, call, and turn arrays into pictures.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ddpm import compare as cp
from ddpm import interactive as ix
from ddpm.checkpoint import CheckpointError, load_model, load_palette, load_schedule, resolve
from ddpm.data import DataError
from ddpm.images import sprite_sheet, upscale
from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, resolve_precision

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = str(HERE / "weights")
SAMPLERS = [("DDPM (ancestral)", "ddpm"), ("DDPM, the seed's variance β", "ddpm-beta"), ("DDIM", "ddim"),
            ("DPM-Solver++ (2M)", "dpm++")]
SAMPLER_NAMES = dict((v, k) for k, v in SAMPLERS)
BIG, GRID = 16, 8  # nearest-neighbour scale of a single sprite (16 px -> 256 px) and of grids
MAX_GUIDANCE = 10.0
GENERATE_DEFAULT_N, REVERSE_DEFAULT_N = 6, 16
PALETTE = ["#140c1c", "#442434", "#30346d", "#4e4a4e", "#854c30", "#346524", "#d04648", "#757161",
           "#597dce", "#d27d2c", "#8595a1", "#6daa2c", "#d2aa99", "#6dc2ca", "#dad45e", "#deeed6"]  # DawnBringer 16

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; image-rendering: crisp-edges; object-fit: contain; }
.info-line { font-size: 0.95em; }
footer { display: none !important; }
#c-status td, #c-status th { white-space: nowrap; padding: 4px 8px; }
"""
THEME = gr.themes.Soft(primary_hue="violet", secondary_hue="amber")
# Gradio keeps ~200 KB of bookkeeping per session (plus our gr.State) for its 10,000 most recent sessions by
# default, ~2 GB at capacity; 1,000 bounds the server's memory (the least recently used session is dropped).
LAUNCH_KWARGS = dict(css=CSS, theme=THEME, max_file_size="10mb", state_session_capacity=1000)


# --- ZeroGPU: decorate GPU work with spaces.GPU only where it exists and applies ---------------
def gpu_decorator() -> Callable[[Callable], Callable]:
    if not os.environ.get("SPACES_ZERO_GPU"):
        return lambda fn: fn
    try:
        import spaces  # only on Hugging Face Spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU


GPU = gpu_decorator()


# --- small UI helpers --------------------------------------------------------------------------
def picture(sprites: np.ndarray | Image.Image, scale: int = 1) -> Image.Image:
    """A PIL picture for a gr.Image output, upscaled crisply on the server.

    Why the nonce: gradio 6.31 saves each returned image to GRADIO_TEMP_DIR/<sha256 of its
    bytes>/image.png with a plain, non-atomic write, so two requests returning the *same*
    picture at the same moment write the same file and one client can be served a half-written
    one. Gradio copies PNG text chunks into the file, so a random per-response text chunk makes
    every response's bytes, hence its cache path, unique: identical requests never share a
    file, and delete_cache still cleans them all up. (Downloads are files we write ourselves,
    atomically and uniquely named: ix.write_output.)
    """
    im = sprites if isinstance(sprites, Image.Image) else upscale(np.ascontiguousarray(sprites), scale)
    im = im.copy()
    im.info["response"] = uuid.uuid4().hex
    return im


def user_errors(fn: Callable) -> Callable:
    """Turn the library's ValueError/DataError (messages written for users) into gr.Error."""
    def convert(e: Exception) -> gr.Error:
        return gr.Error(str(e))  # not capitalised: "t must ..." is not "T must ..."

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except (ValueError, DataError) as e:
                raise convert(e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, DataError) as e:
            raise convert(e) from None
    return wrapper


def fmt(x: float) -> str:
    if x == float("inf"):
        return "∞"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


def sampler_key(name: Any) -> str:
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_NAMES)}")
    return name


# --- the handlers ------------------------------------------------------------------------------
class SpriteLab:
    """The model plus one method per UI action; app wiring lives in build_demo."""

    def __init__(self, model: torch.nn.Module, schedule, device: torch.device, source: str,
                 palette: np.ndarray | None = None, precision: str = "fp32"):
        self.model, self.schedule, self.device, self.source = model, schedule, device, source
        self.precision = precision  # what the network runs in while sampling (ddpm.sampling.PRECISIONS)
        self.palette = palette  # the training data's colours (palette.json), or None
        self.classes = list(model.class_names)
        self.T, self.height = schedule.T, model.height
        self.chart = ix.schedule_chart(schedule)

    # --- shared -------------------------------------------------------------------------------
    def model_sprite(self, cls: str, seed: Any) -> np.ndarray:
        seed = ix.check_number(seed, "seed", 0, ix.MAX_SEED, integer=True)
        rows = ix.generate(self.model, self.schedule, self.classes, ix.check_class(self.classes, cls), 1,
                           DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE, seed, self.precision)
        return ix.maybe_snap(rows[0][0], self.palette, True)

    # --- 1. forward process -------------------------------------------------------------------
    @user_errors
    def forward_sprite(self, cls, seed, t, noise_seed, show_model):
        sprite = self.model_sprite(cls, seed)
        return (sprite, picture(sprite, BIG)) + self.forward_view(sprite, t, noise_seed, show_model, cls)

    @user_errors
    def forward_upload(self, path, t, noise_seed, show_model, cls):
        sprite = ix.sprite_from_upload(path, self.height)
        return (sprite, picture(sprite, BIG)) + self.forward_view(sprite, t, noise_seed, show_model, cls)

    @user_errors
    def forward_draw(self, drawing, t, noise_seed, show_model, cls):
        sprite = ix.sprite_from_drawing(drawing, self.height)
        return (sprite, picture(sprite, BIG)) + self.forward_view(sprite, t, noise_seed, show_model, cls)

    @user_errors
    def forward_view(self, sprite, t, noise_seed, show_model, cls):
        """x_t at the slider's t: picture, a line of numbers, the marked chart, and the model's view."""
        if sprite is None:  # an API call before any sprite was chosen: the default one
            sprite = self.model_sprite(self.classes[0], 0)
        t = ix.check_number(t, "t", 0, self.T, integer=True)
        noise_seed = ix.check_number(noise_seed, "noise seed", 0, ix.MAX_SEED, integer=True)
        context = ix.context_for(self.classes, ix.check_class(self.classes, cls), 1) if show_model else None
        v = ix.forward_view(self.schedule, sprite, t, noise_seed, self.model if show_model else None, context)
        info = (f"**t = {t}** of {self.T} &nbsp;·&nbsp; signal kept ᾱₜ = {fmt(v.abar)} &nbsp;·&nbsp; "
                f"noise level √(1−ᾱₜ) = **{fmt(v.noise_level)}** &nbsp;·&nbsp; SNR = {fmt(v.snr)}")
        eps = picture(v.eps_pred, BIG) if v.eps_pred is not None else None
        x0 = picture(v.x0_pred, BIG) if v.x0_pred is not None else None
        return picture(v.x_t, BIG), info, picture(self.chart.marked(t)), eps, x0

    # --- 2. reverse process -------------------------------------------------------------------
    def _reverse_settings(self, cls, mix, n, seed, sampler, steps, guidance) -> dict:
        return dict(cls=ix.check_class(self.classes, cls, (ix.MIX,)),
                    mix=[ix.check_number(w, f"the weight of {c}", 0, 1) for c, w in zip(self.classes, mix)],
                    n=ix.check_number(n, "sprites", 1, ix.MAX_SPRITES, integer=True),
                    seed=ix.check_number(seed, "seed", 0, ix.MAX_SEED, integer=True),
                    sampler=sampler_key(sampler),
                    steps=ix.check_number(steps, "steps", 1, self.T, integer=True),
                    guidance=ix.check_number(guidance, "guidance", 0, MAX_GUIDANCE))

    def _new_run(self, s: dict) -> ix.ReverseRun:
        context = ix.context_for(self.classes, s["cls"], s["n"], s["mix"])
        return ix.start_reverse(self.model, self.schedule, context, s["sampler"], s["steps"], s["guidance"],
                                s["seed"], self.precision, cls=s["cls"], mix=s["mix"], n=s["n"])

    def _run_for(self, run: ix.ReverseRun | None, cls, n, seed, sampler, steps, guidance,
                 mix) -> tuple[ix.ReverseRun, bool]:
        """The session's run, or a fresh one when there is none or the settings changed."""
        s = self._reverse_settings(cls, mix, n, seed, sampler, steps, guidance)
        if isinstance(run, ix.ReverseRun) and run.settings == s:
            return run, False
        return self._new_run(s), True

    def _reverse_outputs(self, run: ix.ReverseRun, index: int | None = None, note: str = ""):
        frames = run.frames
        i = len(frames) - 1 if index is None else max(0, min(int(index), len(frames) - 1))
        f = frames[i]
        x0 = f.x0 if f.x0 is not None else np.full_like(f.x_t, 127)
        eps = f.eps if f.eps is not None else np.full_like(f.x_t, 127)
        s = run.settings
        what = "mix" if s["cls"] == ix.MIX else s["cls"]
        state = "done ✨" if run.done and i == len(frames) - 1 else (
            "pure noise" if f.step == 0 else "denoising…")
        status = (f"**Step {f.step} / {run.total}** &nbsp;·&nbsp; t = {f.t} &nbsp;·&nbsp; {state} &nbsp;·&nbsp; "
                  f"{SAMPLER_NAMES[s['sampler']]}, guidance {s['guidance']:g}, class {what}")
        if note:
            status += f"  \n{note}"
        timeline = gr.Slider(minimum=0, maximum=max(1, len(frames) - 1), value=i, step=1)
        return (run, picture(ix.grid(f.x_t, scale=1), GRID), picture(ix.grid(x0, scale=1), GRID),
                picture(ix.grid(eps, scale=1), GRID), timeline, status)

    @user_errors
    def reverse_reset(self, run, cls, n, seed, sampler, steps, guidance, *mix):
        run, _ = self._run_for(None, cls, n, seed, sampler, steps, guidance, mix)
        return self._reverse_outputs(run)

    @user_errors
    def reverse_step(self, run, cls, n, seed, sampler, steps, guidance, *mix):
        run, _ = self._run_for(run, cls, n, seed, sampler, steps, guidance, mix)
        with run.lock:
            if run.done:
                return self._reverse_outputs(run, note="Finished: press Reset (or change a setting) to start over.")
            run.advance()
        return self._reverse_outputs(run)

    @user_errors
    def reverse_run(self, run, cls, n, seed, sampler, steps, guidance, *mix):
        """Stream every remaining step to the end (a generator: each yield updates the page)."""
        run, _ = self._run_for(run, cls, n, seed, sampler, steps, guidance, mix)
        if run.done:
            run = self._new_run(run.settings)  # Run on a finished run replays it from noise
        yield self._reverse_outputs(run)
        while not run.done:
            with run.lock:
                run.advance()
            yield self._reverse_outputs(run)

    @user_errors
    def reverse_scrub(self, run, index):
        if not isinstance(run, ix.ReverseRun):
            raise ValueError("nothing to scrub yet: press Step or Run first")
        index = ix.check_number(index, "timeline position", 0, ix.MAX_FRAMES, integer=True)
        return self._reverse_outputs(run, index)

    @user_errors
    def reverse_gif(self, run):
        if not isinstance(run, ix.ReverseRun) or len(run.frames) < 2:
            raise ValueError("no steps taken yet: press Step or Run first")
        path = ix.write_output(ix.trajectory_gif(run.frames), ".gif", stem="trajectory")
        return gr.update(value=path, visible=True)

    # --- 3. generate ----------------------------------------------------------------------------
    @user_errors
    def generate(self, cls, n, sampler, steps, guidance, seed, transparent, snap=True):
        rows = ix.generate(self.model, self.schedule, self.classes, cls, n, sampler_key(sampler), steps,
                           guidance, seed, self.precision)
        rows = [ix.maybe_snap(r, self.palette, bool(snap)) for r in rows]
        shown = sprite_sheet(rows, scale=GRID, pad=1)
        sheet = sprite_sheet(rows, scale=1, pad=0, transparent=bool(transparent))
        path = ix.write_output(ix.png_bytes(sheet), ".png", stem="sprite-sheet")
        names = self.classes if cls == ix.ALL_CLASSES else [cls]
        caption = " · ".join(f"row {i + 1}: **{name}**" for i, name in enumerate(names))
        return picture(shown), path, caption

    # --- 4. remix -------------------------------------------------------------------------------
    def _remix_source(self, sprite):
        return sprite, picture(sprite, BIG)

    @user_errors
    def remix_sprite(self, cls, seed):
        return self._remix_source(self.model_sprite(cls, seed))

    @user_errors
    def remix_upload(self, path):
        return self._remix_source(ix.sprite_from_upload(path, self.height))

    @user_errors
    def remix_draw(self, drawing):
        return self._remix_source(ix.sprite_from_drawing(drawing, self.height))

    @user_errors
    def remix(self, sprite, cls, strength, sampler, steps, guidance, seed, snap=True):
        if sprite is None:
            sprite = self.model_sprite(self.classes[0], 1)
        cls = ix.check_class(self.classes, cls)
        r = ix.remix(self.model, self.schedule, sprite, ix.context_for(self.classes, cls, 1), strength,
                     sampler_key(sampler), steps, guidance, seed, self.precision)
        result = ix.maybe_snap(r.result, self.palette, bool(snap))
        # the trajectory: at most 8 evenly spaced frames from the noised start to the result
        keep = np.unique(np.linspace(0, len(r.frames) - 1, min(8, len(r.frames))).round().astype(int))
        frames = [r.frames[k] for k in keep[:-1]] + [result]
        strip = sprite_sheet([np.stack([sprite] + frames)], scale=GRID, pad=1)
        info = (f"Noised to **t = {r.t_start}** of {self.T} (strength {r.t_start / self.T:.2f}), then "
                f"**{r.steps} steps** of {SAMPLER_NAMES[sampler]} as **{cls}**. "
                "Below: the source, the noised start, …, the result.")
        return picture(result, BIG), picture(strip), info

    # --- 5. model -------------------------------------------------------------------------------
    def model_info(self) -> str:
        try:
            folder = resolve(self.source, local_files_only=True)
        except CheckpointError:
            folder = None
        params = sum(p.numel() for p in self.model.parameters())
        lines = [
            "### This model",
            f"- **Loaded from:** `{self.source}`" + (f" (`{folder}`)" if folder and str(folder) != self.source else ""),
            f"- **Device:** `{self.device}`, network in {self.precision} &nbsp;·&nbsp; torch {torch.__version__} &nbsp;·&nbsp; gradio {gr.__version__}",
            f"- **Classes ({len(self.classes)}):** " + ", ".join(f"`{c}`" for c in self.classes),
            f"- **Parameters:** {params:,}",
            f"- **Noise schedule:** `{json.dumps(self.schedule.config())}`",
            f"- **Network config:** `{json.dumps(self.model.config_dict)}`",
            f"- **Palette:** " + (f"{len(self.palette)} colours (palette.json); final sprites are snapped to them"
                                  if self.palette is not None else "none (raw colours)"),
            f"- **Defaults:** {SAMPLER_NAMES[DEFAULT_SAMPLER]}, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE:g}",
        ]
        card = ""
        if folder and (folder / "README.md").is_file():
            card = (folder / "README.md").read_text(errors="replace")
            card = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)      # YAML front matter
            card = re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", card)             # relative images do not resolve here
        info = "\n".join(lines)
        if not card:
            return info + "\n\n*No model card (README.md) in the model folder.*"
        return info + "\n\n---\n\n### Model card\n\n" + card


# --- the page ----------------------------------------------------------------------------------
def sampler_controls(prefix: str, T: int, steps: int = DEFAULT_STEPS):
    sampler = gr.Radio(SAMPLERS, value=DEFAULT_SAMPLER, label="Sampler", elem_id=f"{prefix}-sampler",
                       info="DDPM: the best measured quality at 50 steps; with the seed's variance β it leaves more "
                            "speckle at few steps. DDIM and DPM-Solver++: deterministic, usable from 8 steps.")
    steps = gr.Slider(1, T, value=steps, step=1, label="Steps", elem_id=f"{prefix}-steps")
    guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance (classifier-free)",
                         info="0 = plain conditional model; higher = more typical of the class",
                         elem_id=f"{prefix}-guidance")
    return sampler, steps, guidance


def source_picker(lab: SpriteLab, prefix: str, default_class: str, default_seed: int):
    """Three ways to choose a sprite: from the model, an upload, or a drawing."""
    with gr.Tabs(elem_id=f"{prefix}-source-tabs"):
        with gr.Tab("🎲 From the model", id=f"{prefix}-src-model"):
            cls = gr.Dropdown(lab.classes, value=default_class, label="Class", elem_id=f"{prefix}-src-class")
            seed = gr.Number(default_seed, step=1, minimum=0, maximum=ix.MAX_SEED, label="Seed",
                             elem_id=f"{prefix}-src-seed")
            new = gr.Button("New sprite", variant="secondary", elem_id=f"{prefix}-src-new")
        with gr.Tab("📁 Upload", id=f"{prefix}-src-upload"):
            upload = gr.File(label="Upload an image (centre-cropped and shrunk to the model's size)",
                             file_types=["image"], type="filepath", height=120, elem_id=f"{prefix}-upload")
        with gr.Tab("✏️ Draw", id=f"{prefix}-src-draw"):
            draw = gr.Sketchpad(canvas_size=(256, 256), type="numpy", image_mode="RGBA", layers=False,
                                transforms=(), brush=gr.Brush(default_size=16, colors=PALETTE, default_color=PALETTE[6]),
                                label="Draw a sprite (one brush dab ≈ one pixel)", elem_id=f"{prefix}-draw",
                                elem_classes=["pixelated"])
            use = gr.Button("Use this drawing", variant="secondary", elem_id=f"{prefix}-draw-use")
    return cls, seed, new, upload, draw, use


# --- 6. compare: a sampler race, a guidance sweep, morphs ------------------------------------------
RACE_OFF = "none"
RACE_CHOICES = SAMPLERS + [("— (no column)", RACE_OFF)]
RACE_LABELS = {"ddpm": "DDPM", "ddpm-beta": "DDPM β", "ddim": "DDIM", "dpm++": "DPM-Solver++"}  # short: phones
RACE_FPS = 20  # a long race streams at most this many pictures a second; every tick is still in the GIF
SWEEP_DEFAULT_VALUES = ", ".join(f"{g:g}" for g in cp.DEFAULT_GUIDANCES)
MORPH_SAMPLERS = [(name, key) for name, key in SAMPLERS if key in cp.MORPH_SAMPLERS]
MORPH_DEFAULT_FRAMES, MORPH_DEFAULT_STEPS = 16, 25


class CompareLab:
    """The Compare tab's handlers: what one choice changes, everything else held fixed (ddpm.compare)."""

    def __init__(self, lab: SpriteLab):
        self.lab = lab
        self._defaults: dict | None = None
        self._defaults_lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.lab.classes

    def _common(self, class_name: Any, seed: Any, guidance: Any) -> tuple[str, int, float]:
        return (ix.check_class(self.classes, class_name), ix.check_number(seed, "seed", 0, ix.MAX_SEED, integer=True),
                ix.check_number(guidance, "guidance", 0, MAX_GUIDANCE))

    # --- the race -------------------------------------------------------------------------------
    def _race_for(self, race, class_name, seed, guidance, slots) -> cp.SamplerRace:
        """This visitor's race, or a new one at tick 0 when there is none or a setting changed."""
        cls, seed, guidance = self._common(class_name, seed, guidance)
        pairs = [(s, n) for s, n in zip(slots[0::2], slots[1::2]) if s != RACE_OFF]
        entries = cp.check_racers([(sampler_key(s), n) for s, n in pairs], self.lab.T)
        settings = dict(cls=cls, seed=seed, guidance=guidance, entries=entries)
        if isinstance(race, cp.SamplerRace) and race.settings == settings:
            return race
        lab = self.lab
        return cp.SamplerRace(lab.model, lab.schedule, ix.context_for(self.classes, cls, 1), entries, guidance, seed,
                              lab.precision, settings=settings)

    def _race_outputs(self, race: cp.SamplerRace, note: str = ""):
        f, s = race.frames[-1], race.settings
        status = (f"**Tick {f.tick} / {f.ticks}** · {s['cls']}, seed {s['seed']}, guidance {s['guidance']:g} · "
                  + ("finished ✨" if f.done else "pure noise" if f.tick == 0 else "racing…"))
        # each column's network passes so far: one ahead of its steps until it is done (ddpm.compare._Racer)
        rows = "\n".join(f"| {RACE_LABELS[c.sampler]} | {c.taken}/{c.steps} | {c.t} | {c.seconds:.2f} s | "
                         f"{1000 * c.seconds / min(c.taken + 1, c.steps):.0f} ms |" for c in f.columns)
        status += "\n\n| sampler | step | t | time | per step |\n|---|---|---|---|---|\n" + rows
        files = None
        if f.done:
            stem = f"race-{s['cls']}-seed{s['seed']}"
            files = [ix.write_output(ix.png_bytes(cp.race_picture(f)), ".png", stem=stem),
                     ix.write_output(cp.race_gif(race.frames), ".gif", stem=stem)]
        if note:
            status += f"\n\n{note}"
        return race, picture(cp.race_picture(f)), status, files

    # Reset and Step are the page's (private endpoints): their slots stay positional. compare_samplers is
    # public, so every parameter is named: Gradio takes the API's parameter names from the signature.
    @user_errors
    def compare_reset(self, race, class_name, seed, guidance, *slots):
        return self._race_outputs(self._race_for(None, class_name, seed, guidance, slots))

    @user_errors
    def compare_step(self, race, class_name, seed, guidance, *slots):
        race = self._race_for(race, class_name, seed, guidance, slots)
        with race.lock:
            if race.done:
                return self._race_outputs(race, "Finished: press Reset (or change a setting) to start over.")
            race.advance()
        return self._race_outputs(race)

    @user_errors
    def compare_samplers(self, race, class_name, seed, guidance, sampler_1, steps_1, sampler_2, steps_2,
                         sampler_3, steps_3, sampler_4, steps_4):
        """Race the samplers to t = 0, streaming the columns; a finished race is run again from noise."""
        slots = (sampler_1, steps_1, sampler_2, steps_2, sampler_3, steps_3, sampler_4, steps_4)
        race = self._race_for(race, class_name, seed, guidance, slots)
        if race.done:
            race = self._race_for(None, class_name, seed, guidance, slots)
        yield self._race_outputs(race)
        shown = time.perf_counter()
        while not race.done:
            with race.lock:
                race.advance()
            if race.done or time.perf_counter() - shown >= 1 / RACE_FPS:
                shown = time.perf_counter()
                yield self._race_outputs(race)

    # --- the guidance sweep -----------------------------------------------------------------------
    @user_errors
    def guidance_sweep(self, class_name, seed, rows, guidance_values, sampler, steps):
        """One column per guidance value, streamed as each finishes; rows are seeds seed, seed + 1, ..."""
        cls, seed, _ = self._common(class_name, seed, 0)
        seeds = cp.sweep_seeds(seed, rows)
        values = cp.parse_numbers(guidance_values, "guidance values", 0, MAX_GUIDANCE, cp.MAX_SWEEP_VALUES)
        sampler = sampler_key(sampler)
        steps = ix.check_number(steps, "steps", 1, self.lab.T, integer=True)
        lab, cols = self.lab, [None] * len(values)
        what = f"{cls}, {SAMPLER_NAMES[sampler]} {steps} steps, seed{'s' if len(seeds) > 1 else ''} " + \
               ", ".join(map(str, seeds))
        yield picture(cp.sweep_picture(cols, values, seeds, height=lab.height)), f"Sampling guidance {values[0]:g}… · {what}", None
        sweep = cp.guidance_sweep(lab.model, lab.schedule, ix.context_for(self.classes, cls, 1), values, seeds,
                                  sampler, steps, lab.precision)
        for j, sprites in sweep:
            cols[j] = sprites
            if j + 1 < len(values):
                yield picture(cp.sweep_picture(cols, values, seeds)), \
                    f"Sampling guidance {values[j + 1]:g}… ({j + 1} of {len(values)} done) · {what}", None
        pic = cp.sweep_picture(cols, values, seeds)
        path = ix.write_output(ix.png_bytes(pic), ".png", stem=f"guidance-sweep-{cls}-seed{seed}")
        yield picture(pic), f"**Guidance {', '.join(f'{v:g}' for v in values)}** · {what}", [path]

    # --- morphs -----------------------------------------------------------------------------------
    @user_errors
    def morph(self, class_a, class_b, seed_a, seed_b, frames, sampler, steps, guidance):
        class_a, class_b = (ix.check_class(self.classes, c) for c in (class_a, class_b))
        guidance = ix.check_number(guidance, "guidance", 0, MAX_GUIDANCE)
        lab = self.lab
        m = cp.morph(lab.model, lab.schedule, self.classes, class_a, class_b, seed_a, seed_b, frames, sampler, steps,
                     guidance, lab.precision)
        ends = f"{class_a} seed {int(seed_a)} → {class_b} seed {int(seed_b)}"
        stem = f"morph-{class_a}-{int(seed_a)}-to-{class_b}-{int(seed_b)}"
        strip = ix.write_output(ix.png_bytes(cp.morph_picture(m)), ".png", stem=stem)
        gif = ix.write_output(cp.morph_gif(m), ".gif", stem=stem)
        how = {"seeds": "the starting noise slerps from one seed's to the other's",
               "classes": "the class weights slide from one class to the other",
               "seeds and classes": "the noise slerps and the class weights slide together",
               "nothing": "both ends are the same: choose another seed or class for one end"}[m.what]
        status = (f"**{len(m.frames)} frames**, {ends}: {how} · {SAMPLER_NAMES[sampler_key(sampler)]}, "
                  f"{int(steps)} steps, guidance {guidance:g}")
        return strip, gif, status, [strip, gif]

    # --- what the page shows on open: computed once, served from memory -------------------------
    def defaults(self) -> dict:
        with self._defaults_lock:
            if self._defaults is None:
                c = self.classes
                race = self.compare_reset(None, c[0], 0, DEFAULT_GUIDANCE, *[v for e in cp.DEFAULT_RACE for v in e])
                *_, sweep = self.guidance_sweep(c[0], 0, 1, SWEEP_DEFAULT_VALUES, DEFAULT_SAMPLER, DEFAULT_STEPS)
                morph = self.morph(c[0], c[min(1, len(c) - 1)], 0, 0, MORPH_DEFAULT_FRAMES, "ddim",
                                   MORPH_DEFAULT_STEPS, DEFAULT_GUIDANCE)
                read = lambda p: Path(p).read_bytes()  # noqa: E731  (files are pruned after an hour: keep bytes)
                self._defaults = dict(race=race[1:3], sweep=(sweep[0], sweep[1], read(sweep[2][0])),
                                      morph=(read(morph[0]), read(morph[1]), morph[2]))
            return self._defaults

    def on_load(self):
        d = self.defaults()
        c = self.classes
        sweep_png = ix.write_output(d["sweep"][2], ".png", stem=f"guidance-sweep-{c[0]}-seed0")
        stem = f"morph-{c[0]}-0-to-{c[min(1, len(c) - 1)]}-0"
        strip, gif = (ix.write_output(d["morph"][0], ".png", stem=stem), ix.write_output(d["morph"][1], ".gif", stem=stem))
        return (picture(d["race"][0]), d["race"][1], picture(d["sweep"][0]), d["sweep"][1], [sweep_png],
                strip, gif, d["morph"][2], [strip, gif])


def class_and_seed(lab: SpriteLab, elem: str, default_class: str, class_label: str = "Class",
                   seed_label: str = "Seed") -> tuple[gr.Dropdown, gr.Number]:
    """A class and a seed side by side (they stay side by side on a phone)."""
    with gr.Row():
        cls = gr.Dropdown(lab.classes, value=default_class, label=class_label, elem_id=f"{elem}-class", min_width=120)
        seed = gr.Number(0, precision=0, label=seed_label, elem_id=f"{elem}-seed", min_width=100)
    return cls, seed


def downloads(elem_id: str) -> gr.File:
    return gr.File(label="downloads", file_count="multiple", interactive=False, elem_id=elem_id)


def compare_tab(lab: SpriteLab, demo: gr.Blocks) -> None:
    """The sixth tab: three side-by-side comparisons, each a public endpoint with a Stop."""
    T, pix, cl = lab.T, ["pixelated"], CompareLab(lab)
    with gr.Tab("6 · Compare", id="compare"):
        with gr.Tabs(elem_id="c-tabs"):
            with gr.Tab("Race", id="c-race-tab"):
                gr.Markdown("Two to four samplers from **the same starting noise**. **Step** moves every sampler to "
                            "the same point of its schedule (the same fraction of the way from t = T to 0); **Run** "
                            "races them to t = 0. **Top row:** x_t now; **bottom row:** the model's predicted x₀ at that "
                            "x_t; under each column its steps, t and wall time so far.")
                race_state = gr.State(None, time_to_live=3600)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        c_cls, c_seed = class_and_seed(lab, "c", lab.classes[0])
                        c_guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5,
                                               label="Guidance (classifier-free)", elem_id="c-guidance")
                        slots = []
                        for k, (name, steps) in enumerate(cp.DEFAULT_RACE, 1):
                            with gr.Row():
                                slots.append(gr.Dropdown(RACE_CHOICES, value=name, label=f"Column {k}", scale=3,
                                                         min_width=150, elem_id=f"c-sampler-{k}"))
                                slots.append(gr.Number(steps, precision=0, label="Steps", scale=1, min_width=80,
                                                       elem_id=f"c-steps-{k}"))
                    with gr.Column(scale=2, min_width=300):
                        with gr.Row():
                            c_step = gr.Button("Step ▶", variant="primary", elem_id="c-step", min_width=80)
                            c_run = gr.Button("Run ⏩", variant="primary", elem_id="c-run", min_width=80)
                            c_stop = gr.Button("Stop ■", variant="stop", elem_id="c-stop", min_width=80)
                            c_reset = gr.Button("Reset ↺", elem_id="c-reset", min_width=80)
                        c_race = gr.Image(label="race", show_label=False, format="png", interactive=False,
                                          elem_classes=pix, elem_id="c-race", buttons=[])
                        c_status = gr.Markdown(label="status", elem_id="c-status")
                        c_files = downloads("c-race-files")
                race_in = [race_state, c_cls, c_seed, c_guidance] + slots
                race_out = [race_state, c_race, c_status, c_files]
                run_ev = c_run.click(GPU(cl.compare_samplers), race_in, race_out, api_name="compare_samplers",
                                     concurrency_id="model")
                step_ev = c_step.click(GPU(cl.compare_step), race_in, race_out, api_visibility="private",
                                       concurrency_id="model")
                c_reset.click(GPU(cl.compare_reset), race_in, race_out, api_visibility="private",
                              concurrency_id="model", cancels=[run_ev, step_ev])
                c_stop.click(None, None, None, cancels=[run_ev, step_ev], queue=False)

            with gr.Tab("Guidance", id="c-sweep-tab"):
                gr.Markdown("One class, one seed, one row of sprites at each **classifier-free guidance** w. Every "
                            "column starts from the same noise (and with DDPM gets the same noise at every step), so "
                            "only w differs: low w varies more and strays from the class, high w is more typical, "
                            "then overdone. More rows: the next seeds. Raw model colours, not snapped to the palette.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        s_cls, s_seed = class_and_seed(lab, "s", lab.classes[0])
                        s_values = gr.Textbox(SWEEP_DEFAULT_VALUES, label="Guidance values",
                                              info=f"up to {cp.MAX_SWEEP_VALUES}, from 0 to {MAX_GUIDANCE:g}",
                                              elem_id="s-values")
                        s_rows = gr.Slider(1, cp.MAX_SWEEP_ROWS, value=1, step=1, precision=0,
                                           label="Rows (seeds)", elem_id="s-rows")
                        s_sampler = gr.Dropdown(SAMPLERS, value=DEFAULT_SAMPLER, label="Sampler", elem_id="s-sampler")
                        s_steps = gr.Number(DEFAULT_STEPS, precision=0, label="Steps", elem_id="s-steps")
                    with gr.Column(scale=2, min_width=300):
                        with gr.Row():
                            s_go = gr.Button("Sweep 🎚", variant="primary", elem_id="s-go", min_width=80)
                            s_stop = gr.Button("Stop ■", variant="stop", elem_id="s-stop", min_width=80)
                        s_pic = gr.Image(label="sweep", show_label=False, format="png", interactive=False,
                                         elem_classes=pix, elem_id="s-sweep", buttons=[])
                        s_status = gr.Markdown(label="status", elem_id="s-status")
                        s_files = downloads("s-files")
                sweep_out = [s_pic, s_status, s_files]
                sweep_ev = s_go.click(GPU(cl.guidance_sweep), [s_cls, s_seed, s_rows, s_values, s_sampler, s_steps],
                                      sweep_out, api_name="guidance_sweep", concurrency_id="model")
                s_stop.click(None, None, None, cancels=[sweep_ev], queue=False)

            with gr.Tab("Morph", id="c-morph-tab"):
                gr.Markdown("From one sprite to another. **Two seeds** (same class): the starting noise travels a "
                            "great circle (slerp) from one seed's noise to the other's. **Two classes** (same seed): "
                            "the class weights slide from one to the other. Both differ: both at once. A "
                            "deterministic sampler turns each noise into one sprite, so neighbouring frames stay close; "
                            "the end frames are exactly the two ends sampled on their own.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        o_cls_a, o_seed_a = class_and_seed(lab, "o-a", lab.classes[0], "From class", "From seed")
                        o_cls_b, o_seed_b = class_and_seed(lab, "o-b", lab.classes[min(1, len(lab.classes) - 1)],
                                                           "To class", "To seed")
                        o_frames = gr.Slider(cp.MIN_MORPH_FRAMES, cp.MAX_MORPH_FRAMES, value=MORPH_DEFAULT_FRAMES,
                                             step=1, precision=0, label="Frames", elem_id="o-frames")
                        o_sampler = gr.Radio(MORPH_SAMPLERS, value="ddim", label="Sampler (deterministic)",
                                             elem_id="o-sampler")
                        with gr.Row():
                            o_steps = gr.Number(MORPH_DEFAULT_STEPS, precision=0, label="Steps", elem_id="o-steps",
                                                min_width=80)
                            o_guidance = gr.Slider(0, MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance",
                                                   elem_id="o-guidance", min_width=160)
                    with gr.Column(scale=2, min_width=300):
                        with gr.Row():
                            o_go = gr.Button("Morph 🔀", variant="primary", elem_id="o-go", min_width=80)
                            o_stop = gr.Button("Stop ■", variant="stop", elem_id="o-stop", min_width=80)
                        with gr.Row():
                            o_gif = gr.Image(label="morph_gif", show_label=False, interactive=False, height=256,
                                             elem_classes=pix, elem_id="o-gif", buttons=[], min_width=200, scale=1)
                            o_strip = gr.Image(label="morph_strip", show_label=False, format="png", interactive=False,
                                               elem_classes=pix, elem_id="o-strip", buttons=[], min_width=280, scale=2)
                        o_status = gr.Markdown(label="status", elem_id="o-status")
                        o_files = downloads("o-files")
                morph_out = [o_strip, o_gif, o_status, o_files]
                morph_ev = o_go.click(GPU(cl.morph), [o_cls_a, o_cls_b, o_seed_a, o_seed_b, o_frames, o_sampler,
                                                      o_steps, o_guidance], morph_out, api_name="morph",
                                      concurrency_id="model")
                o_stop.click(None, None, None, cancels=[morph_ev], queue=False)
    demo.load(GPU(cl.on_load), None, [c_race, c_status, s_pic, s_status, s_files] + morph_out,
              api_visibility="private", concurrency_id="model")


def build_demo(lab: SpriteLab) -> gr.Blocks:
    T = lab.T
    pix = ["pixelated"]
    # delete_cache: every 5 minutes, remove cached outputs older than 30 minutes
    with gr.Blocks(title="DDPM Sprite Lab", delete_cache=(300, 1800)) as demo:
        gr.Markdown("# 👾 DDPM Sprite Lab\nA small diffusion model that draws 16×16 pixel-art sprites of "
                    f"{len(lab.classes)} classes ({', '.join(lab.classes)}). Watch noise swallow a sprite, step the "
                    "model back out of noise, generate sprite sheets, and remix your own drawings.")
        with gr.Tabs():
            # 1 --------------------------------------------------------------------------------
            with gr.Tab("1 · Forward process", id="forward"):
                gr.Markdown("Noise is mixed in step by step: **x_t = √ᾱₜ · x₀ + √(1−ᾱₜ) · ε**. Drag **t**.")
                f_sprite = gr.State(None)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        f_cls, f_seed, f_new, f_upload, f_draw, f_use = source_picker(lab, "f", lab.classes[0], 0)
                        f_x0 = gr.Image(label="x₀ (clean)", format="png", interactive=False, height=200,
                                        elem_classes=pix, elem_id="f-x0", buttons=["download"])
                    with gr.Column(scale=2):
                        with gr.Row():
                            f_xt = gr.Image(label="x_t", format="png", interactive=False, height=300,
                                            elem_classes=pix, elem_id="f-xt", buttons=["download", "fullscreen"])
                            with gr.Column(visible=False) as f_model_col:
                                f_eps = gr.Image(label="model's predicted noise ε̂", format="png", interactive=False,
                                                 height=140, elem_classes=pix, elem_id="f-eps")
                                f_x0p = gr.Image(label="model's predicted x₀", format="png", interactive=False,
                                                 height=140, elem_classes=pix, elem_id="f-x0pred")
                        f_t = gr.Slider(0, T, value=T // 4, step=1, label="t (time step: 0 = clean, T = pure noise)",
                                        elem_id="f-t")
                        f_info = gr.Markdown(elem_classes=["info-line"], elem_id="f-info")
                        with gr.Row():
                            f_noise = gr.Number(0, step=1, minimum=0, maximum=ix.MAX_SEED, label="Noise seed",
                                                info="the same ε at every t, so the picture changes smoothly",
                                                elem_id="f-noise")
                            f_show = gr.Checkbox(False, label="Show what the model sees at this t", elem_id="f-show")
                        f_chart = gr.Image(label="Signal ᾱₜ and signal-to-noise ratio over t", format="png",
                                           interactive=False, height=250, elem_id="f-chart", show_label=False)
                view_out = [f_xt, f_info, f_chart, f_eps, f_x0p]
                src_out = [f_sprite, f_x0] + view_out
                f_new.click(GPU(lab.forward_sprite), [f_cls, f_seed, f_t, f_noise, f_show], src_out,
                            api_name="forward_sprite", concurrency_id="model")
                f_upload.upload(GPU(lab.forward_upload), [f_upload, f_t, f_noise, f_show, f_cls], src_out,
                                api_name="forward_upload", concurrency_id="model")
                f_use.click(GPU(lab.forward_draw), [f_draw, f_t, f_noise, f_show, f_cls], src_out,
                            api_name="forward_draw", concurrency_id="model")
                view_in = [f_sprite, f_t, f_noise, f_show, f_cls]
                # "always_last": while dragging, a value that arrives during an update is queued, so the final
                # position is always rendered; hidden progress keeps the picture from flashing.
                f_t.change(GPU(lab.forward_view), view_in, view_out, api_name="forward_view", trigger_mode="always_last",
                           show_progress="hidden", concurrency_limit=4, concurrency_id="preview")
                f_noise.change(GPU(lab.forward_view), view_in, view_out, api_visibility="private",
                               show_progress="hidden", concurrency_limit=4, concurrency_id="preview")
                f_show.change(lambda show: gr.Column(visible=bool(show)), f_show, f_model_col, api_visibility="private",
                              queue=False).then(GPU(lab.forward_view), view_in, view_out, api_visibility="private",
                                                show_progress="hidden", concurrency_limit=4,
                                                concurrency_id="preview")

            # 2 --------------------------------------------------------------------------------
            with gr.Tab("2 · Reverse process", id="reverse"):
                gr.Markdown("Start from pure noise and let the model remove it, one step at a time. "
                            "**Step** takes one step, **Run** streams to the end, the **timeline** scrubs back.")
                r_run = gr.State(None, time_to_live=3600)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        r_cls = gr.Dropdown(lab.classes + [ix.MIX], value=lab.classes[0], label="Class",
                                            info=f"'{ix.MIX}' blends classes with the weights below", elem_id="r-class")
                        with gr.Accordion("Class mix weights", open=False):
                            r_mix = [gr.Slider(0, 1, value=1.0 if i == 0 else 0.0, step=0.05, label=c,
                                               elem_id=f"r-mix-{i}") for i, c in enumerate(lab.classes)]
                        r_n = gr.Slider(1, ix.MAX_SPRITES, value=REVERSE_DEFAULT_N, step=1, label="Sprites", elem_id="r-n")
                        r_seed = gr.Number(0, step=1, minimum=0, maximum=ix.MAX_SEED, label="Seed", elem_id="r-seed")
                        r_sampler, r_steps, r_guidance = sampler_controls("r", T)
                    with gr.Column(scale=3):
                        with gr.Row():
                            r_step = gr.Button("Step ▶", variant="primary", elem_id="r-step")
                            r_go = gr.Button("Run ⏩", variant="primary", elem_id="r-run")
                            r_reset = gr.Button("Reset ↺", elem_id="r-reset")
                        r_status = gr.Markdown(elem_id="r-status")
                        with gr.Row():
                            # Headings above, not Gradio's label badge, which would cover the first sprite.
                            grids = []
                            for title, key in (("x_t (now)", "r-xt"), ("predicted x₀ (the model's guess)", "r-x0"),
                                               ("predicted noise ε̂", "r-eps")):
                                with gr.Column(min_width=200):
                                    gr.Markdown(f"**{title}**")
                                    grids.append(gr.Image(label=title, show_label=False, format="png", height=320,
                                                          interactive=False, elem_classes=pix, elem_id=key,
                                                          buttons=["download", "fullscreen"]))
                            r_xt, r_x0, r_eps = grids
                        r_timeline = gr.Slider(0, 1, value=0, step=1, label="Timeline (steps taken so far)",
                                               elem_id="r-timeline")
                        with gr.Row():
                            r_gif_btn = gr.Button("🎞 Make trajectory GIF", elem_id="r-gif-btn", scale=1)
                            r_gif = gr.File(label="Trajectory GIF", interactive=False, elem_id="r-gif", scale=2,
                                            visible=False)
                r_in = [r_run, r_cls, r_n, r_seed, r_sampler, r_steps, r_guidance] + r_mix
                r_out = [r_run, r_xt, r_x0, r_eps, r_timeline, r_status]
                r_reset.click(GPU(lab.reverse_reset), r_in, r_out, api_name="reverse_reset",
                              concurrency_id="model").then(lambda: gr.update(visible=False), None, r_gif,
                                                           api_visibility="private", queue=False)  # stale GIF
                r_step.click(GPU(lab.reverse_step), r_in, r_out, api_name="reverse_step", concurrency_id="model")
                r_go.click(GPU(lab.reverse_run), r_in, r_out, api_name="reverse_run", concurrency_id="model")
                r_timeline.input(lab.reverse_scrub, [r_run, r_timeline], r_out, api_name="reverse_scrub",
                                 trigger_mode="always_last", show_progress="hidden", concurrency_limit=4,
                                 concurrency_id="preview")
                r_gif_btn.click(lab.reverse_gif, r_run, r_gif, api_name="reverse_gif", concurrency_id="model")

            # 3 --------------------------------------------------------------------------------
            with gr.Tab("3 · Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        g_cls = gr.Dropdown([ix.ALL_CLASSES] + lab.classes, value=ix.ALL_CLASSES, label="Class",
                                            info="'all classes' draws one row per class", elem_id="g-class")
                        g_n = gr.Slider(1, ix.MAX_SPRITES, value=GENERATE_DEFAULT_N, step=1, label="How many (per row)",
                                        elem_id="g-n")
                        g_seed = gr.Number(0, step=1, minimum=0, maximum=ix.MAX_SEED, label="Seed", elem_id="g-seed")
                        g_sampler, g_steps, g_guidance = sampler_controls("g", T)
                        g_transparent = gr.Checkbox(False, label="Transparent background in the sheet",
                                                    elem_id="g-transparent")
                        g_snap = gr.Checkbox(True, label="Snap colours to the model's palette",
                                             visible=lab.palette is not None, elem_id="g-snap")
                        g_go = gr.Button("Generate ✨", variant="primary", elem_id="g-go")
                    with gr.Column(scale=2):
                        g_caption = gr.Markdown(elem_id="g-caption")
                        g_grid = gr.Image(label="Sprites", show_label=False, format="png", interactive=False, elem_classes=pix,
                                          elem_id="g-grid", buttons=["download", "fullscreen"])
                        g_sheet = gr.File(label="Sprite sheet PNG (1 px per pixel, ready for a game)",
                                          interactive=False, elem_id="g-sheet", height=80)
                g_in = [g_cls, g_n, g_sampler, g_steps, g_guidance, g_seed, g_transparent, g_snap]
                g_go.click(GPU(lab.generate), g_in, [g_grid, g_sheet, g_caption], api_name="generate",
                           concurrency_id="model")

            # 4 --------------------------------------------------------------------------------
            with gr.Tab("4 · Remix", id="remix"):
                gr.Markdown("**SDEdit**: noise a sprite part of the way, then denoise it as another class. "
                            "Low strength keeps the shape; high strength keeps little but the colours.")
                m_sprite = gr.State(None)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        m_src_cls, m_src_seed, m_new, m_upload, m_draw, m_use = source_picker(
                            lab, "m", lab.classes[0], 1)
                        m_src = gr.Image(label="Source", format="png", interactive=False, height=200,
                                         elem_classes=pix, elem_id="m-src")
                    with gr.Column(scale=2):
                        with gr.Row():
                            m_cls = gr.Dropdown(lab.classes, value=lab.classes[min(2, len(lab.classes) - 1)],
                                                label="Remix as", elem_id="m-class")
                            m_strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength",
                                                   info="how far to noise it: 1 = start from pure noise",
                                                   elem_id="m-strength")
                            m_seed = gr.Number(0, step=1, minimum=0, maximum=ix.MAX_SEED, label="Seed",
                                               elem_id="m-seed")
                        with gr.Accordion("Sampler", open=False):
                            m_sampler, m_steps, m_guidance = sampler_controls("m", T)
                            m_snap = gr.Checkbox(True, label="Snap the result to the model's palette",
                                                 visible=lab.palette is not None, elem_id="m-snap")
                        m_go = gr.Button("Remix 🪄", variant="primary", elem_id="m-go")
                        m_result = gr.Image(label="Result", format="png", interactive=False, height=260,
                                            elem_classes=pix, elem_id="m-result", buttons=["download", "fullscreen"])
                        m_info = gr.Markdown(elem_id="m-info")
                        m_traj = gr.Image(label="Trajectory", format="png", interactive=False, elem_classes=pix,
                                          elem_id="m-traj", buttons=["download"], show_label=False)
                m_new.click(GPU(lab.remix_sprite), [m_src_cls, m_src_seed], [m_sprite, m_src], api_name="remix_sprite",
                            concurrency_id="model")
                m_upload.upload(GPU(lab.remix_upload), m_upload, [m_sprite, m_src], api_name="remix_upload",
                                concurrency_id="model")
                m_use.click(GPU(lab.remix_draw), m_draw, [m_sprite, m_src], api_name="remix_draw", concurrency_id="model")
                m_in = [m_sprite, m_cls, m_strength, m_sampler, m_steps, m_guidance, m_seed, m_snap]
                m_go.click(GPU(lab.remix), m_in, [m_result, m_traj, m_info], api_name="remix", concurrency_id="model")

            # 5 --------------------------------------------------------------------------------
            with gr.Tab("5 · Model", id="model"):
                m_card = gr.Markdown(elem_id="model-info")

            compare_tab(lab, demo)

        # Every tab shows something the moment the page opens.
        demo.load(GPU(lab.forward_sprite), [f_cls, f_seed, f_t, f_noise, f_show], src_out, api_visibility="private",
                  concurrency_id="model")
        demo.load(GPU(lab.reverse_reset), r_in, r_out, api_visibility="private", concurrency_id="model")
        demo.load(GPU(lab.generate), g_in, [g_grid, g_sheet, g_caption], api_visibility="private", concurrency_id="model")
        demo.load(GPU(lab.remix_sprite), [m_src_cls, m_src_seed], [m_sprite, m_src], api_visibility="private",
                  concurrency_id="model").then(GPU(lab.remix), m_in, [m_result, m_traj, m_info],
                                               api_visibility="private", concurrency_id="model")
        demo.load(lab.model_info, None, m_card, api_name="model_info")
    # Model work shares two slots (more only splits the same CPU cores); previews get their own.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def create_lab(source: str, device: str | None = None, precision: str = "fp32") -> SpriteLab:
    """Load the model and schedule (CheckpointError / ValueError with a one-line message on failure).

    precision: fp32, bf16, or auto (bf16 where the device runs it fast, ddpm.sampling.resolve_precision).
    """
    dev = ix.pick_device(device)
    precision = resolve_precision(precision, dev)
    model = load_model(source, device=dev)
    return SpriteLab(model, load_schedule(source), dev, str(source), load_palette(source), precision)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DDPM Sprite Lab: the Gradio app.")
    p.add_argument("--model", default=os.environ.get("DDPM_MODEL", DEFAULT_MODEL),
                   help="model directory or Hugging Face Hub repo id (default: env DDPM_MODEL, else ./weights)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="what the network runs in while sampling; auto: bf16 on GPUs and on CPUs with "
                        "AVX512_BF16 or AMX, where it is 2-3x faster, else fp32")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to serve your network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; use the number of idle cores on a shared machine)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    try:
        lab = create_lab(args.model, args.device, args.precision)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: cannot load the model from {args.model!r}: {e}", file=sys.stderr)
        return 2
    print(f"DDPM Sprite Lab: model {lab.source} ({', '.join(lab.classes)}) on {lab.device}, {lab.precision}")
    build_demo(lab).launch(server_name=args.host, server_port=args.port, **LAUNCH_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
