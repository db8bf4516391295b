"""The app's handlers and ddpm.interactive, called directly (no server)."""
from __future__ import annotations

import base64
import math
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from ddpm import interactive as ix
from ddpm.device import pick_device
from helpers import CLASSES

T = 500
REV_DEFAULTS = dict(cls="hero", n=2, seed=0, sampler="dpm++", steps=4, guidance=2.0)


def arr(im) -> np.ndarray:
    """A picture output (a PNG path, as the app returns them) as an int16 RGB array."""
    im = Image.open(im) if isinstance(im, (str, Path)) else im
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def generated(lab, *args):
    """The last output of the streaming generate handler: (grid, sheet, caption)."""
    return list(lab.generate(*args))[-1]


def rev(lab, run, fn=None, mix=(1, 0, 0, 0, 0), **kw):
    s = dict(REV_DEFAULTS, **kw)
    fn = fn or lab.reverse_step
    return fn(run, s["cls"], s["n"], s["seed"], s["sampler"], s["steps"], s["guidance"], *mix)


# --- forward process -------------------------------------------------------------------------------
def test_forward_sprite_shows_a_crisp_sprite_and_its_noisy_version(lab):
    x0_pic, xt_pic, info, chart, eps, x0p = lab.forward_sprite("hero", 0, 125, 0, False)
    assert Path(x0_pic).name == "x0-hero-seed0.png" and Path(xt_pic).name == "x_t-hero-t125.png"
    assert Image.open(x0_pic).size == (256, 256) and Image.open(xt_pic).size == (256, 256)
    # nearest-neighbour: every 16x16 block of the upscale is one flat colour
    blocks = arr(x0_pic).reshape(16, 16, 16, 16, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert "t = 125" in info and "noise level" in info
    assert eps is None and x0p is None
    assert Image.open(chart).size[0] > 300


def test_forward_view_t0_is_x0_and_tT_is_noise(lab):
    sprite = lab.model_sprite("food", 3)
    x0 = arr(lab.forward_sprite("food", 3, 0, 0, False)[0])
    at0 = arr(lab.forward_view(sprite, 0, 0, False, "food")[0])
    atT = arr(lab.forward_view(sprite, T, 0, False, "food")[0])
    assert (at0 == x0).all()
    assert np.abs(atT - x0).mean() > 40


def test_forward_view_uses_the_same_noise_at_every_t(lab):
    sprite = lab.model_sprite("hero", 0)
    a, b = (arr(lab.forward_view(sprite, t, 7, False, "hero")[0]) for t in (300, 301))
    other = arr(lab.forward_view(sprite, 301, 8, False, "hero")[0])
    assert np.abs(a - b).mean() < 3          # neighbouring t: nearly the same picture
    assert np.abs(b - other).mean() > 20     # another noise seed: a different picture


def test_forward_chart_marker_moves_with_t(lab):
    sprite = lab.model_sprite("hero", 0)
    c1, c2 = (arr(lab.forward_view(sprite, t, 0, False, "hero")[2]) for t in (50, 450))
    diff_cols = np.nonzero(np.abs(c1 - c2).sum((0, 2)))[0]
    assert diff_cols.min() < c1.shape[1] // 3 and diff_cols.max() > 2 * c1.shape[1] // 3


def test_forward_view_shows_the_models_predictions_on_request(lab):
    sprite = lab.model_sprite("hero", 0)
    xt, info, chart, eps, x0p = lab.forward_view(sprite, 200, 0, True, "spell")
    assert Image.open(eps).size == (256, 256) and Image.open(x0p).size == (256, 256)
    assert not (arr(eps) == arr(x0p)).all()


@pytest.mark.parametrize("t", [float("nan"), -1, T + 1, 3.5, "abc", None])
def test_forward_view_refuses_bad_t(lab, t):
    with pytest.raises(gr.Error, match="t must"):
        lab.forward_view(lab.model_sprite("hero", 0), t, 0, False, "hero")


def test_forward_view_refuses_unknown_class_and_bad_seed(lab):
    sprite = lab.model_sprite("hero", 0)
    with pytest.raises(gr.Error, match="unknown class 'dragon'"):
        lab.forward_view(sprite, 10, 0, True, "dragon")
    with pytest.raises(gr.Error, match="noise seed"):
        lab.forward_view(sprite, 10, float("inf"), False, "hero")


@pytest.mark.parametrize("name", ["rgb", "gray", "transparent", "palette"])
def test_forward_upload_accepts_any_image_mode(lab, images, name):
    x0_pic, *rest = lab.forward_upload(str(images[name]), 100, 0, False, "hero")
    sprite = ix.sprite_from_picture(x0_pic, 16)  # the picture on screen shrinks back to the same sprite
    assert sprite.shape == (16, 16, 3) and sprite.dtype == np.uint8
    if name == "transparent":  # transparency lands on white, the square stays green
        assert (sprite[0, 0] == 255).all() and tuple(sprite[8, 8]) == (20, 200, 40)


@pytest.mark.parametrize("name,match", [("corrupt", "not a readable image"), ("text", "not a readable image"),
                                        ("huge", "10000x10000, larger than")])
def test_forward_upload_refuses_bad_files_with_a_clear_message(lab, images, name, match):
    with pytest.raises(gr.Error, match=match) as e:
        lab.forward_upload(str(images[name]), 100, 0, False, "hero")
    assert str(images[name].parent) not in str(e.value.message)  # no server paths in messages


def test_forward_upload_needs_a_file(lab):
    with pytest.raises(gr.Error, match="upload an image"):
        lab.forward_upload(None, 100, 0, False, "hero")


def test_forward_draw_refuses_an_empty_canvas_and_keeps_the_drawn_colours(lab):
    canvas = np.zeros((256, 256, 4), np.uint8)
    with pytest.raises(gr.Error, match="empty"):
        lab.forward_draw({"background": None, "layers": [], "composite": canvas}, 10, 0, False, "hero")
    with pytest.raises(gr.Error, match="draw something"):
        lab.forward_draw({"background": None, "layers": [], "composite": None}, 10, 0, False, "hero")
    canvas[64:192, 64:192] = (208, 70, 72, 255)
    sprite = ix.sprite_from_picture(
        lab.forward_draw({"background": None, "layers": [], "composite": canvas}, 10, 0, False, "hero")[0], 16)
    assert tuple(sprite[8, 8]) == (208, 70, 72) and tuple(sprite[0, 0]) == (255, 255, 255)


# --- reverse process -------------------------------------------------------------------------------
def test_reverse_reset_shows_pure_noise(lab):
    run, xt, x0, eps, timeline, status = rev(lab, None, lab.reverse_reset)
    assert isinstance(run, ix.ReverseRun) and run.taken == 0
    assert "Step 0 / 4" in status and "t = 500" in status
    assert Image.open(xt).size == Image.open(x0).size == Image.open(eps).size
    assert Path(xt).name == "reverse-hero-step0.png" and Path(eps).name == "reverse-hero-step0-predicted-noise.png"


def test_reverse_step_until_done_then_scrub_back(lab):
    run = rev(lab, None, lab.reverse_reset)[0]
    pictures = []
    for k in range(1, 5):
        out = rev(lab, run)
        assert out[0] is run  # the same session run continues
        assert f"Step {k} / 4" in out[5]
        pictures.append(arr(out[1]))
    assert run.done and "done" in out[5] and out[4] == 4
    assert "last prediction" in out[5]  # the final frame's panels say what they show
    assert arr(out[3]).std() > 1  # ... and are not flat grey
    assert not (pictures[0] == pictures[-1]).all()
    again = rev(lab, run)  # stepping a finished run says so, nothing breaks
    assert "Finished" in again[5]
    back = lab.reverse_scrub(run, 1)
    assert "Step 1 / 4" in back[5] and (arr(back[1]) == pictures[0]).all()
    assert "Step 0 / 4" in lab.reverse_scrub(run, 0)[5]
    assert "Step 4 / 4" in lab.reverse_scrub(run, 400)[5]  # beyond the steps taken: the last frame


def test_reverse_run_streams_every_step_and_matches_stepping(lab):
    outs = list(rev(lab, None, lab.reverse_run, seed=5))
    assert len(outs) == 5  # x_T, then one update per step
    assert [f"Step {k} / 4" in o[5] for k, o in enumerate(outs)] == [True] * 5
    run = rev(lab, None, lab.reverse_reset, seed=5)[0]
    for _ in range(4):
        last = rev(lab, run, seed=5)
    assert (arr(last[1]) == arr(outs[-1][1])).all()  # Run and Step agree (same seed)


def test_reverse_changed_settings_start_a_new_run(lab):
    run = rev(lab, None, lab.reverse_reset)[0]
    rev(lab, run)
    out = rev(lab, run, seed=9)
    assert out[0] is not run and "Step 1 / 4" in out[5]


def test_reverse_takes_a_class_mix_and_refuses_zero_or_nan_weights(lab):
    out = rev(lab, None, cls="mix", mix=(0.5, 0, 0.5, 0, 0))
    assert "class mix" in out[5]
    with pytest.raises(gr.Error, match="at least one class"):
        rev(lab, None, cls="mix", mix=(0, 0, 0, 0, 0))
    with pytest.raises(gr.Error, match="weight of food"):
        rev(lab, None, cls="mix", mix=(0.5, 0, float("nan"), 0, 0))


@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps must lie between 1 and 500"), (dict(steps=501), "steps"),
    (dict(guidance=float("nan")), "guidance must be a finite"), (dict(guidance=-1), "guidance"),
    (dict(n=0), "sprites"), (dict(n=17), "sprites"), (dict(seed=-3), "seed"),
    (dict(cls="dragon"), "unknown class 'dragon'"), (dict(sampler="euler"), "unknown sampler"),
])
def test_reverse_refuses_bad_settings(lab, kw, match):
    for fn in (lab.reverse_reset, lab.reverse_step):
        with pytest.raises(gr.Error, match=match):
            rev(lab, None, fn, **kw)
    with pytest.raises(gr.Error, match=match):
        list(rev(lab, None, lab.reverse_run, **kw))


