"""A refiner: a second model that predicts the low-noise steps of a sampling (ddpm.sampling.Refiner)."""
from __future__ import annotations

import numpy as np
from PIL import Image
import pytest
import torch

import ddpm.evaluate as ev
import ddpm.sample as cli
from ddpm.images import to_uint8
from ddpm.sampling import Refiner, make_timesteps, sample, sample_steps
from ddpm.schedule import NoiseSchedule

from helpers import make_tiny_unet, write_npy_dataset

T = 500


class TimeRecorder(torch.nn.Module):
    """A model that records the integer times it is asked to predict at."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.times = inner, []
        self.height, self.in_channels, self.class_names = inner.height, inner.in_channels, inner.class_names

    def forward(self, x, t, c):
        self.times.append(round(float(t[0]) * T))
        return self.inner(x, t, c)


def test_the_refiner_predicts_exactly_the_steps_at_or_below_t_max():
    base, low = TimeRecorder(make_tiny_unet(0)), TimeRecorder(make_tiny_unet(1))
    schedule = NoiseSchedule(T)
    list(sample_steps(base, schedule, torch.eye(5)[[0, 2]], steps=10, seed=0,
                      refiner=Refiner(low, NoiseSchedule(T, prediction="sample"), 150)))
    ts = make_timesteps(T, 10)[:-1]  # 500, 450, ..., 50
    assert base.times == [t for t in ts if t > 150]
    assert low.times == [t for t in ts if t <= 150] == [150, 100, 50]


def test_a_refiner_of_every_step_is_the_refiner_alone_and_of_none_the_model_alone():
    """Each model predicts in its own terms: here the model predicts noise and the refiner x0 through a
    palette head; the sampler's steps are the same whichever predicted them."""
    model, schedule = make_tiny_unet(0), NoiseSchedule(T)
    colours = [[0, 0, 0], [255, 255, 255], [255, 64, 128]]
    low, low_schedule = make_tiny_unet(2, output_palette=colours), NoiseSchedule(T, prediction="sample")
    c = torch.eye(5)[[1, 4, 3]]
    kw = dict(steps=6, guidance=1.5, seed=5)
    alone = sample(model, schedule, c, **kw)
    refiner_alone = sample(low, low_schedule, c, **kw)
    assert torch.equal(sample(model, schedule, c, refiner=Refiner(low, low_schedule, T), **kw), refiner_alone)
    # the lowest of 6 trailing steps is at t = 84, so a refiner of t <= 1 predicts none of them
    assert torch.equal(sample(model, schedule, c, refiner=Refiner(low, low_schedule, 1), **kw), alone)
    both = sample(model, schedule, c, refiner=Refiner(low, low_schedule, 200), **kw)
    assert not torch.equal(both, alone) and not torch.equal(both, refiner_alone)


@pytest.mark.parametrize("refiner_schedule, t_max, match", [
    (NoiseSchedule(250), 100, "noise schedule"),
    (NoiseSchedule(T, kind="cosine"), 100, "noise schedule"),
    (NoiseSchedule(T, beta_end=0.03), 100, "noise schedule"),
    (NoiseSchedule(T), 0, "t_max"),
    (NoiseSchedule(T), T + 1, "t_max"),
    (NoiseSchedule(T), 10.5, "t_max"),
    (NoiseSchedule(T), float("nan"), "t_max"),
])
def test_a_refiner_that_cannot_take_over_is_refused(refiner_schedule, t_max, match):
    with pytest.raises(ValueError, match=match):
        sample(make_tiny_unet(0), NoiseSchedule(T), torch.eye(5)[:1], steps=2,
               refiner=Refiner(make_tiny_unet(1), refiner_schedule, t_max))


def test_a_refiner_of_other_classes_is_refused():
    other = make_tiny_unet(1, class_names=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="class_names"):
        sample(make_tiny_unet(0), NoiseSchedule(T), torch.eye(5)[:1], steps=2, refiner=Refiner(other, NoiseSchedule(T), 100))


