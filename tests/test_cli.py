"""The sampling CLI (python -m ddpm.sample) and the evaluation (python -m ddpm.evaluate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import CLASSES, write_npy_dataset
import ddpm.evaluate as ev
import ddpm.sample as cli
from ddpm.data import load_npy


# --- python -m ddpm.sample ----------------------------------------------------------------------
def test_sample_png_has_one_row_per_class(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    rc = cli.main(["--model", str(tiny_model_dir), "--classes", "hero,food", "--n", "3", "--steps", "4",
                   "--scale", "2", "--out", str(out)])
    assert rc == 0
    im = Image.open(out)
    assert im.size == (3 * 16 * 2, 2 * 16 * 2)
    assert "wrote 6 sprites" in capsys.readouterr().out


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm-beta", "ddim", "dpm++", "dpm++sde"])
def test_sample_npz_holds_images_and_labels(tiny_model_dir, tmp_path, sampler):
    out = tmp_path / "s.npz"
    steps = "10"
    assert cli.main(["--model", str(tiny_model_dir), "--classes", "spell,hero", "--n", "2",
                     "--sampler", sampler, "--steps", steps, "--out", str(out)]) == 0
    z = np.load(out)
    assert z["images"].shape == (4, 16, 16, 3) and z["images"].dtype == np.uint8
    assert z["labels"].tolist() == [CLASSES.index("spell")] * 2 + [CLASSES.index("hero")] * 2


def test_sample_same_seed_same_sprites(tiny_model_dir, tmp_path):
    paths = [tmp_path / f"{i}.npz" for i in range(3)]
    for path, seed in zip(paths, ["5", "5", "6"]):
        cli.main(["--model", str(tiny_model_dir), "--n", "2", "--steps", "3", "--seed", seed, "--out", str(path)])
    a, b, c = (np.load(p)["images"] for p in paths)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_precision_bf16_differs_slightly_from_fp32(tiny_model_dir, tmp_path):
    images = {}
    for precision in ("fp32", "bf16", "fp32"):
        path = tmp_path / f"{precision}.npz"
        argv = ["--model", str(tiny_model_dir), "--n", "2", "--steps", "3", "--sampler", "ddim", "--out", str(path)]
        assert cli.main(argv + ["--precision", precision]) == 0
        images.setdefault(precision, []).append(np.load(path)["images"].astype(int))
    assert np.array_equal(*images["fp32"])
    assert not np.array_equal(images["fp32"][0], images["bf16"][0])
    assert np.abs(images["fp32"][0] - images["bf16"][0]).mean() < 8


def test_sample_spacing_and_guidance_interval_reach_the_sampler(tiny_model_dir, tmp_path):
    images = []
    for extra in ([], ["--spacing", "trailing", "--guidance-interval", "0,500"], ["--spacing", "karras"],
                  ["--guidance-interval", "100,300"]):
        path = tmp_path / f"{len(images)}.npz"
        assert cli.main(["--model", str(tiny_model_dir), "--n", "2", "--steps", "4", "--out", str(path)] + extra) == 0
        images.append(np.load(path)["images"])
    assert np.array_equal(images[0], images[1])  # the defaults, spelled out
    assert not np.array_equal(images[0], images[2])
    assert not np.array_equal(images[0], images[3])


@pytest.mark.parametrize("args, message", [
    (["--guidance-interval", "100,501"], "at most at T = 500"),
    (["--classes", "hero,dragon"], "unknown class 'dragon'"),
    (["--steps", "501"], "steps must lie between 1 and 500"),
    (["--model", "/no/such/model/dir"], "no such directory"),
])
def test_sample_bad_input_one_clear_line(tiny_model_dir, tmp_path, capsys, args, message):
    argv = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "x.png")] + args
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args", [["--out", "x.jpg"], ["--n", "0"], ["--guidance", "nan"], ["--steps", "0"],
                                  ["--n", "many"], ["--precision", "fp16"], ["--spacing", "cosine"],
                                  ["--guidance-interval", "300,100"], ["--guidance-interval", "100"],
                                  ["--guidance-interval", "a,b"]])
def test_sample_bad_arguments_exit_2(tmp_path, args):
    with pytest.raises(SystemExit) as e:
        cli.main(["--out", str(tmp_path / "x.png")] + args if args[0] != "--out" else args)
    assert e.value.code == 2


# --- evaluation measures --------------------------------------------------------------------------
def test_frechet_distance_matches_known_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g)
    b = torch.randn(4000, 8, generator=g)
    assert ev.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    # same covariance, means 3 apart along one axis: FD ~ 9
    shifted = b.clone()
    shifted[:, 0] += 3
    assert ev.frechet_distance(a, shifted) == pytest.approx(9, rel=0.05)
    # scaling the spread by 2: per dimension (sigma1 - sigma2)^2 = 1, so FD ~ 8
    assert ev.frechet_distance(a, 2 * b) == pytest.approx(8, rel=0.1)


def test_near_copy_share_finds_copies_and_mirrors():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 3, 16, 16, generator=g) * 2 - 1
    assert ev.near_copy_share(train[:5], train) == 1.0
    assert ev.near_copy_share(train[:5].flip(-1), train) == 1.0
    noisy = (train[:5] + 0.5 * torch.randn(5, 3, 16, 16, generator=g)).clamp(-1, 1)
    assert ev.near_copy_share(noisy, train) == 0.0


def test_isolated_pixel_share_counts_pixels_unlike_all_four_neighbours():
    flat = torch.ones(2, 3, 16, 16)
    assert ev.isolated_pixel_share(flat) == 0.0
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1
    assert ev.isolated_pixel_share(checker.expand(1, 3, 16, 16)) == 1.0
    dot = flat[:1].clone()
    dot[0, 1, 5, 7] = 0.0  # one pixel of another colour (one channel is enough)
    assert ev.isolated_pixel_share(dot) == 1 / 256
    line = flat[:1].clone()
    line[0, :, 5, 3:9] = -1  # a 1-px line: its pixels have like neighbours along it
    assert ev.isolated_pixel_share(line) == 0.0
    corner = flat[:1].clone()
    corner[0, :, 0, 0] = -1  # at the border only the neighbours inside the image count
    assert ev.isolated_pixel_share(corner) == 1 / 256


def test_evaluate_reports_every_class(tiny_model_dir, tmp_path):
    from ddpm.checkpoint import load_model, load_schedule

    write_npy_dataset(tmp_path / "d", n=40)
    data = load_npy(tmp_path / "d")
    clf, acc = ev.train_classifier(data, epochs=3, verbose=False)
    assert 0 <= acc <= 1
    model, schedule = load_model(tiny_model_dir), load_schedule(tiny_model_dir)
    results = ev.evaluate(model, schedule, data, steps=3, n_per_class=6, classifier=clf)
    assert [r.name for r in results] == CLASSES
    for r in results:
        assert 0 <= r.accuracy <= 1 and 0 <= r.near_copies <= 1 and r.fd >= 0 and r.fd_floor >= 0
        assert 0 <= r.isolated <= 1 and 0 <= r.isolated_real <= 1
    table = ev.markdown_table(results)
    assert table.count("\n") == len(CLASSES) + 2 and "| hero |" in table and "**mean**" in table


def test_evaluate_cli_prints_table(tiny_model_dir, tmp_path, monkeypatch, capsys):
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(ev, "train_classifier", lambda data, kind="A", **k: (ev.CLASSIFIERS[kind][0](len(data.class_names)).eval(), 0.5))
    rc = ev.main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--steps", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| model | sampler | steps | spacing | guidance | guided t | precision |" in out and "| class | compared | accuracy A |" in out
    assert "classifier held-out accuracy: A (SpriteClassifier) 50.0%, B (LayoutClassifier) 50.0%" in out
    assert len(list((tmp_path / "cache").glob("classifier-*.safetensors"))) == 2, "both classifiers are cached"
    assert "seeds 0,1, fp32," in out, "two seeds unless told otherwise"
    assert ev.main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--steps", "2",
                    "--precision", "bf16", "--seed", "3"]) == 0
    assert "seeds 3, bf16," in capsys.readouterr().out


def test_evaluate_cli_bad_model(tmp_path, capsys):
    assert ev.main(["--model", str(tmp_path / "missing"), "--n", "4"]) == 2
    assert "no such directory" in capsys.readouterr().err



# --- the noise error per range of t (--noise-error) ------------------------------------------------
class _KnownSpriteModel(torch.nn.Module):
    """Predicts the noise exactly by knowing the one sprite every x_t was made from (or predicts 0)."""

    def __init__(self, schedule, x0: torch.Tensor, exact: bool = True):
        super().__init__()
        self.schedule, self.x0, self.exact = schedule, x0, exact

    def forward(self, x_t, t_over_T, context):
        if not self.exact:
            return torch.zeros_like(x_t)
        t = torch.round(t_over_T * self.schedule.T).long()
        return self.schedule.predict_eps(x_t, self.x0.expand_as(x_t), t)


def test_t_ranges_cover_every_step_once():
    assert ev.t_ranges(500) == [(1, 10), (11, 25), (26, 50), (51, 100), (101, 150), (151, 250), (251, 500)]
    for T in (20, 37, 1000):
        covered = [t for first, last in ev.t_ranges(T) for t in range(first, last + 1)]
        assert covered == list(range(1, T + 1)), T


def test_noise_error_is_zero_for_an_exact_model_and_one_for_predicting_zero(tmp_path):
    from ddpm.data import SpriteData
    from ddpm.schedule import NoiseSchedule

    sprite = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    data = SpriteData(np.repeat(sprite[None], 40, 0), np.arange(40) % 5, list(CLASSES))
    schedule = NoiseSchedule()
    x0 = data.to_tensors()[0][:1]
    ranges, exact = ev.noise_error_by_t(_KnownSpriteModel(schedule, x0), schedule, data, batch=16)
    assert exact.shape == (len(ranges), len(CLASSES) + 1)
    assert exact.max() < 1e-6
    _, zero = ev.noise_error_by_t(_KnownSpriteModel(schedule, x0, exact=False), schedule, data)
    # predicting 0 leaves the noise itself: 40 x 768 standard normal values per range, mean square near 1
    assert np.abs(zero[:, -1] - 1).max() < 0.05


def test_noise_error_pairs_models_on_the_same_draws(tiny_model_dir, tmp_path):
    from ddpm.checkpoint import load_model, load_schedule

    write_npy_dataset(tmp_path / "d", n=30)
    data = load_npy(tmp_path / "d")
    model, schedule = load_model(tiny_model_dir), load_schedule(tiny_model_dir)
    _, a = ev.noise_error_by_t(model, schedule, data, seed=3)
    _, b = ev.noise_error_by_t(model, schedule, data, seed=3, batch=7)
    _, c = ev.noise_error_by_t(model, schedule, data, seed=4)
    assert np.allclose(a, b, rtol=1e-5) and not np.allclose(a, c)


def test_evaluate_cli_noise_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "cached_classifier", lambda data: pytest.fail("--noise-error needs no classifier"))
    assert ev.main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--noise-error"]) == 0
    out = capsys.readouterr().out
    assert "| t | hero | creature | food | spell | item | all |" in out and "| 251-500 |" in out
    with pytest.raises(SystemExit):
        ev.main(["--model", str(tiny_model_dir), "--noise-error", "--write-card"])
    assert "--write-card needs samples" in capsys.readouterr().err

# --- palette snapping -------------------------------------------------------------------------------
def test_snap_to_palette_maps_to_nearest_colour():
    from ddpm.images import snap_to_palette

    palette = np.array([[255, 255, 255], [20, 12, 28], [211, 69, 73]], np.uint8)
    sprites = np.array([[[[250, 251, 249], [30, 10, 30]], [[200, 80, 70], [0, 0, 0]]]], np.uint8)
    snapped = snap_to_palette(sprites, palette)
    assert snapped.shape == sprites.shape and snapped.dtype == np.uint8
    assert snapped[0, 0, 0].tolist() == [255, 255, 255]
    assert snapped[0, 0, 1].tolist() == [20, 12, 28]
    assert snapped[0, 1, 0].tolist() == [211, 69, 73]
    assert snapped[0, 1, 1].tolist() == [20, 12, 28]


def test_palette_round_trip_and_sample_cli_uses_it(tiny_model_dir, tmp_path):
    import shutil

    from ddpm.folder import CheckpointError

    from ddpm.checkpoint import load_palette

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    assert load_palette(model_dir) is None
    palette = np.array([[255, 255, 255], [0, 0, 0], [200, 30, 30]], np.uint8)
    (model_dir / "palette.json").write_text(json.dumps(palette.tolist()))
    assert np.array_equal(load_palette(model_dir), palette)
    out = tmp_path / "s.npz"
    assert cli.main(["--model", str(model_dir), "--n", "2", "--steps", "3", "--out", str(out)]) == 0
    colours = {tuple(c) for c in np.load(out)["images"].reshape(-1, 3)}
    assert colours <= {tuple(c) for c in palette.tolist()}
    assert cli.main(["--model", str(model_dir), "--n", "2", "--steps", "3", "--no-palette", "--out", str(out)]) == 0
    assert len({tuple(c) for c in np.load(out)["images"].reshape(-1, 3)}) > 3
    (model_dir / "palette.json").write_text("[[1, 2]]")
    with pytest.raises(CheckpointError, match="palette.json"):
        load_palette(model_dir)


def test_data_palette_only_for_few_colours():
    from ddpm.data import SpriteData

    few = np.zeros((4, 16, 16, 3), np.uint8)
    few[:, :8] = 255
    assert SpriteData(few, np.zeros(4, np.int64), ["a"]).palette().tolist() == [[0, 0, 0], [255, 255, 255]]
    many = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    assert SpriteData(many, np.zeros(4, np.int64), ["a"]).palette() is None


def test_evaluate_write_card(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "training.json").write_text(json.dumps({"steps": 1234, "images": 5678, "seconds": 7200.0,
                                                          "data_counts": {"hero": 3}}))
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(ev, "train_classifier", lambda data, kind="A", **k: (ev.CLASSIFIERS[kind][0](len(data.class_names)).eval(), 0.5))
    rc = ev.main(["--model", str(model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--steps", "2",
                  "--json", str(tmp_path / "figures.json"), "--write-card"])
    assert rc == 0 and (tmp_path / "figures.json").exists()
    card = (model_dir / "README.md").read_text()
    # the card's command measures the figures again anywhere: the JSON's path on this machine is left out
    assert "--n 4 --steps 2 --write-card`" in card and "--json" not in card and "figures.json" not in card
    assert "| hero |" in card and "1,234 steps" in card and "2.00 hours" in card
    assert "DragonDePlatino" in card and "DawnBringer" in card and "--write-card" in card
    assert Image.open(model_dir / "samples.png").size == (8 * 16 * 4 + 9 * 8, 5 * 16 * 4 + 6 * 8)


def test_evaluate_write_card_before_after(tiny_model_dir, tmp_path, monkeypatch):
    """--write-card with --compare sets the compared model's sprites beside this one's, from the same noise."""
    import shutil

    model_dir, before_dir = tmp_path / "m", tmp_path / "before"
    shutil.copytree(tiny_model_dir, model_dir)
    shutil.copytree(tiny_model_dir, before_dir)
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(ev, "train_classifier", lambda data, kind="A", **k: (ev.CLASSIFIERS[kind][0](len(data.class_names)).eval(), 0.5))
    rc = ev.main(["--model", str(model_dir), "--compare", str(before_dir), "--data", str(tmp_path / "d"), "--n", "4",
                  "--settings", "ddpm:2:2", "--write-card"])
    assert rc == 0
    card = (model_dir / "README.md").read_text()
    assert "![before and after](before_after.png)" in card and f"`{before_dir}` on the left" in card
    assert "--settings ddpm:2:2" in card
    sheet = np.asarray(Image.open(model_dir / "before_after.png"))
    tile = 16 * 4 + 8  # a sprite and its padding, upscaled 4x
    assert sheet.shape[:2] == (5 * tile + 8, 17 * tile + 8)
    left, gap, right = sheet[:, :8 * tile + 8], sheet[:, 8 * tile + 8:9 * tile + 8], sheet[:, 9 * tile:]
    assert (gap == 255).all()
    # the same weights from the same noise: the two halves match, and the right one is samples.png
    np.testing.assert_array_equal(left, right)
    np.testing.assert_array_equal(right, np.asarray(Image.open(model_dir / "samples.png")))
    # a card rewritten without --compare neither shows nor keeps the old sheet
    assert ev.main(["--model", str(model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--settings", "ddpm:2:2",
                    "--write-card"]) == 0
    assert "before_after" not in (model_dir / "README.md").read_text() and not (model_dir / "before_after.png").exists()