def test_reverse_gif_needs_a_step_then_holds_every_frame(lab):
    with pytest.raises(gr.Error, match="no steps taken"):
        lab.reverse_gif(None)
    run = rev(lab, None, lab.reverse_reset)[0]
    for _ in range(4):
        rev(lab, run)
    path = lab.reverse_gif(run)
    assert Path(path).name == "reverse-hero-trajectory.gif"
    im = Image.open(path)
    assert im.format == "GIF" and im.n_frames == 5


def test_reverse_trajectory_memory_is_capped(lab):
    run = rev(lab, None, lab.reverse_reset, n=1, sampler="ddim", steps=300, guidance=0)[0]
    while not run.done:
        run.advance()
    assert len(run.frames) <= ix.MAX_FRAMES
    assert run.frames[0].step == 0 and run.frames[-1].step == 300
    assert all(f.x_t.dtype == np.uint8 for f in run.frames)


# --- generate ----------------------------------------------------------------------------------
def test_generate_all_classes_gives_one_row_each_and_a_sheet(lab):
    outs = list(lab.generate("all classes", 3, "dpm++", 5, 2.0, 0, False))
    assert len(outs) == 5 and all(o[1] is None and "step" in o[2] for o in outs[:-1])  # progress, then the sheet
    shown, sheet_path, caption = outs[-1]
    assert Path(sheet_path).name == "sprite-sheet-all.png"
    sheet, shown = Image.open(sheet_path), Image.open(shown)
    assert sheet.format == "PNG" and sheet.size == (3 * 16, 5 * 16) and sheet.mode == "RGB"
    assert shown.size == ((3 * 17 + 1) * 8, (5 * 17 + 1) * 8)
    assert all(c in caption for c in CLASSES)


