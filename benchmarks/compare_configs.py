"""Which network configuration gives the best samples per hour of CPU training?

  python benchmarks/compare_configs.py --steps 500 --threads 1 --out docs/

Trains each configuration (the course's BatchNorm + scalar t/T embedding, and the GroupNorm and
sinusoidal options) from scratch on DawnLike for the same number of steps with `python -m
ddpm.train`, then:
  - measures training throughput of all of them in alternating rounds in this one process, so
    that background load affects them alike (the training runs' own wall times are shown too);
  - evaluates each export with ddpm.evaluate (class accuracy and Frechet distance, raw colours).
Quality per hour is read as: FD after the same number of steps, and the hours those steps take
at the measured throughput. Trained runs are kept under --work and reused when run again.
Needs ../shared/data/dawnlike. Writes configs.md and configs.json into --out.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))

from ddpm.checkpoint import load_model, load_schedule  # noqa: E402
from ddpm.data import load_dawnlike  # noqa: E402
from ddpm.evaluate import cached_classifier, evaluate  # noqa: E402
from ddpm.schedule import NoiseSchedule  # noqa: E402
from ddpm.history import TRAINING_INFO  # noqa: E402
from ddpm.train import CHECKPOINT  # noqa: E402
from train_throughput import our_loop, random_sprites  # noqa: E402

CONFIGS = {  # name (also the run's folder) -> (norm, time embedding); the first is the baseline
    "batch-scalar": ("batch", "scalar"),  # the course's network
    "group-scalar": ("group", "scalar"),
    "batch-sinusoidal": ("batch", "sinusoidal"),
    "group-sinusoidal": ("group", "sinusoidal"),
}


def train(name: str, work: Path, steps: int, batch_size: int, threads: int, seed: int) -> dict:
    """Train one configuration with the real CLI (or reuse a finished run); returns its training.json."""
    norm, emb = CONFIGS[name]
    run = work / name
    info = run / "model" / TRAINING_INFO
    if info.exists() and (done := json.loads(info.read_text()))["steps"] == steps:
        print(f"{name}: reusing {run}")
        return done
    cmd = [sys.executable, "-m", "ddpm.train", "--data", "dawnlike", "--out", str(run), "--steps", str(steps),
           "--batch-size", str(batch_size), "--threads", str(threads), "--seed", str(seed), "--norm", norm,
           "--time-embedding", emb, "--checkpoint-every", str(max(250, steps // 4)), "--sample-every", str(steps)]
    if (run / CHECKPOINT).exists():
        cmd.append("--resume")  # an interrupted comparison continues where it stopped
    print(f"{name}: {' '.join(cmd[1:])}", flush=True)
    with open(run.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(info.read_text())


def throughput(names: list[str], batch_size: int, seconds: float, rounds: int) -> dict[str, float]:
    """Median images/s of ddpm.train's step per configuration, alternating in rounds (ABCD ABCD ...)."""
    sprites, labels = random_sprites()
    schedule = NoiseSchedule()
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names:
            norm, emb = CONFIGS[n]
            rates[n].append(our_loop(sprites, labels, batch_size, seconds, schedule,
                                     dict(norm=norm, time_embedding=emb)))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), flush=True)
    return {n: float(np.median(v)) for n, v in rates.items()}


def report(rows: list[dict], args, date: str) -> str:
    base = rows[0]
    lines = [
        "# Network configurations: quality per hour of CPU training", "",
        f"Measured on {date} with `python benchmarks/compare_configs.py --steps {args.steps} --threads {args.threads} "
        f"--n {args.n}` on DawnLike: each configuration trained from scratch for {args.steps} steps of batch "
        f"{args.batch_size} ({args.steps * args.batch_size:,} images, seed {args.seed}, {args.threads} CPU thread(s)), "
        f"then {args.n} samples per class with DDPM-50, guidance 2, raw colours. Throughput: median of "
        f"{args.rounds} alternating rounds of {args.seconds:.0f} s each in one process. "
        "FD: Frechet distance of classifier features to real sprites (lower is better).", "",
        "Configurations are named norm-time embedding; batch-scalar is the course's network.", "",
        "| configuration | mean FD | mean accuracy | images/s | hours for these steps | FD vs the course's | speed vs the course's |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['fd']:.2f} | {r['accuracy']:.1%} | {r['images_per_s']:.0f} | "
                     f"{r['hours']:.2f} | {r['fd'] / base['fd']:.2f}x | {r['images_per_s'] / base['images_per_s']:.2f}x |")
    lines += ["", "Per class FD:", "", "| configuration | " + " | ".join(rows[0]["per_class"]) + " |",
              "|---|" + "---|" * len(rows[0]["per_class"])]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:.2f}" for v in r["per_class"].values()) + " |")
    best = min(rows, key=lambda r: r["fd"])
    lines += ["", f"Lowest FD after the same steps: **{best['name']}**, at {best['images_per_s'] / base['images_per_s']:.2f}x "
              "the course's training speed. These are short runs from scratch: "
              "they rank how fast each configuration learns, not where a long run ends; longer runs "
              "are compared in [experiments.md](experiments.md).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=50, help="samples per class for the evaluation")
    p.add_argument("--seconds", type=float, default=15, help="per throughput round and configuration")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + ", ".join(CONFIGS))
    p.add_argument("--work", default="runs/configs", help="where the trained runs are kept")
    p.add_argument("--out", default="docs")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    torch.set_num_threads(args.threads)
    work = (ROOT / args.work) if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = load_dawnlike()
    classifier, _ = cached_classifier(data)

    trained = {n: train(n, work, args.steps, args.batch_size, args.threads, args.seed) for n in names}
    rates = throughput(names, args.batch_size, args.seconds, args.rounds)
    rows = []
    for n in names:
        folder = work / n / "model"
        start = time.perf_counter()
        res = evaluate(load_model(folder), load_schedule(folder), data, "ddpm", 50, 2.0, args.n, args.seed, classifier)
        rows.append(dict(
            name=n, norm=CONFIGS[n][0], time_embedding=CONFIGS[n][1], steps=args.steps,
            fd=float(np.mean([r.fd for r in res])), accuracy=float(np.mean([r.accuracy for r in res])),
            per_class={r.name: r.fd for r in res}, images_per_s=rates[n],
            hours=args.steps * args.batch_size / rates[n] / 3600, run_seconds=trained[n]["seconds"],
        ))
        print(f"{n}: FD {rows[-1]['fd']:.2f}, accuracy {rows[-1]['accuracy']:.1%}, {rates[n]:.0f} images/s "
              f"(run took {trained[n]['seconds'] / 60:.1f} min; evaluated in {time.perf_counter() - start:.0f} s)",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    date = time.strftime("%Y-%m-%d")
    text = report(rows, args, date)
    (out / "configs.md").write_text(text)
    (out / "configs.json").write_text(json.dumps(dict(args=vars(args), date=date, rows=rows), indent=2))
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
