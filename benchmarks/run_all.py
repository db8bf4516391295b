"""All the speed and quality figures in one run, written to docs/ as markdown tables and a plot.

    python benchmarks/run_all.py --model weights --out docs/                          # everything, sampled here
    python benchmarks/run_all.py --model weights --out docs/ --quality eval.json      # quality from ddpm.evaluate --json
    python benchmarks/run_all.py --model weights --out /tmp/b --quick --threads 1     # a smoke run
    python benchmarks/run_all.py --render docs/benchmarks.json --out docs/            # only redraw the report and plot

Most of a full run is the quality section: 100 samples per class on seeds 0 and 1 for every
setting, measured as `python -m ddpm.evaluate` measures them: about 670,000 sprite-steps with the
default settings (three quarters of them DDPM-500's), roughly half an hour on 2 idle cores in bf16
(scaled from a 32-per-class run). `--quality` takes those figures from saved
`python -m ddpm.evaluate ... --json PATH` outputs instead and only times the settings here. Run
it on an idle machine: with more torch threads than free cores (e.g. next to a training run)
every time is badly inflated (2 threads beside a busy core measured 8x slower than 1 thread).

Sections, the timed ones measured in this one run so machine load affects all settings alike:
  1. quality against time: for each sampler setting (--settings, written as for ddpm.evaluate
     --settings: sampler:steps[:guidance[:spacing[:t_lo-t_hi]]]), ddpm.evaluate's figures in both
     feature spaces on the same samples per class and the same seeds (mean +- half the range over
     the seeds, beside the real-vs-real floors), and the median wall time for 16 sprites of one
     class in each of --time-precisions with its ratio to DDPM-500; then the fastest setting whose
     FD is within DDPM-500's seed spread, against the time targets; the plot quality_vs_time.png;
  2. one reverse step of the library's default setting at batch 1, 16 and 64, the library's fast
     path (shared encoder for guidance, BatchNorm folded, channels-last) against the plain model
     call (as the course did it);
  3. the app: the forward slider's server time (pieces of benchmarks/app_latency.py) and cold start
     (launching `python app.py` until the page answers);
  4. training throughput of ddpm.train's step against a course-style loop (benchmarks/train_throughput.py).
Outputs: OUT/benchmarks.md (also printed), OUT/benchmarks.json, OUT/quality_vs_time.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm.checkpoint import load_model, load_palette, load_schedule  # noqa: E402
from ddpm.data import load_data  # noqa: E402
from ddpm.device import PRECISIONS, bf16_is_fast, cpu_description, precision_autocast, resolve_precision  # noqa: E402
from ddpm.evaluate import (Reference, Setting, Spread, feature_spaces, measure, parse_seeds,  # noqa: E402
                           parse_settings, results_json)
from ddpm.limits import check_steps  # noqa: E402
from ddpm.model import inference_model  # noqa: E402
from ddpm.sampling import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS,  # noqa: E402
                           check_guidance_interval, guidance_at, make_sampler, make_timesteps, predict_noise, sample)

# Ancestral DDPM (posterior variance) from 500 down to 5 steps, evenly spaced ("trailing"); each
# lever apart at 10 steps: "quadratic" spacing (denser at low t, where the colours are decided),
# guidance only on an interval of t (low 57..320, high 150..500), and both; the SDE DPM-Solver++ on a
# log-SNR grid; one deterministic DDIM and DPM-Solver++ each for comparison.
SETTINGS = ("ddpm:500,ddpm:50,ddpm:25,ddpm:15,ddpm:10,ddpm:8,ddpm:5,ddpm:15::quadratic,ddpm:10::quadratic,"
            "ddpm:10::trailing:150-500,ddpm:10::trailing:57-320,ddpm:10::quadratic:57-320,"
            "ddpm:8::quadratic:57-320,ddpm:5::quadratic:57-320,dpm++sde:10::logsnr,dpm++sde:8::logsnr:57-320,"
            "dpm++sde:5::logsnr:57-320,ddim:10,dpm++:10")
# Seconds for 16 sprites of one class that a default setting should meet, per precision.
TIME_TARGETS = {"bf16": 0.25, "fp32": 0.5}
FAMILIES = {"ddpm": "DDPM", "ddpm-beta": "DDPM (the course's variance)", "ddim": "DDIM", "dpm++": "DPM-Solver++",
            "dpm++sde": "DPM-Solver++ SDE"}
SPACES = ("A", "B")  # ddpm.evaluate's two feature spaces; the decision asks both


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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


# --- settings ----------------------------------------------------------------------------------------
def default_setting() -> Setting:
    """The library's default, as the app samples with it (empty options: sample_steps' own defaults)."""
    return Setting(DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE)


def options_key(options: dict) -> tuple:
    """Options compared by what they do: the default spacing spelled out equals it left out, and a
    guidance interval read back from JSON (a list) equals the tuple parse_settings gives."""
    out = {}
    for k, v in options.items():
        if (k == "spacing" and v == DEFAULT_SPACING) or v is None:
            continue
        out[k] = tuple(v) if isinstance(v, (list, tuple)) else v
    return tuple(sorted(out.items()))


def same_setting(a: Setting, sampler: str, steps: int, guidance: float, options: dict) -> bool:
    return (a.sampler == sampler and a.steps == int(steps) and math.isclose(a.guidance, float(guidance), abs_tol=1e-9)
            and options_key(a.options) == options_key(options))


def display(s: Setting, guidance: float = DEFAULT_GUIDANCE) -> str:
    """A readable name of a setting, e.g. 'DDPM-8, quadratic spacing, guided at t 57-320'; the guidance
    is named only where it differs from the run's --guidance."""
    extra = []
    if s.options.get("spacing", DEFAULT_SPACING) != DEFAULT_SPACING:
        extra.append(f"{s.options['spacing']} spacing")
    if s.options.get("guidance_interval") is not None:
        lo, hi = s.options["guidance_interval"]
        extra.append(f"guided at t {lo}-{hi}")
    if not math.isclose(s.guidance, guidance):
        extra.append(f"guidance {s.guidance:g}")
    return f"{FAMILIES.get(s.sampler, s.sampler)}-{s.steps}" + "".join(f", {e}" for e in extra)