def test_generate_is_deterministic_and_transparent_sheets_have_alpha(lab):
    a = Image.open(generated(lab, "food", 4, "ddim", 5, 1.0, 11, False)[1])
    b = Image.open(generated(lab, "food", 4, "ddim", 5, 1.0, 11, False)[1])
    c = Image.open(generated(lab, "food", 4, "ddim", 5, 1.0, 12, False)[1])
    assert (arr(a) == arr(b)).all() and not (arr(a) == arr(c)).all()
    t = Image.open(generated(lab, "food", 4, "ddim", 5, 1.0, 11, True)[1])
    assert t.mode == "RGBA" and t.size == (64, 16)


def test_bf16_lab_samples_in_bf16(tiny_model_dir, lab):
    bf16 = app.create_lab(str(tiny_model_dir), "cpu", "bf16")
    assert lab.precision == "fp32" and bf16.precision == "bf16"
    fp32_sheet = arr(Image.open(generated(lab, "hero", 4, "ddim", 5, 2.0, 3, False)[1]))
    bf16_sheet = arr(Image.open(generated(bf16, "hero", 4, "ddim", 5, 2.0, 3, False)[1]))
    assert fp32_sheet.shape == bf16_sheet.shape and not (fp32_sheet == bf16_sheet).all()
    # bf16 rounding moves some colours a little, never the picture as a whole
    assert np.abs(fp32_sheet.astype(int) - bf16_sheet.astype(int)).mean() < 8
    assert "bf16" in bf16.model_info()


