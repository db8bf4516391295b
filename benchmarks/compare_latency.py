"""Wall time of the Compare tab's default calls through gradio_client (a script, never a test).

    python benchmarks/compare_latency.py                  # the shipped weights/, precision auto
    python benchmarks/compare_latency.py --model DIR --repeats 5 --threads 1

Serves the app on a free local port and times, end to end as a program sees it (request, every
streamed update, pictures and files written and fetched), the default call of each endpoint:
compare_samplers (the page's four samplers), guidance_sweep (eight values, one seed) and morph
(16 frames). Median and range over repeats after one warm-up call. On a shared CPU the figures are
inflated: check the load average printed.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from gradio_client import Client  # noqa: E402

import app  # noqa: E402
from ddpm import compare as cp  # noqa: E402
from ddpm.device import PRECISIONS  # noqa: E402
from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "weights"))
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lab = app.create_lab(args.model, None, args.precision)
    demo = app.build_demo(lab)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.LAUNCH_KWARGS)
    print(f"model {args.model}, {lab.precision}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        c = lab.classes
        race = dict(cls=c[0], seed=0, guidance=DEFAULT_GUIDANCE,
                    **{f"{k}_{i}": v for i, e in enumerate(cp.DEFAULT_RACE, 1) for k, v in zip(("sampler", "steps"), e)})
        calls = {
            "compare_samplers": race,
            "guidance_sweep": dict(cls=c[0], seed=0, rows=1, guidance_values=app.SWEEP_DEFAULT_VALUES,
                                   sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS),
            "morph": dict(class_a=c[0], class_b=c[min(1, len(c) - 1)], seed_a=0, seed_b=0,
                          frames=app.MORPH_DEFAULT_FRAMES, sampler="ddim", steps=app.MORPH_DEFAULT_STEPS,
                          guidance=DEFAULT_GUIDANCE),
        }
        for name, kwargs in calls.items():
            client.predict(**kwargs, api_name=f"/{name}")  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                client.predict(**kwargs, api_name=f"/{name}")
                times.append(time.perf_counter() - start)
            print(f"{name:18s} median {statistics.median(times):5.2f} s  (min {min(times):.2f}, max {max(times):.2f}, "
                  f"{args.repeats} calls)  {kwargs}")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
