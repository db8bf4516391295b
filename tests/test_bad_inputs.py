"""Bad inputs through the HTTP API, the CLIs and the loaders: a clear message, and the process keeps working.

The list below gives each kind of bad input and the tests that cover it, in this file unless another
file is named. After every server case the same server answers a normal request (`still_serves`);
after the CLI cases a normal sample run succeeds in the same process. The browser tests check what a
person sees after a bad upload: the message, and the pictures on screen kept.

Images (upload, draw, data loaders)
 1. corrupt PNG (cut short) .......... test_bad_uploads_get_clear_errors[corrupt],
                                       test_app.py::test_forward_upload_refuses_bad_files_with_a_clear_message[corrupt],
                                       test_app_browser.py::test_remix_uses_the_source_on_screen (in the page),
                                       test_data.py::test_image_folder_bad_image[truncated.png|corrupt.png]
 2. text file named .png ............. test_bad_uploads_get_clear_errors[text], test_app.py::...[text],
                                       test_app_browser.py::test_forward_follows_every_input_and_keeps_pictures_on_a_bad_upload
 3. PNG header claiming 10000x10000 .. test_bad_uploads_get_clear_errors[huge], test_app.py::...[huge],
                                       test_data.py::test_image_folder_bad_image[bomb.png|huge_bomb.png]
 4. zero-byte file ................... test_api_rejects_bad_files[zero-byte] (HTTP), test_data.py::...[zero.png],
                                       test_cli_refuses_bad_data_in_one_line[zero-byte image] (train CLI)
 5. real decompression bomb (a valid 5000x5000 PNG of a few KB) .. test_api_rejects_bad_files[bomb]
 6. 1x1 image (accepted, enlarged) ... test_api_accepts_awkward_images[1x1]
 7. 4000x4000 image (accepted, shrunk) test_api_accepts_awkward_images[4000x4000]
 8. 16-bit greyscale PNG ............. test_api_accepts_awkward_images[16-bit],
                                       test_data.py::test_image_folder_turns_every_kind_of_image_into_a_sprite
 9. palette PNG with transparency .... test_api_accepts_awkward_images[palette],
                                       test_data.py::test_image_folder_turns_every_kind_of_image_into_a_sprite
10. file above max_file_size (11 MB) . test_api_refuses_oversized_upload
11. non-image file type (.txt) ....... test_non_image_file_type_is_refused
12. a server file outside the upload folder named as an input ..
                                       test_safety.py::test_api_refuses_a_server_path_as_an_upload,
                                       test_safety.py::test_api_cannot_read_server_files
13. empty or missing drawing ......... test_api_refuses_empty_drawings,
                                       test_app.py::test_forward_draw_refuses_an_empty_canvas_and_keeps_the_drawn_colours
Numbers and choices (API and handlers)
14. NaN ............................. test_bad_numbers_and_classes_get_clear_errors (raw HTTP)
15. +inf / -inf ...................... test_api_refuses_infinite_numbers (raw HTTP),
                                       test_app.py::test_forward_view_refuses_unknown_class_and_bad_seed
16. negative numbers ................. test_api_refuses_bad_numbers[negative strength|negative t],
                                       test_app.py::test_reverse_refuses_bad_settings
17. huge numbers (n = 1e9, seed = 1e300) .. test_api_refuses_bad_numbers[huge n|huge seed]
18. steps beyond T ................... test_api_refuses_bad_numbers[steps beyond T], test_app.py::test_reverse_refuses_bad_settings,
                                       test_cli.py::test_sample_bad_input_one_clear_line
19. unknown class name ............... test_api_refuses_bad_numbers[unknown class], test_bad_numbers_and_classes_get_clear_errors,
                                       test_cli.py::test_sample_bad_input_one_clear_line
20. unknown sampler .................. test_api_refuses_bad_numbers[unknown sampler], test_app.py::test_generate_refuses_bad_input
21. a class mix with all-zero weights  test_bad_numbers_and_classes_get_clear_errors,
                                       test_app.py::test_reverse_takes_a_class_mix_and_refuses_zero_or_nan_weights
22. a string where a number belongs .. test_api_survives_malformed_requests[string t] (refused; the message is Gradio's generic one)
23. scrubbing / GIF before any step (fresh session) .. test_api_refuses_actions_out_of_order
24. malformed JSON body / too few inputs .. test_api_survives_malformed_requests[bad json|too few inputs]
Checkpoints (app start-up, CLIs, loaders)
25. truncated safetensors ............ test_cli_refuses_bad_checkpoints_in_one_line[truncated] (python -m ddpm.sample, subprocess),
                                       test_app_main_refuses_truncated_weights, test_checkpoint.py::test_truncated_safetensors
26. config not matching the weights .. test_cli_refuses_bad_checkpoints_in_one_line[config mismatch] (ddpm.evaluate),
                                       test_checkpoint.py::test_config_not_matching_weights
27. pickle checkpoint (code execution attempt) .. test_cli_refuses_bad_checkpoints_in_one_line[pickle] (ddpm.sample),
                                       test_checkpoint.py::test_pickle_checkpoint_refused_never_unpickled
28. unknown device name .............. test_cli_refuses_bad_checkpoints_in_one_line[unknown device]
Data and arguments (CLIs, loaders)
29. labels file of the wrong length .. test_cli_refuses_bad_data_in_one_line[labels length] (ddpm.train),
                                       test_data.py::test_npy_label_count_mismatch
30. data classes not matching the model .. test_cli_refuses_bad_data_in_one_line[class mismatch] (ddpm.evaluate)
31. empty --classes .................. test_cli_refuses_bad_arguments_with_exit_2[empty classes]
32. infinite --lr / --guidance, --n 1 for evaluate .. test_cli_refuses_bad_arguments_with_exit_2[...]
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

import app
from helpers import CLASSES, PROJECT, png, write_npy_dataset

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


def still_serves(client):
    x_t, info, *_ = client.predict(t=3, noise_seed=0, show_model=False, cls="hero", api_name="/forward_view")
    assert "t = 3" in info and png(x_t).shape == (256, 256, 3)


def raw_args(client, api_name: str, **values) -> list:
    """Every input of an endpoint in order (its defaults, with `values` by name): raw calls need them all."""
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"]
    assert set(values) <= {p["parameter_name"] for p in params}, (values, params)
    return [values.get(p["parameter_name"], p["parameter_default"]) for p in params]


def raw_call(server: str, api_name: str, body: str) -> tuple[str, str]:
    """POST a raw JSON body to Gradio's call API; the final SSE event and its data (as text)."""
    url = f"{server}gradio_api/call{api_name}"
    r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text
    text = httpx.get(f"{url}/{r.json()['event_id']}", timeout=60).text
    return re.findall(r"event: (\w+)\ndata: (.*)", text)[-1]


