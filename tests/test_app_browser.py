"""A person's tour of the app in Chromium (Playwright): every tab, clicked, dragged and drawn on.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`; no browser download).
Screenshots go to screenshots/ (gitignored), or to $SCREENSHOT_DIR.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_helpers import app_single_thread, images, lab, model_dir, server  # noqa: F401  (fixtures)
from ddpm.sampling import DEFAULT_STEPS

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install it with `apt-get install -y chromium`")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

SHOTS = Path(os.environ.get("SCREENSHOT_DIR", Path(__file__).resolve().parent.parent / "screenshots"))


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server, wait_until="domcontentloaded")  # "networkidle" never settles: Gradio keeps a stream open
        pg.wait_for_selector("#f-xt img")
        pg.errors = errors
        yield pg
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def src(page, elem_id: str) -> str:
    page.wait_for_selector(f"#{elem_id} img")
    return page.locator(f"#{elem_id} img").first.get_attribute("src")


def pixels(page, elem_id: str) -> np.ndarray:
    body = page.request.get(src(page, elem_id)).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def wait_new_src(page, elem_id: str, old: str) -> str:
    page.wait_for_function(
        "([id, old]) => { const i = document.querySelector(`#${id} img`); return i && i.src !== old; }",
        arg=[elem_id, old])
    return src(page, elem_id)


def wait_text(page, elem_id: str, pattern: str) -> str:
    page.wait_for_function("([id, pat]) => new RegExp(pat).test(document.querySelector(`#${id}`).innerText)",
                           arg=[elem_id, pattern])
    return page.locator(f"#{elem_id}").inner_text()


def drag(page, selector: str, start: float, end: float, steps: int = 12) -> None:
    """Drag with the mouse across an element from one fraction of its width to another."""
    box = page.locator(selector).first.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    for k in range(1, steps + 1):
        page.mouse.move(box["x"] + box["width"] * (start + (end - start) * k / steps), y)
    page.mouse.up()


def draw_on(page, prefix: str) -> None:
    """Pick the Sketchpad's brush and scribble a thick diagonal and a bar."""
    page.locator(f"#{prefix}-source-tabs").get_by_role("tab", name=re.compile("Draw")).click()
    pad = page.locator(f"#{prefix}-draw")
    pad.get_by_role("button", name="Brush").first.click()
    canvas = pad.locator("canvas").last
    box = canvas.bounding_box()
    for (x0, y0), (x1, y1) in [((0.2, 0.2), (0.8, 0.8)), ((0.2, 0.6), (0.8, 0.6))]:
        page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
        page.mouse.down()
        for k in range(1, 11):
            f = k / 10
            page.mouse.move(box["x"] + box["width"] * (x0 + (x1 - x0) * f), box["y"] + box["height"] * (y0 + (y1 - y0) * f))
        page.mouse.up()


def test_forward_tab(page):
    shot(page, "1-forward-on-load")
    assert "t = 125" in page.locator("#f-info").inner_text()
    before_src, before = src(page, "f-xt"), pixels(page, "f-xt")
    drag(page, "#f-t input[type=range]", 0.25, 0.92)
    info = wait_text(page, "f-info", r"t = (4\d\d|5\d\d)\b")
    # the final slider position is what is shown: no value lost while dragging
    page.wait_for_timeout(500)
    final_t = int(page.locator("#f-t input[type=range]").input_value())
    info = wait_text(page, "f-info", rf"t = {final_t}\b")
    assert f"t = {final_t}" in info
    wait_new_src(page, "f-xt", before_src)
    after = pixels(page, "f-xt")
    assert np.abs(after - before).mean() > 10  # much noisier now
    page.locator("#f-show input[type=checkbox]").check()
    page.wait_for_selector("#f-eps img", state="visible")
    page.wait_for_selector("#f-x0pred img", state="visible")
    shot(page, "1-forward-dragged")
    old_x0 = src(page, "f-x0")
    draw_on(page, "f")
    page.locator("#f-draw-use").click()
    wait_new_src(page, "f-x0", old_x0)
    drawn = pixels(page, "f-x0")
    assert (drawn[0, 0] == 255).all() and not (drawn == 255).all()  # white background, some paint
    shot(page, "1-forward-drawn")


def test_reverse_tab(page):
    page.get_by_role("tab", name=re.compile("Reverse process")).click()
    wait_text(page, "r-status", rf"Step 0 / {DEFAULT_STEPS}\b")
    shot(page, "2-reverse-on-load")
    noise_src, noise = src(page, "r-xt"), pixels(page, "r-xt")
    page.locator("#r-step").click()
    wait_text(page, "r-status", rf"Step 1 / {DEFAULT_STEPS}\b")
    wait_new_src(page, "r-xt", noise_src)
    page.locator("#r-run").click()
    wait_text(page, "r-status", rf"Step {DEFAULT_STEPS} / {DEFAULT_STEPS}.*done")
    final = pixels(page, "r-xt")
    assert np.abs(final - noise).mean() > 5
    shot(page, "2-reverse-done")
    timeline = page.locator("#r-timeline input[type=range]")
    timeline.focus()
    page.keyboard.press("Home")  # scrub back to the start
    wait_text(page, "r-status", rf"Step 0 / {DEFAULT_STEPS}\b")
    assert np.abs(pixels(page, "r-xt") - noise).max() == 0
    page.locator("#r-gif-btn").click()
    link = page.locator("#r-gif a").first
    link.wait_for()
    assert ".gif" in (link.get_attribute("href") or "") + link.inner_text()
    shot(page, "2-reverse-scrubbed")


def test_generate_tab(page):
    page.get_by_role("tab", name=re.compile("Generate")).click()
    old_src = src(page, "g-grid")
    old = pixels(page, "g-grid")
    assert "row 5" in page.locator("#g-caption").inner_text()
    page.locator("#g-seed input").fill("7")
    page.locator("#g-go").click()
    wait_new_src(page, "g-grid", old_src)
    assert old.shape == pixels(page, "g-grid").shape and np.abs(pixels(page, "g-grid") - old).mean() > 5
    assert ".png" in page.locator("#g-sheet").inner_text()
    shot(page, "3-generate")


def test_remix_tab(page):
    page.get_by_role("tab", name=re.compile("Remix")).click()
    old_result_src, old_result = src(page, "m-result"), pixels(page, "m-result")
    src_before = src(page, "m-src")
    assert "Noised to" in page.locator("#m-info").inner_text()
    draw_on(page, "m")
    page.locator("#m-draw-use").click()
    wait_new_src(page, "m-src", src_before)
    page.locator("#m-go").click()
    wait_new_src(page, "m-result", old_result_src)
    assert np.abs(pixels(page, "m-result") - old_result).mean() > 5
    shot(page, "4-remix")


def test_model_tab_and_no_page_errors(page):
    page.get_by_role("tab", name=re.compile("Model")).click()
    text = wait_text(page, "model-info", "Loaded from")
    assert "cpu" in text and "hero" in text
    shot(page, "5-model")
    assert page.errors == []
