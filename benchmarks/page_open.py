"""What opening the page costs: N visitors open it at the same moment (a script, never a test).

    python benchmarks/page_open.py                      # the shipped weights/, N = 1 then 8
    python benchmarks/page_open.py --model DIR --visitors 1 8 16 --threads 1

The app runs as its own process (python app.py); Chromium (Debian's, /usr/bin/chromium, via
Playwright) opens N pages at once, each in its own browser context (its own Gradio session).
For each N it prints the seconds until each visitor sees the Forward tab's pictures (x0, x_t and
the chart, decoded), then until the Generate tab's sprite grid shows after one click on that tab,
and the server process's CPU seconds per page open (psutil, user + system, children included).
Targets on a 2-core CPU: 8 visitors all see the first tab within 3 s; < 0.5 CPU-s per page open.

The browsers run on the same machine, so on a small CPU their own rendering is most of the wall
time. To time the server alone, each round is repeated without browsers: N threads fetch at once
every URL one Chromium page fetched until its first tab's pictures showed (the HTML, Gradio's
scripts and styles, the config, the pictures), as N visitors on their own machines would.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FIRST_TAB = ("f-x0", "f-xt", "f-chart")
SHOWN_JS = """(ids) => ids.every(id => { const i = document.querySelector(`#${id} img`);
                                       return i && i.complete && i.naturalWidth > 0; })"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, threads: int | None, timeout: float = 600) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", model, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"error: the app exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"error: the app did not answer within {timeout:.0f} s")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


async def visitor(browser, url: str, t0: float, fetched: list[str] | None = None) -> tuple[float, float]:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    if fetched is not None:
        page.on("request", lambda r: fetched.append(r.url) if r.method == "GET" and "/heartbeat/" not in r.url
                else None)
    page.set_default_timeout(300_000)
    await page.goto(url, wait_until="domcontentloaded")
    await page.wait_for_function(SHOWN_JS, arg=list(FIRST_TAB), polling=50)
    first = time.perf_counter() - t0
    if fetched is not None:
        fetched.append(None)  # what the first tab needed ends here
    await page.get_by_role("tab", name="Generate").first.click()
    await page.wait_for_function(SHOWN_JS, arg=["g-grid"], polling=50)
    generate = time.perf_counter() - t0
    await context.close()
    return first, generate


async def round_of(url: str, n: int, fetched: list | None = None) -> list[tuple[float, float]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        t0 = time.perf_counter()
        results = await asyncio.gather(*(visitor(browser, url, t0, fetched) for _ in range(n)))
        await browser.close()
    return list(results)


def replay(urls: list[str], n: int) -> list[float]:
    """N visitors fetching the same URLs at once (each its own thread, like a browser, 6 at a time):
    seconds until each has all of them."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        with ThreadPoolExecutor(6) as pool:  # a browser's connections per host
            list(pool.map(lambda u: urllib.request.urlopen(u, timeout=300).read(), urls))
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(one, range(n)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "weights"))
    p.add_argument("--visitors", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=None, help="the app's torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is absent: apt-get install -y chromium", file=sys.stderr)
        return 2
    port = free_port()
    t_start = time.perf_counter()
    server = start_server(args.model, port, args.threads)
    print(f"app ready after {time.perf_counter() - t_start:.1f} s (start-up, including the page's pictures); "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    proc = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}/"
    try:
        fetched: list = []
        asyncio.run(round_of(url, 1, fetched))  # warm-up (Gradio's assets come off the disk), and what a page fetches
        urls = [u for u in fetched[:fetched.index(None)] if u.startswith(url)]
        print(f"{'visitors':>8} {'first tab s (each visitor)':<52} {'Generate s (max)':>16} {'CPU-s/open':>11}")
        for n in args.visitors:
            time.sleep(1.0)
            c0 = cpu_seconds(proc)
            results = asyncio.run(round_of(url, n))
            time.sleep(0.5)  # let the server finish any request still in flight
            cpu = (cpu_seconds(proc) - c0) / n
            firsts = sorted(r[0] for r in results)
            shown = " ".join(f"{x:.2f}" for x in firsts)
            print(f"{n:>8} {shown:<52} {max(r[1] for r in results):>16.2f} {cpu:>11.3f}")
            print(f"{'':>8} first tab: median {statistics.median(firsts):.2f} s, max {firsts[-1]:.2f} s "
                  f"(target 3 s: {firsts[-1] / 3:.2f}x); CPU per page open {cpu:.3f} s (target 0.5: {cpu / 0.5:.2f}x)")
            time.sleep(1.0)
            c0 = cpu_seconds(proc)
            served = replay(urls, n)
            cpu = (cpu_seconds(proc) - c0) / n
            print(f"{'':>8} server alone ({len(urls)} requests per visitor, no browsers): all served after "
                  f"{' '.join(f'{x:.2f}' for x in served)} s (max {served[-1] / 3:.2f}x of 3 s); CPU per open {cpu:.3f} s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
