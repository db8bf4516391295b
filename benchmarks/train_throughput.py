"""Training throughput: our loop against a course-style loop, same network, same batch, one run.

  python benchmarks/train_throughput.py [--batch-size 128] [--seconds 20] [--rounds 3]

The course-style loop is the course notebook's: a torch Dataset that converts each sprite with
per-sample transforms (ToTensor + Normalize equivalents), a shuffling DataLoader, contiguous
(NCHW) tensors, random context masks drawn per batch. Ours is ddpm.train's step: the whole data
set as one channels_last tensor, batches drawn with one generator, EMA update included. The two
alternate in rounds (ABAB...) so background load affects both alike. Random data of DawnLike's
size is used, so the figure needs no ../shared.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from ddpm.images import from_uint8
from ddpm.losses import training_batch
from ddpm.model import ContextUnet
from ddpm.schedule import NoiseSchedule
from ddpm.train import ema_decay, update_ema


class CourseDataset(torch.utils.data.Dataset):
    """The course's CustomDataset: per-sample numpy -> tensor conversion and normalisation."""

    def __init__(self, sprites: np.ndarray, onehot: np.ndarray):
        self.sprites, self.onehot = sprites, onehot

    def __len__(self):
        return len(self.sprites)

    def __getitem__(self, i):
        x = torch.from_numpy(self.sprites[i]).permute(2, 0, 1).float() / 255  # ToTensor
        x = (x - 0.5) / 0.5  # Normalize((0.5,)*3, (0.5,)*3)
        return x, torch.tensor(self.onehot[i]).float()


def course_loop(sprites, onehot, batch_size, seconds, schedule):
    model = ContextUnet()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(CourseDataset(sprites, onehot), batch_size=batch_size, shuffle=True)
    ab = schedule.alpha_bars.float()
    images, start = 0, time.perf_counter()
    while True:
        for x, c in loader:
            if len(x) < batch_size:
                continue
            opt.zero_grad()
            c = c * torch.bernoulli(torch.full((len(c), 1), 0.9))  # context dropout
            noise = torch.randn_like(x)
            t = torch.randint(1, schedule.T + 1, (len(x),))
            x_t = ab[t, None, None, None].sqrt() * x + (1 - ab[t, None, None, None]).sqrt() * noise
            loss = F.mse_loss(model(x_t, t / schedule.T, c), noise)
            loss.backward()
            opt.step()
            images += len(x)
            if time.perf_counter() - start > seconds:
                return images / (time.perf_counter() - start)


def our_loop(sprites, labels, batch_size, seconds, schedule, config: dict | None = None, bf16: bool = False):
    """Images/s of ddpm.train's step; config: ContextUnet keyword arguments (default: the course's network);
    bf16: the forward pass under bf16 autocast, as ddpm.train's --precision bf16."""
    model = ContextUnet(**(config or {})).to(memory_format=torch.channels_last)
    ema = ContextUnet(**(config or {})).to(memory_format=torch.channels_last).eval()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    data = from_uint8(sprites).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(labels)
    g = torch.Generator().manual_seed(0)
    images, step, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start <= seconds:
        x0, t, noise, context = training_batch(data, labels, 5, batch_size, schedule.T, 0.1, g)
        x_t = schedule.add_noise(x0, noise, t).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(model(x_t, t.float() / schedule.T, context).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, model, ema_decay(step, 0.999))
        images += batch_size
        step += 1
    return images / (time.perf_counter() - start)


def random_sprites(n: int = 2420, n_classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 sprites and class labels of DawnLike's size: throughput needs no ../shared."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, n_classes, n)


def measure(batch_size: int, seconds: float, rounds: int, verbose: bool = False) -> tuple[list[float], list[float]]:
    """Images/s of the course-style loop and of ours, alternating for `rounds` rounds, on random data of DawnLike's size."""
    sprites, labels = random_sprites()
    onehot = np.eye(5, dtype=np.float32)[labels]
    schedule = NoiseSchedule()
    course_rates, our_rates = [], []
    for r in range(rounds):
        course_rates.append(course_loop(sprites, onehot, batch_size, seconds, schedule))
        our_rates.append(our_loop(sprites, labels, batch_size, seconds, schedule))
        if verbose:
            print(f"round {r + 1}: course-style {course_rates[-1]:.0f} images/s, ours {our_rates[-1]:.0f} images/s")
    return course_rates, our_rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    course_rates, our_rates = measure(args.batch_size, args.seconds, args.rounds, verbose=True)
    s, o = float(np.median(course_rates)), float(np.median(our_rates))
    print(f"\nbatch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.rounds} rounds of "
          f"{args.seconds:.0f} s: course-style {s:.0f} images/s, ours {o:.0f} images/s, ratio {o / s:.2f}x")


if __name__ == "__main__":
    main()
