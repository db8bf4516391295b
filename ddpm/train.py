"""Train a ContextUnet on sprites: python -m ddpm.train --data dawnlike --out runs/dawnlike

Runs on HF Accelerate, so the same command works on the CPU, on one GPU, or under
`accelerate launch` on several processes (`--multi_gpu --num_processes N --num_machines 1 -m
ddpm.train ...`; on a machine without GPUs that gives N CPU processes over gloo). --batch-size is
the whole batch, split over the processes; only the first process writes files, the log holds the
loss averaged over all, and all stop at the same step. The whole data set lives on the device as
one tensor and batches are drawn with a seeded generator: no DataLoader workers, no per-sample Python.

Files written to --out:
  checkpoint.safetensors  model, EMA, optimizer and RNG state, written atomically
  log.csv                 step, loss, learning rate, images/s, elapsed seconds
  samples/step_*.png      one row per class from the EMA weights
  model/                  the EMA weights in Hub format (what ships)
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from .checkpoint import load_model, save_model
from .data import DataError, SpriteData, load_data
from .device import TRAINING_PRECISIONS, to_accelerate, training_precision
from .folder import CheckpointError
from .history import TOTALS, stage_since, training_stages
from .images import to_uint8
from .losses import (LOW_T_MAX, class_balanced_weights, diffusion_loss, guidance_distillation_error, noise_error,
                     palette_cross_entropy, training_batch)
from .model import DEFAULT_N_FEAT, NORMS, TIME_EMBEDDINGS, ContextUnet, inference_model
from .resize import narrow, widen, with_low_noise_expert, with_palette_head
from .sampling import sample
from .schedule import PREDICTIONS, SCHEDULES, NoiseSchedule

CHECKPOINT = "checkpoint.safetensors"


class TrainingError(RuntimeError):
    pass


# --- the learning-rate schedule -------------------------------------------------------------------
def learning_rate(step: int, base_lr: float, warmup: int, total: int, final_fraction: float = 0.1,
                  start: tuple[int, float] | None = None) -> float:
    """Linear warm-up to base_lr, then linear decay to final_fraction * base_lr at `total` steps.

    start = (step0, lr0): from step0 on, decay linearly from lr0 instead (a run resumed with another
    --steps, --lr or --warmup continues from the learning rate it had, see resumed_lr_start).
    """
    if start is not None and step >= start[0]:
        progress = min(1.0, (step - start[0]) / max(1, total - start[0]))
        return start[1] + (final_fraction * base_lr - start[1]) * progress
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (1 - (1 - final_fraction) * progress)


def resumed_lr_start(step: int, before: dict, now: argparse.Namespace,
                     start_before: tuple[int, float] | None) -> tuple[int, float] | None:
    """Where a resumed run's learning-rate decay starts, so that the rate does not jump.

    `before` holds the --steps, --lr and --warmup the checkpoint was trained with. With the same three
    the schedule goes on as it was. With others, from `step` on the rate decays linearly from the one
    it had reached to the new end (inside the warm-up only a new --steps is possible: the warm-up does
    not depend on it).
    """
    same = (before["steps"], before["lr"], before["warmup"]) == (now.steps, now.lr, now.warmup)
    if same or (step < before["warmup"] and (before["lr"], before["warmup"]) == (now.lr, now.warmup)):
        return start_before
    if step < before["warmup"]:
        raise TrainingError(f"--lr and --warmup cannot change while resuming inside the warm-up (step {step} of "
                            f"{before['warmup']}); resume with --lr {before['lr']} --warmup {before['warmup']}")
    return step, learning_rate(step, before["lr"], before["warmup"], before["steps"], start=start_before)


# --- the EMA weights ------------------------------------------------------------------------------
def ema_decay(step: int, max_decay: float) -> float:
    """EMA decay warmed up from 0 so early EMA weights are not stuck at the initialisation.

    `step` counts the model's whole training, earlier stages included: a stage started with
    --init-from begins from weights that are already an average, so it keeps averaging at the
    decay they reached instead of following the raw weights again.
    """
    return min(max_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over parameters and float buffers (BatchNorm statistics)."""
    ema_state, model_state = ema.state_dict(), model.state_dict()
    floats = [k for k, v in ema_state.items() if v.is_floating_point()]
    torch._foreach_lerp_([ema_state[k] for k in floats], [model_state[k] for k in floats], 1 - decay)
    for k, v in ema_state.items():
        if not v.is_floating_point():
            v.copy_(model_state[k])


RECALIBRATION_BATCHES = 64  # batches of x_t the exported model's BatchNorm statistics average over