def test_sample_cli_with_a_refiner(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sheet.npz"
    args = ["--model", str(tiny_model_dir), "--n", "2", "--steps", "4", "--seed", "1", "--out", str(out)]
    assert cli.main(args) == 0
    alone = np.load(out)["images"]
    assert cli.main(args + ["--refiner", str(tiny_model_dir), "--refiner-t-max", "300"]) == 0
    assert (np.load(out)["images"] == alone).all(), "the same model as its own refiner"
    assert cli.main(args + ["--refiner", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert f"the refiner {str(tmp_path / 'missing')!r}" in err and "no such directory" in err
    assert cli.main(args + ["--refiner", str(tiny_model_dir), "--refiner-t-max", "0"]) == 2
    assert "--refiner-t-max must lie between 1 and 500, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(args + ["--refiner-t-max", "100"])
    assert "--refiner-t-max needs --refiner" in capsys.readouterr().err


def test_evaluate_cli_with_a_refiner(tiny_model_dir, tmp_path, monkeypatch, capsys):
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(ev, "train_classifier",
                        lambda data, kind="A", **k: (ev.CLASSIFIERS[kind][0](len(data.class_names)).eval(), 0.5))
    base = ["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--steps", "2", "--seeds", "0"]
    assert ev.main(base + ["--refiner", str(tiny_model_dir), "--refiner-t-max", "400",
                           "--compare", str(tiny_model_dir)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tiny_model_dir}")]
    assert rows and rows[0].startswith(f"| {tiny_model_dir} + refiner {tiny_model_dir} (t <= 400) |")
    assert any(r.startswith(f"| {tiny_model_dir} |") for r in rows), "the compared model samples alone"
    with pytest.raises(SystemExit):
        ev.main(base + ["--refiner", str(tiny_model_dir), "--write-card"])
    assert "--refiner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ev.main(base + ["--refiner-t-max", "100"])
    assert "--refiner-t-max needs --refiner" in capsys.readouterr().err
    assert ev.main(base + ["--refiner", str(tiny_model_dir), "--refiner-t-max", "501"]) == 2
    assert "--refiner-t-max must lie between 1 and 500, got 501" in capsys.readouterr().err


# --- the app's tabs with a refiner ------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny saved model (other weights, x0 prediction through a palette head), to refine with."""
    from ddpm.checkpoint import save_model

    folder = tmp_path_factory.mktemp("refiner") / "model"
    save_model(make_tiny_unet(seed=3, output_palette=[[0, 0, 0], [255, 255, 255], [255, 64, 128]]),
               NoiseSchedule(prediction="sample"), folder)
    return folder


def test_interactive_and_compare_pass_the_refiner_on(tiny_unet):
    from ddpm import compare as cp
    from ddpm import interactive as ix

    schedule, low = NoiseSchedule(T), Refiner(make_tiny_unet(4), NoiseSchedule(T), 200)
    names = ["hero", "creature", "food", "spell", "item"]
    args = ("hero", 2, "ddim", 5, 1.5, 3)
    plain, refined = ix.generate(tiny_unet, schedule, names, *args), ix.generate(tiny_unet, schedule, names, *args,
                                                                                   refiner=low)
    expected = sample(tiny_unet, schedule, torch.eye(5)[[0, 0]], sampler="ddim", steps=5, guidance=1.5, seed=3,
                      refiner=low)
    assert (refined[0] == to_uint8(expected)).all()
    assert not (plain[0] == refined[0]).all()
    sprite = refined[0][0]
    for t, same in ((300, True), (200, False)):  # the Forward tab's predictions: the refiner's at t <= 200
        a = ix.forward_view(schedule, sprite, t, 0, tiny_unet, torch.eye(5)[:1])
        b = ix.forward_view(schedule, sprite, t, 0, tiny_unet, torch.eye(5)[:1], low)
        assert (a.eps_pred == b.eps_pred).all() == same
    run, run_r = (ix.start_reverse(tiny_unet, schedule, torch.eye(5)[:1], "ddpm", 5, 1.5, 0, refiner=r) for r in (None, low))
    while not run.done:
        run.advance(), run_r.advance()
    assert not (run.frames[-1].x_t == run_r.frames[-1].x_t).all()
    m, m_r = (cp.morph(tiny_unet, schedule, names, "hero", "food", 1, 2, 8, steps=5, refiner=r) for r in (None, low))
    assert not (m.frames == m_r.frames).all()
    sweeps = [dict(cp.guidance_sweep(tiny_unet, schedule, torch.eye(5)[:1], [0.0, 2.0], [1], "ddim", 5, refiner=r))
              for r in (None, low)]
    assert all(not (sweeps[0][j] == sweeps[1][j]).all() for j in (0, 1))
    races = [list(cp.sampler_race(tiny_unet, schedule, torch.eye(5)[:1], [("ddim", 5), ("ddpm", 5)], 1.5, 0, refiner=r))[-1]
             for r in (None, low)]
    assert not (races[0].columns[0].x_t == races[1].columns[0].x_t).all()


def test_app_with_a_refiner(tiny_model_dir, other_model_dir, lab, monkeypatch, capsys):
    import app

    refined = app.create_lab(str(tiny_model_dir), "cpu", refiner=str(other_model_dir), refiner_t_max=300)
    itself = app.create_lab(str(tiny_model_dir), "cpu", refiner=str(tiny_model_dir), refiner_t_max=300)
    sheet = lambda lab_: np.asarray(Image.open(list(lab_.generate("food", 3, "ddim", 5, 1.5, 2, False))[-1][1]))  # noqa: E731
    assert not (sheet(refined) == sheet(lab)).all(), "the refiner draws the low-noise steps"
    assert (sheet(itself) == sheet(lab)).all(), "the model as its own refiner changes nothing"
    info = refined.model_info()
    assert f"**Refiner:** `{other_model_dir}` predicts the steps at t <= 300" in info
    with pytest.raises(ValueError, match="--refiner-t-max must lie between 1 and 500, got 501"):
        app.create_lab(str(tiny_model_dir), "cpu", refiner=str(other_model_dir), refiner_t_max=501)
    monkeypatch.setenv("DDPM_REFINER", str(other_model_dir))
    monkeypatch.setenv("DDPM_REFINER_T_MAX", "120")
    assert (app.parse_args([]).refiner, app.parse_args([]).refiner_t_max) == (str(other_model_dir), 120)
    monkeypatch.delenv("DDPM_REFINER")
    with pytest.raises(SystemExit):
        app.parse_args([])  # a t_max with no refiner
    monkeypatch.delenv("DDPM_REFINER_T_MAX")
    assert app.parse_args([]).refiner is None
    assert app.main(["--refiner", str(other_model_dir / "missing"), "--model", str(tiny_model_dir)]) == 2
    assert f"the refiner {str(other_model_dir / 'missing')!r}" in capsys.readouterr().err