def test_auto_precision_is_bf16_only_where_it_is_fast(tiny_model_dir, monkeypatch):
    import ddpm.device

    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(ddpm.device, "bf16_is_fast", lambda device, fast=fast: fast)
        assert app.create_lab(str(tiny_model_dir), "cpu", "auto").precision == expected
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        app.create_lab(str(tiny_model_dir), "cpu", "fp16")


@pytest.mark.parametrize("args,match", [
    (("dragon", 4, "dpm++", 5, 2, 0, False), "unknown class"),
    (("hero", 0, "dpm++", 5, 2, 0, False), "sprites must lie between 1 and 16"),
    (("hero", 4, "dpm++", 0, 2, 0, False), "steps"),
    (("hero", 4, "dpm++", 5, float("nan"), 0, False), "guidance"),
    (("hero", 4, "dpm++", 5, 2, float("nan"), False), "seed"),
    (("hero", 4, "nope", 5, 2, 0, False), "unknown sampler"),
])
def test_generate_refuses_bad_input(lab, args, match):
    with pytest.raises(gr.Error, match=match):
        generated(lab, *args)


def test_generate_and_remix_snap_to_the_models_palette(lab):
    palette = np.array([[20, 12, 28], [208, 70, 72], [222, 238, 214], [89, 125, 206]], np.uint8)
    pal_lab = app.SpriteLab(lab.model, lab.schedule, lab.device, lab.source, palette)
    allowed = {tuple(c) for c in palette}
    snapped = np.asarray(Image.open(generated(pal_lab, "hero", 3, "ddim", 5, 2.0, 0, False, True)[1]))
    raw = np.asarray(Image.open(generated(pal_lab, "hero", 3, "ddim", 5, 2.0, 0, False, False)[1]))
    assert {tuple(c) for c in snapped.reshape(-1, 3)} <= allowed
    assert not {tuple(c) for c in raw.reshape(-1, 3)} <= allowed
    result = pal_lab.remix(lab.model_sprite("hero", 0), "food", 0.5, "ddim", 10, 2.0, 0, True)[0]
    assert {tuple(c) for c in arr(result).reshape(-1, 3)} <= allowed
    assert "4 colours" in pal_lab.model_info()


# --- remix -------------------------------------------------------------------------------------
def test_remix_low_strength_stays_closer_to_the_source(lab, images):
    source = lab.remix_upload(str(images["rgb"]))  # the source picture as shown: what Remix takes
    sprite = arr(source).astype(np.uint8)
    low = arr(lab.remix(sprite, "food", 0.05, "ddim", 20, 0, 0)[0])
    high = arr(lab.remix(sprite, "food", 1.0, "ddim", 20, 0, 0)[0])
    src = arr(source)
    assert np.abs(low - src).mean() < np.abs(high - src).mean()


