"""The training loop: loss goes down, exact resume, the NaN guard, the export, argument errors.

Runs ddpm.train.main in-process on a tiny generated data set (n_feat 16, batch 16, one thread).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ddpm.train as train
from ddpm.checkpoint import load_model, load_schedule, save_model
from ddpm.data import load_data
from ddpm.losses import class_balanced_weights, guidance_distillation_error, min_snr_weights, training_batch
from ddpm.model import ContextUnet
from ddpm.schedule import NoiseSchedule

from helpers import CLASSES, PROJECT, make_tiny_unet, read_log, stop_after, train_args, write_npy_dataset


@pytest.fixture(autouse=True)
def few_recalibration_batches(monkeypatch):
    """Exports of models with dropout re-estimate BatchNorm statistics over 2 batches, not 64: the
    tiny runs here need no more, and the 64 took most of their time."""
    monkeypatch.setattr(train, "RECALIBRATION_BATCHES", 2)


def losses(out: Path) -> list[tuple[int, str, str]]:
    return [(int(r["step"]), r["loss"], r["lr"]) for r in read_log(out)]


# --- learning --------------------------------------------------------------------------------------------
def test_training_reduces_the_loss(train_data, tmp_path, restore_signals):
    out = tmp_path / "run"
    # a grid at the end of the run, though --sample-every is beyond its length
    assert train.main(train_args(train_data, out, 40, "--checkpoint-every", 100, "--sample-every", 1000)) == 0
    rows = losses(out)
    assert [r[0] for r in rows] == list(range(1, 41))
    values = [float(r[1]) for r in rows]
    first, last = sum(values[:8]) / 8, sum(values[-8:]) / 8
    assert last < 0.7 * first, (first, last)
    # outputs of a finished run
    for name in ("checkpoint.safetensors", "model/config.json", "model/model.safetensors", "model/README.md",
                 "model/scheduler_config.json", "model/training.json"):
        assert (out / name).is_file(), name
    assert [p.name for p in (out / "samples").glob("step_*.png")] == ["step_0000040.png"]


def test_learning_rate_and_ema_schedules():
    lrs = [train.learning_rate(s, 1e-3, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert train.learning_rate(100, 1e-3, 10, 100) == pytest.approx(1e-4)
    assert train.ema_decay(0, 0.999) == pytest.approx(0.1)
    assert train.ema_decay(10 ** 6, 0.999) == 0.999


def test_min_snr_weights_cap_the_low_noise_steps():
    snr = NoiseSchedule(500).snr()[1:]
    assert torch.equal(min_snr_weights(snr, 0), torch.ones_like(snr))  # off: the course's uniform MSE
    w = min_snr_weights(snr, 5.0)
    assert torch.equal(w[snr <= 5], torch.ones_like(w[snr <= 5]))
    assert torch.allclose(w[snr > 5], 5 / snr[snr > 5])
    assert w[0] < 0.01 and w[-1] == 1  # t = 1 barely counts; the noisiest steps count fully
    assert bool((w[1:] >= w[:-1]).all())  # monotone in t


def batch_times(share: float, low_max: int, seed: int = 0) -> torch.Tensor:
    images, labels = torch.zeros(10, 3, 16, 16), torch.zeros(10, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    return training_batch(images, labels, 5, 4000, 500, 0.1, g, share, low_max)[1]


def test_low_t_share_draws_that_share_of_the_times_from_the_low_range():
    uniform = batch_times(0.0, 150)
    assert uniform.min() >= 1 and uniform.max() == 500
    assert abs(float((uniform <= 150).float().mean()) - 0.3) < 0.04
    # the course's recipe draws exactly the batches it drew before the option existed
    g = torch.Generator().manual_seed(0)
    plain = training_batch(torch.zeros(10, 3, 16, 16), torch.zeros(10, dtype=torch.long), 5, 4000, 500, 0.1, g)
    assert torch.equal(plain[1], uniform)
    half = batch_times(0.5, 150)
    assert half.min() >= 1 and half.max() == 500
    assert abs(float((half <= 150).float().mean()) - (0.5 + 0.5 * 0.3)) < 0.04
    only_low = batch_times(1.0, 20)
    assert only_low.min() >= 1 and only_low.max() == 20
    assert batch_times(1.0, 10 ** 6).max() <= 500  # never beyond T


def test_weighted_recipes_train_and_are_recorded(train_data, tmp_path, restore_signals):
    out = tmp_path / "run"
    assert train.main(train_args(train_data, out, 30, "--min-snr", 5, "--low-t-share", 0.5, "--low-t-max", 100)) == 0
    values = [float(r[1]) for r in losses(out)]
    assert all(map(torch.isfinite, torch.tensor(values)))
    assert not (out / "samples").exists()  # --sample-every 0: no grids, not even at the end
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["recipe"]["min_snr"] == 5 and info["recipe"]["low_t_share"] == 0.5
    card = (out / "model" / "README.md").read_text()
    assert "min_snr 5.0" in card and "low_t_share 0.5" in card and "low_t_max 100" in card


def class_shares(labels: torch.Tensor, power: float, draws: int = 40000) -> torch.Tensor:
    images = torch.zeros(len(labels), 3, 16, 16)
    weights = class_balanced_weights(labels, 3, power)
    context = training_batch(images, labels, 3, draws, 500, 0.0, torch.Generator().manual_seed(0),
                             sprite_weights=weights)[3]
    return context.sum(0) / draws


def test_class_balance_draws_rare_classes_more_often():
    labels = torch.tensor([0] * 900 + [1] * 100 + [2] * 400)  # counts 900, 100, 400
    assert class_balanced_weights(labels, 3, 0.0) is None  # off: the course's uniform draws
    counts = torch.tensor([900.0, 100.0, 400.0])
    for power, expected in [(1.0, torch.full((3,), 1 / 3)), (0.5, counts.sqrt() / counts.sqrt().sum())]:
        assert torch.allclose(class_shares(labels, power), expected, atol=0.01), power
    # within a class every sprite is drawn alike
    idx_weights = class_balanced_weights(labels, 3, 1.0)
    assert torch.equal(idx_weights[:900], torch.full((900,), 1 / 900, dtype=idx_weights.dtype))
    # a class with no sprites (a labels set that leaves one out) leaves the others' shares as they were
    missing = torch.tensor([0] * 900 + [2] * 400)
    assert torch.allclose(class_shares(missing, 1.0), torch.tensor([0.5, 0.0, 0.5]), atol=0.01)


def test_class_balance_is_recorded_and_kept_on_resume(train_data, tmp_path, monkeypatch, capsys, restore_signals):
    original, drawn_with = train.training_batch, []

    def recording_batch(*args, **kwargs):
        drawn_with.append(args[9] if len(args) > 9 else kwargs.get("sprite_weights"))
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "training_batch", recording_batch)
    out = tmp_path / "run"
    assert train.main(train_args(train_data, out, 2, "--class-balance", 0.5)) == 0
    assert "class_balance 0.5" in (out / "model" / "README.md").read_text()
    capsys.readouterr()
    assert train.main(train_args(train_data, out, 3, "--resume", "--class-balance", 1)) == 2  # not another one
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--class-balance" in err and "\n" not in err, err
    assert train.main(train_args(train_data, out, 3, "--resume")) == 0
    # every training batch (2 steps, then the third after the resume) was drawn with the weights of 0.5
    labels = torch.from_numpy(load_data(str(train_data)).labels)
    expected = class_balanced_weights(labels, len(CLASSES), 0.5)
    assert len(drawn_with) == 3 and all(torch.equal(w, expected) for w in drawn_with)
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["recipe"]["class_balance"] == 0.5
    plain = tmp_path / "plain"
    assert train.main(train_args(train_data, plain, 1)) == 0
    assert "class_balance" not in (plain / "model" / "README.md").read_text()  # listed only when used


# --- resume ------------------------------------------------------------------------------------------------
def checkpoint_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors, _ = train.load_checkpoint(out / train.CHECKPOINT)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "opt."))}


def assert_same_run(a: Path, b: Path):
    assert losses(b) == losses(a)
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize("recipe", [(), ("--class-balance", 0.5)], ids=["uniform", "class-balanced"])
def test_resume_after_a_stop_continues_exactly(train_data, tmp_path, monkeypatch, restore_signals, recipe):
    n = 12
    ref = tmp_path / "reference"
    assert train.main(train_args(train_data, ref, n, "--checkpoint-every", 4, *recipe)) == 0

    out = tmp_path / "interrupted"
    stop_after(monkeypatch, 6)  # SIGTERM during step 6: the step finishes, everything is saved
    assert train.main(train_args(train_data, out, n, "--checkpoint-every", 4, *recipe)) == 0
    assert [r[0] for r in losses(out)] == list(range(1, 7))
    monkeypatch.undo()
    assert train.main(train_args(train_data, out, n, "--checkpoint-every", 4, "--resume")) == 0
    assert_same_run(ref, out)


def test_resume_drops_log_rows_after_the_checkpoint(train_data, tmp_path, monkeypatch, restore_signals):
    # after a kill, log.csv may hold rows past the last checkpoint and a half-written last line
    n = 8
    ref = tmp_path / "reference"
    assert train.main(train_args(train_data, ref, n, "--checkpoint-every", 4)) == 0
    out = tmp_path / "killed"
    stop_after(monkeypatch, 4)
    assert train.main(train_args(train_data, out, n, "--checkpoint-every", 4)) == 0
    monkeypatch.undo()
    with open(out / "log.csv", "a") as f:
        f.write("5,0.123456,1.000e-03,100.0,1.0\n6,0.1")
    assert train.main(train_args(train_data, out, n, "--checkpoint-every", 4, "--resume")) == 0
    assert_same_run(ref, out)


def test_fresh_run_starts_a_fresh_log(train_data, tmp_path, restore_signals):
    out = tmp_path / "run"
    assert train.main(train_args(train_data, out, 3)) == 0
    assert train.main(train_args(train_data, out, 3)) == 0
    assert [r[0] for r in losses(out)] == [1, 2, 3]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import ddpm.train as train
    original, calls = train.update_ema, [0]
    def update_ema(*a, **kw):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **kw)
    train.update_ema = update_ema
    sys.exit(train.main(sys.argv[1:]))
""")


