"""Load test of the Gradio app: many concurrent visitors on loopback (a script, never part of pytest).

    python benchmarks/load_test.py                      # small random model (n_feat 16), 16 clients x 5 requests
    python benchmarks/load_test.py --model weights      # the shipped model
    python benchmarks/load_test.py --clients 16 --requests 5 --warmup-rounds 1 --rounds 3 --time-limit 900

What it does, bounded in count (clients x requests x rounds) and time (--time-limit), on 127.0.0.1 only:
  * starts the app in a *subprocess* (`--serve`, an internal mode of this script) on a free loopback port,
    with its own GRADIO_TEMP_DIR and TMPDIR, so the server's resident memory (psutil) and temporary files
    are the server's alone and not mixed with the clients';
  * warms up (one request of each kind, then --warmup-rounds full rounds), then measures the
    baseline: RSS as psutil sees it, and RSS after gc.collect() + malloc_trim(0) inside the server (sent
    as SIGUSR1; the server writes its figures to a JSON file);
  * runs --rounds rounds of --clients gradio_client clients making --requests mixed requests each:
    generate with the app's defaults (the same request from every client, all released at once by a
    barrier: the identical-output race in gradio 6.31, see app.picture), reverse step, forward slider,
    remix, and the forward view with the model's predictions (again identical for every client);
    every returned picture and file is opened and fully decoded, so a half-written file is a failure;
  * reports requests completed, failures, median and 95th-percentile latency, RSS before/after each
    round, Gradio temporary files (count and size) and the app's own download files, sessions held and
    the bytes of per-session state (reverse-process frames are capped by ix.MAX_FRAMES);
  * runs the server with the app's own delete_cache=(300, 1800) (every 5 minutes, files older than 30
    minutes), so no file can vanish under a slow client; after the last round it asks the server to run
    Gradio's own sweep (route_utils.delete_files_created_by_app, the function delete_cache schedules)
    with age --sweep-age seconds and counts the files again: every file the run left is tracked and
    removed, so the temporary files are bounded by what 30 minutes of traffic writes.
    (--cache-seconds N runs with delete_cache=(N, N) instead; N must exceed the slowest request, or a
    client is sent a 403 for a file already swept away.)
Exit status 0 when there were no failures and memory came back within --rss-tolerance (10%).

Recorded 2026-11-29 on the 2-core dev machine, a training run holding one core and other test suites
running (load average 5-8, so latencies are queueing on a busy CPU, not the app's own speed):
  python benchmarks/load_test.py        (16 clients x 5 requests, 1 warm-up round + 3 measured rounds)
    240 of 240 requests, 0 failures; median 6.9 s, p95 34.9 s, max 47.1 s (generate with the defaults,
    identical for all 16: median 15.1 s; forward slider: median 2.2 s)
    server RSS 516.5 -> 561.6 MB (+8.7%); after gc + malloc_trim 482.0 -> 524.5 MB (+8.8%)
    Gradio temp files 221 -> 845 after the run -> 0 after Gradio's own sweep; 65 sessions, at most 72 KB
    of app state each
  python benchmarks/load_test.py --clients 4 --requests 20 --rounds 3    (the same 80 requests a round)
    240 of 240, 0 failures; RSS after gc 467.2 -> 472.6 MB (+1.2%), flat from round to round
Memory grows with *new sessions*, not with requests: about 0.7-1 MB per session (Gradio's per-session
copies of the page config plus the app's gr.State), held until Gradio drops the least recently used
session; app.LAUNCH_KWARGS caps sessions at 1,000 (Gradio's default is 10,000), which bounds it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CLASSES = ["hero", "creature", "food", "spell", "item"]


# --- the server side (python benchmarks/load_test.py --serve ...) ------------------------------------
def folder_stats(folder: Path) -> dict:
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    size = 0
    for p in files:
        try:
            size += p.stat().st_size
        except OSError:
            pass
    return {"files": len(files), "bytes": size}


def serve(args) -> int:
    import ctypes
    import gc

    import numpy as np
    import torch

    import app
    from ddpm import interactive as ix

    torch.set_num_threads(args.threads)
    lab = app.create_lab(args.model, "cpu")
    demo = app.build_demo(lab)
    configured = demo.delete_cache
    if args.cache_seconds:
        demo.delete_cache = (args.cache_seconds, args.cache_seconds)
    demo.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True,
                **app.LAUNCH_KWARGS)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        libc = None
    import psutil

    me = psutil.Process()

    def state_bytes(value) -> int:
        if isinstance(value, ix.ReverseRun):
            return sum(a.nbytes for f in value.frames for a in (f.x_t, f.x0, f.eps) if a is not None)
        if isinstance(value, np.ndarray):
            return value.nbytes
        return 0

    def write_stats(*_):
        raw = me.memory_info().rss
        gc.collect()
        if libc is not None:
            libc.malloc_trim(0)
        sessions = list(demo.state_holder.session_data.values())
        per_session = [sum(state_bytes(v) for v in s.state_data.values()) for s in sessions]
        frames = [len(v.frames) for s in sessions for v in s.state_data.values() if isinstance(v, ix.ReverseRun)]
        stats = {"rss": raw, "rss_after_gc": me.memory_info().rss, "sessions": len(sessions),
                 "state_bytes_total": sum(per_session), "state_bytes_max": max(per_session, default=0),
                 "frames_max": max(frames, default=0), "max_frames_cap": ix.MAX_FRAMES,
                 "delete_cache_configured": configured, "delete_cache_used": demo.delete_cache,
                 "session_capacity": demo.state_holder.capacity,
                 "gradio_temp": folder_stats(Path(os.environ["GRADIO_TEMP_DIR"])),
                 "app_outputs": folder_stats(ix.OUTPUT_DIR), "threads": torch.get_num_threads()}
        tmp = Path(args.stats + ".tmp")
        tmp.write_text(json.dumps(stats))
        os.replace(tmp, args.stats)

    def sweep(*_):
        from gradio.route_utils import delete_files_created_by_app

        delete_files_created_by_app(demo, args.sweep_age)
        write_stats()

    stop = threading.Event()
    signal.signal(signal.SIGUSR1, write_stats)
    signal.signal(signal.SIGUSR2, sweep)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    write_stats()  # also tells the parent we are up
    while not stop.is_set():
        stop.wait(0.2)
    demo.close()
    return 0


# --- the client side -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_model_dir(folder: Path) -> str:
    import torch

    from ddpm.checkpoint import save_model
    from ddpm.model import ContextUnet
    from ddpm.schedule import NoiseSchedule

    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=16, class_names=CLASSES), NoiseSchedule(), folder)
    return str(folder)


class Server:
    def __init__(self, model: str, work: Path, threads: int, cache_seconds: int, sweep_age: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.stats_path = work / "stats.json"
        self.gradio_temp = work / "gradio"
        env = dict(os.environ, GRADIO_TEMP_DIR=str(self.gradio_temp), TMPDIR=str(work / "tmp"),
                   OMP_NUM_THREADS=str(threads), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        self.log = open(work / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", "--model", model, "--port", str(self.port), "--stats",
             str(self.stats_path), "--threads", str(threads), "--cache-seconds", str(cache_seconds),
             "--sweep-age", str(sweep_age)],
            env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log.name}")
            if self.stats_path.exists():
                return
            time.sleep(0.3)
        raise TimeoutError(f"the server did not start within {timeout:.0f} s")

    def stats(self, sig: int = signal.SIGUSR1) -> dict:
        before = self.stats_path.stat().st_mtime_ns
        self.proc.send_signal(sig)
        for _ in range(200):
            time.sleep(0.05)
            if self.stats_path.stat().st_mtime_ns != before:
                break
        time.sleep(0.05)
        return json.loads(self.stats_path.read_text())

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def check_picture(path, expect_format: str = "PNG") -> None:
    """Open and fully decode a returned file: a truncated or half-written one raises."""
    from PIL import Image

    if isinstance(path, dict):
        path = path.get("value") or path.get("path")
    with Image.open(path) as im:
        if im.format != expect_format:
            raise ValueError(f"{path}: {im.format}, expected {expect_format}")
        im.load()


def requests_for(client_index: int, n: int, T: int) -> list[tuple]:
    """(kind, api_name, args, checker) for one client: defaults-generate first (identical for everyone),
    then a mix; the model-view forward request is identical for every client too."""
    from ddpm.sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS

    import app

    rng = random.Random(client_index)
    mix = [1.0] + [0.0] * (len(CLASSES) - 1)
    generate = ("generate (defaults, identical)", "/generate",
                (app.ALL_CLASSES, app.GENERATE_DEFAULT_N, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE, 0, False),
                lambda out: (check_picture(out[0]), check_picture(out[1])))
    mixed = [
        ("reverse step", "/reverse_step",
         (CLASSES[client_index % len(CLASSES)], app.REVERSE_DEFAULT_N, client_index, DEFAULT_SAMPLER, DEFAULT_STEPS,
          DEFAULT_GUIDANCE, *mix), lambda out: [check_picture(p) for p in out[:3]]),
        ("forward slider", "/forward_view", (rng.randrange(T + 1), client_index, False, "hero"),
         lambda out: (check_picture(out[0]), check_picture(out[2]))),
        ("remix", "/remix", ("food", 0.6, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE, client_index),
         lambda out: (check_picture(out[0]), check_picture(out[1]))),
        ("forward + model view (identical)", "/forward_view", (125, 0, True, "hero"),
         lambda out: [check_picture(out[k]) for k in (0, 2, 3, 4)]),
    ]
    rng.shuffle(mixed)
    return ([generate] + mixed * n)[:n]


def run_round(url: str, n_clients: int, n_requests: int, T: int, time_limit: float) -> dict:
    from gradio_client import Client

    with ThreadPoolExecutor(n_clients) as pool:
        clients = list(pool.map(lambda _: Client(url, verbose=False, analytics_enabled=False), range(n_clients)))
    barrier = threading.Barrier(n_clients)
    records, lock = [], threading.Lock()

    def visitor(i: int):
        plan = requests_for(i, n_requests, T)
        try:
            barrier.wait(timeout=60)  # everyone presses Generate at the same moment
        except threading.BrokenBarrierError:
            pass
        for kind, api_name, args, check in plan:
            t0 = time.perf_counter()
            error = None
            try:
                check(clients[i].predict(*args, api_name=api_name))
            except Exception as e:  # noqa: BLE001  (every failure is counted and shown)
                error = f"{type(e).__name__}: {str(e)[:200]}"
            with lock:
                records.append({"kind": kind, "seconds": time.perf_counter() - t0, "error": error})

    start = time.perf_counter()
    with ThreadPoolExecutor(n_clients) as pool:
        futures = [pool.submit(visitor, i) for i in range(n_clients)]
        done, not_done = wait(futures, timeout=time_limit)
        for f in not_done:
            f.cancel()
    wall = time.perf_counter() - start
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass
    return {"records": records, "wall": wall, "timed_out": bool(not_done)}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def mb(x: int) -> str:
    return f"{x / 2 ** 20:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: a small random n_feat=16 model)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=5, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-rounds", type=int, default=1, help="full rounds before the baseline is taken")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    p.add_argument("--cache-seconds", type=int, default=0,
                   help="run the server with delete_cache=(N, N); 0 (default) keeps the app's setting")
    p.add_argument("--sweep-age", type=float, default=5, help="age in s for the sweep run after the last round")
    p.add_argument("--time-limit", type=float, default=900, help="seconds for all rounds together")
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the work dir (model, server log, temp files)")
    # internal: the server subprocess
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stats", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(args)
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 50 and 1 <= args.rounds <= 10
            and 0 <= args.warmup_rounds <= 5):
        p.error("keep it bounded: --clients 1..64, --requests 1..50, --rounds 1..10, --warmup-rounds 0..5")

    work = Path(tempfile.mkdtemp(prefix="ddpm-load-"))
    model = args.model or small_model_dir(work / "model")
    from ddpm.checkpoint import load_schedule

    T = load_schedule(model).T
    started = time.time()
    server = Server(model, work, args.threads, args.cache_seconds, args.sweep_age)
    try:
        server.wait_ready(180)
        print(f"server pid {server.proc.pid} on {server.url} (model {model}; work dir {work}); "
              f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        # warm-up: every kind of request once, then one concurrent request per client
        warm = run_round(server.url, 1, 5, T, 300)
        warm_records = warm["records"]
        for _ in range(args.warmup_rounds):
            warm_records += run_round(server.url, args.clients, args.requests, T, args.time_limit)["records"]
        warm_errors = [r["error"] for r in warm_records if r["error"]]
        time.sleep(1)
        base = server.stats()
        print(f"baseline after warm-up: RSS {mb(base['rss'])} (after gc + malloc_trim {mb(base['rss_after_gc'])}); "
              f"Gradio temp {base['gradio_temp']['files']} files / {mb(base['gradio_temp']['bytes'])}; "
              f"app downloads {base['app_outputs']['files']} files; {base['sessions']} sessions; "
              f"delete_cache configured {base['delete_cache_configured']}, used {base['delete_cache_used']}")
        if warm_errors:
            print(f"  warm-up failures: {len(warm_errors)}: {warm_errors[:3]}")
        all_records, rounds = [], []
        for k in range(args.rounds):
            left = args.time_limit - (time.time() - started)
            if left <= 0:
                print("time limit reached; stopping")
                break
            r = run_round(server.url, args.clients, args.requests, T, left)
            time.sleep(1)
            s = server.stats()
            s["rss_psutil"] = server.rss()
            failures = [x for x in r["records"] if x["error"]]
            lat = [x["seconds"] for x in r["records"]]
            rounds.append({"wall": r["wall"], "completed": len(r["records"]) - len(failures), "failures": len(failures),
                           "timed_out": r["timed_out"], "stats": s})
            all_records += r["records"]
            print(f"round {k + 1}: {len(r['records'])}/{args.clients * args.requests} requests in {r['wall']:.1f} s, "
                  f"{len(failures)} failures, median {statistics.median(lat):.2f} s, p95 {percentile(lat, 0.95):.2f} s; "
                  f"RSS {mb(s['rss'])} (after gc {mb(s['rss_after_gc'])}); Gradio temp {s['gradio_temp']['files']} "
                  f"files / {mb(s['gradio_temp']['bytes'])}; app downloads {s['app_outputs']['files']}; "
                  f"{s['sessions']} sessions, state {s['state_bytes_total'] / 1024:.0f} KB in all, "
                  f"max {s['state_bytes_max'] / 1024:.0f} KB per session, frames max {s['frames_max']}")
            for x in failures[:5]:
                print(f"  FAILED {x['kind']}: {x['error']}")
        final = rounds[-1]["stats"] if rounds else base
        time.sleep(args.sweep_age + 1)
        cleaned = server.stats(signal.SIGUSR2)
        print(f"after Gradio's delete_cache sweep with age {args.sweep_age:g} s: Gradio temp "
              f"{cleaned['gradio_temp']['files']} files / {mb(cleaned['gradio_temp']['bytes'])}")
    finally:
        server.close()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    expected = args.clients * args.requests * args.rounds
    failures = [x for x in all_records if x["error"]]
    lat = [x["seconds"] for x in all_records]
    by_kind = {}
    for x in all_records:
        by_kind.setdefault(x["kind"], []).append(x["seconds"])
    rss_growth = final["rss_after_gc"] / base["rss_after_gc"] - 1
    rss_growth_raw = final["rss"] / base["rss"] - 1
    temp_bounded = cleaned["gradio_temp"]["files"] == 0
    print("\n=== summary ===")
    print(f"requests completed {len(all_records) - len(failures)} of {expected}, failures {len(failures)}")
    print(f"latency median {statistics.median(lat):.2f} s, p95 {percentile(lat, 0.95):.2f} s, "
          f"max {max(lat):.2f} s (wall clock per request, {args.clients} clients queued on "
          f"{base['threads']} server thread(s); the queue runs 2 model jobs at a time)")
    for kind, xs in sorted(by_kind.items()):
        print(f"  {kind:34s} n={len(xs):3d}  median {statistics.median(xs):.2f} s  p95 {percentile(xs, 0.95):.2f} s")
    print(f"server RSS: baseline {mb(base['rss'])} -> after the run {mb(final['rss'])} ({rss_growth_raw:+.1%}); "
          f"after gc + malloc_trim {mb(base['rss_after_gc'])} -> {mb(final['rss_after_gc'])} ({rss_growth:+.1%}); "
          f"goal within {args.rss_tolerance:.0%}")
    print(f"Gradio temp files: {base['gradio_temp']['files']} before -> {final['gradio_temp']['files']} after the run"
          + f" -> {cleaned['gradio_temp']['files']} after the delete_cache sweep"
          + f" (delete_cache {tuple(base['delete_cache_used'])}); app downloads {final['app_outputs']['files']}"
          + " (pruned after an hour by ix.write_named)")
    print(f"per-session state: max {final['state_bytes_max'] / 1024:.0f} KB, frames max {final['frames_max']} "
          f"(cap {final['max_frames_cap']}); sessions held {final['sessions']} (capacity {final['session_capacity']})")
    ok = not failures and len(all_records) == expected and abs(rss_growth) <= args.rss_tolerance and temp_bounded
    if args.json:
        Path(args.json).write_text(json.dumps({"base": base, "rounds": rounds, "cleaned": cleaned,
                                               "failures": failures, "latency": lat, "ok": ok}, indent=1))
    print("OK" if ok else "NOT OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
