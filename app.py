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
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ddpm import compare as cp
from ddpm import interactive as ix
from ddpm import limits as lim
from ddpm.card import card_for_display
from ddpm.chart import schedule_chart
from ddpm.folder import CheckpointError, resolve
from ddpm.checkpoint import load_model, load_palette, load_refiner, load_schedule
from ddpm.conditioning import ALL_CLASSES, MIX, check_class, context_for
from ddpm.data import DataError
from ddpm.device import PRECISIONS, pick_device, resolve_precision
from ddpm.images import png_bytes, sprite_sheet, upscale
from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_REFINER_T_MAX, DEFAULT_SAMPLER, DEFAULT_STEPS, Refiner

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = str(HERE / "weights")
SAMPLERS = [("DDPM (ancestral)", "ddpm"), ("DDPM, the course's variance β", "ddpm-beta"), ("DDIM", "ddim"),
            ("DPM-Solver++ (2M)", "dpm++"), ("DPM-Solver++ (2M) SDE", "dpm++sde")]
SAMPLER_NAMES = dict((v, k) for k, v in SAMPLERS)
BIG, GRID = 16, 8  # nearest-neighbour scale of a single sprite (16 px -> 256 px) and of grids
GENERATE_DEFAULT_N, REVERSE_DEFAULT_N = 6, 16
REMIX_DEFAULT_STRENGTH = 0.6
PALETTE = ["#140c1c", "#442434", "#30346d", "#4e4a4e", "#854c30", "#346524", "#d04648", "#757161",
           "#597dce", "#d27d2c", "#8595a1", "#6daa2c", "#d2aa99", "#6dc2ca", "#dad45e", "#deeed6"]  # DawnBringer 16

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; image-rendering: crisp-edges; object-fit: contain; }
/* a picture's buttons sit below it, never on top of a sprite */
.pixelated .image-container { display: flex; flex-direction: column-reverse; }
.pixelated .icon-button-wrapper { position: static !important; justify-content: flex-end; margin: 4px 0 0 auto;
                                  box-shadow: none; }
.caption p { margin: 0 !important; font-weight: 600; }
.info-line { font-size: 0.95em; }
#model-info table { display: block; overflow-x: auto; }
#r-gif:not(.gif-shown) { display: none !important; }
#model-info th, #model-info td { white-space: nowrap; }
#model-info code { overflow-wrap: anywhere; }
@media (max-width: 720px) {
  /* on a phone the pictures and their buttons come before the settings */
  .settings-col { order: 2; }
  /* all five tabs fit in one row: Gradio moves tabs that do not fit behind a "..." menu */
  .tab-container button { padding: 0 7px !important; font-size: 14px !important; }
}
#c-status td, #c-status th { white-space: nowrap; padding: 4px 8px; }
"""
# Number boxes commit on Enter or when they lose focus, not on every keystroke: while "9999" or "12.7" is
# being typed, no half-typed value is sent (and refused) on the way. Sliders' number boxes included.
HEAD = """<script>
(() => {
  const passing = new WeakSet();
  const numberBox = (el) => el instanceof HTMLInputElement && el.type === "number";
  window.addEventListener("input", (e) => {
    if (numberBox(e.target) && !passing.has(e)) e.stopImmediatePropagation();
  }, true);
  window.addEventListener("change", (e) => {
    if (!numberBox(e.target)) return;
    const commit = new Event("input", {bubbles: true});
    passing.add(commit);
    e.target.dispatchEvent(commit);
  }, true);
})();
</script>"""


SHOW_GIF_JS = "() => { document.getElementById('r-gif')?.classList.add('gif-shown'); }"
HIDE_GIF_JS = "(...inputs) => { document.getElementById('r-gif')?.classList.remove('gif-shown'); return inputs; }"


def pick_brush_js(elem_id: str) -> str:
    """JS for a Draw tab's select event: pick the Sketchpad's brush once, so strokes paint at once."""
    return f"""() => {{
  const pick = (tries) => {{
    const pad = document.getElementById("{elem_id}");
    const brush = pad && pad.querySelector('button[aria-label="Brush"]');
    if (brush && brush.offsetParent !== null) {{
      if (!pad.dataset.brushPicked) {{ brush.click(); pad.dataset.brushPicked = "1"; }}
    }} else if (tries < 60) setTimeout(() => pick(tries + 1), 50);
  }};
  pick(0);
}}"""


THEME = gr.themes.Soft(primary_hue="violet", secondary_hue="amber")
# Gradio keeps ~200 KB of bookkeeping per session (plus our gr.State) for its 10,000 most recent sessions by
# default, ~2 GB at capacity; 1,000 bounds the server's memory (the least recently used session is dropped).
# The footer keeps "Use via API": the page's own guide to the endpoints below.
LAUNCH_KWARGS = dict(css=CSS, head=HEAD, theme=THEME, max_file_size="10mb", state_session_capacity=1000,
                     footer_links=["api", "gradio", "settings"])


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
def saved(picture: np.ndarray | Image.Image, name: str, scale: int = 1) -> str:
    """A picture for a gr.Image output, written as a PNG file named for what it shows.

    A file path, not a PIL image: Gradio copies a path into its cache under the file's own name
    (so "Download" saves x_t-hero-t125.png, not image.png) and does so atomically, so identical
    pictures served at the same moment never share a half-written file. Upscaled crisply here.
    """
    im = picture if isinstance(picture, Image.Image) else upscale(np.ascontiguousarray(picture), scale)
    return ix.write_named(png_bytes(im), name)


def user_errors(fn: Callable) -> Callable:
    """Turn the library's ValueError/DataError (messages written for users) into gr.Error.

    The page's events run with show_progress="hidden" (or show progress on a status line only), so an
    error shows as a message while every picture stays as it was."""
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


def weight_name(class_name: str) -> str:
    """The API parameter for a class's mix weight: hero -> hero_weight."""
    return re.sub(r"\W+", "_", class_name).strip("_").lower() + "_weight"