def test_resume_after_sigkill(train_data, tmp_path, restore_signals):
    n = 10
    ref = tmp_path / "reference"
    assert train.main(train_args(train_data, ref, n, "--checkpoint-every", 3)) == 0
    out = tmp_path / "killed"
    env = dict(os.environ, KILL_AT="8", PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *train_args(train_data, out, n, "--checkpoint-every", 3)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert train.load_checkpoint(out / train.CHECKPOINT)[1]["step"] == 6
    assert not (out / "model").exists()
    assert train.main(train_args(train_data, out, n, "--checkpoint-every", 3, "--resume")) == 0
    assert_same_run(ref, out)


def test_main_restores_signal_handlers(train_data, tmp_path, restore_signals):
    before = signal.getsignal(signal.SIGTERM)
    assert train.main(train_args(train_data, tmp_path / "run", 1)) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --- NaN guard ---------------------------------------------------------------------------------------------
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train_data, tmp_path, monkeypatch, capsys,
                                                            restore_signals):
    original, calls = train.training_batch, [0]

    def poisoned_batch(*a, **kw):
        calls[0] += 1
        x0, t, noise, context = original(*a, **kw)
        if calls[0] == 7:
            x0 = x0.clone()
            x0[0, 0, 0, 0] = float("inf")
        return x0, t, noise, context

    monkeypatch.setattr(train, "training_batch", poisoned_batch)
    out = tmp_path / "run"
    status = train.main(train_args(train_data, out, 12, "--checkpoint-every", 4))
    assert status != 0
    err = capsys.readouterr().err
    assert "step 6" in err and str(out / train.CHECKPOINT) in err
    tensors, meta = train.load_checkpoint(out / train.CHECKPOINT)
    assert meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert not (out / "model").exists(), "nothing exported from a diverged run"
    monkeypatch.undo()
    assert train.main(train_args(train_data, out, 12, "--checkpoint-every", 4, "--resume")) == 0
    assert load_model(out / "model").class_names == CLASSES


