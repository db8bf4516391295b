"""Time to sample 16 sprites of one class for each sampler setting, side by side in one process
(a script, never a test).

    python benchmarks/sampling_speed.py                          # shipped weights/, bf16 and fp32, 2 threads
    python benchmarks/sampling_speed.py --precisions bf16 --rounds 5 --settings ddpm:50,ddpm:8::quadratic:57-320
    python benchmarks/sampling_speed.py --model weights runs/student/model   # a guidance-distilled student beside it
    python benchmarks/sampling_speed.py --model weights/candidates/v-sinusoidal-64-stage2 \
        --refiner weights/candidates/palette-64-stage2 --settings ddpm:10:1.25    # with and without a refiner

A setting is written as for `python -m ddpm.evaluate --settings` (sampler:steps[:guidance[:spacing
[:t_lo-t_hi]]], the last part a guidance interval), so the settings timed here can be measured for
quality with the same text. Settings and
precisions alternate round by round (ABC ABC ...) so a neighbour's load hits them alike; each
figure is the best of the rounds, and the ratios against DDPM-500 and DDPM-50 come from this run
only. Targets: 16 sprites in at most 0.25 s where bf16 is fast and 0.5 s in fp32; one guided
reverse step for 16 sprites in at most 25 ms in bf16.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ddpm.checkpoint import load_model, load_refiner, load_schedule  # noqa: E402
from ddpm.folder import CheckpointError  # noqa: E402
from ddpm.conditioning import class_weights  # noqa: E402
from ddpm.device import cpu_description  # noqa: E402
from ddpm.evaluate import Setting, parse_settings  # noqa: E402
from ddpm.limits import check_steps  # noqa: E402
from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_REFINER_T_MAX, Refiner, sample, sample_steps  # noqa: E402

SETTINGS = ("ddpm:500,ddpm:50,ddpm:25,ddpm:10,ddpm:8,ddpm:8::quadratic,ddpm:8::quadratic:57-320,"
            "ddpm:5::quadratic:57-320,dpm++sde:10,dpm++sde:8::logsnr:57-320,dpm++:10,ddim:10")


def run_once(model, schedule, context, setting: Setting, precision: str, refiner: Refiner | None = None) -> float:
    t0 = time.perf_counter()
    sample(model, schedule, context, sampler=setting.sampler, steps=setting.steps, guidance=setting.guidance,
           seed=0, precision=precision, refiner=refiner, **setting.options)
    return time.perf_counter() - t0


def one_step(model, schedule, context, guidance: float, precision: str, repeats: int = 10) -> float:
    """Best ms of one guided DDPM step for the batch, as the app's Step takes it."""
    best = float("inf")
    for _ in range(repeats):
        steps = sample_steps(model, schedule, context, sampler="ddpm", steps=50, guidance=guidance, seed=0,
                             precision=precision)
        t0 = time.perf_counter()
        next(steps)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=[str(ROOT / "weights")], help="one or more model folders, "
                   "timed side by side (the ratios are within each model)")
    p.add_argument("--settings", default=SETTINGS)
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--refiner", default=None, metavar="DIR",
                   help="also time the first --model with this refiner taking its steps at t <= --refiner-t-max")
    p.add_argument("--refiner-t-max", type=int, default=None, metavar="T",
                   help=f"the highest t the --refiner predicts (default {DEFAULT_REFINER_T_MAX})")
    args = p.parse_args(argv)
    if args.refiner_t_max is not None and args.refiner is None:
        p.error("--refiner-t-max needs --refiner")
    torch.set_num_threads(args.threads)
    models = {name: (load_model(name), load_schedule(name), None) for name in args.model}
    model, schedule, _ = next(iter(models.values()))
    try:
        if args.refiner is not None:
            refiner = load_refiner(args.refiner, model, schedule, args.refiner_t_max, t_max_name="--refiner-t-max")
            models[f"{args.model[0]} + refiner {args.refiner} (t <= {refiner.t_max})"] = (model, schedule, refiner)
        settings = parse_settings(args.settings, args.guidance)
        for setting in settings:
            check_steps(setting.steps, schedule.T)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    context = torch.stack([class_weights(model.class_names, 0)] * 16)
    print(f"# {', '.join(args.model)}, 16 sprites, guidance {args.guidance:g}, {args.threads} threads, "
          f"{cpu_description()}, "
          f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}")
    best: dict[tuple[str, str, str], float] = {}
    for model, schedule, refiner in models.values():
        for precision in precisions:  # warm-up: the folded inference copies, autocast's caches
            run_once(model, schedule, context, Setting("ddpm", 2, args.guidance), precision, refiner)
    for _ in range(args.rounds):
        for setting in settings:
            for name, (model, schedule, refiner) in models.items():
                for precision in precisions:
                    key = (name, setting.label, precision)
                    best[key] = min(best.get(key, float("inf")),
                                    run_once(model, schedule, context, setting, precision, refiner))
    steps_ms = {(name, pr): one_step(model, schedule, context, args.guidance, pr)  # the first step: no refiner's
                for name, (model, schedule, refiner) in models.items() if refiner is None for pr in precisions}
    header = " | ".join(f"{pr} (s) | vs DDPM-500 | vs DDPM-50" for pr in precisions)
    print(f"\n| model | setting | {header} |\n|---|---|" + "---|---|---|" * len(precisions))
    for name in models:
        for setting in settings:
            cells = []
            for pr in precisions:
                s = best[(name, setting.label, pr)]
                ref500, ref50 = best.get((name, "ddpm:500", pr)), best.get((name, "ddpm:50", pr))
                cells.append(f"{s:.3f} | " + (f"{ref500 / s:.1f}x" if ref500 else "-") + " | "
                             + (f"{ref50 / s:.1f}x" if ref50 else "-"))
            print(f"| {name} | {setting.label} | " + " | ".join(cells) + " |")
    print("\none guided reverse step, 16 sprites: "
          + ", ".join(f"{name} {pr} {ms:.1f} ms" for (name, pr), ms in steps_ms.items())
          + f"; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
