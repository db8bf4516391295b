"""The app served on a local port and driven through every public endpoint with gradio_client (bad inputs:
test_bad_inputs.py)."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from helpers import CLASSES, png

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

ENDPOINTS = {"/forward_sprite", "/forward_upload", "/forward_draw", "/forward_view", "/reverse_reset",
             "/reverse_step", "/reverse_run", "/generate", "/remix_sprite", "/remix_upload", "/remix_draw", "/remix",
             "/model_info", "/compare_samplers", "/guidance_sweep", "/morph"}  # /reverse_scrub and /reverse_gif work on the page's session run: undocumented
REV = ("hero", 2, 0, "dpm++", 4, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0)  # class, n, seed, sampler, steps, guidance, mix


def test_every_public_event_has_a_name(client):
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ENDPOINTS


def test_api_fields_have_names_and_types(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, endpoint in api.items():
        params = [p["parameter_name"] for p in endpoint["parameters"]]
        labels = [r["label"] for r in endpoint["returns"]]
        assert not [f for f in params + labels if re.fullmatch(r"(param|value)_\d+", f or "")], (name, params, labels)
        types = {p["parameter_name"]: p["python_type"]["type"] for p in endpoint["parameters"]}
        for whole in ("seed", "t", "n", "steps", "noise_seed"):
            assert types.get(whole, "int") == "int", (name, whole, types)
    assert [p["parameter_name"] for p in api["/reverse_step"]["parameters"]][-5:] == [f"{c}_weight" for c in CLASSES]
    assert [r["label"] for r in api["/reverse_step"]["returns"]][-1] == "status"


def test_forward_calls_give_named_pictures_and_keep_no_hidden_state(client, images, tmp_path):
    x0, x_t, info, chart, eps, x0p = client.predict("creature", 4, 250, 0, True, api_name="/forward_sprite")
    assert png(x0).shape == png(x_t).shape == png(eps).shape == (256, 256, 3) and "t = 250" in info
    assert x_t.endswith("x_t-creature-t250.png") and "&nbsp;" not in info
    out = client.predict(handle_file(str(images["gray"])), 0, 0, False, "hero", api_name="/forward_upload")
    assert (png(out[0]) == png(out[1])).all()  # at t = 0, x_t is x0
    canvas = np.zeros((256, 256, 4), np.uint8)
    canvas[:, :128] = (222, 238, 214, 255)
    Image.fromarray(canvas, "RGBA").save(tmp_path / "drawing.png")
    drawing = dict(background=None, layers=[], composite=handle_file(str(tmp_path / "drawing.png")), id=None)
    out = client.predict(drawing, 0, 0, False, "hero", api_name="/forward_draw")
    assert tuple(png(out[0])[0, 0]) == (222, 238, 214) and tuple(png(out[0])[0, 255]) == (255, 255, 255)
    # forward_view takes the sprite itself: no hidden state
    again = client.predict(handle_file(out[0]), 0, 0, False, "hero", api_name="/forward_view")
    assert (png(again[0]) == png(out[0])).all()


def test_reverse_calls_step_stream_scrub_and_export_a_gif(client):
    client.predict(*REV, api_name="/reverse_reset")
    xt, x0, eps, timeline, status = client.predict(*REV, api_name="/reverse_step")
    assert "Step 1 / 4" in status and timeline == 1 and isinstance(timeline, int)
    job = client.submit(*REV, api_name="/reverse_run")
    streamed = list(job)
    assert len(streamed) >= 2 and "Step 4 / 4" in job.outputs()[-1][4]
    back = client.predict(2, api_name="/reverse_scrub")
    assert "Step 2 / 4" in back[4]
    gif = client.predict(api_name="/reverse_gif")
    assert Image.open(gif).format == "GIF" and gif.endswith("reverse-hero-trajectory.gif")


def test_generate_gives_a_sheet_row_per_class_and_remix_a_new_sprite(client, images):
    shown, sheet, caption = client.predict("all classes", 2, "ddim", 5, 1.0, 3, True, api_name="/generate")
    assert Image.open(sheet).size == (32, 16 * len(CLASSES)) and Image.open(sheet).mode == "RGBA"
    assert png(shown).shape[1] > 100 and sheet.endswith("sprite-sheet-all.png") and "row 5: item" in caption
    source = client.predict("food", 2, api_name="/remix_sprite")
    result, strip, info = client.predict(handle_file(source), "item", 0.5, "dpm++", 10, 2.0, 0, api_name="/remix")
    assert png(result).shape == (256, 256, 3) and "item" in info
    src = client.predict(handle_file(str(images["transparent"])), api_name="/remix_upload")
    assert tuple(png(src)[0, 0]) == (255, 255, 255)
    assert "hero" in client.predict(api_name="/model_info")


def test_identical_concurrent_requests_all_succeed(server):
    """Identical responses share one content-hashed cache file, which gradio copies into place atomically:
    none may be served half-written."""
    clients = [Client(server, verbose=False, analytics_enabled=False) for _ in range(6)]

    def call(c):
        return [c.predict(None, 123, 5, False, "hero", api_name="/forward_view")[0] for _ in range(3)]

    with ThreadPoolExecutor(len(clients)) as pool:
        results = [p for ps in pool.map(call, clients) for p in ps]
    pictures = [png(p) for p in results]
    assert len(pictures) == 18 and all((p == pictures[0]).all() for p in pictures)
