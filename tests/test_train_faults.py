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
from helpers import FAULT_RUN_EVERY, FAULT_RUN_STEPS, PROJECT, fault_run_args

pytestmark = pytest.mark.usefixtures("restore_signals")


def log_rows(out: Path) -> list[str]:
    return [line.split(",")[:3] for line in (out / "log.csv").read_text().splitlines()[1:]]


def assert_same_run(ref: Path, out: Path, note: str):
    assert log_rows(out) == log_rows(ref), note
    a, _ = train.load_checkpoint(ref / train.CHECKPOINT)
    b, meta = train.load_checkpoint(out / train.CHECKPOINT)
    assert meta["step"] == FAULT_RUN_STEPS, note
    keys = [k for k in a if k.startswith(("model.", "ema.", "opt."))]
    assert keys and keys == [k for k in b if k.startswith(("model.", "ema.", "opt."))], note
    for k in keys:
        assert torch.equal(a[k], b[k]), f"{k} differs ({note})"


# --- an interrupted write, in-process ------------------------------------------------------------------
def test_failed_checkpoint_write_keeps_the_previous_checkpoint(train_data, uninterrupted_fault_run, tmp_path,
                                                              monkeypatch):
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
        train.main(fault_run_args(train_data, out))
    monkeypatch.undo()
    assert (out / (train.CHECKPOINT + ".tmp")).stat().st_size > 0  # the torn write is there ...
    with pytest.raises(train.TrainingError):
        train.load_checkpoint(out / (train.CHECKPOINT + ".tmp"))
    assert train.load_checkpoint(out / train.CHECKPOINT)[1]["step"] == FAULT_RUN_EVERY  # ... and did not replace this
    assert train.main(fault_run_args(train_data, out, "--resume")) == 0
    assert_same_run(uninterrupted_fault_run, out, "write 2 failed half-way")
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
def test_sigkill_at_a_random_point_then_resume(train_data, uninterrupted_fault_run, tmp_path, mode):
    rng = random.Random()
    if mode == "step":  # any optimizer step after the first checkpoint
        at, fraction = rng.randint(FAULT_RUN_EVERY + 1, FAULT_RUN_STEPS), 0.0
        expected_step = (at - 1) // FAULT_RUN_EVERY * FAULT_RUN_EVERY
    else:  # any checkpoint write but the first (the first has no earlier checkpoint to fall back on)
        at, fraction = rng.randint(2, FAULT_RUN_STEPS // FAULT_RUN_EVERY), rng.uniform(0.0, 0.99)
        expected_step = (at - 1) * FAULT_RUN_EVERY
    note = f"SIGKILL mode={mode} at={at} fraction={fraction:.2f}"
    out = tmp_path / "killed"
    env = dict(os.environ, KILL_MODE=mode, KILL_AT=str(at), KILL_FRACTION=str(fraction), PYTHONPATH=str(PROJECT),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *fault_run_args(train_data, out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{note}: {proc.stderr[-2000:]}"
    tensors, meta = train.load_checkpoint(out / train.CHECKPOINT)  # never a torn checkpoint
    assert meta["step"] == expected_step, note
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()), note
    assert not (out / "model").exists(), note
    assert train.main(fault_run_args(train_data, out, "--resume")) == 0, note
    assert_same_run(uninterrupted_fault_run, out, note)
