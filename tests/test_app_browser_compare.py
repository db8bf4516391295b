"""The Compare tab in Chromium (Playwright): race Step, Run and Stop, a guidance sweep, a morph, on a phone too."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import CHROMIUM, open_page, pixels, shot, src, wait_new_src, wait_text

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install it with `apt-get install -y chromium`")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def open_compare(browser, server, width: int, height: int):
    pg = open_page(browser, server, width, height)
    pg.get_by_role("tab", name=re.compile(r"^\W*Compare$")).first.click()  # one tap, on a phone too
    pg.wait_for_selector("#c-race img")
    return pg


def test_race_steps_runs_to_the_end_with_downloads_and_stops(browser, server):
    pg = open_compare(browser, server, 1400, 1000)
    wait_text(pg, "c-status", r"Tick 0 / 50\b")
    start_src, start = src(pg, "c-race"), pixels(pg, "c-race")
    pg.locator("#c-step").click()
    wait_text(pg, "c-status", r"Tick 1 / 50\b")
    wait_new_src(pg, "c-race", start_src)
    pg.locator("#c-run").click()
    wait_text(pg, "c-status", r"Tick 50 / 50.*finished")
    final = pixels(pg, "c-race")
    assert final.shape == start.shape and np.abs(final - start).mean() > 3
    links = pg.locator("#c-race-files a")
    links.first.wait_for()
    names = " ".join((links.nth(i).get_attribute("href") or "") for i in range(links.count()))
    assert "race-hero-seed0.png" in names and "race-hero-seed0.gif" in names
    shot(pg, "6-compare-race")
    # a long race, stopped: the status stops changing
    pg.locator("#c-steps-1 input").fill("500")
    pg.locator("#c-run").click()
    wait_text(pg, "c-status", r"Tick ([1-9]\d*) / 500.*racing")
    pg.locator("#c-stop").click()
    pg.wait_for_timeout(1000)
    stopped = pg.locator("#c-status").inner_text()
    pg.wait_for_timeout(1500)
    assert pg.locator("#c-status").inner_text() == stopped and "finished" not in stopped
    assert pg.errors == []
    pg.close()


def test_sweep_and_morph_buttons_draw_new_pictures(browser, server):
    pg = open_compare(browser, server, 1400, 1000)
    pg.get_by_role("tab", name="Guidance").click()
    old = src(pg, "s-sweep")
    pg.locator("#s-values textarea, #s-values input").first.fill("0, 4")
    pg.locator("#s-go").click()
    wait_text(pg, "s-status", r"Guidance 0, 4 ")
    wait_new_src(pg, "s-sweep", old)
    assert (pg.locator("#s-files a").first.get_attribute("href") or "").endswith("/guidance-sweep-hero-seed0.png")
    shot(pg, "6-compare-sweep")
    pg.get_by_role("tab", name="Morph").click()
    old = src(pg, "o-strip")
    pg.locator("#o-b-seed input").fill("1")
    pg.locator("#o-go").click()
    wait_text(pg, "o-status", "slide together")
    wait_new_src(pg, "o-strip", old)
    assert src(pg, "o-gif").split("?")[0].endswith(".gif")
    shot(pg, "6-compare-morph")
    assert pg.errors == []
    pg.close()


def test_compare_fits_a_phone(browser, server):
    pg = open_compare(browser, server, 390, 844)
    for sub, image in (("Race", "c-race"), ("Guidance", "s-sweep"), ("Morph", "o-strip")):
        pg.get_by_role("tab", name=sub).click()
        pg.wait_for_selector(f"#{image} img", state="visible")
        box = pg.locator(f"#{image} img").first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["width"] > 250, (sub, box)
    assert pg.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(pg, "6-compare-phone")
    pg.close()
