"""fp32 against bf16 autocast on this CPU: training speed, sampling speed, and the noise error.

  python benchmarks/precision.py [--model weights] [--seconds 8] [--rounds 3] [--threads 2] [--speed-only]

For the course's width (n_feat 64) and twice it (128), in alternating rounds so background load
affects all alike:
- training images/s of ddpm.train's step (batch 128, random data of DawnLike's size);
- milliseconds of one guided network call for 16 sprites, as the samplers make it (BatchNorm
  folded, channels-last; random weights: speed does not depend on their values).
Then, when ../shared/data/dawnlike is present, what bf16 does to the predictions of --model: its
noise MSE per range of t (ddpm.evaluate --noise-error, seed 0) computed in fp32 and under bf16
autocast. bf16 autocast is fast only on CPUs with AVX512_BF16 or AMX; elsewhere it is much slower.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from ddpm.data import DAWNLIKE_DIR
from ddpm.device import PRECISIONS, bf16_is_fast, precision_autocast
from ddpm.model import ContextUnet
from ddpm.model import inference_model
from ddpm.schedule import NoiseSchedule
from train_throughput import our_loop, random_sprites

WIDTHS = (64, 128)


def guided_call_ms(model: torch.nn.Module, precision: str, seconds: float, batch: int = 16) -> float:
    """Milliseconds per guided call (the conditional and unconditional passes) for `batch` sprites."""
    x = torch.randn(batch, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    t, c = torch.full((batch,), 0.5), torch.eye(5)[torch.arange(batch) % 5]
    calls, start = 0, time.perf_counter()
    with torch.inference_mode(), precision_autocast(precision):
        model.forward_guided(x, t, c, 2.0)  # warm-up: oneDNN picks its kernels on the first call
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            model.forward_guided(x, t, c, 2.0)
            calls += 1
    return 1000 * (time.perf_counter() - start) / calls


def speed_table(seconds: float, rounds: int) -> str:
    sprites, labels = random_sprites()
    schedule = NoiseSchedule()
    nets = {nf: inference_model(ContextUnet(n_feat=nf).eval()) for nf in WIDTHS}
    train_rates: dict = {}
    call_ms: dict = {}
    for r in range(rounds):
        for nf in WIDTHS:
            for precision in PRECISIONS:
                rate = our_loop(sprites, labels, 128, seconds, schedule, dict(n_feat=nf), bf16=precision == "bf16")
                train_rates.setdefault((nf, precision), []).append(rate)
                call_ms.setdefault((nf, precision), []).append(guided_call_ms(nets[nf], precision, seconds / 2))
        print(f"round {r + 1} of {rounds} done", flush=True)
    rows = ["| n_feat | training fp32 (images/s) | training bf16 | bf16 / fp32 | guided call, 16 sprites, fp32 (ms) "
            "| bf16 (ms) | fp32 / bf16 |", "|---|---|---|---|---|---|---|"]
    for nf in WIDTHS:
        tr = {p: float(np.median(train_rates[nf, p])) for p in PRECISIONS}
        ms = {p: float(np.median(call_ms[nf, p])) for p in PRECISIONS}
        rows.append(f"| {nf} | {tr['fp32']:.0f} | {tr['bf16']:.0f} | {tr['bf16'] / tr['fp32']:.2f}x "
                    f"| {ms['fp32']:.1f} | {ms['bf16']:.1f} | {ms['fp32'] / ms['bf16']:.2f}x |")
    return "\n".join(rows)


def noise_error_table(model_dir: str) -> str:
    from ddpm.checkpoint import load_model, load_schedule
    from ddpm.data import load_data
    from ddpm.evaluate import noise_error_by_t

    model, schedule = load_model(model_dir).eval(), load_schedule(model_dir)
    data = load_data("dawnlike", model.height)
    results = {}
    for precision in PRECISIONS:
        with precision_autocast(precision):
            ranges, errors = noise_error_by_t(model, schedule, data, seed=0)
        results[precision] = errors[:, -1]
    rows = [f"noise MSE of {model_dir} (all classes, seed 0)", "", "| t | fp32 | bf16 autocast | change |",
            "|---|---|---|---|"]
    for (first, last), a, b in zip(ranges, results["fp32"], results["bf16"]):
        rows.append(f"| {first}-{last} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.2f}% |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "weights"))
    p.add_argument("--seconds", type=float, default=8, help="per measurement of training speed")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--speed-only", action="store_true", help="skip the noise-error comparison")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; this CPU {'has' if bf16_is_fast('cpu') else 'lacks'} native bf16 "
          f"(AVX512_BF16 / AMX); median of {args.rounds} rounds\n", flush=True)
    print(speed_table(args.seconds, args.rounds), "\n", flush=True)
    if args.speed_only:
        return
    if DAWNLIKE_DIR.is_dir():
        print(noise_error_table(args.model))
    else:
        print("../shared/data/dawnlike is absent: the noise-error comparison is skipped")


if __name__ == "__main__":
    main()
