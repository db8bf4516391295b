"""Sample sprites from a trained model.

  python -m ddpm.sample --model weights --classes hero,food --n 16 --sampler ddim --steps 50 \
      --guidance 2 --seed 0 --out sheet.png
  python -m ddpm.sample --model weights --sampler dpm++sde --steps 10 --spacing logsnr \
      --guidance-interval 50,350 --out sheet.png
  python -m ddpm.sample --model weights/candidates/v-sinusoidal-64-stage2 \
      --refiner weights/candidates/palette-64-stage2 --refiner-t-max 150 --steps 10 --guidance 1.25 --out sheet.png

FILE.png is a sprite sheet, one row per class (--scale for a crisp nearest-neighbour upscale);
FILE.npz holds `images` (uint8, N x H x W x 3) and `labels` (class indices, N).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .folder import CheckpointError

from .checkpoint import load_model, load_palette, load_refiner, load_schedule
from .conditioning import class_weights
from .device import PRECISIONS, pick_device, resolve_precision
from .images import to_uint8
from .limits import MAX_BATCH, MAX_GUIDANCE, check_batch, check_number, check_seed, check_steps
from .sampling import (DEFAULT_GUIDANCE, DEFAULT_REFINER_T_MAX, DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS,
                       SAMPLER_ALIASES, SPACINGS, check_guidance_interval, sample_steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ddpm.sample", description="Sample sprites from a trained model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="weights", help="model directory or Hub repo id")
    p.add_argument("--classes", default="all", help="comma-separated class names, or 'all'")
    p.add_argument("--n", type=int, default=8, help="sprites per class")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=sorted(SAMPLER_ALIASES))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--spacing", default=DEFAULT_SPACING, choices=SPACINGS,
                   help="how the steps are spread over t: even in t, or denser at low t")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--guidance-interval", default=None, metavar="T_LO,T_HI",
                   help="guide only the steps whose t lies in T_LO..T_HI (default: every step)")
    p.add_argument("--refiner", default=None, metavar="MODEL",
                   help="a second model (directory or Hub repo id) that predicts the low-noise steps, "
                        "t <= --refiner-t-max, as SDXL's refiner does")
    p.add_argument("--refiner-t-max", type=int, default=None, metavar="T",
                   help=f"the highest t the --refiner predicts (default {DEFAULT_REFINER_T_MAX})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, help="nearest-neighbour upscale factor for .png output")
    p.add_argument("--transparent", action="store_true", help="white background transparent in .png output")
    p.add_argument("--no-palette", action="store_true",
                   help="keep the raw colours instead of snapping them to the model's palette.json (when it has one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="what the network runs in; auto: bf16 on GPUs and on CPUs with AVX512_BF16 or AMX, else fp32")
    p.add_argument("--out", required=True, help="output file: .png sprite sheet or .npz arrays")
    args = p.parse_args(argv)
    if Path(args.out).suffix.lower() not in (".png", ".npz"):
        p.error(f"--out must end in .png or .npz, got {args.out!r}")
    try:  # the library's limits and messages, with the flags' names
        check_batch(args.n, "--n")
        check_number(args.steps, "--steps", 1, math.inf, integer=True)
        check_number(args.guidance, "--guidance", 0, MAX_GUIDANCE)
        check_seed(args.seed, "--seed")
    except ValueError as e:
        p.error(str(e))
    if args.refiner_t_max is not None and args.refiner is None:
        p.error("--refiner-t-max needs --refiner")
    if not 1 <= args.scale <= 64:
        p.error("--scale must be from 1 to 64")
    if args.guidance_interval is not None:
        try:
            args.guidance_interval = check_guidance_interval(args.guidance_interval.split(","), 10**9)
        except ValueError:
            p.error(f"--guidance-interval must be two integer times T_LO,T_HI with T_LO <= T_HI, "
                    f"got {args.guidance_interval!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(None if args.device == "auto" else args.device)
        precision = resolve_precision(args.precision, device)
        model = load_model(args.model, device=device)
        schedule = load_schedule(args.model)
        refiner = None if args.refiner is None else load_refiner(args.refiner, model, schedule, args.refiner_t_max,
                                                                 device, "--refiner-t-max")
        palette = None if args.no_palette else load_palette(args.model)
        names = model.class_names if args.classes == "all" else [c.strip() for c in args.classes.split(",") if c.strip()]
        if not names:
            raise ValueError("--classes is empty")
        labels = [model.class_names.index(name) if name in model.class_names else name for name in names]
        context = torch.stack([class_weights(model.class_names, label) for label in labels]).repeat_interleave(args.n, 0)
        check_batch(len(context), "sprites in one batch (classes x --n)", MAX_BATCH)
        check_steps(args.steps, schedule.T)
        if args.guidance_interval is not None and args.guidance_interval[1] > schedule.T:
            raise ValueError(f"--guidance-interval must end at most at T = {schedule.T}")
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    last = None
    steps = sample_steps(model, schedule, context, args.sampler, args.steps, args.guidance, args.seed,
                         precision=precision, spacing=args.spacing, guidance_interval=args.guidance_interval,
                         refiner=refiner)
    for last in tqdm(steps, total=args.steps, desc=f"{args.sampler} x{len(context)}, {precision}", file=sys.stderr):
        pass
    images = to_uint8(last.x_prev)
    if palette is not None:
        from .images import snap_to_palette

        images = snap_to_palette(images, palette)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        np.savez(out, images=images, labels=np.repeat(np.asarray(labels, dtype=np.int64), args.n))
    else:
        from .images import sprite_sheet

        rows = list(images.reshape(len(labels), args.n, *images.shape[1:]))
        sprite_sheet(rows, scale=args.scale, transparent=args.transparent).save(out)
    print(f"wrote {len(images)} sprites to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