def with_mix_parameters(fn: Callable, classes: list[str]) -> Callable:
    """fn(..., *mix) with one named parameter per class in its signature, which is what Gradio lists
    for programs (hero_weight, creature_weight, ... instead of param_7, param_8, ...)."""
    sig = inspect.signature(fn)
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    mix = [inspect.Parameter(weight_name(c), inspect.Parameter.POSITIONAL_OR_KEYWORD) for c in classes]
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def named(*args):
            yield from fn(*args)
    else:
        @functools.wraps(fn)
        def named(*args):
            return fn(*args)
    named.__signature__ = sig.replace(parameters=fixed + mix)
    return named


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

    FORWARD_SEED, REMIX_SEED = 0, 1  # the model sprites the Forward and Remix tabs open with

    def __init__(self, model: torch.nn.Module, schedule, device: torch.device, source: str,
                 palette: np.ndarray | None = None, precision: str = "fp32", refiner: Refiner | None = None,
                 refiner_source: str | None = None):
        self.model, self.schedule, self.device, self.source = model, schedule, device, source
        # a second model for the low-noise steps (ddpm.sampling.Refiner; sample_steps checks it against the
        # model), and where it was loaded from
        self.refiner, self.refiner_source = refiner, refiner_source
        self.precision = precision  # what the network runs in while sampling (ddpm.device.PRECISIONS)
        self.palette = palette  # the training data's colours (palette.json), or None
        self.classes = list(model.class_names)
        self.T, self.height = schedule.T, model.height
        self.chart = schedule_chart(schedule)
        self._sprites: dict[tuple[str, int], np.ndarray] = {}
        self._opening: dict | None = None
        self._opening_lock = threading.Lock()

    # --- shared -------------------------------------------------------------------------------
    def model_sprite(self, cls: str, seed: Any) -> np.ndarray:
        """The model's sprite for a class and seed (deterministic, so each is computed once)."""
        seed = lim.check_seed(seed)
        cls = check_class(self.classes, cls)
        if (cls, seed) not in self._sprites:
            rows = ix.generate(self.model, self.schedule, self.classes, cls, 1, DEFAULT_SAMPLER, DEFAULT_STEPS,
                               DEFAULT_GUIDANCE, seed, self.precision, refiner=self.refiner)
            if len(self._sprites) > 1000:
                self._sprites.clear()
            self._sprites[cls, seed] = ix.maybe_snap(rows[0][0], self.palette, True)
        return self._sprites[cls, seed]

    def sprite_in(self, picture: Any, default_seed: int) -> np.ndarray:
        """The sprite a picture input holds; the tab's opening sprite when a program sends none."""
        if picture is None:
            return self.model_sprite(self.classes[0], default_seed)
        return ix.sprite_from_picture(picture, self.height)

    def opening(self) -> dict[str, Any]:
        """What every tab shows when the page opens, computed once and then served from memory:
        the same pictures for every visitor, so a page open costs no model work."""
        with self._opening_lock:
            if self._opening is None:
                c0 = self.classes[0]
                mix = [1.0 if i == 0 else 0.0 for i in range(len(self.classes))]
                remix_source = self.remix_sprite(c0, self.REMIX_SEED)
                self._opening = dict(
                    forward=self.forward_sprite(c0, self.FORWARD_SEED, self.T // 4, 0, False),
                    reverse=self.reverse_reset(None, c0, REVERSE_DEFAULT_N, 0, DEFAULT_SAMPLER, DEFAULT_STEPS,
                                               DEFAULT_GUIDANCE, *mix)[1:],
                    generate=list(self.generate(ALL_CLASSES, GENERATE_DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_STEPS,
                                                DEFAULT_GUIDANCE, 0, False))[-1],
                    remix_source=remix_source,
                    remix=self.remix(self.model_sprite(c0, self.REMIX_SEED), self.remix_class(), REMIX_DEFAULT_STRENGTH, DEFAULT_SAMPLER,
                                     DEFAULT_STEPS, DEFAULT_GUIDANCE, 0),
                    model=self.model_info())
            return self._opening

    def remix_class(self) -> str:
        return self.classes[min(2, len(self.classes) - 1)]

    # --- 1. forward process -------------------------------------------------------------------
    def _forward(self, sprite: np.ndarray, source_name: str, t, noise_seed, show_model, cls):
        return (saved(sprite, f"x0-{source_name}.png", BIG),) + self._view(sprite, t, noise_seed, show_model, cls)

    @user_errors
    def forward_sprite(self, cls, seed, t, noise_seed, show_model):
        """A new sprite from the model, and x_t for it."""
        sprite = self.model_sprite(cls, seed)
        return self._forward(sprite, f"{cls}-seed{int(seed)}", t, noise_seed, show_model, cls)

    @user_errors
    def forward_upload(self, upload, t, noise_seed, show_model, cls):
        """An uploaded image as the sprite (centre-cropped, shrunk), and x_t for it."""
        return self._forward(ix.sprite_from_upload(upload, self.height), "upload", t, noise_seed, show_model, cls)

    @user_errors
    def forward_draw(self, drawing, t, noise_seed, show_model, cls):
        """A drawing as the sprite, and x_t for it."""
        return self._forward(ix.sprite_from_drawing(drawing, self.height), "drawing", t, noise_seed, show_model, cls)

    @user_errors
    def forward_view(self, sprite, t, noise_seed, show_model, cls):
        """x_t of a sprite (any image; the page sends the x₀ on screen) at time t: the picture, a line of
        numbers, the marked chart, and with show_model the model's predicted noise and x₀."""
        t = lim.check_number(t, "t", 0, self.T, integer=True)
        return self._view(self.sprite_in(sprite, self.FORWARD_SEED), t, noise_seed, show_model, cls)

    def _view(self, sprite: np.ndarray, t, noise_seed, show_model, cls):
        t = lim.check_number(t, "t", 0, self.T, integer=True)
        noise_seed = lim.check_seed(noise_seed, "noise seed")
        cls = check_class(self.classes, cls)
        context = context_for(self.classes, cls, 1) if show_model else None
        v = ix.forward_view(self.schedule, sprite, t, noise_seed, self.model if show_model else None, context,
                            self.refiner)
        info = (f"t = {t} of {self.T} · signal kept ᾱₜ = {fmt(v.abar)} · "
                f"noise level √(1−ᾱₜ) = {fmt(v.noise_level)} · SNR = {fmt(v.snr)}")
        eps = saved(v.eps_pred, f"predicted-noise-{cls}-t{t}.png", BIG) if v.eps_pred is not None else None
        x0 = saved(v.x0_pred, f"predicted-x0-{cls}-t{t}.png", BIG) if v.x0_pred is not None else None
        return (saved(v.x_t, f"x_t-{cls}-t{t}.png", BIG), info, saved(self.chart.marked(t), f"schedule-t{t}.png"),
                eps, x0)

    # --- 2. reverse process -------------------------------------------------------------------
    def _reverse_settings(self, cls, mix, n, seed, sampler, steps, guidance) -> dict:
        return dict(cls=check_class(self.classes, cls, (MIX,)),
                    mix=[lim.check_number(w, f"the weight of {c}", 0, 1) for c, w in zip(self.classes, mix)],
                    n=lim.check_batch(n, "sprites", lim.MAX_SPRITES),
                    seed=lim.check_seed(seed),
                    sampler=sampler_key(sampler),
                    steps=lim.check_steps(steps, self.T),
                    guidance=lim.check_guidance(guidance))

    def _new_run(self, s: dict) -> ix.ReverseRun:
        context = context_for(self.classes, s["cls"], s["n"], s["mix"])
        return ix.start_reverse(self.model, self.schedule, context, s["sampler"], s["steps"], s["guidance"],
                                s["seed"], self.precision, refiner=self.refiner, cls=s["cls"], mix=s["mix"], n=s["n"])

    def _run_for(self, run: ix.ReverseRun | None, cls, n, seed, sampler, steps, guidance,
                 mix) -> tuple[ix.ReverseRun, bool]:
        """The session's run, or a fresh one when there is none or the settings changed."""
        if len(mix) != len(self.classes):
            raise ValueError(f"expected one mix weight per class ({len(self.classes)}), got {len(mix)}")
        s = self._reverse_settings(cls, mix, n, seed, sampler, steps, guidance)
        if isinstance(run, ix.ReverseRun) and run.settings == s:
            return run, False
        return self._new_run(s), True

    def _reverse_outputs(self, run: ix.ReverseRun, step: int | None = None, note: str = ""):
        """(run, x_t grid, predicted x₀ grid, predicted noise grid, step shown, status line)."""
        f = run.frame_at(step)
        s = run.settings
        what = "mix" if s["cls"] == MIX else s["cls"]
        last = f is run.frames[-1]
        # "part-way", not "denoising": the same line stays on screen after Stop
        state = ("done ✨" if run.done and last else
                 "pure noise" if f.step == 0 else "part-way (Step or Run to go on)")
        status = (f"Step {f.step} / {run.total} · t = {f.t} · {state} · "
                  f"{SAMPLER_NAMES[s['sampler']]}, guidance {s['guidance']:g}, class {what}")
        if run.done and last and len(run.frames) > 1:
            status += (f"\n\nAt t = 0 no noise is left to predict: the x₀ and ε̂ panels show the model's last "
                       f"prediction, made at t = {run.frames[-2].t}.")
        if note:
            status += f"\n\n{note}"
        name = f"reverse-{what}-step{f.step}"
        return (run, saved(ix.grid(f.x_t, scale=1), f"{name}.png", GRID),
                saved(ix.grid(f.x0, scale=1), f"{name}-predicted-x0.png", GRID),
                saved(ix.grid(f.eps, scale=1), f"{name}-predicted-noise.png", GRID), f.step, status)

    @user_errors
    def reverse_reset(self, run, cls, n, seed, sampler, steps, guidance, *mix):
        """Start over from pure noise x_T (the model's first predictions shown)."""
        run, _ = self._run_for(None, cls, n, seed, sampler, steps, guidance, mix)
        return self._reverse_outputs(run)

    @user_errors
    def reverse_step(self, run, cls, n, seed, sampler, steps, guidance, *mix):
        """One reverse step of this session's run (a new run when the settings changed)."""
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
    def reverse_scrub(self, run, timeline):
        """Show the run as it was after `timeline` steps (the nearest kept frame at or before it)."""
        if not isinstance(run, ix.ReverseRun):
            raise ValueError("nothing to scrub yet: press Step or Run first")
        step = lim.check_number(timeline, "timeline position", 0, self.T, integer=True)
        return self._reverse_outputs(run, step)

    @user_errors
    def reverse_gif(self, run):
        """The run so far as an animated GIF."""
        if not isinstance(run, ix.ReverseRun) or len(run.frames) < 2:
            raise ValueError("no steps taken yet: press Step or Run first")
        what = "mix" if run.settings["cls"] == MIX else run.settings["cls"]
        return ix.write_named(ix.trajectory_gif(run.frames), f"reverse-{what}-trajectory.gif")

    # --- 3. generate ----------------------------------------------------------------------------
    @user_errors
    def generate(self, cls, n, sampler, steps, guidance, seed, transparent, snap=True):
        """Sprites of one class or one row per class; streams the model's current guess as it samples,
        then the sprites, the sprite sheet (1 px per pixel) and a caption."""
        cls = check_class(self.classes, cls, (ALL_CLASSES,))
        steps = lim.check_steps(steps, self.T)
        what = "all" if cls == ALL_CLASSES else cls
        every = max(1, steps // 10)  # about ten progress pictures per run
        for done, total, rows in ix.generate_steps(self.model, self.schedule, self.classes, cls, n,
                                                   sampler_key(sampler), steps, guidance, seed, self.precision,
                                                   refiner=self.refiner):
            if done < total:
                if done % every == 0:
                    yield (saved(sprite_sheet(rows, scale=GRID, pad=1), f"sprites-{what}-step{done}.png"), None,
                           f"Sampling… step {done} / {total} (the model's current guess)")
                continue
            rows = [ix.maybe_snap(r, self.palette, bool(snap)) for r in rows]
            sheet = sprite_sheet(rows, scale=1, pad=0, transparent=bool(transparent))
            names = self.classes if cls == ALL_CLASSES else [cls]
            caption = " · ".join(f"row {i + 1}: {name}" for i, name in enumerate(names))
            yield (saved(sprite_sheet(rows, scale=GRID, pad=1), f"sprites-{what}-seed{int(seed)}.png"),
                   ix.write_named(png_bytes(sheet), f"sprite-sheet-{what}.png"), caption)

    # --- 4. remix -------------------------------------------------------------------------------
    @user_errors
    def remix_sprite(self, cls, seed):
        """A model sprite as the remix source."""
        return saved(self.model_sprite(cls, seed), f"sprite-{cls}-seed{int(seed)}.png", BIG)

    @user_errors
    def remix_upload(self, upload):
        """An uploaded image as the remix source."""
        return saved(ix.sprite_from_upload(upload, self.height), "sprite-upload.png", BIG)

    @user_errors
    def remix_draw(self, drawing):
        """A drawing as the remix source."""
        return saved(ix.sprite_from_drawing(drawing, self.height), "sprite-drawing.png", BIG)

    @user_errors
    def remix(self, sprite, cls, strength, sampler, steps, guidance, seed, snap=True):
        """SDEdit a sprite (any image; the page sends the source on screen) toward another class:
        the result, the trajectory strip and a line saying what was done."""
        cls = check_class(self.classes, cls)
        source = self.sprite_in(sprite, self.REMIX_SEED)
        r = ix.remix(self.model, self.schedule, source, context_for(self.classes, cls, 1), strength,
                     sampler_key(sampler), steps, guidance, seed, self.precision, refiner=self.refiner)
        result = ix.maybe_snap(r.result, self.palette, bool(snap))
        # the trajectory: at most 8 evenly spaced frames from the noised start to the result
        keep = np.unique(np.linspace(0, len(r.frames) - 1, min(8, len(r.frames))).round().astype(int))
        frames = [r.frames[k] for k in keep[:-1]] + [result]
        strip = sprite_sheet([np.stack([source] + frames)], scale=GRID, pad=1)
        strength = r.t_start / self.T
        info = (f"Noised to t = {r.t_start} of {self.T} (strength {strength:.2f}), then "
                f"{r.steps} steps of {SAMPLER_NAMES[sampler]} as {cls}. "
                "Below: the source, the noised start, …, the result.")
        return (saved(result, f"remix-as-{cls}-strength{strength:.2f}.png", BIG),
                saved(strip, f"remix-trajectory-as-{cls}.png"), info)

    # --- 5. model -------------------------------------------------------------------------------
    def _refiner_line(self) -> str:
        r = self.refiner
        head = r.model.config_dict.get("output_palette")
        return (f"- **Refiner:** `{self.refiner_source}` predicts the steps at t <= {r.t_max}: "
                f"{sum(p.numel() for p in r.model.parameters()):,} parameters, n_feat {r.model.n_feat}, "
                f"predicting `{r.schedule.prediction}`" + (f" through a palette head of {len(head)} colours" if head else ""))

    def model_info(self) -> str:
        try:
            folder = resolve(self.source, local_files_only=True)
        except CheckpointError:
            folder = None
        params = sum(p.numel() for p in self.model.parameters())
        lines = [
            "### This model",
            f"- **Loaded from:** `{self.source}`" + (f" (`{folder}`)" if folder and str(folder) != self.source else ""),
            f"- **Device:** `{self.device}`, network in {self.precision} · torch {torch.__version__} · gradio {gr.__version__}",
            f"- **Classes ({len(self.classes)}):** " + ", ".join(f"`{c}`" for c in self.classes),
            f"- **Parameters:** {params:,}",
            f"- **Noise schedule:** `{json.dumps(self.schedule.config())}`",
            f"- **Network config:** `{json.dumps(self.model.config_dict)}`",
            *([self._refiner_line()] if self.refiner else []),
            "- **Palette:** " + (f"{len(self.palette)} colours (palette.json); final sprites are snapped to them"
                                  if self.palette is not None else "none (raw colours)"),
            f"- **Defaults:** {SAMPLER_NAMES[DEFAULT_SAMPLER]}, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE:g}",
        ]
        card = ""
        if folder and (folder / "README.md").is_file():
            card = card_for_display((folder / "README.md").read_text(errors="replace"), folder)
        info = "\n".join(lines)
        if not card:
            return info + "\n\n*No model card (README.md) in the model folder.*"
        return info + "\n\n---\n\n### Model card\n\n" + card


# --- the page ----------------------------------------------------------------------------------
def refuse_nan(payload: Any, name: str) -> None:
    """Gradio's own checks let NaN through to its int rounding, which fails without a message."""
    if isinstance(payload, float) and math.isnan(payload):
        try:
            lim.check_number(payload, name, -math.inf, math.inf)
        except ValueError as e:
            raise gr.Error(str(e)) from None


def whole(component: gr.Slider | gr.Number, name: str) -> gr.Slider | gr.Number:
    """A slider or number box of whole numbers (made with precision=0, so programs see an int) whose
    NaN gets the library's one-line message. Wrapped on the instance: a subclass of a Gradio
    component would make Gradio write a .pyi stub next to this file."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        refuse_nan(payload, name)
        return original(payload)

    component.preprocess = preprocess
    return component


def sampler_controls(prefix: str, T: int, steps: int = DEFAULT_STEPS):
    sampler = gr.Radio(SAMPLERS, value=DEFAULT_SAMPLER, label="Sampler", elem_id=f"{prefix}-sampler",
                       info="DDPM: the best measured quality at 50 steps; with the course's variance β it leaves more "
                            "speckle at few steps. DDIM and DPM-Solver++: deterministic, usable from 8 steps.")
    steps = whole(gr.Slider(1, T, value=steps, step=1, precision=0, label="Steps", elem_id=f"{prefix}-steps"), "steps")
    guidance = gr.Slider(0, lim.MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance (classifier-free)",
                         info="0 = plain conditional model; higher = more typical of the class",
                         elem_id=f"{prefix}-guidance")
    return sampler, steps, guidance


def seed_box(value: int, label: str, elem_id: str, **kwargs) -> gr.Number:
    return whole(gr.Number(value, step=1, precision=0, minimum=0, maximum=lim.MAX_SEED, label=label, elem_id=elem_id,
                           **kwargs), label.lower())


def caption(text: str) -> gr.Markdown:
    """A title above a picture: Gradio's own label badge would sit on top of the sprite."""
    return gr.Markdown(text, elem_classes=["caption"])


def pixel_image(label: str, elem_id: str, value: Any = None, height: int | None = None, **kwargs) -> gr.Image:
    """A crisp picture with no badge on it; its buttons (if any) sit below it (CSS)."""
    kwargs.setdefault("buttons", ["download", "fullscreen"])
    return gr.Image(value, label=label, show_label=False, format="png", interactive=False, height=height,
                    type="numpy", image_mode="RGB", elem_classes=["pixelated"], elem_id=elem_id, **kwargs)


def source_picker(lab: SpriteLab, prefix: str, default_class: str, default_seed: int):
    """Three ways to choose a sprite: from the model, an upload, or a drawing."""
    with gr.Tabs(elem_id=f"{prefix}-source-tabs", overflow_behavior="wrap"):
        with gr.Tab("🎲 From model", id=f"{prefix}-src-model"):
            cls = gr.Dropdown(lab.classes, value=default_class, label="Class", elem_id=f"{prefix}-src-class")
            seed = seed_box(default_seed, "Seed", f"{prefix}-src-seed")
            new = gr.Button("New sprite", variant="secondary", elem_id=f"{prefix}-src-new")
        with gr.Tab("📁 Upload", id=f"{prefix}-src-upload"):
            upload = gr.File(label="Upload an image (centre-cropped and shrunk to the model's size)",
                             file_types=["image"], type="filepath", height=120, elem_id=f"{prefix}-upload")
        with gr.Tab("✏️ Draw", id=f"{prefix}-src-draw") as draw_tab:
            draw = gr.Sketchpad(canvas_size=(256, 256), type="numpy", image_mode="RGBA", layers=False,
                                transforms=(), brush=gr.Brush(default_size=16, colors=PALETTE, default_color=PALETTE[6]),
                                label="Draw a sprite (one brush dab ≈ one pixel)", elem_id=f"{prefix}-draw",
                                elem_classes=["pixelated"])
            use = gr.Button("Use this drawing", variant="secondary", elem_id=f"{prefix}-draw-use")
    draw_tab.select(None, None, None, js=pick_brush_js(f"{prefix}-draw"))
    return cls, seed, new, upload, draw, use


# --- 6. compare: a sampler race, a guidance sweep, morphs ------------------------------------------
RACE_OFF = "none"
RACE_CHOICES = SAMPLERS + [("— (no column)", RACE_OFF)]
RACE_LABELS = {"ddpm": "DDPM", "ddpm-beta": "DDPM β", "ddim": "DDIM", "dpm++": "DPM-Solver++",  # short: phones
               "dpm++sde": "DPM++ SDE"}
RACE_FPS = 20  # a long race streams at most this many pictures a second; every tick is still in the GIF
SWEEP_DEFAULT_VALUES = ", ".join(f"{g:g}" for g in cp.DEFAULT_GUIDANCES)
MORPH_SAMPLERS = [(name, key) for name, key in SAMPLERS if key in cp.MORPH_SAMPLERS]
MORPH_DEFAULT_FRAMES, MORPH_DEFAULT_STEPS = 16, 25


class CompareLab:
    """The Compare tab's handlers: what one choice changes, everything else held fixed (ddpm.compare)."""

    def __init__(self, lab: SpriteLab):
        self.lab = lab

    @property
    def classes(self) -> list[str]:
        return self.lab.classes

    def _common(self, cls: Any, seed: Any, guidance: Any) -> tuple[str, int, float]:
        return (check_class(self.classes, cls), lim.check_seed(seed),
                lim.check_guidance(guidance))

    # --- the race -------------------------------------------------------------------------------
    def _race_for(self, race, cls, seed, guidance, slots) -> cp.SamplerRace:
        """This visitor's race, or a new one at tick 0 when there is none or a setting changed."""
        cls, seed, guidance = self._common(cls, seed, guidance)
        pairs = [(s, n) for s, n in zip(slots[0::2], slots[1::2]) if s != RACE_OFF]
        entries = cp.check_racers([(sampler_key(s), n) for s, n in pairs], self.lab.T)
        settings = dict(cls=cls, seed=seed, guidance=guidance, entries=entries)
        if isinstance(race, cp.SamplerRace) and race.settings == settings:
            return race
        lab = self.lab
        return cp.SamplerRace(lab.model, lab.schedule, context_for(self.classes, cls, 1), entries, guidance, seed,
                              lab.precision, settings=settings, refiner=lab.refiner)

    def _race_outputs(self, race: cp.SamplerRace, note: str = ""):
        f, s = race.frames[-1], race.settings
        status = (f"**Tick {f.tick} / {f.ticks}** · {s['cls']}, seed {s['seed']}, guidance {s['guidance']:g} · "
                  + ("finished ✨" if f.done else "pure noise" if f.tick == 0 else "racing…"))
        # each column's network passes so far: one ahead of its steps until it is done (ddpm.compare._Racer)
        rows = "\n".join(f"| {RACE_LABELS[c.sampler]} | {c.taken}/{c.steps} | {c.t} | {c.seconds:.2f} s | "
                         f"{1000 * c.seconds / min(c.taken + 1, c.steps):.0f} ms |" for c in f.columns)
        status += "\n\n| sampler | step | t | time | per step |\n|---|---|---|---|---|\n" + rows
        files, stem = None, f"race-{s['cls']}-seed{s['seed']}"
        if f.done:
            files = [ix.write_named(png_bytes(cp.race_picture(f)), f"{stem}.png"),
                     ix.write_named(cp.race_gif(race.frames), f"{stem}.gif")]
        if note:
            status += f"\n\n{note}"
        return race, saved(cp.race_picture(f), f"{stem}-tick{f.tick}.png"), status, files

    # Reset and Step are the page's (private endpoints): their slots stay positional. compare_samplers is
    # public, so every parameter is named: Gradio takes the API's parameter names from the signature.
    @user_errors
    def compare_reset(self, race, cls, seed, guidance, *slots):
        return self._race_outputs(self._race_for(None, cls, seed, guidance, slots))

    @user_errors
    def compare_step(self, race, cls, seed, guidance, *slots):
        race = self._race_for(race, cls, seed, guidance, slots)
        with race.lock:
            if race.done:
                return self._race_outputs(race, "Finished: press Reset (or change a setting) to start over.")
            race.advance()
        return self._race_outputs(race)

    @user_errors
    def compare_samplers(self, race, cls, seed, guidance, sampler_1, steps_1, sampler_2, steps_2,
                         sampler_3, steps_3, sampler_4, steps_4):
        """Race the samplers to t = 0, streaming the columns; a finished race is run again from noise."""
        slots = (sampler_1, steps_1, sampler_2, steps_2, sampler_3, steps_3, sampler_4, steps_4)
        race = self._race_for(race, cls, seed, guidance, slots)
        if race.done:
            race = self._race_for(None, cls, seed, guidance, slots)
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
    def guidance_sweep(self, cls, seed, rows, guidance_values, sampler, steps):
        """One column per guidance value, streamed as each finishes; rows are seeds seed, seed + 1, ..."""
        cls, seed, _ = self._common(cls, seed, 0)
        seeds = cp.sweep_seeds(seed, rows)
        values = cp.parse_numbers(guidance_values, "guidance values", 0, lim.MAX_GUIDANCE, cp.MAX_SWEEP_VALUES)
        sampler = sampler_key(sampler)
        steps = lim.check_steps(steps, self.lab.T)
        lab, cols = self.lab, [None] * len(values)
        what = f"{cls}, {SAMPLER_NAMES[sampler]} {steps} steps, seed{'s' if len(seeds) > 1 else ''} " + \
               ", ".join(map(str, seeds))
        name = f"guidance-sweep-{cls}-seed{seed}.png"
        yield saved(cp.sweep_picture(cols, values, seeds, height=lab.height), name), \
            f"Sampling guidance {values[0]:g}… · {what}", None
        sweep = cp.guidance_sweep(lab.model, lab.schedule, context_for(self.classes, cls, 1), values, seeds,
                                  sampler, steps, lab.precision, refiner=lab.refiner)
        for j, sprites in sweep:
            cols[j] = sprites
            if j + 1 < len(values):
                yield saved(cp.sweep_picture(cols, values, seeds), name), \
                    f"Sampling guidance {values[j + 1]:g}… ({j + 1} of {len(values)} done) · {what}", None
        pic = cp.sweep_picture(cols, values, seeds)
        path = saved(pic, name)
        yield path, f"**Guidance {', '.join(f'{v:g}' for v in values)}** · {what}", [path]

    # --- morphs -----------------------------------------------------------------------------------
    @user_errors
    def morph(self, class_a, class_b, seed_a, seed_b, frames, sampler, steps, guidance):
        class_a, class_b = (check_class(self.classes, c) for c in (class_a, class_b))
        guidance = lim.check_guidance(guidance)
        lab = self.lab
        m = cp.morph(lab.model, lab.schedule, self.classes, class_a, class_b, seed_a, seed_b, frames, sampler, steps,
                     guidance, lab.precision, refiner=lab.refiner)
        ends = f"{class_a} seed {int(seed_a)} → {class_b} seed {int(seed_b)}"
        stem = f"morph-{class_a}-{int(seed_a)}-to-{class_b}-{int(seed_b)}"
        strip = saved(cp.morph_picture(m), f"{stem}.png")
        gif = ix.write_named(cp.morph_gif(m), f"{stem}.gif")
        how = {"seeds": "the starting noise slerps from one seed's to the other's",
               "classes": "the class weights slide from one class to the other",
               "seeds and classes": "the noise slerps and the class weights slide together",
               "nothing": "both ends are the same: choose another seed or class for one end"}[m.what]
        status = (f"**{len(m.frames)} frames**, {ends}: {how} · {SAMPLER_NAMES[sampler_key(sampler)]}, "
                  f"{int(steps)} steps, guidance {guidance:g}")
        return strip, gif, status, [strip, gif]

    # --- what the page shows on open: computed once, served from memory -------------------------
    def opening(self) -> dict[str, tuple]:
        """The three views' opening outputs: the start values of the tab, so a page open costs nothing."""
        c = self.classes
        return dict(race=self.compare_reset(None, c[0], 0, DEFAULT_GUIDANCE, *[v for e in cp.DEFAULT_RACE for v in e])[1:],
                    sweep=list(self.guidance_sweep(c[0], 0, 1, SWEEP_DEFAULT_VALUES, DEFAULT_SAMPLER, DEFAULT_STEPS))[-1],
                    morph=self.morph(c[0], c[min(1, len(c) - 1)], 0, 0, MORPH_DEFAULT_FRAMES, "ddim",
                                     MORPH_DEFAULT_STEPS, DEFAULT_GUIDANCE))


def class_and_seed(lab: SpriteLab, elem: str, default_class: str, class_label: str = "Class",
                   seed_label: str = "Seed") -> tuple[gr.Dropdown, gr.Number]:
    """A class and a seed side by side (they stay side by side on a phone)."""
    with gr.Row():
        cls = gr.Dropdown(lab.classes, value=default_class, label=class_label, elem_id=f"{elem}-class", min_width=120)
        seed = gr.Number(0, precision=0, label=seed_label, elem_id=f"{elem}-seed", min_width=100)
    return cls, seed


def downloads(elem_id: str, files: list[str] | None = None) -> gr.File:
    return gr.File(files, label="downloads", file_count="multiple", interactive=False, elem_id=elem_id)


def compare_tab(lab: SpriteLab, demo: gr.Blocks) -> None:
    """The sixth tab: three side-by-side comparisons, each a public endpoint with a Stop."""
    pix, cl = ["pixelated"], CompareLab(lab)
    opening = cl.opening()
    (race0, race_status0, race_files0), sweep0, morph0 = opening["race"], opening["sweep"], opening["morph"]
    hidden = dict(show_progress="hidden")  # errors keep the pictures, as on the other tabs
    with gr.Tab("Compare", id="compare"):
        with gr.Tabs(elem_id="c-tabs"):
            with gr.Tab("Race", id="c-race-tab"):
                gr.Markdown("Two to four samplers from **the same starting noise**. **Step** moves every sampler to "
                            "the same point of its schedule (the same fraction of the way from t = T to 0); **Run** "
                            "races them to t = 0. **Top row:** x_t now; **bottom row:** the model's predicted x₀ at that "
                            "x_t; under each column its steps, t and wall time so far.")
                race_state = gr.State(None, time_to_live=3600)
                with gr.Row():
                    with gr.Column(scale=1, min_width=280, elem_classes=["settings-col"]):
                        c_cls, c_seed = class_and_seed(lab, "c", lab.classes[0])
                        c_guidance = gr.Slider(0, lim.MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5,
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
                        c_race = gr.Image(race0, label="race", show_label=False, format="png", interactive=False,
                                          elem_classes=pix, elem_id="c-race", buttons=[])
                        c_status = gr.Markdown(race_status0, label="status", elem_id="c-status")
                        c_files = downloads("c-race-files", race_files0)
                race_in = [race_state, c_cls, c_seed, c_guidance] + slots
                race_out = [race_state, c_race, c_status, c_files]
                run_ev = c_run.click(GPU(cl.compare_samplers), race_in, race_out, api_name="compare_samplers",
                                     concurrency_id="model", **hidden)
                step_ev = c_step.click(GPU(cl.compare_step), race_in, race_out, api_visibility="private",
                                       concurrency_id="model", **hidden)
                c_reset.click(GPU(cl.compare_reset), race_in, race_out, api_visibility="private",
                              concurrency_id="model", cancels=[run_ev, step_ev], **hidden)
                c_stop.click(None, None, None, cancels=[run_ev, step_ev], queue=False)

            with gr.Tab("Guidance", id="c-sweep-tab"):
                gr.Markdown("One class, one seed, one row of sprites at each **classifier-free guidance** w. Every "
                            "column starts from the same noise (and with DDPM gets the same noise at every step), so "
                            "only w differs: low w varies more and strays from the class, high w is more typical, "
                            "then overdone. More rows: the next seeds. Raw model colours, not snapped to the palette.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280, elem_classes=["settings-col"]):
                        s_cls, s_seed = class_and_seed(lab, "s", lab.classes[0])
                        s_values = gr.Textbox(SWEEP_DEFAULT_VALUES, label="Guidance values",
                                              info=f"up to {cp.MAX_SWEEP_VALUES}, from 0 to {lim.MAX_GUIDANCE:g}",
                                              elem_id="s-values")
                        s_rows = gr.Slider(1, cp.MAX_SWEEP_ROWS, value=1, step=1, precision=0,
                                           label="Rows (seeds)", elem_id="s-rows")
                        s_sampler = gr.Dropdown(SAMPLERS, value=DEFAULT_SAMPLER, label="Sampler", elem_id="s-sampler")
                        s_steps = gr.Number(DEFAULT_STEPS, precision=0, label="Steps", elem_id="s-steps")
                    with gr.Column(scale=2, min_width=300):
                        with gr.Row():
                            s_go = gr.Button("Sweep 🎚", variant="primary", elem_id="s-go", min_width=80)
                            s_stop = gr.Button("Stop ■", variant="stop", elem_id="s-stop", min_width=80)
                        s_pic = gr.Image(sweep0[0], label="sweep", show_label=False, format="png", interactive=False,
                                         elem_classes=pix, elem_id="s-sweep", buttons=[])
                        s_status = gr.Markdown(sweep0[1], label="status", elem_id="s-status")
                        s_files = downloads("s-files", sweep0[2])
                sweep_out = [s_pic, s_status, s_files]
                sweep_ev = s_go.click(GPU(cl.guidance_sweep), [s_cls, s_seed, s_rows, s_values, s_sampler, s_steps],
                                      sweep_out, api_name="guidance_sweep", concurrency_id="model", **hidden)
                s_stop.click(None, None, None, cancels=[sweep_ev], queue=False)

            with gr.Tab("Morph", id="c-morph-tab"):
                gr.Markdown("From one sprite to another. **Two seeds** (same class): the starting noise travels a "
                            "great circle (slerp) from one seed's noise to the other's. **Two classes** (same seed): "
                            "the class weights slide from one to the other. Both differ: both at once. A "
                            "deterministic sampler turns each noise into one sprite, so neighbouring frames stay close; "
                            "the end frames are exactly the two ends sampled on their own.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280, elem_classes=["settings-col"]):
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
                            o_guidance = gr.Slider(0, lim.MAX_GUIDANCE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance",
                                                   elem_id="o-guidance", min_width=160)
                    with gr.Column(scale=2, min_width=300):
                        with gr.Row():
                            o_go = gr.Button("Morph 🔀", variant="primary", elem_id="o-go", min_width=80)
                            o_stop = gr.Button("Stop ■", variant="stop", elem_id="o-stop", min_width=80)
                        with gr.Row():
                            o_gif = gr.Image(morph0[1], label="morph_gif", show_label=False, interactive=False, height=256,
                                             elem_classes=pix, elem_id="o-gif", buttons=[], min_width=200, scale=1)
                            o_strip = gr.Image(morph0[0], label="morph_strip", show_label=False, format="png", interactive=False,
                                               elem_classes=pix, elem_id="o-strip", buttons=[], min_width=280, scale=2)
                        o_status = gr.Markdown(morph0[2], label="status", elem_id="o-status")
                        o_files = downloads("o-files", morph0[3])
                morph_out = [o_strip, o_gif, o_status, o_files]
                morph_ev = o_go.click(GPU(cl.morph), [o_cls_a, o_cls_b, o_seed_a, o_seed_b, o_frames, o_sampler,
                                                      o_steps, o_guidance], morph_out, api_name="morph",
                                      concurrency_id="model", **hidden)
                o_stop.click(None, None, None, cancels=[morph_ev], queue=False)


def build_demo(lab: SpriteLab) -> gr.Blocks:
    T = lab.T
    opening = lab.opening()  # computed once per model, then every page open is served from memory
    f0, r0, g0, m0 = opening["forward"], opening["reverse"], opening["generate"], opening["remix"]
    hidden = dict(show_progress="hidden")  # errors keep the pictures; a message says what went wrong
    # delete_cache: every 5 minutes, remove cached outputs older than 30 minutes (never the opening pictures)
    with gr.Blocks(title="DDPM Sprite Lab", delete_cache=(300, 1800)) as demo:
        gr.Markdown("# 👾 DDPM Sprite Lab\nA small diffusion model that draws 16×16 pixel-art sprites of "
                    f"{len(lab.classes)} classes ({', '.join(lab.classes)}). Watch noise swallow a sprite, step the "
                    "model back out of noise, generate sprite sheets, and remix your own drawings.")
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays one tap away
            # 1 --------------------------------------------------------------------------------
            with gr.Tab("Forward", id="forward"):
                gr.Markdown("Noise is mixed in step by step: **x_t = √ᾱₜ · x₀ + √(1−ᾱₜ) · ε**. Drag **t**.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        f_cls, f_seed, f_new, f_upload, f_draw, f_use = source_picker(lab, "f", lab.classes[0],
                                                                                      lab.FORWARD_SEED)
                        caption("x₀ (clean): the sprite")
                        f_x0 = pixel_image("x0", "f-x0", f0[0], height=200, buttons=["download"])
                    with gr.Column(scale=2):
                        with gr.Row():
                            with gr.Column(min_width=260):
                                caption("x_t (noised)")
                                f_xt = pixel_image("x_t", "f-xt", f0[1], height=300)
                            with gr.Column(visible=False, min_width=160) as f_model_col:
                                caption("the model's predicted noise ε̂")
                                f_eps = pixel_image("predicted noise", "f-eps", height=130, buttons=["download"])
                                caption("the model's predicted x₀")
                                f_x0p = pixel_image("predicted x0", "f-x0pred", height=130, buttons=["download"])
                        f_t = whole(gr.Slider(0, T, value=T // 4, step=1, precision=0,
                                              label="t (time step: 0 = clean, T = pure noise)", elem_id="f-t"), "t")
                        f_info = gr.Markdown(f0[2], label="info", elem_classes=["info-line"], elem_id="f-info")
                        with gr.Row():
                            f_noise = seed_box(0, "Noise seed", "f-noise",
                                               info="the same ε at every t, so the picture changes smoothly")
                            f_show = gr.Checkbox(False, label="Show what the model sees at this t", elem_id="f-show")
                        f_chart = gr.Image(f0[3], label="schedule chart", format="png", interactive=False,
                                           height=270, elem_id="f-chart", show_label=False, buttons=["download"])
                view_out = [f_xt, f_info, f_chart, f_eps, f_x0p]
                src_out = [f_x0] + view_out
                f_new.click(GPU(lab.forward_sprite), [f_cls, f_seed, f_t, f_noise, f_show], src_out,
                            api_name="forward_sprite", concurrency_id="model", **hidden)
                f_upload.upload(GPU(lab.forward_upload), [f_upload, f_t, f_noise, f_show, f_cls], src_out,
                                api_name="forward_upload", concurrency_id="model", **hidden)
                f_use.click(GPU(lab.forward_draw), [f_draw, f_t, f_noise, f_show, f_cls], src_out,
                            api_name="forward_draw", concurrency_id="model", **hidden)
                view_in = [f_x0, f_t, f_noise, f_show, f_cls]  # the sprite is the x₀ on screen: no hidden state
                # "always_last": while dragging, a value that arrives during an update is queued, so the final
                # position is always rendered; hidden progress keeps the picture from flashing.
                f_t.change(GPU(lab.forward_view), view_in, view_out, api_name="forward_view", trigger_mode="always_last",
                           concurrency_limit=4, concurrency_id="preview", **hidden)
                f_noise.change(GPU(lab.forward_view), view_in, view_out, api_visibility="private",
                               concurrency_limit=4, concurrency_id="preview", **hidden)
                f_show.change(lambda show: gr.Column(visible=bool(show)), f_show, f_model_col, api_visibility="private",
                              queue=False).then(GPU(lab.forward_view), view_in, view_out, api_visibility="private",
                                                concurrency_limit=4, concurrency_id="preview", **hidden)

            # 2 --------------------------------------------------------------------------------
            with gr.Tab("Reverse", id="reverse"):
                gr.Markdown("Start from pure noise and let the model remove it, one step at a time. "
                            "**Step** takes one step, **Run** streams to the end, the **timeline** scrubs back.")
                r_run = gr.State(None, time_to_live=3600)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260, elem_classes=["settings-col"]):
                        r_cls = gr.Dropdown(lab.classes + [MIX], value=lab.classes[0], label="Class",
                                            info=f"'{MIX}' blends classes with the weights below", elem_id="r-class")
                        with gr.Accordion("Class mix weights", open=False):
                            r_mix = [gr.Slider(0, 1, value=1.0 if i == 0 else 0.0, step=0.05, label=c,
                                               elem_id=f"r-mix-{i}") for i, c in enumerate(lab.classes)]
                        r_n = whole(gr.Slider(1, lim.MAX_SPRITES, value=REVERSE_DEFAULT_N, step=1, precision=0,
                                              label="Sprites", elem_id="r-n"), "sprites")
                        r_seed = seed_box(0, "Seed", "r-seed")
                        r_sampler, r_steps, r_guidance = sampler_controls("r", T)
                    with gr.Column(scale=3):
                        with gr.Row(equal_height=True):
                            r_step = gr.Button("Step ▶", variant="primary", elem_id="r-step", min_width=80)
                            r_go = gr.Button("Run ⏩", variant="primary", elem_id="r-run", min_width=80)
                            r_stop = gr.Button("Stop ⏹", variant="stop", elem_id="r-stop", min_width=80)
                            r_reset = gr.Button("Reset ↺", elem_id="r-reset", min_width=80)
                        r_status = gr.Markdown(r0[4], label="status", elem_id="r-status")
                        with gr.Row():
                            with gr.Column(scale=2, min_width=300):
                                caption("x_t (now)")
                                r_xt = pixel_image("x_t", "r-xt", r0[0], height=470)
                            with gr.Column(scale=1, min_width=200):
                                caption("predicted x₀ (the model's guess)")
                                r_x0 = pixel_image("predicted x0", "r-x0", r0[1], height=210)
                                caption("predicted noise ε̂")
                                r_eps = pixel_image("predicted noise", "r-eps", r0[2], height=210)
                        r_timeline = whole(gr.Slider(0, DEFAULT_STEPS, value=0, step=1, precision=0,
                                                     label="Timeline (steps taken so far)", elem_id="r-timeline"),
                                           "timeline position")
                        with gr.Row():
                            r_gif_btn = gr.Button("🎞 Make trajectory GIF", elem_id="r-gif-btn", scale=1)
                            r_gif = gr.File(label="Trajectory GIF", interactive=False, elem_id="r-gif", scale=2)
                r_in = [r_run, r_cls, r_n, r_seed, r_sampler, r_steps, r_guidance] + r_mix
                r_out = [r_run, r_xt, r_x0, r_eps, r_timeline, r_status]
                named = functools.partial(with_mix_parameters, classes=lab.classes)
                # Run, Step and Reset hide the previous run's GIF in the browser before they start (js=);
                # making a GIF shows it again.
                run_event = r_go.click(GPU(named(lab.reverse_run)), r_in, r_out, api_name="reverse_run",
                                       concurrency_id="model", js=HIDE_GIF_JS, **hidden)
                r_stop.click(None, None, None, cancels=[run_event])
                # Reset stops a run first, then starts over, so no late step of the old run lands on top
                r_reset.click(None, None, None, cancels=[run_event]).then(
                    GPU(named(lab.reverse_reset)), r_in, r_out, api_name="reverse_reset", concurrency_id="model",
                    js=HIDE_GIF_JS, **hidden)
                r_step.click(GPU(named(lab.reverse_step)), r_in, r_out, api_name="reverse_step", concurrency_id="model",
                             js=HIDE_GIF_JS, **hidden)
                r_steps.change(lambda steps: gr.Slider(maximum=max(1, int(steps or 1))), r_steps, r_timeline,
                               api_visibility="private", queue=False)
                r_timeline.input(lab.reverse_scrub, [r_run, r_timeline], r_out, api_name="reverse_scrub",
                                 api_visibility="undocumented", trigger_mode="always_last", concurrency_limit=4,
                                 concurrency_id="preview", **hidden)
                r_gif_btn.click(lab.reverse_gif, r_run, r_gif, api_name="reverse_gif", api_visibility="undocumented",
                                concurrency_id="model", **hidden).success(
                    None, None, None, js=SHOW_GIF_JS)

            # 3 --------------------------------------------------------------------------------
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=260, elem_classes=["settings-col"]):
                        g_cls = gr.Dropdown([ALL_CLASSES] + lab.classes, value=ALL_CLASSES, label="Class",
                                            info="'all classes' draws one row per class", elem_id="g-class")
                        g_n = whole(gr.Slider(1, lim.MAX_SPRITES, value=GENERATE_DEFAULT_N, step=1, precision=0,
                                              label="How many (per row)", elem_id="g-n"), "how many")
                        g_seed = seed_box(0, "Seed", "g-seed")
                        g_sampler, g_steps, g_guidance = sampler_controls("g", T)
                        g_transparent = gr.Checkbox(False, label="Transparent background in the sheet",
                                                    elem_id="g-transparent")
                        g_snap = gr.Checkbox(True, label="Snap colours to the model's palette",
                                             visible=lab.palette is not None, elem_id="g-snap")
                    with gr.Column(scale=2):
                        with gr.Row(equal_height=True):
                            g_go = gr.Button("Generate ✨", variant="primary", elem_id="g-go", min_width=100)
                            g_stop = gr.Button("Stop ⏹", variant="stop", elem_id="g-stop", min_width=80)
                        g_caption = gr.Markdown(g0[2], label="caption", elem_id="g-caption")
                        g_grid = pixel_image("sprites", "g-grid", g0[0])
                        g_sheet = gr.File(g0[1], label="Sprite sheet PNG (1 px per pixel, ready for a game)",
                                          interactive=False, elem_id="g-sheet", height=80)
                g_in = [g_cls, g_n, g_sampler, g_steps, g_guidance, g_seed, g_transparent, g_snap]
                g_go.click(None, None, g_caption, js="() => 'Starting…'", api_visibility="private")
                gen_event = g_go.click(GPU(lab.generate), g_in, [g_grid, g_sheet, g_caption], api_name="generate",
                                       concurrency_id="model", **hidden)
                g_stop.click(None, None, g_caption, js="() => 'Stopped.'", cancels=[gen_event])

            # 4 --------------------------------------------------------------------------------
            with gr.Tab("Remix", id="remix"):
                gr.Markdown("**SDEdit**: noise a sprite part of the way, then denoise it as another class. "
                            "Low strength keeps the shape; high strength keeps little but the colours.")
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        m_src_cls, m_src_seed, m_new, m_upload, m_draw, m_use = source_picker(
                            lab, "m", lab.classes[0], lab.REMIX_SEED)
                        caption("Source (what Remix uses)")
                        m_src = pixel_image("source", "m-src", opening["remix_source"], height=200,
                                            buttons=["download"])
                    with gr.Column(scale=2):
                        with gr.Row():
                            m_cls = gr.Dropdown(lab.classes, value=lab.remix_class(), label="Remix as", elem_id="m-class")
                            m_strength = gr.Slider(0.05, 1.0, value=REMIX_DEFAULT_STRENGTH, step=0.05, label="Strength",
                                                   info="how far to noise it: 1 = start from pure noise",
                                                   elem_id="m-strength")
                            m_seed = seed_box(0, "Seed", "m-seed")
                        with gr.Accordion("Sampler", open=False):
                            m_sampler, m_steps, m_guidance = sampler_controls("m", T)
                            m_snap = gr.Checkbox(True, label="Snap the result to the model's palette",
                                                 visible=lab.palette is not None, elem_id="m-snap")
                        m_go = gr.Button("Remix 🪄", variant="primary", elem_id="m-go")
                        caption("Result")
                        m_result = pixel_image("result", "m-result", m0[0], height=260)
                        m_info = gr.Markdown(m0[2], label="info", elem_id="m-info")
                        m_traj = pixel_image("trajectory", "m-traj", m0[1], buttons=["download"])
                m_new.click(GPU(lab.remix_sprite), [m_src_cls, m_src_seed], m_src, api_name="remix_sprite",
                            concurrency_id="model", **hidden)
                m_upload.upload(GPU(lab.remix_upload), m_upload, m_src, api_name="remix_upload",
                                concurrency_id="model", **hidden)
                m_use.click(GPU(lab.remix_draw), m_draw, m_src, api_name="remix_draw", concurrency_id="model", **hidden)
                m_in = [m_src, m_cls, m_strength, m_sampler, m_steps, m_guidance, m_seed, m_snap]
                m_go.click(GPU(lab.remix), m_in, [m_result, m_traj, m_info], api_name="remix", concurrency_id="model",
                           **hidden)

            # 5 --------------------------------------------------------------------------------
            with gr.Tab("Model", id="model"):
                gr.Markdown(opening["model"], elem_id="model-info")

            compare_tab(lab, demo)
        gr.api(lab.model_info, api_name="model_info")
    # Model work shares two slots (more only splits the same CPU cores); previews get their own.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def create_lab(source: str, device: str | None = None, precision: str = "fp32", refiner: str | None = None,
               refiner_t_max: int | None = None) -> SpriteLab:
    """Load the model and schedule, and a refiner model if given (CheckpointError / ValueError with a
    one-line message on failure).

    precision: fp32, bf16, or auto (bf16 where the device runs it fast, ddpm.device.resolve_precision).
    """
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    model, schedule = load_model(source, device=dev), load_schedule(source)
    low = load_refiner(refiner, model, schedule, refiner_t_max, dev, "--refiner-t-max") if refiner else None
    return SpriteLab(model, schedule, dev, str(source), load_palette(source), precision, low,
                     str(refiner) if refiner else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="DDPM Sprite Lab: the Gradio app.")
    p.add_argument("--model", default=os.environ.get("DDPM_MODEL", DEFAULT_MODEL),
                   help="model directory or Hugging Face Hub repo id (default: env DDPM_MODEL, else ./weights)")
    p.add_argument("--refiner", default=os.environ.get("DDPM_REFINER") or None,
                   help="a second model (directory or Hub repo id) that predicts the low-noise steps, "
                        "t <= --refiner-t-max (default: env DDPM_REFINER, else none)")
    p.add_argument("--refiner-t-max", type=int, default=_env_int("DDPM_REFINER_T_MAX"), metavar="T",
                   help=f"the highest t the --refiner predicts (default: env DDPM_REFINER_T_MAX, else "
                        f"{DEFAULT_REFINER_T_MAX})")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="what the network runs in while sampling; auto: bf16 on GPUs and on CPUs with "
                        "AVX512_BF16 or AMX, where it is 2-3x faster, else fp32")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to serve your network)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; use the number of idle cores on a shared machine)")
    args = p.parse_args(argv)
    if args.refiner_t_max is not None and not args.refiner:
        p.error("--refiner-t-max (or DDPM_REFINER_T_MAX) needs --refiner (or DDPM_REFINER)")
    return args