def test_nan_weights_never_overwrite_the_checkpoint(train_data, tmp_path, monkeypatch, capsys, restore_signals):
    # the loss of step 8 is finite, but its update leaves NaN weights right before a checkpoint
    original, calls = train.update_ema, [0]

    def update_ema(ema, model, decay):
        calls[0] += 1
        if calls[0] == 8:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return original(ema, model, decay)

    monkeypatch.setattr(train, "update_ema", update_ema)
    out = tmp_path / "run"
    assert train.main(train_args(train_data, out, 12, "--checkpoint-every", 4)) != 0
    assert "NaN" in capsys.readouterr().err
    tensors, meta = train.load_checkpoint(out / train.CHECKPOINT)
    assert meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert not (out / "model").exists()


# --- export ---------------------------------------------------------------------------------------------
def test_export_loads_back(train_data, tmp_path, restore_signals):
    out, export = tmp_path / "run", tmp_path / "weights"
    assert train.main(train_args(train_data, out, 5, "--export", export, "--norm", "group")) == 0
    ema = {k[4:]: v for k, v in checkpoint_tensors(out).items() if k.startswith("ema.")}
    for folder in (out / "model", export):
        model = load_model(folder)
        assert model.class_names == CLASSES and model.norm == "group" and model.n_feat == 16
        state = model.state_dict()
        assert state.keys() == ema.keys()
        for k in state:
            assert torch.equal(state[k], ema[k]), k
        again = ContextUnet.from_pretrained(folder)
        x, t, c = torch.randn(2, 3, 16, 16), torch.rand(2), torch.eye(5)[:2]
        with torch.no_grad():
            assert torch.equal(model(x, t, c), again(x, t, c))
        card = (folder / "README.md").read_text()
        assert "cc-by-4.0" in card and "DragonDePlatino" in card and "hero 10" in card


def test_init_from_an_exported_model(train_data, tmp_path, restore_signals):
    first = tmp_path / "first"
    assert train.main(train_args(train_data, first, 3, "--schedule", "cosine", "--T", 100)) == 0
    second = tmp_path / "second"
    assert train.main(train_args(train_data, second, 2, "--init-from", first / "model")) == 0
    assert load_model(second / "model").config_dict == load_model(first / "model").config_dict
    # the schedule and the training history travel with the model
    assert load_schedule(second / "model").config() == NoiseSchedule(100, "cosine").config()
    info = json.loads((second / "model" / "training.json").read_text())
    assert info["steps"] == 5
    # each run is a stage with its own recipe, and the card lists them
    assert [s["steps"] for s in info["stages"]] == [3, 2]
    assert [s["recipe"]["schedule"] for s in info["stages"]] == ["cosine", "linear"]
    assert sum(s["seconds"] for s in info["stages"]) == pytest.approx(info["seconds"])
    card = (second / "model" / "README.md").read_text()
    assert "  1. 3 steps" in card and "  2. 2 steps" in card
    assert "min_snr" not in card and "low_t" not in card  # options a stage did not use are not listed
    third = tmp_path / "third"  # a stage interrupted and resumed is still one stage
    assert train.main(train_args(train_data, third, 2, "--init-from", second / "model")) == 0
    assert train.main(train_args(train_data, third, 4, "--resume")) == 0
    info = json.loads((third / "model" / "training.json").read_text())
    assert [s["steps"] for s in info["stages"]] == [3, 2, 4] and info["steps"] == 9


def test_init_from_with_a_larger_n_feat_widens_the_model(train_data, tmp_path, restore_signals):
    # GroupNorm: a training step moves BatchNorm's running statistics even at a zero learning rate
    assert train.main(train_args(train_data, tmp_path / "first", 2, "--norm", "group")) == 0
    second = tmp_path / "second"
    argv = train_args(train_data, second, 1, "--init-from", tmp_path / "first" / "model", "--lr", "1e-12")
    argv[argv.index("--n-feat") + 1] = "32"
    assert train.main(argv) == 0
    small, wide = load_model(tmp_path / "first" / "model"), load_model(second / "model")
    assert wide.n_feat == 32 and small.n_feat == 16
    # one step at a negligible learning rate: the widened model still computes what the small one did
    # (the EMA of an unchanged network is that network)
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    with torch.no_grad():
        assert torch.allclose(wide(x, t, c), small(x, t, c), atol=1e-4)
    info = json.loads((second / "model" / "training.json").read_text())
    assert [s["recipe"]["n_feat"] for s in info["stages"]] == [16, 32] and info["steps"] == 3
    assert info["stages"][-1]["precision"] in ("fp32", "bf16") and "precision" not in info  # each stage its own
    card = (second / "model" / "README.md").read_text()
    assert "n_feat 16, batch_size 16" in card and "n_feat 32, batch_size 16" in card  # the stages' widths


def test_a_stage_continues_the_ema_warm_up_of_the_stages_before(train_data, tmp_path, restore_signals,
                                                                 monkeypatch):
    decays = []
    original = train.update_ema
    monkeypatch.setattr(train, "update_ema",
                        lambda ema, model, decay: (decays.append(decay), original(ema, model, decay)))
    assert train.main(train_args(train_data, tmp_path / "first", 3)) == 0
    assert train.main(train_args(train_data, tmp_path / "second", 2, "--init-from", tmp_path / "first" / "model")) == 0
    assert decays == [train.ema_decay(step, 0.999) for step in range(5)]