def test_remix_names_its_outputs_and_takes_a_sprite_or_a_drawing(lab):
    source = lab.remix_sprite("hero", 1)
    assert Path(source).name == "sprite-hero-seed1.png"
    result, strip, info = lab.remix(source, "spell", 0.6, "dpm++", 20, 2.0, 0)
    assert Path(result).name == "remix-as-spell-strength0.60.png"
    result, strip = Image.open(result), Image.open(strip)
    assert result.size == (256, 256) and "t = 300" in info and "12 steps" in info and "spell" in info
    assert strip.size[0] > 4 * strip.size[1]  # a horizontal strip of frames
    canvas = np.zeros((256, 256, 4), np.uint8)
    canvas[:128] = (89, 125, 206, 255)
    drawn = ix.sprite_from_picture(lab.remix_draw({"background": None, "layers": [], "composite": canvas}), 16)
    assert tuple(drawn[0, 0]) == (89, 125, 206) and tuple(drawn[15, 15]) == (255, 255, 255)


@pytest.mark.parametrize("args,match", [
    (("dragon", 0.5, "dpm++", 10, 2, 0), "unknown class"),
    (("food", 0, "dpm++", 10, 2, 0), "strength"),
    (("food", float("nan"), "dpm++", 10, 2, 0), "strength"),
    (("food", 0.5, "dpm++", 0, 2, 0), "steps"),
])
def test_remix_refuses_bad_input(lab, args, match):
    with pytest.raises(gr.Error, match=match):
        lab.remix(lab.model_sprite("hero", 0), *args)


# --- model tab, pictures, start-up -------------------------------------------------------------------
def test_model_info_shows_source_device_classes_and_the_card_without_front_matter(lab, tiny_model_dir):
    info = lab.model_info()
    assert str(tiny_model_dir) in info and "cpu" in info and all(c in info for c in CLASSES)
    assert "Test card" in info and "license:" not in info
    # the folder's picture inlined (a relative link would resolve against the page), the missing one left out
    uri = "data:image/png;base64," + base64.b64encode((tiny_model_dir / "samples.png").read_bytes()).decode()
    assert f"![samples]({uri})" in info and "before_after" not in info


def test_pictures_are_named_files_and_shrink_back_to_their_sprite(lab):
    sprite = lab.model_sprite("hero", 0)
    paths = {app.saved(sprite, "x_t-hero-t125.png", app.BIG) for _ in range(3)}
    assert len(paths) == 3 and {Path(p).name for p in paths} == {"x_t-hero-t125.png"}  # same name, own files
    assert (ix.sprite_from_picture(next(iter(paths)), 16) == sprite).all()
    assert Path(ix.write_named(b"x", "../odd name?.png")).name == "odd-name-.png"


def test_page_open_is_computed_once(lab):
    assert lab.opening() is lab.opening()
    forward = lab.opening()["forward"]
    assert Path(forward[1]).name == "x_t-hero-t125.png" and "t = 125" in forward[2]
    assert "row 5" in lab.opening()["generate"][2] and Path(lab.opening()["generate"][1]).is_file()


def test_mix_weights_are_named_parameters(lab):
    import inspect

    named = app.with_mix_parameters(lab.reverse_step, lab.classes)
    assert list(inspect.signature(named).parameters)[-5:] == [f"{c}_weight" for c in CLASSES]
    assert "Step 1 / 4" in named(None, "hero", 2, 0, "dpm++", 4, 2.0, 1, 0, 0, 0, 0)[5]


def test_forward_view_and_remix_take_any_picture(lab, images):
    xt, info, *_ = lab.forward_view(str(images["rgb"]), 0, 0, False, "hero")
    assert "t = 0" in info and Image.open(xt).size == (256, 256)
    with pytest.raises(gr.Error, match="not an 8-bit image"):
        lab.forward_view(np.zeros((4, 4, 3), np.float32), 10, 0, False, "hero")
    assert "food" in lab.remix(None, "food", 0.5, "ddim", 5, 1.0, 0)[2]  # no sprite sent: the tab's opening one