# --- images through the API ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,match", [("corrupt", "not a readable image"), ("text", "not a readable image"),
                                        ("huge", "larger than")])
def test_bad_uploads_get_clear_errors(client, images, name, match):
    for api_name, extra in (("/forward_upload", (10, 0, False, "hero")), ("/remix_upload", ())):
        with pytest.raises(AppError, match=match):
            client.predict(handle_file(str(images[name])), *extra, api_name=api_name)
    still_serves(client)


@pytest.mark.parametrize("name,match", [("zero-byte", "empty.png: not a readable image"),
                                        ("bomb", "5000x5000, larger than the 16,777,216 pixels")],
                         ids=["zero-byte", "bomb"])
def test_api_rejects_bad_files(client, awkward_images, name, match):
    assert awkward_images[name].stat().st_size < 100_000
    with pytest.raises(AppError, match=match):
        client.predict(handle_file(str(awkward_images[name])), api_name="/forward_upload")
    with pytest.raises(AppError, match=match):
        client.predict(handle_file(str(awkward_images[name])), api_name="/remix_upload")
    still_serves(client)


@pytest.mark.parametrize("name", ["1x1", "4000x4000", "16-bit", "palette"])
def test_api_accepts_awkward_images(client, awkward_images, name):
    sprite = png(client.predict(handle_file(str(awkward_images[name])), t=0, api_name="/forward_upload")[0])
    assert sprite.shape == (256, 256, 3)
    top, bottom = tuple(sprite[8, 8]), tuple(sprite[-8, -8])
    expected = {"1x1": ((200, 30, 40), (200, 30, 40)), "4000x4000": ((20, 40, 200), (255, 255, 255)),
                "16-bit": ((128, 128, 128), (128, 128, 128)), "palette": ((255, 255, 255), (10, 200, 60))}[name]
    assert (top, bottom) == expected
    still_serves(client)