def test_training_stages_of_a_history_written_before_stages():
    from ddpm.history import stage_since, training_stages

    legacy = {"steps": 3600, "images": 460800, "seconds": 6891.9, "recipe": {"lr": 0.001}}
    assert training_stages(legacy) == [{"steps": 3600, "images": 460800, "seconds": 6891.9,
                                        "recipe": {"lr": 0.001}}]
    history = {"steps": 5000, "images": 640000, "seconds": 9000.0, "prior_stages": training_stages(legacy)}
    assert stage_since(history, {"lr": 5e-4}) == {"steps": 1400, "images": 179200,
                                                         "seconds": pytest.approx(2108.1), "recipe": {"lr": 5e-4}}


# --- bad arguments ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,match", [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--ema", "1"], "--ema"),
    (["--p-uncond", "1.5"], "--p-uncond"),
    (["--min-snr", "-1"], "--min-snr"),
    (["--min-snr", "inf"], "--min-snr"),
    (["--low-t-share", "1.5"], "--low-t-share"),
    (["--low-t-max", "0"], "--low-t-max"),
    (["--class-balance", "1.5"], "--class-balance"),
    (["--sample-every", "-1"], "--sample-every"),
    (["--class-balance", "-0.5"], "--class-balance"),
    (["--norm", "layer"], "--norm"),
    (["--steps", "many"], "--steps"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--distill-guidance", "0"], "--distill-guidance"),
    (["--distill-guidance", "4"], "--init-from"),
    (["--teacher", "weights"], "--teacher"),
    (["--low-noise-expert", "100"], "--init-from"),
    (["--low-noise-expert", "0", "--init-from", "weights"], "--low-noise-expert"),
    (["--low-noise-expert", "100", "--init-from", "weights", "--low-t-share", "0.5"], "--low-t-share"),
])
def test_bad_arguments_exit_with_a_message(train_data, tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as info:
        train.main(train_args(train_data, tmp_path / "run", 5) + extra)
    assert info.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_out_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", "x"])
    assert info.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing data", "resume without checkpoint", "bad init-from", "wrong height",
                                  "class mismatch", "corrupt checkpoint", "bad init-from schedule",
                                  "bad init-from history", "bad init-from history fields", "widen by a fraction"])
def test_bad_setups_give_one_error_line(train_data, tmp_path, capsys, restore_signals, case):
    out = tmp_path / "run"
    if case == "missing data":
        argv, match = train_args(tmp_path / "nowhere", out, 5), str(tmp_path / "nowhere")
    elif case == "resume without checkpoint":
        argv, match = train_args(train_data, out, 5, "--resume"), "checkpoint"
    elif case == "bad init-from":
        argv, match = train_args(train_data, out, 5, "--init-from", tmp_path / "nomodel"), str(tmp_path / "nomodel")
    elif case == "wrong height":
        argv, match = train_args(train_data, out, 5, "--height", 32), "32 px"
    elif case == "corrupt checkpoint":
        out.mkdir()
        (out / train.CHECKPOINT).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
        argv, match = train_args(train_data, out, 5, "--resume"), str(out / train.CHECKPOINT)
    elif case.startswith("bad init-from "):
        assert train.main(train_args(train_data, tmp_path / "first", 1)) == 0
        name = "scheduler_config.json" if case.endswith("schedule") else "training.json"
        (tmp_path / "first" / "model" / name).write_text('{"steps": 3}' if case.endswith("fields") else "{oops")
        argv, match = train_args(train_data, out, 5, "--init-from", tmp_path / "first" / "model"), name
    elif case == "widen by a fraction":
        assert train.main(train_args(train_data, tmp_path / "first", 1)) == 0
        argv = train_args(train_data, out, 5, "--init-from", tmp_path / "first" / "model")
        argv[argv.index("--n-feat") + 1] = "24"
        match = "whole multiple"
    else:
        other = tmp_path / "three_classes"
        write_npy_dataset(other, n=12, n_classes=3)
        assert train.main(train_args(other, tmp_path / "small", 1)) == 0
        argv, match = train_args(train_data, out, 5, "--init-from", tmp_path / "small" / "model"), "classes"
    capsys.readouterr()
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and match in err and "\n" not in err, err


def test_the_card_gives_each_stage_its_precision():
    from ddpm.card import overall_precision, stage_lines

    stage = {"steps": 10, "images": 1280, "seconds": 60.0, "recipe": {"lr": 1e-3}}
    legacy = dict(stage, precision="no")  # before stages recorded it: the last run's, for the whole
    assert overall_precision(legacy) == "fp32" and ", fp32" not in stage_lines(legacy)
    mixed = dict(stage, steps=20, stages=[dict(stage, precision="no"), dict(stage, precision="bf16")])
    assert overall_precision(mixed) == "precision by stage below"
    assert "0.02 h, fp32)" in stage_lines(mixed) and "0.02 h, bf16 autocast)" in stage_lines(mixed)
    same = dict(mixed, stages=[dict(stage, precision="bf16")] * 2)
    assert overall_precision(same) == "bf16 autocast"
    # Accelerate's "no", which older training.json files hold, is the fp32 that newer ones write
    old_and_new = dict(mixed, stages=[dict(stage, precision="no"), dict(stage, precision="fp32")])
    assert overall_precision(old_and_new) == "fp32" and stage_lines(old_and_new).count(", fp32)") == 2


