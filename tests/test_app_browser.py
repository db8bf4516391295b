"""A person's tour of the app in Chromium (Playwright), at a desktop's and a phone's size.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`; no browser download).
Screenshots go to screenshots/ (gitignored), or to $SCREENSHOT_DIR.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ddpm.sampling import DEFAULT_STEPS
from helpers import CHROMIUM, open_page, pixels, shot, src, wait_new_src, wait_text

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install it with `apt-get install -y chromium`")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

TABS = ["Forward", "Reverse", "Generate", "Remix", "Model", "Compare"]
PICTURES = {"Forward": ["f-x0", "f-xt", "f-chart"], "Reverse": ["r-xt", "r-x0", "r-eps"], "Generate": ["g-grid"],
            "Remix": ["m-src", "m-result", "m-traj"], "Model": [],
            "Compare": ["c-race"]}


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=re.compile(rf"^\W*{name}$")).first.click()


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
    """Open the Draw tab and scribble a thick diagonal and a bar, never touching the brush button."""
    page.locator(f"#{prefix}-source-tabs").get_by_role("tab", name=re.compile("Draw")).click()
    canvas = page.locator(f"#{prefix}-draw canvas").last
    canvas.wait_for()
    page.wait_for_function("(id) => document.getElementById(id).dataset.brushPicked", arg=f"{prefix}-draw")
    box = canvas.bounding_box()
    for (x0, y0), (x1, y1) in [((0.2, 0.2), (0.8, 0.8)), ((0.2, 0.6), (0.8, 0.6))]:
        page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
        page.mouse.down()
        for k in range(1, 11):
            f = k / 10
            page.mouse.move(box["x"] + box["width"] * (x0 + (x1 - x0) * f), box["y"] + box["height"] * (y0 + (y1 - y0) * f))
        page.mouse.up()


def no_error_badge(page, elem_id: str) -> bool:
    """No visible "Error" badge on the component (Gradio's badge would cover its picture)."""
    return page.evaluate("""(id) => [...document.querySelectorAll(`#${id} [data-testid=status-tracker]`)]
        .every(t => !/Error/.test(t.textContent) || getComputedStyle(t).opacity === "0")""", elem_id)


def test_page_open_shows_every_tabs_pictures(page):
    for name in TABS:
        tab(page, name)
        for elem_id in PICTURES[name]:
            page.wait_for_selector(f"#{elem_id} img", state="visible")
            assert pixels(page, elem_id).std() > 0, elem_id
    assert "Loaded from" in page.locator("#model-info").inner_text()
    tab(page, "Forward")


def test_forward_follows_every_input_and_keeps_pictures_on_a_bad_upload(page, images):
    shot(page, "1-forward-on-load")
    assert "t = 125" in page.locator("#f-info").inner_text()
    before_src, before = src(page, "f-xt"), pixels(page, "f-xt")
    drag(page, "#f-t input[type=range]", 0.25, 0.92)
    wait_text(page, "f-info", r"t = (4\d\d|5\d\d)\b")
    page.wait_for_timeout(500)  # the final slider position is what is shown: no value lost while dragging
    final_t = int(page.locator("#f-t input[type=range]").input_value())
    assert f"t = {final_t}" in wait_text(page, "f-info", rf"t = {final_t}\b")
    wait_new_src(page, "f-xt", before_src)
    assert np.abs(pixels(page, "f-xt") - before).mean() > 10  # much noisier now
    # the number box commits on Enter, not per keystroke
    box = page.locator("#f-t input[type=number]")
    box.fill("")
    box.type("300")
    box.press("Enter")
    wait_text(page, "f-info", r"t = 300\b")
    # a bad upload says so and keeps every picture
    xt_src, x0_src = src(page, "f-xt"), src(page, "f-x0")
    page.locator("#f-source-tabs").get_by_role("tab", name=re.compile("Upload")).click()
    page.locator("#f-upload input[type=file]").set_input_files(str(images["text"]))
    page.get_by_text(re.compile("not a readable image")).first.wait_for()
    page.wait_for_timeout(300)
    shot(page, "1-forward-bad-upload")
    assert src(page, "f-xt") == xt_src and src(page, "f-x0") == x0_src
    assert no_error_badge(page, "f-xt") and no_error_badge(page, "f-x0") and "t = 300" in page.locator("#f-info").inner_text()
    page.locator("#f-show input[type=checkbox]").check()
    page.wait_for_selector("#f-eps img", state="visible")
    page.wait_for_selector("#f-x0pred img", state="visible")
    shot(page, "1-forward-model-view")
    draw_on(page, "f")
    page.locator("#f-draw-use").click()
    wait_new_src(page, "f-x0", x0_src)
    drawn = pixels(page, "f-x0")
    assert (drawn[0, 0] == 255).all() and not (drawn == 255).all()  # white background, some paint
    shot(page, "1-forward-drawn")


def status_after(page, seconds: float) -> str:
    page.wait_for_timeout(int(seconds * 1000))
    return page.locator("#r-status").inner_text()


def test_reverse_steps_runs_scrubs_and_stop_or_reset_end_a_run(page):
    tab(page, "Reverse")
    wait_text(page, "r-status", rf"Step 0 / {DEFAULT_STEPS}\b")
    shot(page, "2-reverse-on-load")
    noise_src, noise = src(page, "r-xt"), pixels(page, "r-xt")
    page.locator("#r-step").click()
    wait_text(page, "r-status", rf"Step 1 / {DEFAULT_STEPS}\b")
    wait_new_src(page, "r-xt", noise_src)
    page.locator("#r-run").click()
    wait_text(page, "r-status", rf"Step {DEFAULT_STEPS} / {DEFAULT_STEPS}.*done")
    assert np.abs(pixels(page, "r-xt") - noise).mean() > 5
    assert "last prediction" in page.locator("#r-status").inner_text()
    timeline = page.locator("#r-timeline input[type=range]")
    timeline.focus()
    page.keyboard.press("Home")  # scrub back to the start
    wait_text(page, "r-status", rf"Step 0 / {DEFAULT_STEPS}\b")
    assert np.abs(pixels(page, "r-xt") - noise).max() == 0
    page.locator("#r-gif-btn").click()
    link = page.locator("#r-gif a").first
    link.wait_for()
    assert "reverse-hero-trajectory.gif" in (link.get_attribute("href") or "") + link.inner_text()
    shot(page, "2-reverse-done")
    # a long run: Stop stops it, the old GIF goes
    steps = page.locator("#r-steps input[type=number]")
    steps.fill("500")
    steps.press("Enter")
    page.locator("#r-run").click()
    page.wait_for_selector("#r-gif", state="hidden")
    wait_text(page, "r-status", r"Step ([3-9]|\d\d+) / 500\b")
    page.locator("#r-stop").click()
    stopped = status_after(page, 1.0)
    assert status_after(page, 1.5) == stopped and "done" not in stopped
    # Reset cancels a run too
    page.locator("#r-run").click()
    wait_text(page, "r-status", r"part-way")
    page.locator("#r-reset").click()
    wait_text(page, "r-status", r"Step 0 / 500\b")
    assert re.search(r"Step 0 / 500\b", status_after(page, 1.5))
    steps.fill(str(DEFAULT_STEPS))
    steps.press("Enter")


def test_generate_with_a_new_seed_shows_a_new_grid(page):
    tab(page, "Generate")
    old_src, old = src(page, "g-grid"), pixels(page, "g-grid")
    assert "row 5" in page.locator("#g-caption").inner_text()
    assert "sprite-sheet-all.png" in page.locator("#g-sheet").inner_text().replace("\n", "")
    seed = page.locator("#g-seed input")
    seed.fill("7")
    seed.press("Enter")
    page.locator("#g-go").click()
    wait_text(page, "g-caption", "row 5")
    wait_new_src(page, "g-grid", old_src)
    page.wait_for_function("() => /seed7/.test(document.querySelector('#g-grid img').src)")
    assert old.shape == pixels(page, "g-grid").shape and np.abs(pixels(page, "g-grid") - old).mean() > 5
    shot(page, "3-generate")


def test_remix_uses_the_source_on_screen(page, images):
    tab(page, "Remix")
    old_result_src, old_result = src(page, "m-result"), pixels(page, "m-result")
    src_before = src(page, "m-src")
    assert "Noised to" in page.locator("#m-info").inner_text()
    page.locator("#m-source-tabs").get_by_role("tab", name=re.compile("Upload")).click()
    page.locator("#m-upload input[type=file]").set_input_files(str(images["corrupt"]))
    page.get_by_text(re.compile("not a readable image")).first.wait_for()
    assert src(page, "m-src") == src_before and no_error_badge(page, "m-src")
    draw_on(page, "m")
    page.locator("#m-draw-use").click()
    wait_new_src(page, "m-src", src_before)
    page.locator("#m-go").click()
    wait_new_src(page, "m-result", old_result_src)
    assert np.abs(pixels(page, "m-result") - old_result).mean() > 5
    assert "strip" not in page.locator("#m-info").inner_text()
    shot(page, "4-remix")


def test_model_info_names_device_and_classes_and_the_page_logs_no_errors(page):
    tab(page, "Model")
    text = wait_text(page, "model-info", "Loaded from")
    assert "cpu" in text and "hero" in text
    # the card's picture, inlined from the model folder, gets past Gradio's sanitiser and decodes
    page.wait_for_function("() => document.querySelector('#model-info img')?.naturalWidth > 0")
    assert page.locator("#model-info img").evaluate("img => [img.naturalWidth, img.alt]") == [48, "samples"]
    shot(page, "5-model")
    assert page.errors == []


def test_phone_every_tab_one_tap_away(browser, server):
    pg = open_page(browser, server, 390, 844)
    try:
        for name in TABS:
            button = pg.get_by_role("tab", name=re.compile(rf"^\W*{name}$")).first
            assert button.is_visible(), name
            box = button.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
            button.click()
            for elem_id in PICTURES[name]:
                pg.wait_for_selector(f"#{elem_id} img", state="visible")
            if name == "Reverse":  # Step and Run come before the settings, right above the grids
                step, grid = pg.locator("#r-step").bounding_box(), pg.locator("#r-xt").bounding_box()
                settings = pg.locator("#r-class").bounding_box()
                assert step["y"] < grid["y"] < settings["y"]
            shot(pg, f"phone-{name.lower()}")
        assert pg.errors == []
    finally:
        pg.close()
