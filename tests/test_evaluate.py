"""The evaluation's measures on synthetic data, and python -m ddpm.evaluate end to end on a tiny model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import CLASSES, make_tiny_unet, write_npy_dataset
import ddpm.evaluate as ev
from ddpm.data import DAWNLIKE_DIR, load_npy


def quick_train(monkeypatch):
    """Classifiers train for two epochs and are cached where the test says."""
    train = ev.train_classifier
    monkeypatch.setattr(ev, "train_classifier", lambda data, **k: train(data, **dict(k, epochs=2, verbose=False)))


# --- precision and recall ---------------------------------------------------------------------------
def test_precision_recall_of_identical_sets_is_one_and_of_far_apart_sets_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 8, generator=g)
    assert ev.precision_recall(a, a.clone()) == (1.0, 1.0)
    assert ev.precision_recall(a, a + 100) == (0.0, 0.0)


def test_precision_and_recall_see_fidelity_and_diversity_apart():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(400, 2, generator=g)
    collapsed = 0.3 * torch.randn(400, 2, generator=g)  # faithful but covering only the centre
    precision, recall = ev.precision_recall(real, collapsed)
    assert precision > 0.9 and recall < 0.5
    spread_out = 3 * torch.randn(400, 2, generator=g)  # covering everything, mostly off the real manifold
    precision, recall = ev.precision_recall(real, spread_out)
    assert precision < 0.6 and recall > 0.9


def test_knn_radii_are_the_kth_nearest_other_point():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert ev.knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert ev.knn_radii(x, 3).tolist() == [7.0, 6.0, 4.0, 7.0]
    assert ev.knn_radii(x, 10).tolist() == [7.0, 6.0, 4.0, 7.0], "k is lowered to the set's size"
    with pytest.raises(ValueError, match="two points"):
        ev.knn_radii(x[:1])


# --- the class-balanced reference ----------------------------------------------------------------
def test_balanced_weights_give_each_class_its_target_share():
    labels = np.array([0] * 90 + [1] * 10)
    w = ev.balanced_weights(labels, np.array([5, 5]))
    assert w.sum() == pytest.approx(1)
    assert w[labels == 0].sum() == pytest.approx(0.5) and w[labels == 1].sum() == pytest.approx(0.5)
    w = ev.balanced_weights(labels, {0: 1, 1: 3})
    assert w[labels == 1].sum() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="missing"):
        ev.balanced_weights(labels, np.array([1, 1, 1]))


def test_weighted_frechet_distance_matches_a_balanced_draw_not_the_unbalanced_mix():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0]])
    labels = np.array([0] * 3000 + [1] * 300)
    real = centres[labels] + torch.randn(len(labels), 2, generator=g)
    balanced_fake = centres[np.array([0, 1] * 1500)] + torch.randn(3000, 2, generator=g)
    unweighted = ev.frechet_distance(balanced_fake, real)
    weighted = ev.frechet_distance(balanced_fake, real, ev.balanced_weights(labels, np.array([1, 1])))
    assert unweighted > 5 and weighted < 0.1


# --- the spread over seeds -----------------------------------------------------------------------
def test_spread_is_the_mean_with_half_the_range():
    s = ev.Spread([6.81, 5.75])
    assert s.mean == pytest.approx(6.28) and s.half_range == pytest.approx(0.53)
    assert s.format() == "6.28 ± 0.53"
    assert ev.Spread([0.932, 0.948, 0.94]).format(percent=True) == "94.0% ± 0.8"
    assert ev.Spread([3.1]).format() == "3.10"


def test_setting_result_spreads_class_means_over_seeds():
    per_seed = [{"FD A": [1.0, 3.0]}, {"FD A": [2.0, 6.0]}]
    r = ev.SettingResult("m", ev.Setting(), "fp32", 10, [0, 1], per_seed, [1.0, 1.0])
    assert r.spread("FD A").values == [2.0, 4.0]
    assert r.spread("FD A", c=1).values == [3.0, 6.0]


def test_parse_settings_and_seeds():
    s = ev.parse_settings("ddpm:50, DDIM:10:2.5", guidance=1.5)
    assert [(x.sampler, x.steps, x.guidance) for x in s] == [("ddpm", 50, 1.5), ("ddim", 10, 2.5)]
    for bad, match in [("ddpm", "sampler:steps"), ("warp:5", "unknown sampler"), ("ddpm:x", "integer"),
                       ("ddpm:0", "at least 1"), ("ddim:5:nan", "finite")]:
        with pytest.raises(ValueError, match=match):
            ev.parse_settings(bad)
    assert ev.parse_seeds("0,1,7") == [0, 1, 7]
    for bad in ("0,0", "a", "-1"):
        with pytest.raises(ValueError):
            ev.parse_seeds(bad)


# --- the second feature space ----------------------------------------------------------------------
def test_second_classifier_trains_is_cached_and_differs_from_the_first(tmp_path, monkeypatch):
    write_npy_dataset(tmp_path / "d", n=40)
    data = load_npy(tmp_path / "d")
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    quick_train(monkeypatch)
    b, acc = ev.cached_classifier(data, "B")
    assert isinstance(b, ev.LayoutClassifier) and not b.training and 0 <= acc <= 1
    a, _ = ev.cached_classifier(data, "A")
    assert isinstance(a, ev.SpriteClassifier)
    assert len(list((tmp_path / "cache").glob("classifier-*.safetensors"))) == 2
    monkeypatch.setattr(ev, "train_classifier", lambda *a, **k: pytest.fail("the cached classifier is used"))
    again, acc_again = ev.cached_classifier(data, "B")
    x = data.to_tensors()[0]
    with torch.no_grad():
        assert torch.equal(again.features(x), b.features(x)) and acc_again == pytest.approx(acc)
        assert again.features(x).shape[1] == ev.LAYOUT_FEATURES != a.features(x).shape[1]
    with pytest.raises(ValueError, match="unknown feature space"):
        ev.cached_classifier(data, "Z")


def test_reference_floors_compare_held_out_real_sprites_like_samples(tmp_path, monkeypatch):
    write_npy_dataset(tmp_path / "d", n=60)
    data = load_npy(tmp_path / "d")
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    quick_train(monkeypatch)
    ref = ev.Reference(data, ev.feature_spaces(data), n_per_class=4)
    assert ref.compared == [4] * 5 and [len(r) + len(h) for r, h in zip(ref.ref, ref.held)] == [12] * 5
    # the real sprites themselves, measured as samples, land on the reference's own floors
    same = ref.measure([h[:4] for h in ref.held])
    for figure in ("FD A", "FD B", "precision A", "recall B", "FD A pooled"):
        assert same[figure] == pytest.approx(ref.floor[figure]), figure


# --- python -m ddpm.evaluate ------------------------------------------------------------------------
def test_evaluate_cli_seeds_settings_compare_and_json(tiny_model_dir, tmp_path, monkeypatch, capsys):
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    quick_train(monkeypatch)
    out = tmp_path / "r.json"
    rc = ev.main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--n", "4", "--seeds", "0,1",
                  "--settings", "ddpm:2,ddim:2:2.0:quadratic:10-400", "--compare", str(tiny_model_dir), "--json", str(out),
                  "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    head = ("| model | sampler | steps | spacing | guidance | guided t | precision | n per class | seeds | accuracy A | accuracy B | FD A | "
            "FD B | precision A | recall A | precision B | recall B | near copies | isolated pixels |")
    assert head in text and "| real vs real (held-out) |" in text
    assert "| ddpm | 2 | trailing | 1.5 | all | fp32 | 4 | 0,1 |" in text and " ± " in text
    assert "| ddim | 2 | quadratic | 2 | 10-400 | fp32 | 4 | 0,1 |" in text  # the levers are told apart
    assert text.count("Per class,") == 4 and "| hero |" in text
    res = json.loads(out.read_text())
    assert [(r["sampler"], r["steps"], r["guidance"]) for r in res["results"]] == [("ddpm", 2, 1.5), ("ddim", 2, 2.0)] * 2
    first, again = res["results"][0], res["results"][2]
    assert first["seeds"] == [0, 1] and len(first["per_seed"]) == 2
    assert first["per_seed"] == again["per_seed"], "a model compared with itself gives the same figures"
    assert first["per_seed"][0] != first["per_seed"][1], "the seeds draw different samples"
    assert set(res["feature_spaces"]) == {"A", "B"} and len(res["floor"]["FD B"]) == len(CLASSES)
    for r in res["results"]:
        for figure in ("precision A", "recall B", "near copies", "isolated pixels"):
            assert all(0 <= v <= 1 for d in r["per_seed"] for v in d[figure])


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], "distinct"), (["--settings", "ddpm"], "sampler:steps"),
    (["--settings", "warp:5"], "unknown sampler"), (["--threads", "0"], "--threads"),
])
def test_evaluate_cli_bad_options_one_clear_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        ev.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluate_cli_compare_refuses_other_classes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from ddpm.checkpoint import save_model
    from ddpm.schedule import NoiseSchedule

    other = tmp_path / "other"
    save_model(make_tiny_unet(n_classes=3, class_names=["a", "b", "c"]), NoiseSchedule(), other, model_card="# x\n")
    write_npy_dataset(tmp_path / "d", n=30)
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")
    quick_train(monkeypatch)
    assert ev.main(["--model", str(tiny_model_dir), "--data", str(tmp_path / "d"), "--n", "2",
                    "--compare", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "classes or size differ" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(not DAWNLIKE_DIR.is_dir(), reason="needs the DawnLike data in ../shared/data/dawnlike")
def test_reference_on_dawnlike_is_balanced_per_class():
    from ddpm.data import load_dawnlike

    data = load_dawnlike()
    space = ev.FeatureSpace("A", ev.SpriteClassifier(len(data.class_names)).eval(), float("nan"))
    ref = ev.Reference(data, [space], n_per_class=100)
    counts = data.counts()
    # every class is compared at the same count unless it has too few held-out sprites
    assert ref.compared == [min(100, counts[c] - counts[c] // 2) for c in data.class_names]
    shares = [ref.pooled_weights[ref.ref_labels == c].sum() for c in range(len(counts))]
    assert shares == pytest.approx(np.array(ref.compared) / sum(ref.compared))


def test_settings_carry_spacing_and_guidance_interval():
    a, b = ev.parse_settings("ddpm:8::quadratic:57-320,dpm++sde:10:2:logsnr", guidance=1.5)
    assert (a.steps, a.guidance, a.options) == (8, 1.5, {"spacing": "quadratic", "guidance_interval": (57, 320)})
    assert (b.sampler, b.guidance, b.options) == ("dpm++sde", 2.0, {"spacing": "logsnr"})
    assert a.label == "ddpm:8:1.5:quadratic:57-320"
    for bad in ("ddpm:8::spiral", "ddpm:8::quadratic:57", "ddpm:8::quadratic:a-b"):
        with pytest.raises(ValueError, match="spacing|interval"):
            ev.parse_settings(bad)


def test_dawnlike_is_judged_by_the_shipped_classifiers_without_training(dawnlike, tmp_path, monkeypatch):
    """Every machine uses the same feature spaces for DawnLike: the shipped files match the data
    build's cache names, load as they are, and nothing is trained."""
    from safetensors.torch import load_file

    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "cache")

    def no_training(*args, **kwargs):
        raise AssertionError("a shipped classifier was trained again")

    monkeypatch.setattr(ev, "train_classifier", no_training)
    for kind in ev.CLASSIFIERS:
        shipped = ev.SHIPPED_DIR / f"{ev.data_key(dawnlike, kind)}.safetensors"
        assert shipped.exists(), f"no shipped classifier {kind} for this DawnLike build ({shipped.name})"
        model, acc = ev.cached_classifier(dawnlike, kind)
        state = load_file(str(shipped))
        assert acc == pytest.approx(float(state.pop("heldout_accuracy")))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("text", ["ddpm:50", "ddpm:50:2", "ddpm:10::quadratic", "ddpm:10:1.5::57-320",
                                  "dpm++sde:8:3:logsnr:57-320"])
def test_a_setting_label_reads_back_as_the_same_setting(text):
    setting = ev.parse_settings(text)[0]
    assert ev.parse_settings(setting.label)[0] == setting


def test_settings_that_differ_only_in_guidance_have_different_labels():
    a, b = ev.parse_settings("ddpm:50,ddpm:50:2")
    assert a.label != b.label