def setting_dict(s: Setting, guidance: float) -> dict:
    return dict(setting=display(s, guidance), label=s.label, sampler=s.sampler, steps=s.steps, guidance=s.guidance,
                options=s.options)


def setting_of(d: dict) -> Setting:
    return Setting(d["sampler"], d["steps"], d["guidance"], dict(d.get("options") or {}))


# --- 1. quality and generation time -----------------------------------------------------------------
def measure_quality(model, schedule, data, settings: list[Setting], n: int, seeds: list[int], palette, precision: str,
                    t0: float, model_name: str) -> dict:
    """Every setting sampled and measured here with ddpm.evaluate.measure, in the format of its --json."""
    reference = Reference(data, feature_spaces(data), n)
    results = []
    for s in settings:
        results.append(measure(model, schedule, reference, s, n, seeds, palette, precision, model_name=model_name))
        r = results[-1]
        log(f"  [{time.perf_counter() - t0:6.0f} s] {s.label:28s} FD A {r.spread('FD A').format()}  "
            f"FD B {r.spread('FD B').format()}  (floors {np.mean(reference.floor['FD A']):.2f}, "
            f"{np.mean(reference.floor['FD B']):.2f})  {sum(r.seconds):.0f} s")
    return results_json(results, reference)


def load_quality(paths: list[str]) -> list[dict]:
    """The saved `python -m ddpm.evaluate --json` outputs, each with the file it came from."""
    sources = []
    for path in paths:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --quality {path}: {e}") from None
        if not isinstance(d, dict) or not {"results", "floor", "classes"} <= set(d):
            raise SystemExit(f"error: --quality {path} is not the JSON of `python -m ddpm.evaluate --json`")
        sources.append(dict(d, path=str(path)))
    return sources


def quality_rows(settings: list[Setting], sources: list[dict], model_dir: str, guidance: float) -> list[dict]:
    """For each setting the result matching its sampler, steps, guidance and options, if any source has one.

    Several matches (the same setting in two files, or ddpm.evaluate --compare models): this model's
    results first, then the most samples (per class times seeds), then the later file.
    """
    here = Path(model_dir).resolve()
    rows = []
    for i, s in enumerate(settings):
        found = [(j, r) for j, src in enumerate(sources) for r in src["results"]
                 if same_setting(s, r["sampler"], r["steps"], r["guidance"], r.get("options") or {})]
        if not found:
            continue
        j, r = max(found, key=lambda jr: (Path(jr[1].get("model", "")).resolve() == here,
                                          jr[1]["n_per_class"] * len(jr[1]["seeds"]), jr[0]))
        if len(found) > 1:
            log(f"  {s.label}: {len(found)} results in --quality; using {sources[j].get('path') or 'this run'}'s "
                f"({r.get('model')}, {r['n_per_class']} per class, seeds {','.join(map(str, r['seeds']))})")
        row = dict(r, index=i, source=j, setting=display(s, guidance), label=s.label)
        # the speckle share at the top level, where earlier benchmarks.json files had it
        row["isolated"] = float(np.mean([np.mean(d["isolated pixels"]) for d in r["per_seed"]]))
        rows.append(row)
    return rows


