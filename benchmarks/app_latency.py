"""Server-side latency of the app's three interactive paths (a script, never a test).

    python benchmarks/app_latency.py                 # the shipped weights/ (random n_feat=64 weights if absent)
    python benchmarks/app_latency.py --model DIR --repeats 30 --threads 1 --precision fp32

Each figure is the handler the app calls plus PNG-encoding its pictures the way Gradio does,
median over repeats after a warm-up:
  forward slider   one update of x_t, the numbers and the chart      target <= 20 ms
  reverse step     one Step click for 16 sprites (default sampler)   target <= 25 ms
  generate 16      16 sprites, default sampler, steps and guidance   target well under 1 s
Timings on a shared CPU (e.g. next to a training run) are inflated: check the load average printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from gradio.processing_utils import encode_pil_to_bytes  # noqa: E402

import app  # noqa: E402
from ddpm.device import PRECISIONS  # noqa: E402
from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402


def encode(outputs) -> None:
    """PNG-encode every picture in a handler's outputs, as Gradio's postprocessing does."""
    for out in outputs if isinstance(outputs, tuple) else (outputs,):
        if isinstance(out, Image.Image):
            encode_pil_to_bytes(out, "png")


def timed(fn, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """(median wall, min wall, median CPU) milliseconds of fn() over repeats, after warm-up calls.

    CPU time (process_time) is what an idle machine would take as wall time with one thread; on a
    shared machine the wall time is inflated by whoever else holds the cores.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def report(label: str, figures: tuple[float, float, float], note: str = "") -> None:
    med, best, cpu = figures
    print(f"{label:<28} median {med:7.1f} ms  (min {best:6.1f}; CPU {cpu:7.1f})   {note}")


def random_model_dir() -> str:
    from ddpm.checkpoint import save_model
    from ddpm.model import ContextUnet
    from ddpm.schedule import NoiseSchedule

    folder = tempfile.mkdtemp(prefix="ddpm-bench-")
    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=64, class_names=["hero", "creature", "food", "spell", "item"]), NoiseSchedule(), folder)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model directory or repo id (default: weights/, else random n_feat=64)")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="as app.py --precision (auto: bf16 where the CPU or GPU runs it fast)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = args.model
    if source is None:
        source = str(ROOT / "weights") if (ROOT / "weights" / "model.safetensors").is_file() else None
    if source is None:
        source = random_model_dir()
        print("weights/ not found: timing a course-sized model (n_feat=64) with random weights")
    lab = app.create_lab(source, args.device, args.precision)
    params = sum(p.numel() for p in lab.model.parameters())
    print(f"model {source}: {params:,} parameters, device {lab.device}, {lab.precision}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    cls = lab.classes[0]
    sprite = lab.model_sprite(cls, 0)

    ts = iter(range(10**9))
    report("forward slider update", timed(lambda: encode(lab.forward_view(sprite, 1 + next(ts) % lab.T, 0, False, cls)),
                                          args.repeats * 3), "target <= 20 ms")
    report("  ... with the model's view", timed(lambda: encode(lab.forward_view(sprite, 1 + next(ts) % lab.T, 0, True,
                                                                                cls)), args.repeats * 3))
    n = 16
    mix = [1.0] + [0.0] * (len(lab.classes) - 1)
    settings = (cls, n, 0, DEFAULT_SAMPLER, lab.T, DEFAULT_GUIDANCE)  # T steps: never runs out while timing
    run = lab.reverse_reset(None, *settings, *mix)[0]
    report(f"reverse step, {n} sprites", timed(lambda: encode(lab.reverse_step(run, *settings, *mix)[1:]), args.repeats),
           f"target <= 25 ms ({DEFAULT_SAMPLER}, guidance {DEFAULT_GUIDANCE:g})")
    report("  ... model step only", timed(lambda: run.advance(), args.repeats))
    seeds = iter(range(10**9))
    report(f"generate {n} sprites", timed(lambda: encode(lab.generate(cls, n, DEFAULT_SAMPLER, DEFAULT_STEPS,
                                                                      DEFAULT_GUIDANCE, next(seeds), False)),
                                          max(3, args.repeats // 4), warmup=1),
           f"target well under 1000 ms ({DEFAULT_SAMPLER}, {DEFAULT_STEPS} steps, guidance {DEFAULT_GUIDANCE:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
