"""One guided reverse step, each inference optimisation added in turn (the table in docs/speed.md).

    python benchmarks/step_variants.py [--model weights] [--batch 16] [--rounds 25] [--threads 1]

Variants run interleaved (ABCD ABCD ...) in one process so machine load affects them alike; each is
checked against the plain model's output first. Without --model, a course-sized random network.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ddpm.checkpoint import load_model  # noqa: E402
from ddpm.model import ContextUnet, fold_batchnorm  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--guidance", type=float, default=2.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    make = (lambda: load_model(args.model)) if args.model else (lambda: ContextUnet().eval())
    m = make()
    mcl = make()
    mcl.load_state_dict(m.state_dict())
    mcl.to(memory_format=torch.channels_last)
    f, fcl = fold_batchnorm(m), fold_batchnorm(mcl)
    b, w = args.batch, args.guidance
    x = torch.randn(b, 3, m.height, m.height, generator=torch.Generator().manual_seed(0))
    c, t = torch.eye(m.n_classes)[torch.arange(b) % m.n_classes], torch.full((b,), 0.5)

    def two_pass(net):
        e = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)]))
        return e[:b] + w * (e[:b] - e[b:])

    im, ng = torch.inference_mode, torch.no_grad
    variants = {
        "A plain, doubled batch, NCHW": (im, lambda: two_pass(m)),
        "B + channels-last": (im, lambda: two_pass(mcl)),
        "C + shared encoder": (im, lambda: mcl.forward_guided(x, t, c, w)),
        "D + BatchNorm folded (library)": (im, lambda: fcl.forward_guided(x, t, c, w)),
        "D under no_grad": (ng, lambda: fcl.forward_guided(x, t, c, w)),
        "D without channels-last": (im, lambda: f.forward_guided(x, t, c, w)),
        "no guidance, plain NCHW": (im, lambda: m(x, t, c)),
        "no guidance, folded + CL": (im, lambda: fcl(x, t, c)),
    }
    with im():
        ref = two_pass(m)
    for name, (ctx, fn) in variants.items():
        with ctx():
            out = fn()
            if "no guidance" not in name:
                torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=name)
            fn()
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (ctx, fn) in variants.items():
            with ctx():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["A plain, doubled batch, NCHW"])
    print(f"batch {b}, guidance {w:g}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, v in times.items():
        med = statistics.median(v)
        print(f"{name:32s} median {med * 1000:7.1f} ms  min {min(v) * 1000:7.1f}  speed-up vs A {base / med:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