def generation_times(model, schedule, settings: list[Setting], guidance: float, precisions: list[str],
                     repeats: int, slow_repeats: int, n: int = 16) -> dict[str, dict[str, float]]:
    """Median seconds to sample n sprites of class 0, per setting (by display name) and precision.

    Settings and precisions alternate within each round, so a neighbour's load hits them alike;
    settings of 100 steps or more run only slow_repeats rounds. The library's default setting is
    also timed on the plain model call (no shared encoder, folding or channels-last), right after
    the default itself, to show what the fast path saves.
    """
    context = torch.zeros(n, model.n_classes)
    context[:, 0] = 1
    default = default_setting()
    jobs = [(display(s, guidance), model, s) for s in settings]
    at = next((k for k, s in enumerate(settings) if same_setting(default, s.sampler, s.steps, s.guidance, s.options)),
              None)
    if at is None:
        jobs.append((display(default, guidance), model, default))
        at = len(jobs) - 1
    jobs.insert(at + 1, (f"{jobs[at][0]}, plain model call (no fast path)", Plain(model), default))
    for precision in precisions:  # warm-up: the folded inference copy, autocast's caches
        sample(model, schedule, context[:2], sampler="ddim", steps=2, guidance=guidance, seed=0, precision=precision)
    times: dict[str, dict[str, list[float]]] = {name: {p: [] for p in precisions} for name, *_ in jobs}
    for r in range(repeats):
        for name, net, s in jobs:
            if s.steps >= 100 and r >= slow_repeats:
                continue
            for precision in precisions:
                start = time.perf_counter()
                sample(net, schedule, context, sampler=s.sampler, steps=s.steps, guidance=s.guidance, seed=r,
                       precision=precision, **s.options)
                times[name][precision].append(time.perf_counter() - start)
    return {name: {p: statistics.median(v) for p, v in by.items()} for name, by in times.items()}


# --- 2. one reverse step ----------------------------------------------------------------------------
def default_step(schedule) -> tuple[int, int, float]:
    """(t, t_prev, guidance) of the middle step of the library's default setting, as the app's Step takes it."""
    s = default_setting()
    ts = make_timesteps(schedule.T, s.steps, s.options.get("spacing", DEFAULT_SPACING), schedule)
    k = (len(ts) - 1) // 2
    interval = check_guidance_interval(s.options.get("guidance_interval"), schedule.T)
    return ts[k], ts[k + 1], guidance_at(ts[k], s.guidance, interval)