def test_api_refuses_oversized_upload(server, client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(11 * 2 ** 20))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(handle_file(str(big)), api_name="/forward_upload")
    with open(big, "rb") as f:  # any other client is stopped by the server
        r = httpx.post(f"{server}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413 and "size" in r.text.lower(), (r.status_code, r.text[:300])
    still_serves(client)


def test_non_image_file_type_is_refused(client, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AppError, match="(?i)invalid file type"):
        client.predict(handle_file(str(tmp_path / "notes.txt")), 10, 0, False, "hero", api_name="/forward_upload")
    still_serves(client)


def test_api_refuses_empty_drawings(client, tmp_path):
    with pytest.raises(AppError, match="draw something on the canvas first"):
        client.predict(dict(background=None, layers=[], composite=None, id=None), api_name="/remix_draw")
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(tmp_path / "blank.png")
    blank = dict(background=None, layers=[], composite=handle_file(str(tmp_path / "blank.png")), id=None)
    with pytest.raises(AppError, match="the canvas is empty"):
        client.predict(blank, api_name="/forward_draw")
    still_serves(client)


# --- numbers and choices through the API ------------------------------------------------------------
@pytest.mark.parametrize("api_name,values,match", [
    ("/generate", dict(cls="hero", n=10 ** 9), "greater than maximum value 16"),
    ("/generate", dict(cls="hero", seed=1e300), "greater than maximum value 2147483647"),
    ("/generate", dict(cls="hero", steps=501), "greater than maximum value 500"),
    ("/generate", dict(cls="hero", sampler="euler"), "'euler'.*not in the list of choices"),
    ("/remix", dict(strength=-0.5), "less than minimum value 0.05"),
    ("/remix", dict(cls="dragon"), "dragon"),
    ("/forward_view", dict(t=-1), "less than minimum value 0"),
], ids=["huge n", "huge seed", "steps beyond T", "unknown sampler", "negative strength", "unknown class",
        "negative t"])
def test_api_refuses_bad_numbers(client, api_name, values, match):
    with pytest.raises(AppError, match=match):
        client.predict(**values, api_name=api_name)
    still_serves(client)


@pytest.mark.parametrize("args,api_name,match", [
    ((None, float("nan"), 0, False, "hero"), "/forward_view", "t must be a finite"),
    ((None, 10_000, 0, False, "hero"), "/forward_view", "(?i)t|range|bound"),
    ((None, 10, 0, True, "dragon"), "/forward_view", "dragon"),
    (("hero", 2, 0, "dpm++", 0, 2.0, 1.0, 0, 0, 0, 0), "/reverse_step", "(?i)steps|bound|minimum"),
    (("hero", 2, 0, "dpm++", 4, float("nan"), 1.0, 0, 0, 0, 0), "/reverse_step", "guidance must be a finite"),
    (("mix", 2, 0, "dpm++", 4, 2.0, 0, 0, 0, 0, 0), "/reverse_run", "at least one class"),
    (("dragon", 2, "dpm++", 5, 2.0, 0, False), "/generate", "dragon"),
    (("hero", 2, "dpm++", 0, 2.0, 0, False), "/generate", "(?i)steps|bound|minimum"),
    (("hero", 2, "dpm++", 5, 2.0, float("nan"), False, True), "/generate", "seed must be a finite"),
    ((None, "food", float("nan"), "dpm++", 10, 2.0, 0, True), "/remix", "strength must be a finite"),
])
def test_bad_numbers_and_classes_get_clear_errors(server, client, args, api_name, match):
    if any(isinstance(a, float) and math.isnan(a) for a in args):
        # gradio_client refuses to encode NaN, but any HTTP client can send it: post it raw.
        event, data = raw_call(server, api_name, json.dumps({"data": list(args)}, allow_nan=True))
        assert event == "error" and re.search(match, json.loads(data)["error"]), data
    else:
        with pytest.raises(AppError, match=match):
            client.predict(*args, api_name=api_name)
    still_serves(client)


@pytest.mark.parametrize("api_name,values,match", [
    ("/forward_view", dict(t=float("inf")), "Value inf is greater than maximum value"),
    ("/generate", dict(cls="hero", guidance=float("-inf")), "Value -inf is less than minimum value 0"),
    ("/remix", dict(seed=float("inf")), "Value inf is greater than maximum value"),
])
def test_api_refuses_infinite_numbers(server, client, api_name, values, match):
    # gradio_client will not encode inf, but any HTTP client can send it
    args = raw_args(client, api_name, **values)
    event, data = raw_call(server, api_name, json.dumps({"data": args}, allow_nan=True))
    assert event == "error" and re.search(match, json.loads(data)["error"] or ""), data
    still_serves(client)


def test_api_refuses_actions_out_of_order(server, client):
    fresh = Client(server, verbose=False, analytics_enabled=False)  # a new session: no reverse run yet
    with pytest.raises(AppError, match="nothing to scrub yet"):
        fresh.predict(1, api_name="/reverse_scrub")
    with pytest.raises(AppError, match="no steps taken yet"):
        fresh.predict(api_name="/reverse_gif")
    still_serves(fresh)
    still_serves(client)


@pytest.mark.parametrize("case", ["string t", "bad json", "too few inputs"])
def test_api_survives_malformed_requests(server, client, case):
    if case == "string t":
        with pytest.raises(AppError):  # Gradio's slider fails comparing "abc" with its bounds: refused
            client.predict(t="abc", api_name="/forward_view")
    elif case == "bad json":
        event, data = raw_call(server, "/generate", "{not json")
        assert event == "http 422" and "JSON" in data
    else:
        event, data = raw_call(server, "/generate", json.dumps({"data": ["hero"]}))
        assert event == "error"
    still_serves(client)


# --- the CLIs ---------------------------------------------------------------------------------------
class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def one_line_error(err: str, *fragments) -> str:
    err = err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert str(f) in err, err
    return err


@pytest.mark.parametrize("case", ["truncated", "config mismatch", "pickle", "unknown device"])
def test_cli_refuses_bad_checkpoints_in_one_line(tiny_model_dir, model_copy, tmp_path, capsys, case):
    import ddpm.evaluate as ev
    import ddpm.sample as sample

    weights = model_copy / "model.safetensors"
    out = tmp_path / "x.png"
    if case == "truncated":  # the real entry point, in a subprocess
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        proc = subprocess.run([sys.executable, "-m", "ddpm.sample", "--model", str(model_copy), "--n", "1",
                               "--steps", "2", "--out", str(out)], cwd=PROJECT, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"), timeout=120)
        assert proc.returncode == 2
        one_line_error(proc.stderr, weights, "truncated")
    elif case == "config mismatch":
        config = json.loads((model_copy / "config.json").read_text())
        config["n_feat"] = 8
        (model_copy / "config.json").write_text(json.dumps(config))
        assert ev.main(["--model", str(model_copy), "--data", str(tmp_path), "--n", "2"]) == 2
        one_line_error(capsys.readouterr().err, weights, "does not match config.json")
    elif case == "pickle":
        weights.unlink()
        _Exploit.marker = tmp_path / "pwned"
        (model_copy / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit()))
        assert sample.main(["--model", str(model_copy), "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, "pytorch_model.bin", "pickle checkpoints are refused")
        assert not _Exploit.marker.exists()
    else:
        assert sample.main(["--model", str(model_copy), "--device", "warp-drive", "--out", str(out)]) == 2
        one_line_error(capsys.readouterr().err, "warp-drive")
    assert not out.exists()
    # the same process still samples normally
    assert sample.main(["--model", str(tiny_model_dir), "--n", "1", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size[1] == 4 * 16 * len(CLASSES)


def test_app_main_refuses_truncated_weights(model_copy, capsys):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert app.main(["--model", str(model_copy), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load the model") and "model.safetensors" in err and "\n" not in err


@pytest.mark.parametrize("case", ["labels length", "zero-byte image", "class mismatch"])
def test_cli_refuses_bad_data_in_one_line(tiny_model_dir, tmp_path, capsys, case):
    import ddpm.evaluate as ev
    import ddpm.train as train

    data = tmp_path / "data"
    if case == "labels length":
        write_npy_dataset(data, n=20)
        labels = np.load(data / "labels.npy")
        np.save(data / "labels.npy", labels[:-1])
        argv, bad = ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"], data / "labels.npy"
        assert train.main(argv) == 2
        one_line_error(capsys.readouterr().err, bad, "19 labels for 20 sprites")
        assert not (tmp_path / "run").exists()
    elif case == "zero-byte image":
        for cls in ("a", "b"):
            (data / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16), (9, 9, 9)).save(data / cls / "ok.png")
        (data / "b" / "zero.png").write_bytes(b"")
        assert train.main(["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
        one_line_error(capsys.readouterr().err, data / "b" / "zero.png", "not a readable image")
    else:
        write_npy_dataset(data, n=12, n_classes=3)
        assert ev.main(["--model", str(tiny_model_dir), "--data", str(data), "--n", "2"]) == 2
        one_line_error(capsys.readouterr().err, "differ")


@pytest.mark.parametrize("module,argv,match", [
    ("sample", ["--classes", ","], "--classes is empty"),
    ("sample", ["--guidance", "inf"], "--guidance"),
    ("train", ["--lr", "inf"], "--lr"),
    ("evaluate", ["--n", "1"], "--n must be at least 2"),
], ids=["empty classes", "infinite guidance", "infinite lr", "evaluate n 1"])
def test_cli_refuses_bad_arguments_with_exit_2(tiny_model_dir, tmp_path, capsys, module, argv, match):
    import importlib

    main = importlib.import_module(f"ddpm.{module}").main
    base = {"sample": ["--model", str(tiny_model_dir), "--out", str(tmp_path / "x.png")],
            "train": ["--data", str(tmp_path), "--out", str(tmp_path / "run")],
            "evaluate": ["--model", str(tiny_model_dir)]}[module]
    try:
        code = main(base + argv)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "run").exists()