def loss_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0, t (from 1 to 500), noise and contexts for six sprites."""
    g = torch.Generator().manual_seed(0)
    x0, t = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1, torch.tensor([1, 2, 50, 200, 400, 500])
    return x0, t, torch.randn(x0.shape, generator=g), torch.eye(5)[[0, 1, 2, 3, 4, 0]]


def test_diffusion_loss_is_the_noise_error_weighted_by_min_snr(tiny_unet):
    from ddpm.losses import diffusion_loss, noise_error

    schedule = NoiseSchedule(500)
    x0, t, noise, context = loss_inputs()
    with torch.no_grad():
        per_sprite = noise_error(tiny_unet.eval(), schedule, x0, noise, t, context)
        x_t = schedule.add_noise(x0, noise, t)
        by_hand = (tiny_unet(x_t, t.float() / 500, context) - noise).pow(2).mean((1, 2, 3))
    assert per_sprite.shape == (6,) and torch.allclose(per_sprite, by_hand)
    assert torch.equal(diffusion_loss(per_sprite, t, schedule), per_sprite.mean())
    weighted = diffusion_loss(per_sprite, t, schedule, min_snr=5.0)
    assert weighted < per_sprite.mean()  # the low-noise steps (high SNR) count less
    assert torch.allclose(weighted, (per_sprite * min_snr_weights(schedule.snr()[t], 5.0).float()).mean())


# --- regularisation -------------------------------------------------------------------------------------
def test_dropout_and_weight_decay_train_and_are_recorded(train_data, tmp_path, capsys, restore_signals):
    first = tmp_path / "first"
    assert train.main(train_args(train_data, first, 2)) == 0
    second = tmp_path / "second"  # grown from a model trained without dropout
    assert train.main(train_args(train_data, second, 2, "--init-from", first / "model", "--dropout", 0.1,
                           "--weight-decay", 0.01)) == 0
    model = load_model(second / "model")
    assert model.dropout == 0.1
    # the export re-estimated the EMA copy's BatchNorm statistics without dropout, on the run's seed
    ema = {k[4:]: v for k, v in train.load_checkpoint(second / train.CHECKPOINT)[0].items() if k.startswith("ema.")}
    expected = ContextUnet(**model.config_dict)
    expected.load_state_dict(ema)
    images, labels = load_data(str(train_data)).to_tensors()
    train.recalibrate_batchnorm(expected, images, labels, load_schedule(second / "model"), torch.Generator().manual_seed(0))
    exported, expected = model.state_dict(), expected.state_dict()
    statistics = [k for k in exported if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(not torch.equal(exported[k], ema[k]) for k in statistics)
    assert all(torch.allclose(exported[k], expected[k], rtol=1e-4, atol=1e-6) for k in statistics)
    info = json.loads((second / "model" / "training.json").read_text())
    assert [(s["recipe"]["dropout"], s["recipe"]["weight_decay"]) for s in info["stages"]] == [(None, 0), (0.1, 0.01)]
    card = (second / "model" / "README.md").read_text()
    assert "dropout 0.1" in card and "weight_decay 0.01" in card
    assert "dropout" not in (first / "model" / "README.md").read_text()  # listed only when used
    # a resumed run keeps the dropout of its checkpoint, and refuses another one in one line
    capsys.readouterr()
    assert train.main(train_args(train_data, second, 4, "--resume", "--dropout", 0.2)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--dropout" in err and "\n" not in err, err
    assert train.main(train_args(train_data, second, 4, "--resume", "--weight-decay", 0.1)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--weight-decay" in err and "\n" not in err, err
    assert train.main(train_args(train_data, second, 3, "--resume")) == 0
    assert load_model(second / "model").dropout == 0.1
    assert json.loads((second / "model" / "training.json").read_text())["stages"][-1]["recipe"]["weight_decay"] == 0.01


def test_weight_decay_selects_adamw(train_data, tmp_path):
    plain = train.Trainer(train.parse_args(train_args(train_data, tmp_path / "a", 1)))
    decayed = train.Trainer(train.parse_args(train_args(train_data, tmp_path / "b", 1, "--weight-decay", 0.05)))
    assert type(plain.opt.optimizer if hasattr(plain.opt, "optimizer") else plain.opt) is torch.optim.Adam
    inner = decayed.opt.optimizer if hasattr(decayed.opt, "optimizer") else decayed.opt
    assert type(inner) is torch.optim.AdamW
    decay, keep = inner.param_groups
    # kernels and matrices decay; biases and norm scales do not; every trainable weight is in one group
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert keep["params"] and all(p.dim() == 1 for p in keep["params"])
    trainable = {id(p) for p in decayed.model.parameters() if p.requires_grad}
    assert {id(p) for p in decay["params"] + keep["params"]} == trainable


def test_init_from_with_attention_grows_the_network_and_resume_keeps_it(train_data, tmp_path, capsys,
                                                                        restore_signals):
    # GroupNorm: a training step moves BatchNorm's running statistics even at a zero learning rate
    first = tmp_path / "first"
    assert train.main(train_args(train_data, first, 2, "--norm", "group")) == 0
    capsys.readouterr()
    assert train.main(train_args(train_data, first, 3, "--resume", "--attention")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--attention" in err and "\n" not in err, err
    second = tmp_path / "second"
    assert train.main(train_args(train_data, second, 1, "--init-from", first / "model", "--attention",
                                 "--lr", "1e-12")) == 0
    small, grown = load_model(first / "model"), load_model(second / "model")
    assert grown.attention and not small.attention
    # one step at a negligible learning rate: the new blocks still start as the identity
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    with torch.no_grad():
        assert torch.allclose(grown(x, t, c), small(x, t, c), atol=1e-4)
    assert "self-attention" in (second / "model" / "README.md").read_text()
    assert train.main(train_args(train_data, second, 2, "--resume", "--lr", "1e-12")) == 0  # keeps its attention
    assert load_model(second / "model").attention


def test_batchnorm_recalibration_gives_the_statistics_without_dropout():
    """After recalibration each BatchNorm holds the mean and variance of what reaches it when
    nothing is dropped; the statistics gathered in training (with dropout) are replaced."""
    torch.manual_seed(0)
    schedule = NoiseSchedule(50)
    images = torch.rand(32, 3, 16, 16) * 2 - 1
    labels = torch.arange(32) % 5
    model = ContextUnet(n_feat=16, class_names=CLASSES, dropout=0.3).eval()
    first_bn = model.init_conv.conv2[1]
    first_bn.running_mean.fill_(5.0)  # stale statistics, as training with dropout leaves them
    train.recalibrate_batchnorm(model, images, labels, schedule, torch.Generator().manual_seed(1),
                                batches=1, batch_size=32)
    assert not model.training and first_bn.momentum == 0.1  # left as found, momentum restored
    seen = []
    hook = model.init_conv.conv2[0].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x0, t, noise, context = training_batch(images, labels, 5, 32, schedule.T, 0.1, torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()
        model(schedule.add_noise(x0, noise, t), t.float() / schedule.T, context)
    hook.remove()
    out = seen[0]
    assert torch.allclose(first_bn.running_mean, out.mean((0, 2, 3)), atol=1e-3)
    assert torch.allclose(first_bn.running_var, out.var((0, 2, 3), unbiased=True), rtol=1e-2)


# --- distilling guidance ---------------------------------------------------------------------------------
def distillation_inputs() -> tuple[torch.Tensor, ...]:
    """x0, noise, t (up to T = 100), contexts and guidance scales 0 to 4 for four sprites."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.randn(4, 3, 16, 16, generator=g)
    return x0, noise, torch.tensor([5, 30, 60, 100]), torch.eye(5)[:4], torch.tensor([0.0, 1.0, 2.0, 4.0])


