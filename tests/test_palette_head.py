"""x0 prediction ("sample") and the palette head: a network that predicts each pixel's colour as a
distribution over the data's palette, trained with the cross-entropy of the true colours."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import ddpm.train as train
from ddpm.checkpoint import load_model, load_schedule, save_model
from ddpm.images import nearest_colour
from ddpm.losses import diffusion_loss, noise_error, palette_cross_entropy
from ddpm.model import ContextUnet, inference_model
from ddpm.resize import with_palette_head
from ddpm.sampling import predict_noise, sample
from ddpm.schedule import NoiseSchedule

from helpers import make_tiny_unet, train_args

T = 500
COLOURS = [[0, 0, 0], [255, 255, 255], [211, 69, 73], [48, 52, 109]]


def palette_unet(seed: int = 0) -> ContextUnet:
    return make_tiny_unet(seed, output_palette=COLOURS)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(COLOURS, dtype=torch.float32)[torch.randint(len(COLOURS), (6, 16, 16), generator=g)]
    x0 = x0.permute(0, 3, 1, 2) / 127.5 - 1
    t = torch.tensor([1, 2, 50, 200, 400, 500])
    return x0, t, torch.randn(x0.shape, generator=g), torch.eye(5)[[0, 1, 2, 3, 4, 0]]


# --- x0 prediction in the schedule ----------------------------------------------------------------
def test_an_x0_prediction_gives_back_the_noise_and_its_loss_is_the_mse_of_x0():
    schedule = NoiseSchedule(T, prediction="sample")
    x0, t, noise, _ = inputs()
    x_t = schedule.add_noise(x0.double(), noise.double(), t)
    torch.testing.assert_close(schedule.eps_from_output(x_t, x0.double(), t), noise.double(), rtol=1e-7, atol=1e-7)
    assert torch.equal(schedule.target(x0, noise, t), x0)
    # an error in x0 moves the implied noise by sqrt(SNR) times as much
    dx = torch.full_like(x0, 1e-3, dtype=torch.float64)
    moved = schedule.eps_from_output(x_t, x0.double() + dx, t) - schedule.eps_from_output(x_t, x0.double(), t)
    torch.testing.assert_close(moved.abs(), schedule.noise_per_output(t, x_t) * dx, rtol=1e-6, atol=1e-12)
    # the loss weights turn the implied noise's MSE back into x0's
    output = x0 + 0.1 * torch.randn_like(x0)
    per_sprite = (schedule.noise_per_output(t, x0) * (output - x0)).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(diffusion_loss(per_sprite, t, schedule), (output - x0).pow(2).mean(), rtol=1e-4,
                               atol=1e-7)
    assert NoiseSchedule.from_config(schedule.scheduler_config()).prediction == "sample"
    # sampling it against diffusers: tests/test_samplers.py


# --- the palette head ---------------------------------------------------------------------------
def test_the_palette_head_gives_the_expected_colour_of_its_logits():
    model = palette_unet()
    x0, t, noise, c = inputs()
    x_t, time = NoiseSchedule(T).add_noise(x0, noise, t), t.float() / T
    with torch.no_grad():
        logits, x0_hat = model(x_t, time, c, logits=True), model(x_t, time, c)
        assert logits.shape == (6, len(COLOURS), 16, 16) and x0_hat.shape == x0.shape
        colours = torch.tensor(COLOURS, dtype=torch.float32) / 127.5 - 1
        torch.testing.assert_close(x0_hat, torch.einsum("bkhw,kc->bchw", logits.softmax(1), colours))
        # inside the colours' hull, channel by channel
        assert (x0_hat >= colours.min(0).values.view(1, 3, 1, 1) - 1e-6).all()
        assert (x0_hat <= colours.max(0).values.view(1, 3, 1, 1) + 1e-6).all()
        # the sampler's copy (BatchNorm folded, channels last) computes the same
        torch.testing.assert_close(inference_model(model)(x_t, time, c), x0_hat, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no palette head"):
        make_tiny_unet()(x_t, time, c, logits=True)
    for bad in ([[0, 0, 0]], [[0, 0, 0], [0, 0, 256]], [[0, 0], [1, 1]]):
        with pytest.raises(ValueError, match="output_palette"):
            ContextUnet(n_feat=16, output_palette=bad)


def test_guiding_a_palette_head_guides_its_expected_colours():
    model, schedule = palette_unet(), NoiseSchedule(T, prediction="sample")
    x, c, t = torch.randn(3, 3, 16, 16), torch.eye(5)[:3], 250
    with torch.no_grad():
        eps = predict_noise(model, schedule, x, t, c, guidance=1.5)
        time = torch.full((3,), t / T)
        x0_c, x0_0 = model(x, time, c), model(x, time, torch.zeros_like(c))
    torch.testing.assert_close(eps, schedule.eps_from_output(x, x0_c + 1.5 * (x0_c - x0_0), t), rtol=1e-4, atol=1e-4)


def test_a_palette_head_is_saved_and_loaded_with_its_colours(tmp_path):
    model = palette_unet()
    save_model(model, NoiseSchedule(T, prediction="sample"), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["output_palette"] == COLOURS
    loaded = load_model(tmp_path / "m")
    assert load_schedule(tmp_path / "m").prediction == "sample"
    assert "palette head" in (tmp_path / "m" / "README.md").read_text()
    x0, t, noise, c = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x0, t.float() / T, c), model(x0, t.float() / T, c))


def test_the_cross_entropy_is_that_of_each_pixels_nearest_colour():
    model, schedule = palette_unet(), NoiseSchedule(T, prediction="sample")
    x0, t, noise, c = inputs()
    colours = model.palette_colours
    idx = nearest_colour((x0 + 0.05 * torch.randn_like(x0)).permute(0, 2, 3, 1), colours)  # off-palette pixels snap to the nearest
    assert torch.equal(colours[idx].permute(0, 3, 1, 2), x0)
    with torch.no_grad():
        per_sprite = palette_cross_entropy(model, schedule, colours, x0, noise, t, c)
        logits = model(schedule.add_noise(x0, noise, t), t.float() / T, c, logits=True)
    torch.testing.assert_close(per_sprite, F.cross_entropy(logits, idx, reduction="none").mean((1, 2)))
    # noise_error judges the noise that the expected colour implies, as for any x0 prediction
    with torch.no_grad():
        implied = noise_error(model, schedule, x0, noise, t, c)
        x_t = schedule.add_noise(x0, noise, t)
        own = (schedule.eps_from_output(x_t, model(x_t, t.float() / T, c), t) - noise).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(implied, own, rtol=1e-3, atol=1e-4)


def test_with_palette_head_keeps_every_weight_but_the_output_layers():
    model = make_tiny_unet()
    model.noise_schedule = NoiseSchedule(T)
    grown = with_palette_head(model, COLOURS)
    old, new = model.state_dict(), grown.state_dict()
    assert new["out.3.weight"].shape[0] == len(COLOURS) and grown.output_palette == COLOURS
    assert all(torch.equal(old[k], v) for k, v in new.items() if not k.startswith("out.3."))
    assert grown.noise_schedule is model.noise_schedule
    with pytest.raises(ValueError, match="already"):
        with_palette_head(grown, COLOURS)


# --- training -----------------------------------------------------------------------------------
def test_palette_head_trains_from_scratch_and_as_a_stage(train_data, tmp_path, capsys, restore_signals):
    new = tmp_path / "new"
    assert train.main(train_args(train_data, new, 2, "--palette-head")) == 0
    model, schedule = load_model(new / "model"), load_schedule(new / "model")
    assert schedule.prediction == "sample" and model.output_palette is not None
    assert len(model.output_palette) == len(json.loads((new / "model" / "palette.json").read_text()))
    card = (new / "model" / "README.md").read_text()
    assert "cross-entropy of each pixel's colour" in card and "palette head" in card
    assert "prediction sample, palette_head True" in card.split("  1. ")[1]
    x = sample(model, schedule, torch.eye(5)[:2], steps=3, seed=0)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    assert train.main(train_args(train_data, new, 3, "--resume")) == 0  # keeps its head and prediction

    plain = tmp_path / "plain"
    assert train.main(train_args(train_data, plain, 2)) == 0
    capsys.readouterr()
    assert train.main(train_args(train_data, plain, 3, "--resume", "--palette-head")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --palette-head with --resume") and "--init-from" in err, err
    switched = tmp_path / "switched"
    assert train.main(train_args(train_data, switched, 1, "--init-from", plain / "model", "--palette-head")) == 0
    assert load_schedule(switched / "model").prediction == "sample"
    assert load_model(switched / "model").output_palette == model.output_palette
    for extra in (("--prediction", "v_prediction"), ("--min-snr", "5")):
        with pytest.raises(SystemExit):
            train.main(train_args(train_data, tmp_path / "bad", 1, "--palette-head", *extra))
        assert "--palette-head" in capsys.readouterr().err
