"""All the speed and quality figures in one run, written to docs/ as markdown tables and a plot.

    python benchmarks/run_all.py --model weights --out docs/            # the full suite (~12-15 min, 2 cores)
    python benchmarks/run_all.py --model weights --out /tmp/b --quick   # a smoke run (~4-5 min)

The full run's time is mostly the quality section, which grows with --samples-per-class (default
32: ~136,000 sprite-steps with guidance, most of them DDPM-500's); 100 takes ~40 min. Run it on
an idle machine: with more torch threads than free cores (e.g. next to a training run) every figure
is badly inflated (2 threads beside a busy core measured 8x slower than 1 thread).

Sections, each measured in this one run so machine load affects all settings alike:
  1. quality against time: for each sampler setting (DDPM-500, the course's number of steps, DDIM
     100/50/25/10, DPM-Solver++ 25/20/15/10/8, DDPM 50/25/10, and DDPM-50 with the course's variance
     beta), ddpm.evaluate's class accuracy, Frechet distance and isolated-pixel share on the same
     samples per class and the same seeds, and the wall time for 16 sprites of one class with its
     ratio to DDPM-500; the plot docs/quality_vs_time.png;
  2. one reverse step's latency at batch 1, 16 and 64, the library's fast path (shared encoder for
     guidance, BatchNorm folded, channels-last) against the plain model call (as the course did it);
  3. the app: the forward slider's server time (pieces of benchmarks/app_latency.py) and cold start
     (launching `python app.py` until the page answers);
  4. training throughput of ddpm.train's step against a course-style loop (benchmarks/train_throughput.py).
Outputs: OUT/benchmarks.md (also printed), OUT/benchmarks.json, OUT/quality_vs_time.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from ddpm.checkpoint import load_model, load_palette, load_schedule  # noqa: E402
from ddpm.data import load_data  # noqa: E402
from ddpm.evaluate import cached_classifier, evaluate  # noqa: E402
from ddpm.device import PRECISIONS, precision_autocast, resolve_precision  # noqa: E402
from ddpm.sampling import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, inference_model,  # noqa: E402
                           make_sampler, predict_noise, sample)

# The list, plus the library's default DPM-Solver++ 20, DPM-Solver++ 8 (16 sprites in 0.5 s
# needs fewer than 10 guided steps on 2 AVX2 cores) and strided ancestral DDPM 50/25/10: on an early
# model (12 per class) every deterministic setting, even DDIM-100, had a ~1.75x higher FD than
# DDPM-500, and strided DDPM came closer (DDPM-25: 1.23x).
SETTINGS = ("ddpm:500,ddim:100,ddim:50,ddim:25,ddim:10,dpm++:25,dpm++:20,dpm++:15,dpm++:10,dpm++:8,"
            "ddpm:50,ddpm:25,ddpm:10,ddpm-beta:50")
QUALITY_BAR = 1.10  # a setting "meets the bar" with a mean FD at most 10% above DDPM-500's


class Plain(torch.nn.Module):
    """The model called as the course did: one forward over the doubled batch, no folding, NCHW."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.height, self.in_channels = inner.height, inner.in_channels

    def forward(self, x, t, c):
        return self.inner(x, t, c)