def step_latency(model, schedule, batches, repeats, precision="fp32") -> list[dict]:
    fast, plain = inference_model(model.eval()), Plain(model)
    t, t_prev, guidance = default_step(schedule)
    rows = []
    for b in batches:
        x = torch.randn(b, model.in_channels, model.height, model.height, generator=torch.Generator().manual_seed(b))
        c = torch.eye(model.n_classes)[torch.arange(b) % model.n_classes]
        sampler = make_sampler(DEFAULT_SAMPLER, schedule)
        g = torch.Generator().manual_seed(0)

        def one(net):
            with torch.inference_mode(), precision_autocast(precision):
                sampler.reset()
                sampler.step(predict_noise(net, schedule, x, t, c, guidance), t, t_prev, x, g)

        for net in (fast, plain, fast, plain):
            one(net)  # warm-up
        times = {"fast": [], "plain": []}
        for _ in range(repeats):
            for name, net in (("fast", fast), ("plain", plain)):
                start = time.perf_counter()
                one(net)
                times[name].append(time.perf_counter() - start)
        rows.append(dict(batch=b, t=t, t_prev=t_prev, guidance=guidance,
                         fast_ms=median_ms(times["fast"]), plain_ms=median_ms(times["plain"]),
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
def spread(row: dict, figure: str) -> Spread | None:
    """A quality row's class mean of a figure over its seeds, or None where it was not measured."""
    if row is None or any(figure not in d for d in row["per_seed"]):
        return None
    return Spread([float(np.mean(d[figure])) for d in row["per_seed"]])


def floor_means(source: dict) -> dict[str, float]:
    return {f: float(np.mean(v)) for f, v in source["floor"].items()}


def reference_index(res: dict) -> int | None:
    """Where DDPM-500 at the run's guidance (no further options) is among the settings."""
    ref = Setting("ddpm", 500, res["args"]["guidance"])
    return next((i for i, d in enumerate(res["settings"])
                 if same_setting(ref, d["sampler"], d["steps"], d["guidance"], d.get("options") or {})), None)


def rank_precision(res: dict) -> str | None:
    """The precision settings are ranked by time in: bf16 where it was timed, else the first timed."""
    tps = res.get("time_precisions") or []
    return "bf16" if "bf16" in tps else (tps[0] if tps else None)


def within_reference(row: dict, ref: dict) -> list[str]:
    """The feature spaces where row's mean FD exceeds DDPM-500's by more than the larger half-range."""
    failed = []
    for space in SPACES:
        a, b = spread(row, f"FD {space}"), spread(ref, f"FD {space}")
        if a is None or b is None or a.mean > b.mean + max(a.half_range, b.half_range):
            failed.append(f"FD {space}")
    return failed


def seconds(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def decision(res: dict) -> list[str]:
    settings, gen = res["settings"], res.get("generation") or {}
    by_index = {r["index"]: r for r in res.get("quality") or []}
    ri, rank = reference_index(res), rank_precision(res)
    one_seed = any(len(r["seeds"]) < 2 for r in by_index.values())
    lines = ["Rule: a setting counts as good as DDPM-500 when its mean FD in feature space A and in B is at most "
             "DDPM-500's mean FD plus the larger of the two half-ranges over the seeds (its own and DDPM-500's)."
             + (" With one seed there is no spread, so this only asks for an FD no higher than DDPM-500's, which "
                "seed noise alone decides; it takes two seeds or more to mean anything." if one_seed else "")]
    if ri is None:
        return lines + ["No decision: DDPM-500 is not among the settings."]
    if ri not in by_index:
        return lines + ["No decision: DDPM-500's quality was not measured."]
    if rank is None:
        return lines + ["No decision: no generation times were measured."]
    ref = by_index[ri]
    ok, failed = [], []
    for i, row in sorted(by_index.items()):
        t = gen.get(settings[i]["setting"], {}).get(rank)
        if t is None:
            continue
        miss = within_reference(row, ref)
        (failed if miss else ok).append((t, i, miss))
    ok.sort()
    failed.sort()
    if len({(r["n_per_class"], tuple(r["seeds"])) for r in by_index.values()}) > 1:
        lines.append("The settings were measured at different samples per class or seeds (see the source column), "
                     "so some comparisons are not like for like.")
    best_t, best, _ = ok[0] if ok else (None, None, None)
    if best is None or best == ri:
        lines.append("**Decision:** no setting faster than DDPM-500 is within its seed spread in this data.")
    else:
        d = settings[best]
        times = gen[d["setting"]]
        base = gen.get(settings[ri]["setting"], {}).get(rank)
        targets = []
        for p, target in TIME_TARGETS.items():
            if p in times:
                targets.append(f"{'meets' if times[p] <= target else 'misses'} the {target:g} s target in {p} "
                               f"({seconds(times[p])} s)")
            else:
                targets.append(f"was not timed in {p} (target {target:g} s)")
        lines.append(f"**Decision:** the fastest setting within DDPM-500's spread, by {rank} time, is "
                     f"**{d['setting']}** (`{d['label']}`), {seconds(best_t)} s for 16 sprites in {rank}"
                     + (f", {base / best_t:.0f}x faster than DDPM-500" if base else "") + "; it "
                     + " and ".join(targets) + ".")
    others = [(t, i) for t, i, _ in ok if i != ri]
    if others:
        lines.append("Within DDPM-500's spread on both: " + ", ".join(
            f"{settings[i]['setting']} ({seconds(t)} s)" for t, i in others) + ".")
    if failed:
        lines.append("Outside DDPM-500's spread: " + ", ".join(
            f"{settings[i]['setting']} ({seconds(t)} s; {' and '.join(m)})" for t, i, m in failed) + ".")
    unmeasured = [d["setting"] for i, d in enumerate(settings) if i not in by_index]
    if unmeasured:
        lines.append("Quality not measured (no decision about them): " + ", ".join(unmeasured) + ".")
    return lines


def source_text(src: dict, rows: list[dict]) -> str:
    """Where a source's figures came from: this run, or a saved ddpm.evaluate --json file."""
    ns = sorted({r["n_per_class"] for r in rows})
    seeds = sorted({",".join(map(str, r["seeds"])) for r in rows})
    precisions = sorted({r["precision"] for r in rows})
    models = sorted({str(r.get("model")) for r in rows})
    what = (f"{'/'.join(map(str, ns))} samples per class, seeds {' / '.join(seeds)}, network in "
            f"{'/'.join(precisions)}, {len(rows)} setting{'s' * (len(rows) != 1)}")
    if src.get("path") is None:
        palette = src.get("palette")
        return (f"sampled in this run with `ddpm.evaluate.measure`: {what}, "
                + ("snapped to the palette.json colours as the app does" if palette else "in raw colours"))
    return (f"from `{src['path']}`, written by `python -m ddpm.evaluate ... --json {src['path']}`: model "
            + ", ".join(f"`{m}`" for m in models) + f", {what}")


def floors_text(src: dict) -> str:
    f = floor_means(src)

    def get(name, percent=True):
        return "-" if name not in f else (f"{f[name]:.1%}" if percent else f"{f[name]:.2f}")

    return (f"FD A {get('FD A', False)}, FD B {get('FD B', False)}; precision A {get('precision A')}, "
            f"recall A {get('recall A')}; classifier A's held-out accuracy {get('accuracy A')}; isolated pixels "
            f"of real sprites {get('isolated pixels')}; near copies among held-out real sprites {get('near copies')} "
            f"(compared per class: {'/'.join(map(str, src.get('compared', [])))})")


def quality_section(res: dict) -> list[str]:
    settings = res["settings"]
    gen, tps = res.get("generation") or {}, res.get("time_precisions") or []
    rows, sources = res.get("quality") or [], res.get("quality_sources") or []
    by_index = {r["index"]: r for r in rows}
    used = sorted({r["source"] for r in rows})
    many = len(used) > 1
    ri = reference_index(res)
    base = gen.get(settings[ri]["setting"], {}) if ri is not None else {}
    lines = ["## Quality against time", ""]
    if sources:
        texts = [source_text(sources[j], [r for r in rows if r["source"] == j]) for j in used]
        if many:
            lines += ["Quality figures:"] + [f"- [{k}] {t}." for k, t in enumerate(texts, 1)] + [""]
        elif used:
            lines += [f"Quality figures {texts[0]}.", ""]
        else:
            lines += ["Quality: none of the settings was found in " + ", ".join(
                f"`{s.get('path')}`" for s in sources) + ".", ""]
        # sources measured at the same counts share their floors: state them once
        texts = {j: floors_text(sources[j]) for j in used}
        if len(set(texts.values())) > 1:
            floors = "; ".join(f"[{k}] {texts[j]}" for k, j in enumerate(used, 1))
        else:
            floors = next(iter(texts.values()), "-")
        lines += ["FD A and FD B: the Frechet distance in ddpm.evaluate's two feature spaces (A: SpriteClassifier, "
                  "B: LayoutClassifier, trained apart); precision and recall A: k-NN manifold precision (fidelity) "
                  "and recall (diversity) in A; accuracy A: the share classifier A assigns to the intended class; "
                  "isolated pixels: the share of pixels unlike all four neighbours, i.e. speckle; near copies: the "
                  "share of samples within a small pixel distance of a real sprite. Each is the mean over the classes, "
                  "given as mean ± half its range over the seeds (percentage points for shares). Real-vs-real floors "
                  "(held-out real sprites measured the same way, at the same count): "
                  + floors + "."]
    else:
        lines.append("Quality was not measured (--skip quality).")
    if gen:
        r = res.get("generation_rounds", {})
        repeats, slow = r.get("repeats", 1), r.get("slow_repeats", 1)
        rounds = (f"{repeats} interleaved rounds" if repeats > 1 else "one round") + (
            f" ({slow} for settings of 100 steps or more)" if slow < repeats else "")
        lines += ["", f"Time: median wall time for 16 sprites of one class (batch 16, with guidance) in "
                      f"{' and '.join(tps)}, {rounds}, all in this run; speed-up against DDPM-500 in the same "
                      f"precision. Targets for 16 sprites: "
                      + ", ".join(f"{v:g} s in {p}" for p, v in TIME_TARGETS.items()) + "."]
    lines.append("")
    figures = [("FD A", False), ("FD B", False), ("precision A", True), ("recall A", True), ("accuracy A", True),
               ("isolated pixels", True), ("near copies", True)] if sources else []
    head = ["setting", "`--settings`"] + (["source"] if many else []) + [f for f, _ in figures]
    for p in tps:
        head += [f"16 sprites, {p} (s)", f"speed-up, {p}"]
    lines += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def times(name):
        cells = []
        for p in tps:
            t, b = gen.get(name, {}).get(p), base.get(p)
            cells += [seconds(t) if t is not None else "-", f"{b / t:.1f}x" if t and b else "-"]
        return cells

    default = default_setting()
    for i, d in enumerate(settings):
        name = d["setting"]
        mark = " (default)" if same_setting(default, d["sampler"], d["steps"], d["guidance"], d.get("options") or {}) else ""
        cells = [name + mark, f"`{d['label']}`"]
        row = by_index.get(i)
        if many:
            cells.append(f"[{used.index(row['source']) + 1}]" if row else "-")
        if row is not None:
            cells += [s.format(percent) if (s := spread(row, f)) else "-" for f, percent in figures]
        elif figures:
            cells += ["not measured"] + ["-"] * (len(figures) - 1)
        lines.append("| " + " | ".join(cells + times(name)) + " |")
    listed = {d["setting"] for d in settings}
    default_name = display(default, res["args"]["guidance"])
    for name in gen:
        if name not in listed:  # the default and its plain model call, timed although not in --settings
            text = f"`{default.label}`" if name == default_name or name.startswith(default_name + ",") else ""
            lines.append("| " + " | ".join([f"{name} (time only)", text] + ([""] if many else [])
                                           + ["-"] * len(figures) + times(name)) + " |")
    lines.append("")
    if rows:
        for line in decision(res):  # each its own paragraph
            lines += [line, ""]
    if rows and gen:
        lines += ["![quality against time](quality_vs_time.png)"]
    return lines + [""]


def report(res: dict) -> str:
    a = res["args"]
    if not res.get("quality_sources"):
        quality_from = ""
    elif a.get("quality"):
        quality_from = ", quality figures from " + ", ".join(f"`{q}`" for q in a["quality"])
    else:
        quality_from = f", quality samples drawn with the network in {a['precision']}"
    lines = ["# Benchmarks", "",
             f"`{res['command']}`", "",
             f"Measured on {res.get('date', 'an unrecorded date')}. Model `{a['model']}` ({res['params']:,} parameters"
             + (f", trained for {res['model_steps']:,} steps" if res.get("model_steps") else "") + "), "
             + ("" if a.get("quality") or not res.get("quality_sources") else f"data `{a['data']}`, ")
             + f"guidance {a['guidance']:g}{quality_from}, "
             f"{res['threads']} torch thread{'s' * (res['threads'] != 1)} on {res['cpus']} CPUs ({res['cpu']}), torch {res.get('torch', '?')}, "
             f"load average {res['load_before']:.2f} at the start and {res['load_after']:.2f} at the end; "
             f"{res['total_s']:.0f} s in all." + (" **Quick mode: too few samples and rounds for the figures to mean "
                                                    "much.**" if a["quick"] else ""), ""]
    if res.get("quality_sources") or res.get("generation"):
        lines += quality_section(res)
    if res.get("steps"):
        first = res["steps"][0]
        lines += ["## One reverse step", "",
                  f"Median ms of one step of the library's default setting, {display(default_setting())} with "
                  f"guidance {first['guidance']:g} (the step from t {first['t']} to {first['t_prev']}, one of "
                  f"those the app's Step button takes with it; the network runs on twice the batch), network in {a['precision']}: the "
                  f"library's path (encoder shared by the two guidance passes, BatchNorm folded into the convs, "
                  f"channels-last) against the plain model call.", "",
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


def group_name(d: dict, guidance: float) -> str:
    """A setting's display name without its steps: one line of the plot per sampler, spacing and interval."""
    name = display(setting_of(dict(d, steps=0)), guidance)
    return name.replace("-0", "", 1)


def plot(res: dict, path: Path) -> None:
    """FD A and FD B (error bars: half the range over the seeds) against time in the ranking precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, gen, rank = res["settings"], res.get("generation") or {}, rank_precision(res)
    by_index = {r["index"]: r for r in res.get("quality") or []}
    guidance = res["args"]["guidance"]
    colours = {"ddpm": "tab:red", "ddpm-beta": "tab:orange", "ddim": "tab:blue", "dpm++": "tab:green",
               "dpm++sde": "tab:purple"}
    markers = {"trailing": "o", "quadratic": "s", "logsnr": "^", "karras": "D"}
    short = {"trailing": "", "quadratic": " quad", "logsnr": " logsnr", "karras": " karras"}
    groups: dict[str, list[tuple[float, int]]] = {}
    for i, row in by_index.items():
        t = gen.get(settings[i]["setting"], {}).get(rank)
        if t is not None:
            groups.setdefault(group_name(settings[i], guidance), []).append((t, i))
    ri = reference_index(res)
    ref = by_index.get(ri) if ri is not None else None
    sources = res.get("quality_sources") or []
    floor_src = sources[ref["source"]] if ref else sources[next(iter(by_index.values()))["source"]] if by_index else None
    fig, axes = plt.subplots(1, len(SPACES), figsize=(12, 5.4), dpi=90)
    for ax, space in zip(axes, SPACES):
        figure = f"FD {space}"
        if ref is not None and spread(ref, figure):
            s = spread(ref, figure)
            ax.axhspan(s.mean - s.half_range, s.mean + s.half_range, color="tab:red", alpha=0.12,
                       label="DDPM-500, mean ± half-range")
            ax.axhline(s.mean, color="tab:red", lw=0.8, ls="--")
        if floor_src is not None and figure in floor_src["floor"]:
            ax.axhline(float(np.mean(floor_src["floor"][figure])), color="grey", ls=":", lw=1,
                       label="real vs real (floor)")
        for name, pts in groups.items():
            pts.sort()
            d0 = settings[pts[0][1]]
            spacing = (d0.get("options") or {}).get("spacing", DEFAULT_SPACING)
            spreads = [spread(by_index[i], figure) for _, i in pts]
            keep = [(t, i, s) for (t, i), s in zip(pts, spreads) if s is not None]
            if not keep:
                continue
            ax.errorbar([t for t, _, _ in keep], [s.mean for *_, s in keep], yerr=[s.half_range for *_, s in keep],
                        fmt=markers.get(spacing, "o") + "-", color=colours.get(d0["sampler"], "black"), ms=5,
                        capsize=3, lw=1, label=name)
            for t, i, s in keep:
                ax.annotate(f"{settings[i]['steps']}{short.get(spacing, ' ' + spacing)}", (t, s.mean),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(f"seconds for 16 sprites, {rank} (log)")
        ax.set_ylabel(f"Frechet distance in feature space {space} (lower is better)")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8, frameon=False)  # below, clear of the points
    seeds = sorted({",".join(map(str, r["seeds"])) for r in by_index.values()})
    fig.suptitle(f"Sample quality against time (labels: steps and spacing; error bars: half the range over seeds "
                 f"{' / '.join(seeds)})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def write_outputs(res: dict, out: Path, with_json: bool) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = report(res)
    (out / "benchmarks.md").write_text(text + "\n")
    if with_json:
        (out / "benchmarks.json").write_text(json.dumps(res, indent=1) + "\n")
    if res.get("quality") and res.get("generation"):
        plot(res, out / "quality_vs_time.png")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="weights", help="model directory")
    p.add_argument("--data", default="dawnlike", help="data for the quality measures (as ddpm.evaluate --data)")
    p.add_argument("--out", default="docs", help="folder for benchmarks.md, benchmarks.json, quality_vs_time.png")
    p.add_argument("--quick", action="store_true", help="few samples and rounds: a smoke run, not figures to quote")
    p.add_argument("--samples-per-class", type=int, default=None, help="for the quality measures (default 100; quick 6)")
    p.add_argument("--seeds", default=None, help="sampling seeds of the quality measures (default 0,1; quick 0)")
    p.add_argument("--quality", nargs="+", metavar="JSON",
                   help="take the quality figures from these `python -m ddpm.evaluate --json` outputs instead of "
                        "sampling them (merged; matched to --settings by sampler, steps, guidance and options)")
    p.add_argument("--settings", default=SETTINGS,
                   help="sampler:steps[:guidance[:spacing[:t_lo-t_hi]]],... as for ddpm.evaluate --settings")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="for settings that give none")
    p.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="what the network runs in for the quality samples, the reverse step and the app, as app.py "
                        "--precision (auto: bf16 where the CPU runs it fast)")
    p.add_argument("--time-precisions", default=None,
                   help="precisions the generation times are measured in (default bf16,fp32 where bf16 is fast, "
                        "else fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-palette", action="store_true", help="measure raw colours, not snapped to palette.json")
    p.add_argument("--render", metavar="JSON", help="only rewrite benchmarks.md and the plot in --out from a saved "
                                                    "benchmarks.json")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: quality,generation,steps,app,train")
    args = p.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        if "settings" not in res:
            raise SystemExit(f"error: {args.render} was written by an earlier benchmarks/run_all.py; run it again")
        print(write_outputs(res, Path(args.out), with_json=False))
        return 0
    n = args.samples_per_class or (6 if args.quick else 100)
    if n < 2:
        p.error("--samples-per-class must be at least 2")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        seeds = parse_seeds(args.seeds or ("0" if args.quick else "0,1"))
        parsed = parse_settings(args.settings, args.guidance)
    except ValueError as e:
        p.error(str(e))
    settings: list[Setting] = []
    for s in parsed:  # a setting given twice is measured once
        if not any(same_setting(o, s.sampler, s.steps, s.guidance, s.options) for o in settings):
            settings.append(s)
    tps = [t.strip() for t in (args.time_precisions or ("bf16,fp32" if bf16_is_fast("cpu") else "fp32")).split(",")
           if t.strip()]
    if not tps or any(t not in PRECISIONS for t in tps):
        p.error(f"--time-precisions: choose from {', '.join(PRECISIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    precision = resolve_precision(args.precision, "cpu")
    t0 = time.perf_counter()
    model, schedule = load_model(args.model), load_schedule(args.model)
    try:
        for s in settings:
            check_steps(s.steps, schedule.T)
            check_guidance_interval(s.options.get("guidance_interval"), schedule.T)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    res = dict(command="python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               date=time.strftime("%Y-%m-%d"),
               args=dict(vars(args), samples_per_class=n, seeds=seeds, precision=precision),
               params=sum(q.numel() for q in model.parameters()), threads=torch.get_num_threads(),
               cpus=os.cpu_count(), cpu=cpu_description(), torch=torch.__version__,
               load_before=os.getloadavg()[0], model_steps=trained_steps(args.model),
               settings=[setting_dict(s, args.guidance) for s in settings])

    if "quality" not in skip:
        if args.quality:
            sources = load_quality(args.quality)
            for src in sources:
                if src["classes"] != model.class_names:
                    raise SystemExit(f"error: --quality {src['path']}: its classes {src['classes']} differ from the "
                                     f"model's {model.class_names}")
            log(f"quality: from {', '.join(args.quality)}")
        else:
            data = load_data(args.data, model.height)
            if data.class_names != model.class_names:
                raise SystemExit(f"error: the data's classes {data.class_names} differ from the model's {model.class_names}")
            palette = None if args.no_palette else load_palette(args.model)
            log(f"quality: {len(settings)} settings, {n} samples per class, seeds {','.join(map(str, seeds))}")
            src = measure_quality(model, schedule, data, settings, n, seeds, palette, precision, t0, args.model)
            sources = [dict(src, path=None, palette=palette is not None)]
        res["quality"] = quality_rows(settings, sources, args.model, args.guidance)
        res["quality_sources"] = [{k: v for k, v in src.items() if k != "results"} for src in sources]
        missing = [s.label for i, s in enumerate(settings) if i not in {r["index"] for r in res["quality"]}]
        if missing:
            log(f"  quality not measured for {', '.join(missing)}")
    if "generation" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] generation time, 16 sprites per setting in {', '.join(tps)}")
        rounds = dict(repeats=1 if args.quick else 3, slow_repeats=1)
        res["generation"] = generation_times(model, schedule, settings, args.guidance, tps, **rounds)
        res["time_precisions"], res["generation_rounds"] = tps, rounds
    if "steps" not in skip:
        log(f"[{time.perf_counter() - t0:6.0f} s] one reverse step at batch 1, 16, 64")
        res["steps"] = step_latency(model, schedule, (1, 16, 64), repeats=3 if args.quick else 15, precision=precision)
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
    print(write_outputs(res, out, with_json=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