def _env_int(name: str) -> int | None:
    """An integer from the environment, None when unset (a bad value is refused when it is checked)."""
    value = os.environ.get(name)
    try:
        return None if not value else int(value)
    except ValueError:
        raise SystemExit(f"error: {name} must be a whole number, got {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    try:
        lab = create_lab(args.model, args.device, args.precision, args.refiner, args.refiner_t_max)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: cannot load the model from {args.model!r}: {e}", file=sys.stderr)  # a refiner's error names it
        return 2
    refined = f", refiner {lab.refiner_source} at t <= {lab.refiner.t_max}" if lab.refiner else ""
    print(f"DDPM Sprite Lab: model {lab.source}{refined} ({', '.join(lab.classes)}) on {lab.device}, {lab.precision}")
    global demo
    demo = build_demo(lab)  # module-level, where `gradio app.py` (reload mode) looks for it
    demo.launch(server_name=args.host, server_port=args.port, **LAUNCH_KWARGS)
    return 0


def __getattr__(name: str) -> Any:
    """`app.demo` for importers (Spaces, `gradio app.py`): the default model's app, built on first use."""
    if name == "demo":
        args = parse_args([])
        globals()["demo"] = built = build_demo(create_lab(args.model, args.device, args.precision, args.refiner,
                                                          args.refiner_t_max))
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