def test_guidance_distillation_error_is_the_distance_to_the_teachers_guided_noise(tiny_unet):
    schedule = NoiseSchedule(100)
    student = ContextUnet(**dict(tiny_unet.config_dict, distilled_guidance=4.0)).eval()
    student.load_state_dict(tiny_unet.state_dict(), strict=False)  # starts as the conditional network
    x0, noise, t, c, w = distillation_inputs()
    error = guidance_distillation_error(student, tiny_unet, schedule, x0, noise, t, c, w)
    with torch.no_grad():
        x_t, time = schedule.add_noise(x0, noise, t), t.float() / 100
        gap = tiny_unet(x_t, time, c) - tiny_unet(x_t, time, torch.zeros_like(c))
    assert error[0] == 0
    assert torch.allclose(error, (w.view(-1, 1, 1, 1) * gap).pow(2).mean((1, 2, 3)), rtol=1e-4, atol=1e-7)


def distillation_gap(student: ContextUnet, teacher: ContextUnet) -> float:
    """The mean distillation error over a fixed set of x_t, times and scales from 0 to 4."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1, torch.randn(64, 3, 16, 16, generator=g)
    t, c = torch.randint(1, 501, (64,), generator=g), torch.eye(5)[torch.arange(64) % 5]
    w = torch.linspace(0, 4, 64)
    with torch.no_grad():
        return float(guidance_distillation_error(student, teacher, NoiseSchedule(), x0, noise, t, c, w).mean())


def test_distill_guidance_trains_a_one_pass_student_and_resumes_exactly(train_data, tmp_path, capsys, monkeypatch,
                                                                        restore_signals):
    # A random GroupNorm teacher: its conditional and unconditional predictions differ clearly (a tiny
    # network trained for a few steps ignores the context, and a random BatchNorm one in eval mode
    # lets the up path's input fade out block by block).
    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=16, class_names=list(CLASSES), norm="group"), NoiseSchedule(), tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher")
    student_run = tmp_path / "student"
    args = ("--init-from", tmp_path / "teacher", "--distill-guidance", 4, "--lr", 3e-4, "--ema", 0.5,
            "--checkpoint-every", 6)
    assert train.main(train_args(train_data, student_run, 60, *args)) == 0
    student = load_model(student_run / "model")
    assert student.distilled_guidance == 4.0 and not teacher.distilled_guidance
    start = ContextUnet(**student.config_dict).eval()
    start.load_state_dict(teacher.state_dict(), strict=False)
    # the student's one pass is nearer the teacher's two than the teacher's conditional pass is
    assert distillation_gap(student, teacher) < 0.85 * distillation_gap(start, teacher)
    card = (student_run / "model" / "README.md").read_text()
    assert "distill_guidance 4.0" in card and "the guidance scale is an input" in card
    # the checkpoint holds the teacher: resuming needs no --init-from, and goes on exactly
    stopped = tmp_path / "stopped"
    stop_after(monkeypatch, 9)
    assert train.main(train_args(train_data, stopped, 60, *args)) == 0
    monkeypatch.undo()
    assert train.main(train_args(train_data, stopped, 60, "--resume", "--lr", 3e-4, "--ema", 0.5,
                                 "--checkpoint-every", 6)) == 0
    assert_same_run(student_run, stopped)
    assert train.main(train_args(train_data, tmp_path / "plain", 1)) == 0
    capsys.readouterr()
    # a student cannot be trained on (its teacher is not in its folder), nor resumed as another distillation
    for argv, match in [(train_args(train_data, tmp_path / "more", 2, "--init-from", student_run / "model"),
                         "distilled"),
                        (train_args(train_data, stopped, 70, "--resume", "--distill-guidance", 2), "--distill-guidance"),
                        (train_args(train_data, tmp_path / "plain", 2, "--resume", "--distill-guidance", 4),
                         "does not distil")]:
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and match in err and "\n" not in err, err


def test_distill_guidance_into_a_narrower_student_of_another_teacher(train_data, tmp_path, capsys):
    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=32, class_names=list(CLASSES), norm="group"), NoiseSchedule(), tmp_path / "teacher")
    save_model(ContextUnet(n_feat=16, class_names=list(CLASSES), norm="group"), NoiseSchedule(), tmp_path / "narrow")
    teacher, narrow = load_model(tmp_path / "teacher"), load_model(tmp_path / "narrow")
    run = tmp_path / "student"
    args = ("--init-from", tmp_path / "narrow", "--teacher", tmp_path / "teacher", "--distill-guidance", 4,
            "--lr", 3e-4, "--ema", 0.5)
    assert train.main(train_args(train_data, run, 60, *args)) == 0
    student = load_model(run / "model")
    assert (student.n_feat, student.distilled_guidance) == (16, 4.0)
    assert f"teacher {tmp_path / 'teacher'}" in (run / "model" / "README.md").read_text()
    start = ContextUnet(**student.config_dict).eval()
    start.load_state_dict(narrow.state_dict(), strict=False)
    assert distillation_gap(student, teacher) < 0.85 * distillation_gap(start, teacher)
    # the checkpoint keeps the wide teacher, so the run resumes without naming it again
    _, meta = train.load_checkpoint(run / train.CHECKPOINT)
    assert meta["teacher_config"]["n_feat"] == 32 and meta["config"]["n_feat"] == 16
    assert train.main(train_args(train_data, run, 62, "--resume", "--lr", 3e-4, "--ema", 0.5)) == 0
    card = (run / "model" / "README.md").read_text()
    assert f"distill_guidance 4.0, teacher {tmp_path / 'teacher'}" in card, "the resumed stage's recipe keeps them"
    capsys.readouterr()
    # a teacher on another schedule or with other classes, or one that is itself a student, is refused
    save_model(ContextUnet(n_feat=16, class_names=list(CLASSES), norm="group"), NoiseSchedule(200), tmp_path / "T200")
    save_model(ContextUnet(n_feat=16, class_names=["a", "b", "c", "d", "e"], norm="group"), NoiseSchedule(),
               tmp_path / "other_classes")
    for bad, match in [(tmp_path / "T200", "schedule"), (tmp_path / "other_classes", "classes"),
                       (run / "model", "distilled")]:
        argv = train_args(train_data, tmp_path / "bad", 2, "--init-from", tmp_path / "narrow", "--teacher", bad,
                          "--distill-guidance", 4)
        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and match in err and "\n" not in err, err


def test_init_from_with_a_smaller_n_feat_prunes_the_model_and_distils_it_into_what_is_left(train_data, tmp_path,
                                                                                          capsys):
    torch.manual_seed(0)
    save_model(ContextUnet(n_feat=32, class_names=list(CLASSES), norm="group"), NoiseSchedule(), tmp_path / "teacher")
    teacher = load_model(tmp_path / "teacher")
    run = tmp_path / "student"
    argv = train_args(train_data, run, 40, "--init-from", tmp_path / "teacher", "--distill-guidance", 4,
                      "--lr", 3e-4, "--ema", 0.5)  # --n-feat 16: half the teacher's width
    assert train.main(argv) == 0
    student = load_model(run / "model")
    assert (student.n_feat, student.distilled_guidance) == (16, 4.0)
    _, meta = train.load_checkpoint(run / train.CHECKPOINT)
    assert meta["teacher_config"]["n_feat"] == 32, "the student learns from the whole model, not its pruned copy"
    pruned = train.narrowed(teacher, 16, load_data(train_data), argparse.Namespace(seed=0, p_uncond=0.1))
    start = ContextUnet(**student.config_dict).eval()
    start.load_state_dict(pruned.state_dict(), strict=False)
    fresh = ContextUnet(**student.config_dict).eval()
    # the pruned start is nearer the teacher than a new network of its width, and training gets nearer still
    assert distillation_gap(student, teacher) < 0.85 * distillation_gap(start, teacher)
    assert distillation_gap(start, teacher) < 0.85 * distillation_gap(fresh, teacher)
    info = json.loads((run / "model" / "training.json").read_text())
    assert [s["recipe"]["n_feat"] for s in info["stages"]][-1] == 16
    capsys.readouterr()
    argv[argv.index("--n-feat") + 1] = "20"  # not a multiple of 8
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --n-feat with --init-from") and "multiple of 8" in err and "\n" not in err, err


# --- v-prediction ---------------------------------------------------------------------------------------
def test_the_v_prediction_loss_is_the_mse_of_v(tiny_unet):
    from ddpm.losses import diffusion_loss, noise_error

    schedule = NoiseSchedule(500, prediction="v_prediction")
    x0, t, noise, context = loss_inputs()
    with torch.no_grad():
        per_sprite = noise_error(tiny_unet.eval(), schedule, x0, noise, t, context)
        x_t = schedule.add_noise(x0, noise, t)
        v_hat = tiny_unet(x_t, t.float() / 500, context)
        v_error = (v_hat - schedule.velocity(x0, noise, t)).pow(2).mean((1, 2, 3))
        # noise_error judges the noise the output implies, whatever the network predicts
        implied = (1 - schedule.alpha_bar(t, x0)).sqrt() * x_t + schedule.alpha_bar(t, x0).sqrt() * v_hat
        assert torch.allclose(per_sprite, (implied - noise).pow(2).mean((1, 2, 3)), atol=1e-6)
    assert torch.allclose(diffusion_loss(per_sprite, t, schedule), v_error.mean(), rtol=1e-4)
    # min-SNR weighs v's MSE by min(SNR, gamma) / (SNR + 1) (Hang et al. 2023)
    snr = schedule.snr()[t].float()
    assert torch.allclose(diffusion_loss(per_sprite, t, schedule, min_snr=5.0),
                          (v_error * snr.clamp(max=5.0) / (snr + 1)).mean(), rtol=1e-4)


def test_v_prediction_trains_exports_and_switches_only_on_a_new_stage(train_data, tmp_path, capsys,
                                                                      restore_signals):
    first = tmp_path / "first"
    assert train.main(train_args(train_data, first, 2)) == 0
    assert load_schedule(first / "model").prediction == "epsilon"
    capsys.readouterr()
    assert train.main(train_args(train_data, first, 3, "--resume", "--prediction", "v_prediction")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--prediction" in err and "--init-from" in err and "\n" not in err, err
    assert train.main(train_args(train_data, tmp_path / "student", 1, "--init-from", first / "model",
                                 "--distill-guidance", 2, "--prediction", "v_prediction")) == 2
    assert "teacher" in capsys.readouterr().err
    second = tmp_path / "second"
    assert train.main(train_args(train_data, second, 2, "--init-from", first / "model",
                                 "--prediction", "v_prediction")) == 0
    assert train.main(train_args(train_data, second, 3, "--resume")) == 0  # keeps predicting v
    schedule = load_schedule(second / "model")
    assert schedule.prediction == "v_prediction"
    assert json.loads((second / "model" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    card = (second / "model" / "README.md").read_text()
    assert "MSE on v = " in card and "prediction v_prediction" in card.split("  2. ")[1]
    assert "prediction" not in card.split("  1. ")[1].split("\n")[0]  # the noise-predicting stage
    third = tmp_path / "third"  # a stage started from a v model predicts v unless told otherwise
    assert train.main(train_args(train_data, third, 1, "--init-from", second / "model")) == 0
    assert load_schedule(third / "model").prediction == "v_prediction"


def test_a_v_student_learns_its_teachers_guided_v():
    from ddpm.losses import diffusion_loss

    schedule = NoiseSchedule(100, prediction="v_prediction")
    teacher = make_tiny_unet(seed=1).eval()
    student = ContextUnet(**dict(teacher.config_dict, distilled_guidance=4.0)).eval()
    student.load_state_dict(make_tiny_unet(seed=2).state_dict(), strict=False)  # another network
    x0, noise, t, c, w = distillation_inputs()
    per_sprite = guidance_distillation_error(student, teacher, schedule, x0, noise, t, c, w)
    with torch.no_grad():
        x_t, time = schedule.add_noise(x0, noise, t), t.float() / 100
        guided_v = teacher.forward_guided(x_t, time, c, w)
        v_gap = (student(x_t, time, c, w) - guided_v).pow(2).mean((1, 2, 3))
    # in noise terms per sprite, and the MSE of v once diffusion_loss weighs it
    assert torch.allclose(per_sprite, schedule.alpha_bar(t, x0).flatten().float() * v_gap, rtol=1e-4)
    assert torch.allclose(diffusion_loss(per_sprite, t, schedule), v_gap.mean(), rtol=1e-4)


def test_the_card_lists_the_prediction_where_a_stage_changed_it():
    from ddpm.card import model_card, stage_lines

    stage = {"steps": 10, "images": 1280, "seconds": 60.0}
    stages = [dict(stage, recipe={"lr": 1e-3, "prediction": p}) for p in
              ("epsilon", "v_prediction", "v_prediction", "epsilon")]
    lines = stage_lines(dict(stage, steps=40, stages=stages)).splitlines()
    assert ["prediction" in line for line in lines] == [False, True, False, True]
    assert "prediction epsilon" in lines[3] and "prediction v_prediction" in lines[1]
    config = make_tiny_unet().config_dict
    assert "MSE on the noise" in str(model_card(config, 10, None))
    assert "MSE on v = " in str(model_card(config, 10, None, prediction="v_prediction"))


# --- a low-noise expert ----------------------------------------------------------------------------------
def test_a_low_noise_expert_trains_alone_as_a_plain_low_t_run_would(train_data, tmp_path, capsys, restore_signals):
    first = tmp_path / "first"
    assert train.main(train_args(train_data, first, 2)) == 0
    base = load_model(first / "model")
    expert_run, plain_run = tmp_path / "expert", tmp_path / "plain"
    assert train.main(train_args(train_data, expert_run, 3, "--init-from", first / "model",
                                 "--low-noise-expert", 100)) == 0
    # the same start, the same batches: --low-t-share 1 --low-t-max 100 on the model itself
    assert train.main(train_args(train_data, plain_run, 3, "--init-from", first / "model",
                                 "--low-t-share", 1, "--low-t-max", 100)) == 0
    paired, plain = load_model(expert_run / "model"), load_model(plain_run / "model")
    assert paired.expert_t == pytest.approx(0.2) and plain.expert is None
    for name, value in base.state_dict().items():  # the model's own network is left as it was
        assert torch.equal(paired.state_dict()[name], value), name
    for name, value in plain.state_dict().items():  # and the expert is what the plain run trained
        assert torch.allclose(paired.expert.state_dict()[name], value, atol=1e-6), name
    assert not torch.equal(paired.expert.init_conv.conv1[0].weight, base.init_conv.conv1[0].weight)
    assert (json.loads((expert_run / "model" / "training.json").read_text())["stages"][-1]["recipe"]
            ["low_noise_expert"]) == 100
    card = (expert_run / "model" / "README.md").read_text()
    assert "low-noise expert" in card and "low_noise_expert 100" in card
    # a stage may go on training the same expert; another time, or resuming a run without one, is refused
    assert train.main(train_args(train_data, expert_run, 4, "--resume")) == 0
    assert load_model(expert_run / "model").expert_t == pytest.approx(0.2)
    capsys.readouterr()
    assert train.main(train_args(train_data, tmp_path / "other", 1, "--init-from", expert_run / "model",
                                 "--low-noise-expert", 50)) == 2
    assert train.main(train_args(train_data, plain_run, 4, "--resume", "--low-noise-expert", 100)) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error:") and "--low-noise-expert" in e for e in errors), errors