def test_main_fails_cleanly_on_missing_or_broken_checkpoints(tmp_path, capsys):
    assert app.main(["--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load the model") and "\n" not in err and "Traceback" not in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert app.main(["--model", str(tmp_path / "broken")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_main_refuses_unavailable_device(tiny_model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert app.main(["--model", str(tiny_model_dir), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_gpu_decorator_is_a_no_op_off_spaces(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    f = lambda: 1  # noqa: E731
    assert app.gpu_decorator()(f) is f


def test_gpu_decorator_uses_spaces_on_zero_gpu(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("spaces")
    fake.GPU = lambda fn: ("decorated", fn)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    f = lambda: 1  # noqa: E731
    assert app.gpu_decorator()(f) == ("decorated", f)
    monkeypatch.setitem(sys.modules, "spaces", None)  # on ZeroGPU but the package is missing: no-op
    assert app.gpu_decorator()(f) is f


def test_parse_args_defaults(monkeypatch):
    monkeypatch.delenv("DDPM_MODEL", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    a = app.parse_args([])
    assert Path(a.model) == Path(app.__file__).resolve().parent / "weights" and a.host == "127.0.0.1"
    monkeypatch.setenv("DDPM_MODEL", "someone/sprites")
    assert app.parse_args([]).model == "someone/sprites"
    assert app.parse_args(["--threads", "1", "--port", "9000"]).threads == 1 and a.threads is None
    assert a.precision == "auto" and app.parse_args(["--precision", "fp32"]).precision == "fp32"


@pytest.mark.skipif(not (Path(app.__file__).parent / "weights" / "model.safetensors").is_file(),
                    reason="weights/ not shipped in this checkout")
def test_shipped_weights_load_and_generate():
    shipped = app.create_lab(str(Path(app.__file__).parent / "weights"), "cpu")
    shown, path, caption = generated(shipped, "all classes", 2, "dpm++", 10, 2.0, 0, False)
    assert Image.open(path).size == (32, 16 * len(shipped.classes))


# --- ddpm.interactive ---------------------------------------------------------------------------
def test_thin_keeps_first_and_last():
    out = ix.thin(list(range(1000)), 50)
    assert len(out) <= 50 and out[0] == 0 and out[-1] == 999 and out == sorted(out)


def test_remix_start_and_steps():
    assert ix.remix_start(0.6, 500) == 300 and ix.remix_start(0.01, 50) == 1
    assert ix.remix_steps(20, 300, 500) == 12 and ix.remix_steps(20, 1, 500) == 1 and ix.remix_steps(500, 10, 500) == 10


def test_write_named_is_unique_and_complete(tmp_path):
    paths = {ix.write_named(b"same bytes", "sheet.png", folder=tmp_path) for _ in range(5)}
    assert len(paths) == 5 and all(Path(p).read_bytes() == b"same bytes" and Path(p).name == "sheet.png"
                                   for p in paths)
    assert not list(tmp_path.glob("*/.*"))  # no staging files left


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(None).type in ("cuda", "mps", "cpu")
    with pytest.raises(RuntimeError):
        pick_device("warp-drive")


def test_forward_view_matches_the_schedule():
    from ddpm.schedule import NoiseSchedule

    s = NoiseSchedule()
    sprite = np.full((16, 16, 3), 255, np.uint8)
    v = ix.forward_view(s, sprite, 250, 0)
    assert math.isclose(v.noise_level, math.sqrt(1 - float(s.alpha_bars[250])))
    expected = s.add_noise(torch.ones(1, 3, 16, 16), ix.forward_noise((1, 3, 16, 16), 0), 250)
    assert (v.x_t == ((expected.clamp(-1, 1) + 1) * 127.5).round().byte()[0].permute(1, 2, 0).numpy()).all()
