"""Training under `accelerate launch` with two CPU processes (DDP over gloo), and what such runs need
from the trainer: one log and one checkpoint, equal weights on every process, the logged loss averaged
over them, a common stop, the launcher's --mixed_precision, and a learning rate that does not jump
when a run is resumed with another --steps."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddpm.train as train
from ddpm.device import to_accelerate, training_precision

from helpers import PROJECT, free_port, read_log, stop_after, write_npy_dataset

# Runs the trainer as `python -m ddpm.train` would, then writes what each process holds: its parameters
# (model and EMA) and the losses it computed before they were averaged.
RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    from safetensors.torch import save_file
    import ddpm.train as train

    dump, argv = sys.argv[1], sys.argv[2:]
    trainer = train.Trainer(train.parse_args(argv))
    acc, own_losses = trainer.accelerator, []
    reduce = acc.reduce

    def recording_reduce(tensor, reduction="sum", scale=1.0):
        if reduction == "mean":
            own_losses.append(float(tensor))
        return reduce(tensor, reduction, scale)

    acc.reduce = recording_reduce
    status = trainer.train()
    rank = acc.process_index
    params = {f"model.{k}": v.detach().contiguous() for k, v in acc.unwrap_model(trainer.model).named_parameters()}
    params.update({f"ema.{k}": v.detach().contiguous() for k, v in trainer.ema.named_parameters()})
    save_file(params, f"{dump}/rank{rank}.safetensors")
    with open(f"{dump}/rank{rank}.json", "w") as f:
        json.dump({"losses": own_losses, "precision": trainer.precision, "processes": acc.num_processes}, f)
    sys.exit(status)
""")


def launch(tmp_path: Path, dump: Path, train_args: list[str], mixed_precision: str) -> subprocess.CompletedProcess:
    accelerate = shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate command is not installed")
    dump.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(free_port()), "--mixed_precision", mixed_precision,
               "--dynamo_backend", "no", str(script), str(dump), *train_args]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def ranks(dump: Path) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    return ([load_file(str(dump / f"rank{r}.safetensors")) for r in (0, 1)],
            [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)])


def test_two_cpu_processes_train_resume_and_agree(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    write_npy_dataset(data, n=48)
    common = ["--data", str(data), "--out", str(out), "--n-feat", "8", "--batch-size", "8", "--threads", "1",
              "--warmup", "2", "--lr", "1e-3", "--checkpoint-every", "2", "--sample-every", "100000"]  # one grid, at the end

    # --precision auto takes the launcher's --mixed_precision, even where it would pick bf16 itself
    launch(tmp_path, tmp_path / "first", common + ["--steps", "4"], "no")
    (params, info) = ranks(tmp_path / "first")
    assert [i["processes"] for i in info] == [2, 2] and [i["precision"] for i in info] == ["fp32", "fp32"]
    for key in params[0]:
        assert torch.equal(params[0][key], params[1][key]), key
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one log, each step once
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "log.csv", "model", "samples"]
    for row, own0, own1 in zip(rows, info[0]["losses"], info[1]["losses"]):
        assert own0 != own1  # each process saw its own half of the batch...
        assert float(row["loss"]) == pytest.approx((own0 + own1) / 2, abs=2e-6)  # ...and the log their mean

    # resumed with more steps and the launcher's bf16: the learning rate goes on from where it was
    last_lr = train.learning_rate(4, 1e-3, 2, 4)
    launch(tmp_path, tmp_path / "second", common + ["--steps", "6", "--resume"], "bf16")
    (params, info) = ranks(tmp_path / "second")
    assert [i["precision"] for i in info] == ["bf16", "bf16"]
    for key in params[0]:
        assert torch.equal(params[0][key], params[1][key]), key
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[4]["lr"]) == pytest.approx(last_lr, rel=1e-3)


# --- the pieces, in one process ---------------------------------------------------------------------------
def test_precision_auto_defers_to_the_launcher():
    cpu = torch.device("cpu")
    assert training_precision("auto", cpu, "fp16") == "fp16"
    assert training_precision("auto", cpu, "no") == "fp32"  # Accelerate's name for fp32
    assert training_precision("bf16", cpu, "no") == "bf16"  # an explicit --precision wins
    assert training_precision("fp32", cpu, "bf16") == "fp32"
    assert [to_accelerate(p) for p in ("fp32", "bf16", "fp16")] == ["no", "bf16", "fp16"]


def run_args(data: Path, out: Path, steps: int, *extra) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--steps", str(steps), "--n-feat", "8", "--batch-size", "8",
            "--threads", "1", "--warmup", "3", "--lr", "2e-3", "--sample-every", "0", *map(str, extra)]


@pytest.mark.parametrize("new_steps", [20, 7])
def test_resuming_with_another_steps_keeps_the_learning_rate_continuous(small_train_data, tmp_path, monkeypatch,
                                                                        new_steps):
    out = tmp_path / "run"
    stop_after(monkeypatch, 5)
    assert train.main(run_args(small_train_data, out, 10)) == 0
    monkeypatch.undo()
    assert [int(r["step"]) for r in read_log(out)] == [1, 2, 3, 4, 5]
    assert train.main(run_args(small_train_data, out, new_steps, "--resume")) == 0
    lrs = [float(r["lr"]) for r in read_log(out)]
    assert len(lrs) == new_steps
    reached = train.learning_rate(5, 2e-3, 3, 10)
    assert lrs[5] == pytest.approx(reached, rel=1e-3)  # where the first run was
    # then a straight decay to the final 0.1 * lr at the new end
    expected = [reached + (2e-4 - reached) * (step - 5) / (new_steps - 5) for step in range(5, new_steps)]
    assert lrs[5:] == pytest.approx(expected, rel=1e-3)


def test_changing_the_warm_up_inside_it_is_refused(small_train_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    stop_after(monkeypatch, 1)
    assert train.main(run_args(small_train_data, out, 10)) == 0
    monkeypatch.undo()
    capsys.readouterr()
    assert train.main(run_args(small_train_data, out, 10, "--resume", "--lr", "1e-3")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--lr and --warmup cannot change" in err and "\n" not in err, err
