"""Hub-format checkpoints: round trips, repo ids from an offline Hub cache, and every bad case."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm.folder import CheckpointError

from ddpm.checkpoint import load_model, load_schedule, save_model
from ddpm.model import ContextUnet
from ddpm.schedule import NoiseSchedule

from helpers import CLASSES, PROJECT, make_tiny_unet


def probe():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 16, 16, generator=g), torch.rand(3, generator=g), torch.eye(5)[[0, 2, 4]]


@torch.no_grad()
def outputs(model):
    return model.eval()(*probe())


# --- round trips ----------------------------------------------------------------------------------
def test_save_then_load_round_trip(tmp_path):
    model = make_tiny_unet(seed=3, norm="group", time_embedding="sinusoidal")
    schedule = NoiseSchedule(300, "cosine")
    folder = save_model(model, schedule, tmp_path / "m", model_card="# card\n")
    for name in ("config.json", "model.safetensors", "scheduler_config.json", "README.md"):
        assert (folder / name).is_file(), name
    assert (folder / "README.md").read_text() == "# card\n"
    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"] == CLASSES and config["norm"] == "group"
    loaded = load_model(folder)
    assert not loaded.training
    assert loaded.config_dict == model.config_dict
    assert torch.equal(outputs(loaded), outputs(model))
    assert load_schedule(folder).config() == schedule.config()
    torch.testing.assert_close(load_schedule(folder).alpha_bars, schedule.alpha_bars)


def test_a_folder_without_a_schedule_is_an_error(model_copy):
    (model_copy / "scheduler_config.json").unlink()
    for loader in (load_schedule, load_model, ContextUnet.from_pretrained):
        with pytest.raises(CheckpointError, match="scheduler_config.json: missing"):
            loader(model_copy)
    (model_copy / "scheduler_config.json").write_text('{"T": 0}')
    with pytest.raises(CheckpointError, match="scheduler_config.json"):
        load_schedule(model_copy)


def test_save_from_a_channels_last_model(tmp_path):
    model = make_tiny_unet(seed=4)
    expected = outputs(model)
    save_model(model.to(memory_format=torch.channels_last), NoiseSchedule(), tmp_path / "m")
    assert torch.equal(outputs(load_model(tmp_path / "m")), expected)


def test_from_pretrained_local_dir_is_strict(tiny_model_dir):
    model = ContextUnet.from_pretrained(tiny_model_dir)
    assert isinstance(model, ContextUnet)
    assert torch.equal(outputs(model), outputs(load_model(tiny_model_dir)))
    assert torch.equal(outputs(ContextUnet.from_pretrained(str(tiny_model_dir))), outputs(model))


def test_from_pretrained_refuses_missing_weights(model_copy):
    # the mixin's default strict=False would load this silently
    state = load_file(str(model_copy / "model.safetensors"))
    del state["out.3.weight"]
    save_file(state, str(model_copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing.*out\.3\.weight"):
        ContextUnet.from_pretrained(model_copy)
    with pytest.raises(CheckpointError, match="missing"):
        ContextUnet.from_pretrained(model_copy, strict=False)


HUB_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from ddpm.folder import CheckpointError
    from ddpm.checkpoint import load_model
    from ddpm.model import ContextUnet
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(3, 3, 16, 16, generator=g), torch.rand(3, generator=g), torch.eye(5)[[0, 2, 4]]
    with torch.no_grad():
        a = load_model("sprite-lab/tiny-test")(x, t, c)
        b = ContextUnet.from_pretrained("sprite-lab/tiny-test")(x, t, c)
    save_file({"load_model": a, "from_pretrained": b}, sys.argv[1])
    start = time.time()
    for loader in (load_model, ContextUnet.from_pretrained):
        try:
            loader("sprite-lab/not-cached")
        except CheckpointError as e:
            print("ERROR:", e)
    print("SECONDS:", time.time() - start)
""")


def test_load_by_repo_id_from_offline_hub_cache(tiny_model_dir, tmp_path):
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--sprite-lab--tiny-test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1",
               # any attempt at the network fails at once instead of waiting
               HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    result_file = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(result_file)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(str(result_file))
    expected = outputs(load_model(tiny_model_dir))
    assert torch.equal(got["load_model"], expected)
    assert torch.equal(got["from_pretrained"], expected)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, proc.stdout
    for line in errors:
        assert "sprite-lab/not-cached" in line and "offline" in line
    seconds = float(proc.stdout.split("SECONDS:")[1])
    assert seconds < 10, "an uncached repo id offline must fail at once"


# --- bad checkpoints: a CheckpointError naming the file ------------------------------------------------
def expect_error(loader, source, *fragments):
    with pytest.raises(CheckpointError) as info:
        loader(source)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, message
    assert "\n" not in message
    return message


def test_missing_path(loader, tmp_path):
    expect_error(loader, tmp_path / "no" / "such" / "model", tmp_path / "no" / "such" / "model")


def test_file_instead_of_dir(loader, model_copy):
    expect_error(loader, model_copy / "config.json", model_copy / "config.json", "directory")


def test_missing_config(loader, model_copy):
    (model_copy / "config.json").unlink()
    expect_error(loader, model_copy, model_copy / "config.json", "missing")


def test_invalid_json(loader, model_copy):
    (model_copy / "config.json").write_text('{"n_feat": 16,')
    expect_error(loader, model_copy, model_copy / "config.json", "JSON")


def test_config_not_an_object(loader, model_copy):
    (model_copy / "config.json").write_text("[1, 2]")
    expect_error(loader, model_copy, model_copy / "config.json")


def test_unknown_config_key(loader, model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["n_layers"] = 3
    (model_copy / "config.json").write_text(json.dumps(config))
    expect_error(loader, model_copy, model_copy / "config.json", "n_layers")


def test_invalid_config_value(loader, model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["height"] = 12
    (model_copy / "config.json").write_text(json.dumps(config))
    expect_error(loader, model_copy, model_copy / "config.json", "height")


def test_config_not_matching_weights(loader, model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["n_feat"] = 8
    (model_copy / "config.json").write_text(json.dumps(config))
    expect_error(loader, model_copy, model_copy / "model.safetensors", "config.json", "shape")


def test_extra_weights(loader, model_copy):
    state = load_file(str(model_copy / "model.safetensors"))
    state["extra.weight"] = torch.zeros(3)
    save_file(state, str(model_copy / "model.safetensors"))
    expect_error(loader, model_copy, model_copy / "model.safetensors", "unexpected", "extra.weight")


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -16])
def test_truncated_safetensors(loader, model_copy, keep):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    expect_error(loader, model_copy, path)


def test_missing_weights(loader, model_copy):
    (model_copy / "model.safetensors").unlink()
    expect_error(loader, model_copy, model_copy / "model.safetensors", "missing")


class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_checkpoint_refused_never_unpickled(loader, model_copy, tmp_path):
    (model_copy / "model.safetensors").unlink()
    marker = tmp_path / "unpickled.txt"
    _Exploit.marker = marker
    (model_copy / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit()))
    expect_error(loader, model_copy, model_copy / "pytorch_model.bin", "pickle")
    assert not marker.exists(), "the pickle was loaded"


def test_nan_weights(loader, model_copy):
    state = load_file(str(model_copy / "model.safetensors"))
    state["init_conv.conv1.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(model_copy / "model.safetensors"))
    expect_error(loader, model_copy, model_copy / "model.safetensors", "NaN")