def trained_steps(model_dir: str) -> int | None:
    """The model's training steps from its training.json, so the report says which model it measured."""
    try:
        return int(json.loads((Path(model_dir) / "training.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def label(sampler: str, steps: int) -> str:
    return {"ddpm": "DDPM", "ddpm-beta": "DDPM (the course's variance)", "ddim": "DDIM",
            "dpm++": "DPM-Solver++"}.get(sampler, sampler) + f"-{steps}"


def parse_settings(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        out.append((name, int(steps)))
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


# --- 1. quality and generation time -----------------------------------------------------------------
def quality(model, schedule, data, settings, n, guidance, seed, classifier, t0, palette=None,
            precision="fp32") -> list[dict]:
    rows = []
    for i, (sampler, steps) in enumerate(settings):
        start = time.perf_counter()
        kw = {} if palette is None else dict(palette=palette)  # snapped to palette.json as the app does
        res = evaluate(model, schedule, data, sampler, steps, guidance, n, seed, classifier, precision=precision, **kw)
        mean = lambda attr: sum(getattr(r, attr) for r in res) / len(res)  # noqa: E731
        rows.append(dict(setting=label(sampler, steps), sampler=sampler, steps=steps, accuracy=mean("accuracy"),
                         fd=mean("fd"), fd_floor=mean("fd_floor"), near_copies=mean("near_copies"),
                         isolated=mean("isolated"), isolated_real=mean("isolated_real"),
                         per_class={r.name: dict(accuracy=r.accuracy, fd=r.fd, fd_floor=r.fd_floor) for r in res},
                         eval_s=time.perf_counter() - start))
        log(f"  [{time.perf_counter() - t0:6.0f} s] {rows[-1]['setting']:16s} accuracy {rows[-1]['accuracy']:.1%}  "
            f"FD {rows[-1]['fd']:.2f} (floor {rows[-1]['fd_floor']:.2f})  {rows[-1]['eval_s']:.0f} s")
    return rows


def generation_times(model, schedule, settings, guidance, repeats, slow_repeats, n=16,
                     precision="fp32") -> dict[str, float]:
    """Median seconds to sample n sprites of class 0 per setting, in interleaved rounds.

    Settings of 100 steps or more run only slow_repeats times. Also times the default setting on
    the plain model call (no shared encoder, folding or channels-last) to show what the fast path saves.
    """
    context = torch.zeros(n, model.n_classes)
    context[:, 0] = 1
    plain = Plain(model)
    jobs = [(label(s, k), model, s, k) for s, k in settings]
    if not any((s, k) == (DEFAULT_SAMPLER, DEFAULT_STEPS) for s, k in settings):
        jobs.append((label(DEFAULT_SAMPLER, DEFAULT_STEPS), model, DEFAULT_SAMPLER, DEFAULT_STEPS))
    # right after the default setting, so the two see the same machine load
    at = 1 + [name for name, *_ in jobs].index(label(DEFAULT_SAMPLER, DEFAULT_STEPS))
    jobs.insert(at, (f"{label(DEFAULT_SAMPLER, DEFAULT_STEPS)}, plain model call (no fast path)", plain,
                     DEFAULT_SAMPLER, DEFAULT_STEPS))
    sample(model, schedule, context[:2], sampler="ddim", steps=2, guidance=guidance, seed=0,
           precision=precision)  # warm-up, builds the copy
    times: dict[str, list[float]] = {name: [] for name, *_ in jobs}
    for r in range(repeats):
        for name, net, s, k in jobs:
            if k >= 100 and r >= slow_repeats:
                continue
            start = time.perf_counter()
            sample(net, schedule, context, sampler=s, steps=k, guidance=guidance, seed=r, precision=precision)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


# --- 2. one reverse step ----------------------------------------------------------------------------
def step_latency(model, schedule, batches, guidance, repeats, precision="fp32") -> list[dict]:
    fast, plain = inference_model(model.eval()), Plain(model)
    rows = []
    for b in batches:
        x = torch.randn(b, model.in_channels, model.height, model.height, generator=torch.Generator().manual_seed(b))
        c = torch.eye(model.n_classes)[torch.arange(b) % model.n_classes]
        sampler = make_sampler(DEFAULT_SAMPLER, schedule)
        t = schedule.T // 2

        def one(net):
            with torch.inference_mode(), precision_autocast(precision):
                sampler.reset()
                sampler.step(predict_noise(net, x, t, schedule.T, c, guidance), t, t - 25, x)

        for net in (fast, plain, fast, plain):
            one(net)  # warm-up
        times = {"fast": [], "plain": []}
        for _ in range(repeats):
            for name, net in (("fast", fast), ("plain", plain)):
                start = time.perf_counter()
                one(net)
                times[name].append(time.perf_counter() - start)
        rows.append(dict(batch=b, fast_ms=median_ms(times["fast"]), plain_ms=median_ms(times["plain"]),
                         fast_min_ms=min(times["fast"]) * 1000, plain_min_ms=min(times["plain"]) * 1000))
    return rows


# --- 3. the app -------------------------------------------------------------------------------------
def forward_slider(model_dir: str, repeats: int, precision: str = "fp32") -> dict:
    """Median ms of one forward-slider update, as benchmarks/app_latency.py measures it."""
    try:
        import app
        from app_latency import encode, timed
    except Exception as e:  # noqa: BLE001 - the app is optional for the rest of the suite
        return dict(error=f"{type(e).__name__}: {e}")
    lab = app.create_lab(model_dir, None, precision)
    cls = lab.classes[0]
    sprite = lab.model_sprite(cls, 0)
    ts = iter(range(10 ** 9))
    # timed() returns (median, min, ...) milliseconds; later fields (e.g. CPU time) are optional
    med, best = timed(lambda: encode(lab.forward_view(sprite, 1 + next(ts) % lab.T, 0, False, cls)), repeats)[:2]
    med_m, best_m = timed(lambda: encode(lab.forward_view(sprite, 1 + next(ts) % lab.T, 0, True, cls)), repeats)[:2]
    return dict(slider_ms=med, slider_min_ms=best, slider_model_ms=med_m, slider_model_min_ms=best_m)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(model_dir: str, timeout: float = 180) -> dict:
    """Seconds from launching `python app.py --model DIR` to the page answering HTTP 200."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", model_dir, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                return dict(error=f"app.py exited with {proc.returncode}: "
                                  f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return dict(cold_start_s=time.perf_counter() - start)
            except OSError:
                time.sleep(0.1)
        return dict(error=f"no answer within {timeout:.0f} s")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- 4. training ------------------------------------------------------------------------------------
def training(batch_size: int, seconds: float, rounds: int) -> dict:
    import train_throughput as tt

    course_rates, our_rates = tt.measure(batch_size, seconds, rounds)
    return dict(batch=batch_size, seconds=seconds, rounds=rounds, course_images_s=statistics.median(course_rates),
                ours_images_s=statistics.median(our_rates))


# --- report -----------------------------------------------------------------------------------------
def suggest(rows: list[dict], gen: dict[str, float]) -> dict | None:
    ref = next((r for r in rows if r["sampler"] == "ddpm" and r["steps"] == 500), None)
    if ref is None:
        return None
    ok = [r for r in rows if r["fd"] <= QUALITY_BAR * ref["fd"] and r["setting"] in gen]
    return min(ok, key=lambda r: gen[r["setting"]]) if ok else None


def report(res: dict) -> str:
    a = res["args"]
    lines = [f"# Benchmarks", "",
             f"`{res['command']}`", "",
             f"Measured on {res.get('date', 'an unrecorded date')}. Model `{a['model']}` ({res['params']:,} parameters"
             + (f", trained for {res['model_steps']:,} steps" if res.get("model_steps") else "") + "), "
             f"data `{a['data']}`, guidance {a['guidance']:g}, "
             f"network in {a.get('precision', 'fp32')}, {res['threads']} torch threads on {res['cpus']} CPUs ({res['cpu']}), torch {torch.__version__}, "
             f"load average {res['load_before']:.2f} at the start and {res['load_after']:.2f} at the end; "
             f"{res['total_s']:.0f} s in all." + (" **Quick mode: too few samples for the quality figures to mean much.**"
                                                    if a["quick"] else ""), ""]
    rows, gen = res.get("quality"), res.get("generation")
    if rows:
        base = gen.get(label("ddpm", 500)) if gen else None
        lines += ["## Quality against time", "",
                  f"{a['samples_per_class']} samples per class and the same seeds for every setting; accuracy and "
                  f"Frechet distance (FD, classifier features) from `ddpm.evaluate`, means over the classes "
                  f"(FD floor, real against real at the same count: {rows[0]['fd_floor']:.2f}); samples "
                  f"{'snapped to the palette.json colours as the app does' if res.get('palette') else 'in raw colours'}. "
                  f"Time: median wall "
                  f"time for 16 sprites of one class (batch 16, with guidance), in this run. Isolated pixels: "
                  f"the share of pixels unlike all four neighbours, i.e. speckle (real sprites: "
                  f"{rows[0]['isolated_real']:.1%}).", "",
                  "| setting | accuracy | FD | FD / DDPM-500 | isolated pixels | 16 sprites (s) | speed-up vs DDPM-500 |",
                  "|---|---|---|---|---|---|---|"]
        ref_fd = next((r["fd"] for r in rows if r["setting"] == label("ddpm", 500)), None)
        def timing(s):
            return (f"{s:.2f}" if s is not None else "-") + " | " + (f"{base / s:.1f}x" if s and base else "-")

        for r in rows:
            ratio = f"{r['fd'] / ref_fd:.2f}" if ref_fd else "-"
            lines.append(f"| {r['setting']} | {r['accuracy']:.1%} | {r['fd']:.2f} | {ratio} | {r['isolated']:.1%} | "
                         f"{timing(gen.get(r['setting']) if gen else None)} |")
        for name, s in (gen or {}).items():
            if name not in {r["setting"] for r in rows}:
                lines.append(f"| {name} (time only) | - | - | - | - | {timing(s)} |")
        best = suggest(rows, gen or {})
        lines += [""]
        if best is not None and best["setting"] != label("ddpm", 500):
            lines.append(f"Fastest setting with a mean FD within {QUALITY_BAR - 1:.0%} of DDPM-500's in this run: "
                         f"{best['setting']} ({gen[best['setting']]:.2f} s for 16 sprites, "
                         f"{base / gen[best['setting']]:.0f}x faster than DDPM-500).")
        elif best is not None:
            lines.append(f"No faster setting reached a mean FD within {QUALITY_BAR - 1:.0%} of DDPM-500's in this run.")
        lines.append(f"At {a['samples_per_class']} samples per class the FD moves between sampling seeds by about as "
                     f"much as it differs between most settings here, so this table ranks speed, not quality. The "
                     f"library's default, {label(DEFAULT_SAMPLER, DEFAULT_STEPS)} with guidance {DEFAULT_GUIDANCE:g}, "
                     f"was chosen from 100 samples per class on two seeds (docs/experiments.md).")
        lines += ["", "![quality against time](quality_vs_time.png)", ""]
    if res.get("steps"):
        lines += ["## One reverse step", "",
                  f"Median ms of one {label(DEFAULT_SAMPLER, 0)[:-2]} step with guidance "
                  f"{a['guidance']:g} (the network runs on twice the batch): the library's path (encoder shared by "
                  f"the two guidance passes, BatchNorm folded into the convs, channels-last) against the plain "
                  f"model call.", "",
                  "| batch | fast path (ms) | plain (ms) | plain / fast |", "|---|---|---|---|"]
        for r in res["steps"]:
            lines.append(f"| {r['batch']} | {r['fast_ms']:.1f} | {r['plain_ms']:.1f} | {r['plain_ms'] / r['fast_ms']:.2f}x |")
        lines.append("")
    app_res = res.get("app")
    if app_res:
        lines += ["## The app", ""]
        if "slider_ms" in app_res:
            lines.append(f"- forward slider, one update (server side, PNG encoding included): median "
                         f"{app_res['slider_ms']:.1f} ms; with the model's view {app_res['slider_model_ms']:.1f} ms")
        elif "slider_error" in app_res:
            lines.append(f"- forward slider: not measured ({app_res['slider_error']})")
        if "cold_start_s" in app_res:
            lines.append(f"- cold start, `python app.py` to the page answering: {app_res['cold_start_s']:.1f} s")
        elif "cold_error" in app_res:
            lines.append(f"- cold start: not measured ({app_res['cold_error']})")
        lines.append("")
    tr = res.get("training")
    if tr:
        lines += ["## Training throughput", "",
                  f"Course network, batch {tr['batch']}, median of {tr['rounds']} alternating rounds of "
                  f"{tr['seconds']:g} s (benchmarks/train_throughput.py):", "",
                  "| loop | images/s |", "|---|---|",
                  f"| course-style | {tr['course_images_s']:.0f} |", f"| ours (ddpm.train) | {tr['ours_images_s']:.0f} |",
                  f"| ratio | {tr['ours_images_s'] / tr['course_images_s']:.2f}x |", ""]
    return "\n".join(lines)


def plot(rows: list[dict], gen: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=90)
    colours = {"ddpm": "tab:red", "ddpm-beta": "tab:orange", "ddim": "tab:blue", "dpm++": "tab:green"}
    for ax, key, name in ((ax1, "fd", "Frechet distance (lower is better)"), (ax2, "accuracy", "class accuracy")):
        for sampler in colours:
            pts = sorted((gen[r["setting"]], r[key], r["steps"]) for r in rows if r["sampler"] == sampler and r["setting"] in gen)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colours[sampler],
                        label=label(sampler, 0)[:-2])
                for x, y, k in pts:
                    ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("seconds for 16 sprites (log)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ref = next((r for r in rows if r["setting"] == label("ddpm", 500)), None)
    if ref is not None:
        ax1.axhline(QUALITY_BAR * ref["fd"], color="tab:red", ls="--", lw=0.8, label="DDPM-500 + 10%")
    ax1.axhline(rows[0]["fd_floor"], color="grey", ls=":", lw=0.8, label="real vs real")
    ax1.legend(fontsize=8)
    fig.suptitle("Sample quality against time (numbers: steps)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="weights", help="model directory")
    p.add_argument("--data", default="dawnlike", help="data for the quality measures (as ddpm.evaluate --data)")
    p.add_argument("--out", default="docs", help="folder for benchmarks.md, benchmarks.json, quality_vs_time.png")
    p.add_argument("--quick", action="store_true", help="few samples and repeats: a smoke run, not figures to quote")
    p.add_argument("--samples-per-class", type=int, default=None, help="for the quality measures (default 32; quick 6)")
    p.add_argument("--settings", default=SETTINGS, help="sampler:steps list")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="what the network runs in, as app.py --precision (auto: bf16 where the CPU runs it fast)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-palette", action="store_true", help="measure raw colours, not snapped to palette.json")
    p.add_argument("--render", metavar="JSON", help="only rewrite benchmarks.md in --out from a saved benchmarks.json")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: quality,generation,steps,app,train")
    args = p.parse_args(argv)
    if args.render:
        text = report(json.loads(Path(args.render).read_text()))
        (Path(args.out) / "benchmarks.md").write_text(text + "\n")
        print(text)
        return 0
    n = args.samples_per_class or (6 if args.quick else 32)
    if n < 2:
        p.error("--samples-per-class must be at least 2")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = parse_settings(args.settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(args.precision, "cpu")
    t0 = time.perf_counter()
    model, schedule = load_model(args.model), load_schedule(args.model)
    res = dict(command="python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               date=time.strftime("%Y-%m-%d"),
               args=dict(vars(args), samples_per_class=n, precision=precision), params=sum(q.numel() for q in model.parameters()),
               threads=torch.get_num_threads(), cpus=os.cpu_count(), cpu=platform.processor() or platform.machine(),
               load_before=os.getloadavg()[0], model_steps=trained_steps(args.model))

    if "quality" not in skip:
        data = load_data(args.data, model.height)
        if data.class_names != model.class_names:
            raise SystemExit(f"error: the data's classes {data.class_names} differ from the model's {model.class_names}")
        classifier, _ = cached_classifier(data)
        log(f"quality: {len(settings)} settings, {n} samples per class")
        palette = None if args.no_palette else load_palette(args.model)
        res["palette"] = palette is not None
        res["quality"] = quality(model, schedule, data, settings, n, args.guidance, args.seed, classifier, t0, palette,
                                 precision)
    if "generation" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] generation time, 16 sprites per setting")
        res["generation"] = generation_times(model, schedule, settings, args.guidance,
                                             repeats=1 if args.quick else 3, slow_repeats=1, precision=precision)
    if "steps" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] one reverse step at batch 1, 16, 64")
        res["steps"] = step_latency(model, schedule, (1, 16, 64), args.guidance, repeats=3 if args.quick else 15,
                                    precision=precision)
    if "app" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] the app: forward slider and cold start")
        app_res = {}
        try:
            app_res.update(forward_slider(args.model, 5 if args.quick else 30, precision))
        except Exception as e:  # noqa: BLE001
            app_res["error"] = f"{type(e).__name__}: {e}"
        if "error" in app_res:
            app_res["slider_error"] = app_res.pop("error")
        c = cold_start(args.model)
        app_res.update(c if "error" not in c else dict(cold_error=c["error"]))
        res["app"] = app_res
    if "train" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] training throughput")
        res["training"] = training(128, 3 if args.quick else 15, 1 if args.quick else 2)
    res["total_s"], res["load_after"] = time.perf_counter() - t0, os.getloadavg()[0]

    text = report(res)
    (out / "benchmarks.md").write_text(text + "\n")
    (out / "benchmarks.json").write_text(json.dumps(res, indent=2) + "\n")
    if res.get("quality") and res.get("generation"):
        plot(res["quality"], res["generation"], out / "quality_vs_time.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
