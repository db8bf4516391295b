"""The Compare tab's endpoints (compare_samplers, guidance_sweep, morph) served and called with gradio_client."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import png

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError  # noqa: E402

RACE = dict(cls="hero", seed=3, guidance=1.5, sampler_1="ddpm", steps_1=6, sampler_2="ddim", steps_2=3,
            sampler_3="dpm++", steps_3=2, sampler_4="none", steps_4=10)
SWEEP = dict(cls="food", seed=2, rows=2, guidance_values="0, 2, 5", sampler="ddpm", steps=4)
MORPH = dict(class_a="hero", class_b="spell", seed_a=0, seed_b=1, frames=8, sampler="ddim", steps=4, guidance=2.0)


def test_compare_endpoints_have_named_integer_parameters(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, kwargs in (("/compare_samplers", RACE), ("/guidance_sweep", SWEEP), ("/morph", MORPH)):
        params = {p["parameter_name"]: p for p in api[name]["parameters"]}
        assert list(params) == list(kwargs), name
        for key in ("seed", "steps", "rows", "frames", "seed_a", "steps_1"):
            if key in params:
                assert params[key]["type"]["type"] == "integer", (name, key)
        outputs = [r["label"] for r in api[name]["returns"]]
        assert "status" in outputs and "downloads" in outputs
        assert not any(o.startswith(("value_", "param_")) for o in outputs)


def test_compare_samplers_streams_a_race_to_t0(client):
    job = client.submit(**RACE, api_name="/compare_samplers")
    streamed = list(job)
    assert len(streamed) >= 2
    picture, status, files = job.outputs()[-1]
    assert "Tick 6 / 6" in status and "finished" in status
    for label, steps in (("DDPM", 6), ("DDIM", 3), ("DPM-Solver++", 2)):
        assert f"| {label} | {steps}/{steps} | 0 |" in status
    assert sorted(Path(f).suffix for f in files) == [".gif", ".png"]
    assert sorted(Path(f).name for f in files) == ["race-hero-seed3.gif", "race-hero-seed3.png"]
    gif = Image.open([f for f in files if f.endswith(".gif")][0])
    assert gif.n_frames == 7  # tick 0 to tick 6
    # the same call gives the same sprites (the captions below them carry the measured wall times)
    again = client.predict(**RACE, api_name="/compare_samplers")[0]
    a, b = png(picture), png(again)
    assert a.shape == b.shape and np.array_equal(a[:-60], b[:-60])


def test_guidance_sweep_is_deterministic_and_named(client):
    picture, status, files = client.predict(**SWEEP, api_name="/guidance_sweep")
    assert "Guidance 0, 2, 5" in status and "seeds 2, 3" in status
    assert Path(files[0]).name == "guidance-sweep-food-seed2.png"
    assert np.array_equal(png(picture), png(files[0]))  # the download is the picture as shown
    again = client.predict(**SWEEP, api_name="/guidance_sweep")[0]
    assert np.array_equal(png(picture), png(again)) and png(picture).shape[1] > 3 * 16 * 6


def test_morph_gives_a_strip_and_an_animated_gif(client):
    strip, gif, status, files = client.predict(**MORPH, api_name="/morph")
    assert "8 frames" in status and "slide together" in status
    anim = Image.open(gif)
    assert anim.format == "GIF" and anim.n_frames == 14
    assert Path(strip).name == "morph-hero-0-to-spell-1.png" and len(files) == 2
    again = client.predict(**MORPH, api_name="/morph")
    assert np.array_equal(png(strip), png(again[0])) and Path(again[1]).read_bytes() == Path(gif).read_bytes()


@pytest.mark.parametrize("api_name,kwargs,match", [
    ("/compare_samplers", dict(RACE, sampler_2="none", sampler_3="none"), "2 to 4 samplers"),
    ("/compare_samplers", dict(RACE, steps_2=0), "steps of column 2"),
    ("/compare_samplers", dict(RACE, sampler_1="euler"), "euler.*(not in the list|choose one of)"),
    ("/compare_samplers", dict(RACE, seed=-1), "seed must lie"),
    ("/guidance_sweep", dict(SWEEP, guidance_values="1, x"), "must be a number"),
    ("/guidance_sweep", dict(SWEEP, guidance_values="1, 20"), "between 0 and 10"),
    ("/guidance_sweep", dict(SWEEP, rows=9), "(greater than maximum value|rows must lie).* 4"),
    ("/morph", dict(MORPH, sampler="ddpm"), "'ddpm'.*\\['ddim', 'dpm\\+\\+'\\]"),
    ("/morph", dict(MORPH, frames=40), "greater than maximum value 32"),
    ("/morph", dict(MORPH, class_b="dragon"), "dragon"),
])
def test_bad_compare_inputs_get_one_line_messages(client, api_name, kwargs, match):
    """The library's messages, or Gradio's own for values outside a component's choices or range."""
    with pytest.raises(AppError, match=match):
        client.predict(**kwargs, api_name=api_name)