@torch.no_grad()
def recalibrate_batchnorm(model: ContextUnet, images: torch.Tensor, labels: torch.Tensor, schedule: NoiseSchedule,
                          generator: torch.Generator, batches: int | None = None, batch_size: int = 128,
                          p_uncond: float = 0.1) -> None:
    """Re-estimate every BatchNorm's running statistics on training batches, with dropout off.

    Dropout before a BatchNorm makes the statistics it gathers in training those of the dropped
    activations, whose variance is larger than at sampling time, when nothing is dropped (the
    "variance shift" of Li et al., 2019); the EMA copy inherits them. Averaging fresh statistics
    over `batches` batches of x_t, as the network sees them when sampling, removes the mismatch.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats]
    if not norms:
        return
    was_training = model.training
    model.eval()
    saved_momentum = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
        m.train()
    n_classes = model.n_classes
    for _ in range(batches or RECALIBRATION_BATCHES):
        x0, t, noise, context = training_batch(images, labels, n_classes, batch_size, schedule.T, p_uncond, generator)
        noise_error(model, schedule, x0, noise, t, context)
    for m, momentum in zip(norms, saved_momentum):
        m.momentum = momentum
    model.train(was_training)


# --- checkpoints ----------------------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()
               if torch.is_tensor(v)}
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, model, ema, opt, step: int, generator: torch.Generator, meta: dict,
                    teacher: torch.nn.Module | None = None) -> None:
    """Everything needed to continue exactly, in one safetensors file, replaced atomically (with the
    teacher of a distillation, so that resuming needs nothing but this file)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    if teacher is not None:
        tensors.update({f"teacher.{k}": v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()})
    opt_tensors, groups = _flatten_optimizer(opt)
    tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
    tensors["rng.data"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(meta, step=step, param_groups=groups)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"training": json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a kill before this line leaves the previous checkpoint intact


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["training"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TrainingError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: {e})") from None
    return tensors, meta


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the log --------------------------------------------------------------------------------------
def trim_log(path: Path, step: int) -> None:
    """Keep the header and the complete rows up to `step` of log.csv.

    After a kill the log may hold rows past the last checkpoint (and a half-written line); a resumed
    run writes those steps again, and a fresh run starts again from step 1.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] if lines and lines[0].startswith("step,") else []
    for line in lines[len(keep):]:
        fields = line.rstrip("\n").split(",")
        if not line.endswith("\n") or len(fields) != 5 or not fields[0].isdigit() or int(fields[0]) > step:
            break
        keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


class TrainingLog:
    """log.csv (written by the first process only) and the progress bar.

    A resumed run first trims the log back to the checkpoint's step (trim_log); images/s is measured
    over at least two seconds and logged as the last such figure.
    """

    def __init__(self, path: Path, step: int, total: int, batch_size: int, is_main: bool):
        from tqdm import tqdm

        self.file = None
        if is_main:
            trim_log(path, step)
            self.file = open(path, "a", newline="")
            self.writer = csv.writer(self.file)
            if self.file.tell() == 0:
                self.writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s"])
        self.bar = tqdm(total=total, initial=step, disable=not is_main, dynamic_ncols=True, mininterval=2)
        self.batch_size = batch_size
        self.tick, self.ticked, self.rate = time.time(), step, 0.0

    def row(self, step: int, loss: float, lr: float, now: float, elapsed: float) -> None:
        if now - self.tick >= 2:
            self.rate = (step - self.ticked) * self.batch_size / (now - self.tick)
            self.tick, self.ticked = now, step
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{self.rate:.0f}", refresh=False)
        self.bar.update(1)
        if self.file is not None:
            self.writer.writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{self.rate:.1f}", f"{elapsed:.1f}"])

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        self.bar.close()
        if self.file is not None:
            self.file.close()


# --- the command line -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ddpm.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="dawnlike", help="'dawnlike', a folder with sprites.npy + labels.npy, or an image folder")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=20000, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    p.add_argument("--min-snr", type=float, default=0, metavar="GAMMA",
                   help="weight each step's noise MSE by min(SNR, GAMMA) / SNR (0: the prediction's own MSE, "
                        "uniform on the noise as the course, or the MSE of v)")
    p.add_argument("--low-t-share", type=float, default=0, metavar="P",
                   help="draw this share of each batch's times from 1..--low-t-max instead of 1..T (0: uniform, as "
                        "the course): the low-noise steps decide each pixel's colour")
    p.add_argument("--low-t-max", type=int, default=LOW_T_MAX, help="the highest time --low-t-share draws")
    p.add_argument("--low-noise-expert", type=int, default=None, metavar="T_MAX",
                   help="with --init-from: give the model a low-noise expert, a copy of its network that predicts in "
                        "its place at t <= T_MAX (eDiff-I's expert denoisers, Balaji et al. 2022), and train only the "
                        "expert, on times drawn from 1..T_MAX; the model's own network stays as it is")
    p.add_argument("--class-balance", type=float, default=None, metavar="P",
                   help="draw each sprite with weight (its class's count) ** -P: 0 every sprite alike, as the "
                        "course; 1 every class alike; 0.5 each class by the square root of its count. Default 0, "
                        "the checkpoint's own with --resume")
    p.add_argument("--p-uncond", type=float, default=0.1, help="context dropout for classifier-free guidance")
    p.add_argument("--height", type=int, default=16)
    p.add_argument("--n-feat", type=int, default=None,
                   help="network width (default 64); with --init-from, a whole multiple of the model's width "
                        "widens it without changing what it computes (Net2WiderNet), to keep training it larger, "
                        "and a smaller multiple of 8 prunes it to the channels that carry the most, to distil the "
                        "model into it (with --distill-guidance)")
    p.add_argument("--norm", choices=NORMS, default="batch")
    p.add_argument("--time-embedding", choices=TIME_EMBEDDINGS, default="scalar")
    p.add_argument("--dropout", type=float, default=None, metavar="P",
                   help="dropout in the residual blocks (Ho et al. 2020); default 0 for a new network, "
                        "the model's own with --init-from")
    p.add_argument("--attention", action="store_true",
                   help="self-attention on the 8x8 and smaller feature maps; with --init-from, added to the "
                        "model's network, where it starts as the identity")
    p.add_argument("--weight-decay", type=float, default=None, metavar="W",
                   help="decoupled weight decay (AdamW) of the kernels and matrices; 0 is plain Adam; default 0, "
                        "the checkpoint's own with --resume")
    p.add_argument("--distill-guidance", type=float, default=None, metavar="W_MAX",
                   help="with --init-from: train a student of that model that takes the guidance scale as an "
                        "input and gives classifier-free guidance's prediction for any scale in [0, W_MAX] in one "
                        "pass (Meng et al. 2023), instead of training on the data's noise")
    p.add_argument("--teacher", metavar="MODEL",
                   help="with --distill-guidance and --init-from: distil this model (a local folder or a Hub repo "
                        "id) into the --init-from one, e.g. a wide teacher into a narrower, faster student")
    p.add_argument("--prediction", choices=PREDICTIONS, default=None,
                   help="what the network predicts: the noise ('epsilon', as the course), v = sqrt(abar) eps - "
                        "sqrt(1 - abar) x0 ('v_prediction', Salimans & Ho 2022) or x0 ('sample'). Default epsilon for "
                        "a new network, the model's own with --init-from or --resume; with --init-from, another one "
                        "retrains the model to predict it")
    p.add_argument("--palette-head", action="store_true",
                   help="predict x0 as a distribution over the data's colours at each pixel, trained with their "
                        "cross-entropy (prediction 'sample'); with --init-from, the model's output layer is "
                        "replaced by one")
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--T", type=int, default=500)
    p.add_argument("--precision", choices=["auto", *TRAINING_PRECISIONS], default="auto",
                   help="auto: under `accelerate launch`, the launcher's --mixed_precision (its default is no: "
                        "fp32); otherwise bf16 autocast where the CPU or GPU supports it, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.safetensors")
    p.add_argument("--init-from", help="start from these model weights (e.g. weights/) to keep improving them")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=2000,
                   help="write a sample grid every this many steps and at the end (0: never)")
    p.add_argument("--time-limit", type=float, default=0, help="stop (saving everything) after this many minutes")
    p.add_argument("--export", help="also write the final EMA weights in Hub format here (e.g. weights)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "checkpoint_every", "T"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sample_every < 0:
        p.error("--sample-every must be 0 (never) or a number of steps")
    if args.n_feat is not None and args.n_feat < 1:
        p.error("--n-feat must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        p.error("--lr must be a positive number")
    if not 0 <= args.ema < 1:
        p.error("--ema must lie in [0, 1)")
    if not 0 <= args.p_uncond < 1:
        p.error("--p-uncond must lie in [0, 1)")
    if not 0 <= args.low_t_share <= 1:
        p.error("--low-t-share must lie in [0, 1]")
    if args.class_balance is not None and not 0 <= args.class_balance <= 1:
        p.error("--class-balance must lie in [0, 1]")
    if args.low_t_max < 1:
        p.error("--low-t-max must be at least 1")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        p.error("--dropout must lie in [0, 1)")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        p.error("--weight-decay must be 0 (off) or a positive number")
    if args.distill_guidance is not None and not (math.isfinite(args.distill_guidance) and args.distill_guidance > 0):
        p.error("--distill-guidance must be a positive guidance scale such as 4")
    if args.teacher is not None and (args.distill_guidance is None or not args.init_from or args.resume):
        p.error("--teacher goes with --distill-guidance and --init-from, the student's starting weights "
                "(a resumed distillation keeps its teacher)")
    if args.distill_guidance is not None and not (args.init_from or args.resume):
        p.error("--distill-guidance needs a teacher: --init-from a trained model (or --resume a distillation)")
    if not (math.isfinite(args.min_snr) and args.min_snr >= 0):
        p.error("--min-snr must be 0 (off) or a positive number such as 5")
    if args.palette_head and (args.prediction not in (None, "sample") or args.min_snr or args.distill_guidance):
        p.error("--palette-head predicts x0 ('sample') and is trained with the colours' cross-entropy: leave out "
                "--prediction, --min-snr and --distill-guidance")
    if args.low_noise_expert is not None:
        if not (args.init_from or args.resume):
            p.error("--low-noise-expert needs the model it is an expert of: --init-from a trained model")
        if not 1 <= args.low_noise_expert < args.T:
            p.error(f"--low-noise-expert must be a time in 1..{args.T - 1}, such as 100")
        if args.low_t_share or args.distill_guidance is not None:
            p.error("--low-noise-expert sets the times itself and trains on the data: leave out --low-t-share "
                    "and --distill-guidance")
    return args


# --- building or restoring the model --------------------------------------------------------------
CALIBRATION_SPRITES = 512  # the x_t on which narrowing judges each channel


def data_palette(data: SpriteData) -> list[list[int]]:
    """The data's colours, for --palette-head."""
    colours = data.palette()
    if colours is None:
        raise TrainingError("--palette-head needs sprites drawn in a palette (at most 64 colours); this data has more")
    return colours.tolist()


def check_classes(model: ContextUnet, data: SpriteData) -> None:
    if model.class_names != data.class_names:
        raise TrainingError(f"the model's classes {model.class_names} differ from the data's {data.class_names}")


def narrowed(model: ContextUnet, n_feat: int, data: SpriteData, args: argparse.Namespace) -> ContextUnet:
    """model pruned to n_feat (ddpm.resize.narrow) on x_t of training sprites, its BatchNorm statistics
    re-estimated for the channels that are left."""
    check_classes(model, data)  # the calibration sprites are the data's
    images, labels = data.to_tensors()
    generator = torch.Generator().manual_seed(args.seed)
    schedule = model.noise_schedule
    x0, t, noise, context = training_batch(images, labels, model.n_classes, CALIBRATION_SPRITES, schedule.T,
                                           args.p_uncond, generator)
    small = narrow(model, n_feat, schedule.add_noise(x0, noise, t), t.float() / schedule.T, context)
    recalibrate_batchnorm(small, images, labels, schedule, generator, batches=16, p_uncond=args.p_uncond)
    return small


def build_model(args: argparse.Namespace, data: SpriteData, checkpoint: tuple[dict, dict] | None = None
                ) -> tuple[ContextUnet, NoiseSchedule, dict, ContextUnet | None]:
    """The model a run trains, its noise schedule, the history behind it and, when it distils
    guidance, its teacher, in one of three ways:

    - --resume (`checkpoint` given): the checkpoint's network, schedule and teacher; its weights, EMA,
      optimizer, step, history and RNG state come back with Trainer.resume;
    - --init-from: exported weights (a local folder or a Hub repo id) with their schedule and
      training history, widened when --n-feat asks for a whole multiple of their width, pruned
      (narrowed) when it asks for less; with --distill-guidance they (whole) are the teacher, and
      the student starts as their copy, or --teacher names the teacher and the student starts from
      them;
    - otherwise a new network of --n-feat, --norm and --time-embedding, with the --schedule asked for.

    Call after torch.manual_seed(args.seed): a new network's initial weights come from it.
    """
    history: dict = {"steps": 0, "images": 0, "seconds": 0.0, "prior_stages": []}
    teacher = None
    if checkpoint is not None:
        tensors, meta = checkpoint
        model, schedule = ContextUnet(**meta["config"]), NoiseSchedule(**meta["schedule"])
        if args.distill_guidance is not None and args.distill_guidance != model.distilled_guidance:
            raise TrainingError(f"--distill-guidance {args.distill_guidance:g} with --resume: the checkpoint "
                                + (f"distils guidance up to {model.distilled_guidance:g}" if model.distilled_guidance
                                   else "does not distil guidance") + "; resume without --distill-guidance")
        if model.distilled_guidance:
            teacher = ContextUnet(**meta["teacher_config"])
            teacher.load_state_dict(_sub(tensors, "teacher."))
        if args.dropout is not None and args.dropout != model.dropout:
            raise TrainingError(f"--dropout {args.dropout:g} with --resume: the checkpoint trains with dropout "
                                f"{model.dropout:g}; resume without --dropout, or start a stage with --init-from")
        if args.attention and not model.attention:
            raise TrainingError("--attention with --resume: the checkpoint's network has none; start a stage "
                                "with --init-from to add it")
        if args.palette_head and model.output_palette is None:
            raise TrainingError("--palette-head with --resume: the checkpoint's network has none; start a stage "
                                "with --init-from to give it one")
        if args.prediction is not None and args.prediction != schedule.prediction:
            raise TrainingError(f"--prediction {args.prediction} with --resume: the checkpoint predicts "
                                f"{schedule.prediction}; resume without --prediction, or start a stage with "
                                "--init-from")
    elif args.init_from:
        # a bad scheduler_config.json or training.json is one clear CheckpointError
        model = load_model(args.init_from)
        schedule = model.noise_schedule
        if model.distilled_guidance:
            # its guidance input learnt from a teacher that its folder does not hold
            raise TrainingError(f"{args.init_from} is a student distilled for guidance and cannot be trained "
                                "further; train or distil its teacher instead")
        before = model.training_info
        if before is not None:
            history = dict({k: before[k] for k in TOTALS}, prior_stages=training_stages(before))
        loaded = model
        if args.n_feat and args.n_feat != model.n_feat:
            try:
                if args.n_feat > model.n_feat:
                    model = widen(model, args.n_feat, torch.Generator().manual_seed(args.seed))
                else:
                    model = narrowed(model, args.n_feat, data, args)
            except ValueError as e:
                raise TrainingError(f"--n-feat with --init-from: {e}") from None
        if args.teacher:
            teacher = load_model(args.teacher)
            if teacher.distilled_guidance:
                raise TrainingError(f"--teacher {args.teacher} is itself a distilled student; distil its teacher")
            if (teacher.noise_schedule.config() != schedule.config() or teacher.class_names != model.class_names
                    or (teacher.height, teacher.in_channels) != (model.height, model.in_channels)):
                raise TrainingError(f"--teacher {args.teacher} has another noise schedule or prediction, other classes "
                                    f"or another sprite size than {args.init_from}: a student learns its teacher's task")
        elif args.distill_guidance:
            teacher = loaded  # a widened copy computes the same; a narrowed one learns from the whole model
        if args.prediction is not None and args.prediction != schedule.prediction:
            if args.distill_guidance:
                raise TrainingError(f"--prediction {args.prediction} with --distill-guidance: the teacher predicts "
                                    f"{schedule.prediction}, and a student learns its teacher's prediction")
            schedule = NoiseSchedule(**dict(schedule.config(), prediction=args.prediction))
        if (args.dropout is not None and args.dropout != model.dropout or args.attention and not model.attention
                or args.distill_guidance):
            # dropout has no weights, and new attention blocks and guidance embeddings start as the
            # identity: the same function in a network that drops activations, attends or takes guidance
            grown = ContextUnet(**dict(model.config_dict, dropout=model.dropout if args.dropout is None else args.dropout,
                                       attention=model.attention or args.attention,
                                       distilled_guidance=args.distill_guidance or 0.0))
            keys = grown.load_state_dict(model.state_dict(), strict=False)
            assert not keys.unexpected_keys and all("attention" in k or k.startswith("guidance_embeds")
                                                    for k in keys.missing_keys), keys
            model = grown
        if args.palette_head and model.output_palette is None:
            model = with_palette_head(model, data_palette(data))
            schedule = NoiseSchedule(**dict(schedule.config(), prediction="sample"))
        if args.low_noise_expert:
            try:
                model = with_low_noise_expert(model, args.low_noise_expert / schedule.T)
            except ValueError as e:
                raise TrainingError(f"--low-noise-expert: {e}") from None
    else:
        model = ContextUnet(3, args.n_feat or DEFAULT_N_FEAT, len(data.class_names), args.height,
                            data.class_names, args.norm, args.time_embedding, args.dropout or 0.0, args.attention,
                            output_palette=data_palette(data) if args.palette_head else None)
        prediction = "sample" if args.palette_head else args.prediction or "epsilon"
        schedule = NoiseSchedule(args.T, args.schedule, prediction=prediction)
    args.prediction = schedule.prediction  # the recipe records what the stage trained
    check_classes(model, data)
    return model, schedule, history, teacher


# --- the optimizer --------------------------------------------------------------------------------
NEW_WEIGHTS_LR_SCALE = 10.0  # the learning rate of a distillation's guidance embeddings, against the rest's


def make_optimizer(model: ContextUnet, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam, or AdamW with decoupled weight decay > 0; each group's learning rate is lr times its "lr_scale".

    As nanoGPT does, the decay applies to the conv kernels and linear matrices, not to the biases and
    norm scales, which set the level and the gain of each channel rather than fit the data. A
    student's guidance embeddings start at zero and have all of their function to learn, while the
    rest starts as the teacher and needs only to adapt: they learn NEW_WEIGHTS_LR_SCALE times faster.
    """
    groups = []
    for new in (False, True):
        params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("guidance_embeds") == new]
        if weight_decay:
            parts = [([p for p in params if p.dim() >= 2], weight_decay), ([p for p in params if p.dim() < 2], 0.0)]
        else:
            parts = [(params, 0.0)]
        scale = NEW_WEIGHTS_LR_SCALE if new else 1.0
        groups += [{"params": ps, "weight_decay": decay, "lr_scale": scale} for ps, decay in parts if ps]
    return torch.optim.AdamW(groups, lr=lr) if weight_decay else torch.optim.Adam(groups, lr=lr)


def keep_on_resume(args: argparse.Namespace, trained_args: dict, key: str, what: str) -> None:
    """Set args.<key> to the resumed checkpoint's value (0 where it predates the option); a different
    value on the command line is a TrainingError."""
    trained = trained_args.get(key) or 0.0
    given = getattr(args, key)
    if given is not None and given != trained:
        flag = "--" + key.replace("_", "-")
        raise TrainingError(f"{flag} {given:g} with --resume: the checkpoint trains with {what} {trained:g}; "
                            f"resume without {flag}, or start a stage with --init-from")
    setattr(args, key, trained)


# --- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """One training run: set up in __init__, then train() runs the loop and writes the outputs."""

    def __init__(self, args: argparse.Namespace):
        from accelerate import Accelerator

        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
        self.precision = training_precision(args.precision, device, launcher)  # fp32, bf16 or fp16
        self.accelerator = Accelerator(mixed_precision=to_accelerate(self.precision), cpu=device.type == "cpu")
        self.device = self.accelerator.device
        self.channels_last = device.type == "cpu"  # faster convolutions on the CPU
        self.out = Path(args.out)
        self.is_main = self.accelerator.is_main_process
        self.data: SpriteData = load_data(args.data, args.height)

        checkpoint = None
        if args.resume:
            if not (self.out / CHECKPOINT).exists():
                raise TrainingError(f"{self.out / CHECKPOINT}: no checkpoint to resume from")
            checkpoint = load_checkpoint(self.out / CHECKPOINT)
            # the optimizer's state belongs to its weight decay, and the batches drawn so far to the
            # class balance: another value of either would be a different run
            for key, what in (("weight_decay", "weight decay"), ("class_balance", "class balance")):
                keep_on_resume(args, checkpoint[1]["args"], key, what)
            # a resumed run keeps its dropout and goes on distilling the same teacher: the recipe it
            # exports says so, though the resuming command names none of them
            for key in ("distill_guidance", "teacher", "dropout", "low_noise_expert"):
                if getattr(args, key) is None:
                    setattr(args, key, checkpoint[1]["args"].get(key))
        for key in ("weight_decay", "class_balance"):  # off unless asked for
            if getattr(args, key) is None:
                setattr(args, key, 0.0)
        torch.manual_seed(args.seed)  # the initial weights too: the same --seed gives the same run
        self.model, self.schedule, self.history, self.teacher = build_model(args, self.data, checkpoint)
        if args.low_noise_expert:
            if self.model.expert is None:
                raise TrainingError("--low-noise-expert with --resume: the checkpoint's network has no expert; "
                                    "start a stage with --init-from to add one")
            # only the expert sees these times, and only the expert learns
            args.low_t_share, args.low_t_max = 1.0, args.low_noise_expert
            for name, weight in self.model.named_parameters():
                if not name.startswith("expert."):
                    weight.requires_grad_(False)
        self.model.train()
        # what the distillation runs: the teacher's eval-mode network, folded (as the samplers run it)
        self.teacher_net = None if self.teacher is None else inference_model(self.teacher.eval()).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = make_optimizer(self.model, args.lr, args.weight_decay)
        self.generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        self.step = 0
        self.lr_start: tuple[int, float] | None = None  # see learning_rate
        if checkpoint is not None:
            self.resume(*checkpoint)
        self.model, self.opt = self.accelerator.prepare(self.model, self.opt)
        self.ema.to(self.device)
        images, labels = self.data.to_tensors()
        self.images = images.to(self.device)
        if self.channels_last:
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = labels.to(self.device)
        self.sprite_weights = class_balanced_weights(labels, len(self.data.class_names), args.class_balance)
        self.started = time.time()
        self.seconds_before = self.history["seconds"]
        self.stop_requested = False  # set by a signal (see main)

    def resume(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Everything a checkpoint holds back in place: weights, EMA, optimizer, step, history, the
        learning-rate schedule and the RNG streams, so that the run goes on exactly as if never stopped."""
        self.model.load_state_dict(_sub(tensors, "model."))
        self.ema.load_state_dict(_sub(tensors, "ema."))
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("opt.")}
        self.opt.load_state_dict(_unflatten_optimizer(opt_tensors, meta["param_groups"]))
        self.step = meta["step"]
        self.history = meta["history"]
        self.lr_start = resumed_lr_start(self.step, meta["args"], self.args,
                                         tuple(meta["lr_start"]) if meta.get("lr_start") else None)
        if self.accelerator.process_index == 0:
            self.generator.set_state(tensors["rng.data"])
        else:  # other processes: a fresh stream per (process, step)
            self.generator.manual_seed(self.args.seed + 1000003 * self.step + self.accelerator.process_index)
        torch.set_rng_state(tensors["rng.torch"])

    # -- one training step --
    def set_learning_rate(self) -> float:
        lr = learning_rate(self.step, self.args.lr, self.args.warmup, self.args.steps, start=self.lr_start)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_step(self) -> float:
        """One optimizer step on a fresh batch; returns the loss averaged over all processes, or the
        NaN or inf it became (then nothing was updated)."""
        args, acc = self.args, self.accelerator
        batch = args.batch_size // acc.num_processes
        x0, t, noise, context = training_batch(self.images, self.labels, len(self.data.class_names), batch,
                                               self.schedule.T, args.p_uncond, self.generator, args.low_t_share,
                                               args.low_t_max, self.sprite_weights)
        if self.teacher_net is not None:
            guidance = torch.rand(batch, generator=self.generator).to(self.device) * self.ema.distilled_guidance
            per_sprite = guidance_distillation_error(self.model, self.teacher_net, self.schedule, x0, noise, t, context,
                                                     guidance, self.channels_last, acc.autocast)
            loss = diffusion_loss(per_sprite, t, self.schedule, args.min_snr)
        elif self.ema.palette_colours is not None:
            loss = palette_cross_entropy(self.model, self.schedule, self.ema.palette_colours, x0, noise, t, context,
                                         self.channels_last, acc.autocast).mean()  # uniform over t: see there
        else:
            per_sprite = noise_error(self.model, self.schedule, x0, noise, t, context, self.channels_last,
                                     acc.autocast)
            loss = diffusion_loss(per_sprite, t, self.schedule, args.min_snr)
        # the mean over processes: what is logged is the whole batch's loss, and a NaN on any
        # process stops them all at the same step
        loss_value = acc.reduce(loss.detach(), "mean").item()
        if not math.isfinite(loss_value):
            return loss_value
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        self.opt.step()
        update_ema(self.ema, acc.unwrap_model(self.model), ema_decay(self.history["steps"], args.ema))
        self.step += 1
        self.history["steps"] += 1
        self.history["images"] += args.batch_size
        return loss_value

    # -- outputs --
    def meta(self) -> dict:
        m = self.accelerator.unwrap_model(self.model)
        meta = {"config": m.config_dict, "schedule": self.schedule.config(), "args": vars(self.args),
                "history": self.current_history(), "lr_start": self.lr_start}
        if self.teacher is not None:
            meta["teacher_config"] = self.teacher.config_dict
        return meta

    def current_history(self) -> dict:
        h = dict(self.history)
        h["seconds"] = self.seconds_before + (time.time() - self.started)
        return h

    def save(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.out / CHECKPOINT, self.accelerator.unwrap_model(self.model), self.ema, self.opt,
                            self.step, self.generator, self.meta(), self.teacher)

    def export(self, folder: Path) -> None:
        if not self.is_main:
            return
        model = copy.deepcopy(self.ema).cpu().to(memory_format=torch.contiguous_format)
        if model.dropout > 0:
            images, labels = self.data.to_tensors()
            recalibrate_batchnorm(model, images, labels, self.schedule, torch.Generator().manual_seed(self.args.seed),
                                  p_uncond=self.args.p_uncond)
        history = self.current_history()
        recipe = {k: v for k, v in vars(self.args).items() if k not in ("out", "resume", "export", "init_from")}
        this_stage = dict(stage_since(history, recipe), precision=self.precision)
        stages = history.pop("prior_stages", []) + [this_stage]
        info = dict(history, recipe=recipe, stages=stages, data_counts=self.data.counts())  # precision: per stage
        model.evaluation = None  # not measured for these weights yet
        save_model(model, self.schedule, folder, palette=self.data.palette(), training_info=info)

    def sample_grid(self) -> None:
        if not self.is_main:
            return
        from .images import sprite_sheet

        n, k = 8, len(self.data.class_names)
        context = torch.eye(k).repeat_interleave(n, 0)
        x = sample(self.ema, self.schedule, context, seed=0)
        sprites = to_uint8(x).reshape(k, n, *x.shape[2:], 3)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        sprite_sheet(list(sprites), scale=4, pad=1).save(self.out / "samples" / f"step_{self.step:07d}.png")

    # -- checks every process takes together --
    def weights_finite(self) -> bool:
        """True when the weights are finite on every process."""
        states = (self.accelerator.unwrap_model(self.model).state_dict(), self.ema.state_dict())
        finite = all(bool(torch.isfinite(v).all()) for sd in states for v in sd.values() if v.is_floating_point())
        votes = self.accelerator.reduce(torch.tensor(float(finite), device=self.device), "sum")
        return int(votes.item()) == self.accelerator.num_processes

    def checkpoint(self) -> int:
        """Save the checkpoint if the weights are finite: 0, else 3 (and nothing saved)."""
        if not self.weights_finite():
            return self.report_nan_weights()
        self.save()
        return 0

    def should_stop(self, now: float, deadline: float) -> bool:
        """Whether to stop after this step. A signal or the time limit may reach one process first:
        Accelerate's trigger makes it a decision all take at the same step."""
        if self.stop_requested or now > deadline:
            self.accelerator.set_trigger()
        if not self.accelerator.check_trigger():
            return False
        if self.is_main and now > deadline:
            print(f"time limit of {self.args.time_limit} min reached at step {self.step}")
        return True

    def report_nan_loss(self, loss_value: float) -> int:
        if self.is_main:
            print(f"loss became {loss_value} at step {self.step}; stopping. The last good checkpoint is "
                  f"{self.out / CHECKPOINT} (resume with --resume, perhaps with a lower --lr)", file=sys.stderr)
        return 3

    def report_nan_weights(self) -> int:
        print(f"the weights became NaN or inf at step {self.step}; stopping without saving them. The last good "
              f"checkpoint is {self.out / CHECKPOINT} (resume with --resume, perhaps with a lower --lr)",
              file=sys.stderr)
        return 3

    def finish(self) -> int:
        """The end of a run that did not fail: checkpoint, the exported model(s), a last sample grid."""
        if not self.weights_finite():
            return self.report_nan_weights()
        self.save()
        self.export(self.out / "model")
        if self.args.export:
            self.export(Path(self.args.export))
        if self.is_main:
            if self.args.sample_every:
                self.sample_grid()
            print(f"saved {self.out / CHECKPOINT} and the EMA model in {self.out / 'model'}"
                  + (f" and {self.args.export}" if self.args.export else ""))
        return 0

    # -- the loop --
    def train(self) -> int:
        """Train from self.step to --steps (or a stop), then finish; 0 on success, 3 on NaN or inf."""
        args = self.args
        if self.step >= args.steps:
            print(f"already at step {self.step} of {args.steps}; nothing to train (raise --steps to continue)")
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            counts = ", ".join(f"{k} {v}" for k, v in self.data.counts().items())
            print(f"{len(self.data.images)} sprites ({counts}); device {self.device}, precision {self.precision}, "
                  f"{torch.get_num_threads()} threads; steps {self.step}->{args.steps}")
        deadline = self.started + args.time_limit * 60 if args.time_limit else math.inf
        log = TrainingLog(self.out / "log.csv", self.step, args.steps, args.batch_size, self.is_main)
        status = 0
        self.model.train()
        while self.step < args.steps:
            lr = self.set_learning_rate()
            loss_value = self.train_step()
            if not math.isfinite(loss_value):
                status = self.report_nan_loss(loss_value)
                break
            now = time.time()
            log.row(self.step, loss_value, lr, now, self.current_history()["seconds"])
            if self.step % args.checkpoint_every == 0:
                log.flush()
                status = self.checkpoint()
                if status:
                    break
            if args.sample_every and self.step % args.sample_every == 0:
                self.sample_grid()
                self.model.train()
            if self.should_stop(now, deadline):
                break
        log.close()
        return status or self.finish()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        trainer = Trainer(args)
    except (DataError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def request_stop(signum, frame):  # SIGTERM/SIGINT: finish the step, save, export
        trainer.stop_requested = True

    # restored afterwards, so that main() called in-process (tests, notebooks) leaves Ctrl-C working
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return trainer.train()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
