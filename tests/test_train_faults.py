"""Training faults: killed at a random step or in the middle of a checkpoint write, the run resumes exactly.

test_train.py already covers a SIGTERM stop and a SIGKILL at a fixed step. Here the kill point is
drawn at random (the drawn value is in every failure message), and the write itself is interrupted:
the atomic write (a .tmp file, fsync, os.replace) must leave the previous checkpoint loadable, and
the resumed run must match an uninterrupted one step for step (losses and every tensor).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

import ddpm.train as train
from conftest import write_npy_dataset

PROJECT = Path(__file__).resolve().parent.parent
STEPS, EVERY = 12, 3


@pytest.fixture(autouse=True)
def restore_signals():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--steps", str(STEPS), "--n-feat", "16", "--batch-size", "16",
            "--threads", "1", "--warmup", "3", "--lr", "2e-3", "--sample-every", "100000", "--checkpoint-every",
            str(EVERY), *map(str, extra)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_data")
    write_npy_dataset(folder, n=48)
    return folder


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: its log and final checkpoint."""
    out = tmp_path_factory.mktemp("fault_ref") / "run"
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert train.main(args(data, out)) == 0
    for s, h in before.items():
        signal.signal(s, h)
    return out


def log_rows(out: Path) -> list[str]:
    return [line.split(",")[:3] for line in (out / "log.csv").read_text().splitlines()[1:]]


def assert_same_run(ref: Path, out: Path, note: str):
    assert log_rows(out) == log_rows(ref), note
    a, _ = train.load_checkpoint(ref / train.CHECKPOINT)
    b, meta = train.load_checkpoint(out / train.CHECKPOINT)
    assert meta["step"] == STEPS, note
    keys = [k for k in a if k.startswith(("model.", "ema.", "opt."))]
    assert keys and keys == [k for k in b if k.startswith(("model.", "ema.", "opt."))], note
    for k in keys:
        assert torch.equal(a[k], b[k]), f"{k} differs ({note})"


# --- an interrupted write, in-process ------------------------------------------------------------------
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(data, reference, tmp_path, monkeypatch):
    """The second checkpoint write dies half-way (say, the disk fills): the first checkpoint still loads,
    and resuming from it reproduces the uninterrupted run."""
    real, calls = safetensors.torch.save_file, [0]

    def half_then_fail(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            real(tensors, filename, metadata=metadata)
            full = Path(filename).read_bytes()
            Path(filename).write_bytes(full[: len(full) // 2])
            raise OSError(28, "No space left on device (simulated)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left"):
        train.main(args(data, out))
    monkeypatch.undo()
    assert (out / (train.CHECKPOINT + ".tmp")).stat().st_size > 0  # the torn write is there ...
    with pytest.raises(train.TrainingError):
        train.load_checkpoint(out / (train.CHECKPOINT + ".tmp"))
    assert train.load_checkpoint(out / train.CHECKPOINT)[1]["step"] == EVERY  # ... and did not replace this
    assert train.main(args(data, out, "--resume")) == 0
    assert_same_run(reference, out, "write 2 failed half-way")
    assert not (out / (train.CHECKPOINT + ".tmp")).exists()


# --- SIGKILL at a random point, in a subprocess --------------------------------------------------------
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import safetensors.torch
    import ddpm.train as train
    mode, at = os.environ["KILL_MODE"], int(os.environ["KILL_AT"])
    if mode == "step":
        original, calls = train.update_ema, [0]
        def update_ema(*a, **kw):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **kw)
        train.update_ema = update_ema
    else:  # die in the middle of the at-th checkpoint write, after part of the file is on disk
        real, calls = safetensors.torch.save_file, [0]
        def save_file(tensors, filename, metadata=None):
            calls[0] += 1
            real(tensors, filename, metadata=metadata)
            if calls[0] == at:
                data = Path(filename).read_bytes()
                with open(filename, "r+b") as f:
                    f.truncate(int(len(data) * float(os.environ["KILL_FRACTION"])))
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = save_file
    sys.exit(train.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("mode", ["step", "write"])
def test_sigkill_at_a_random_point_then_resume(data, reference, tmp_path, mode):
    rng = random.Random()
    if mode == "step":  # any optimizer step after the first checkpoint
        at, fraction = rng.randint(EVERY + 1, STEPS), 0.0
        expected_step = (at - 1) // EVERY * EVERY
    else:  # any checkpoint write but the first (the first has no earlier checkpoint to fall back on)
        at, fraction = rng.randint(2, STEPS // EVERY), rng.uniform(0.0, 0.99)
        expected_step = (at - 1) * EVERY
    note = f"SIGKILL mode={mode} at={at} fraction={fraction:.2f}"
    out = tmp_path / "killed"
    env = dict(os.environ, KILL_MODE=mode, KILL_AT=str(at), KILL_FRACTION=str(fraction), PYTHONPATH=str(PROJECT),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args(data, out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{note}: {proc.stderr[-2000:]}"
    tensors, meta = train.load_checkpoint(out / train.CHECKPOINT)  # never a torn checkpoint
    assert meta["step"] == expected_step, note
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()), note
    assert not (out / "model").exists(), note
    assert train.main(args(data, out, "--resume")) == 0, note
    assert_same_run(reference, out, note)
