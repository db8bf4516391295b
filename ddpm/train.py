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
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_model, save_model
from .data import DataError, SpriteData, load_data
from .history import TOTALS, stage_since, training_stages
from .model import DEFAULT_N_FEAT, NORMS, TIME_EMBEDDINGS, ContextUnet, widen
from .images import to_uint8
from .sampling import bf16_is_fast, sample
from .schedule import SCHEDULES, NoiseSchedule

CHECKPOINT = "checkpoint.safetensors"


class TrainingError(RuntimeError):
    pass


# --- small named pieces ------------------------------------------------------------------------
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


LOW_T_MAX = 150  # the highest time --low-t-share draws, unless --low-t-max says otherwise


def min_snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for noise prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    The plain noise MSE weights the low-noise steps as heavily as the rest; the idea of capping
    their weight is to leave more of the network's capacity to the steps that decide shapes (on
    the shipped model it did not help: README, "Where the speckle comes from"). gamma = 0 keeps
    the uniform weights of the seed.
    """
    if gamma <= 0:
        return torch.ones_like(snr)
    return snr.clamp(max=gamma) / snr


def training_batch(images: torch.Tensor, labels: torch.Tensor, n_classes: int, batch_size: int, T: int,
                   p_uncond: float, generator: torch.Generator, low_t_share: float = 0.0,
                   low_t_max: int = LOW_T_MAX):
    """Random sprites, flips, times t, noise, and one-hot contexts with dropout, all from one generator.

    t ~ U{1..T} as in the seed; with low_t_share > 0, that share of the batch draws t ~ U{1..low_t_max}
    instead (see --low-t-share).
    """
    n = images.shape[0]
    g = generator
    idx = torch.randint(n, (batch_size,), generator=g)
    flip = torch.rand(batch_size, generator=g) < 0.5
    t = torch.randint(1, T + 1, (batch_size,), generator=g)
    if low_t_share > 0:  # drawn only then, so that the seed's recipe gives the same batches as before
        low = torch.rand(batch_size, generator=g) < low_t_share
        t = torch.where(low, torch.randint(1, min(low_t_max, T) + 1, (batch_size,), generator=g), t)
    noise = torch.randn((batch_size, *images.shape[1:]), generator=g)
    keep = (torch.rand(batch_size, generator=g) >= p_uncond).float()
    x0 = images[idx.to(images.device)]
    x0 = torch.where(flip.to(images.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
    context = F.one_hot(labels[idx.to(labels.device)], n_classes).float() * keep.to(images.device)[:, None]
    return x0, t, noise.to(images.device), context


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


def save_checkpoint(path: Path, model, ema, opt, step: int, generator: torch.Generator, meta: dict) -> None:
    """Everything needed to continue exactly, in one safetensors file, replaced atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
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


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the trainer -----------------------------------------------------------------------------------
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
                   help="weight each step's noise MSE by min(SNR, GAMMA) / SNR (0: uniform, as the seed)")
    p.add_argument("--low-t-share", type=float, default=0, metavar="P",
                   help="draw this share of each batch's times from 1..--low-t-max instead of 1..T (0: uniform, as "
                        "the seed): the low-noise steps decide each pixel's colour")
    p.add_argument("--low-t-max", type=int, default=LOW_T_MAX, help="the highest time --low-t-share draws")
    p.add_argument("--p-uncond", type=float, default=0.1, help="context dropout for classifier-free guidance")
    p.add_argument("--height", type=int, default=16)
    p.add_argument("--n-feat", type=int, default=None,
                   help="network width (default 64); with --init-from, a whole multiple of the model's width "
                        "widens it without changing what it computes (Net2WiderNet), to keep training it larger")
    p.add_argument("--norm", choices=NORMS, default="batch")
    p.add_argument("--time-embedding", choices=TIME_EMBEDDINGS, default="scalar")
    p.add_argument("--schedule", choices=SCHEDULES, default="linear")
    p.add_argument("--T", type=int, default=500)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: under `accelerate launch`, the launcher's --mixed_precision (its default is no: "
                        "fp32); otherwise bf16 autocast where the CPU or GPU supports it, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.safetensors")
    p.add_argument("--init-from", help="start from these model weights (e.g. weights/) to keep improving them")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--time-limit", type=float, default=0, help="stop (saving everything) after this many minutes")
    p.add_argument("--export", help="also write the final EMA weights in Hub format here (e.g. weights)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "checkpoint_every", "sample_every", "T"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
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
    if args.low_t_max < 1:
        p.error("--low-t-max must be at least 1")
    if not (math.isfinite(args.min_snr) and args.min_snr >= 0):
        p.error("--min-snr must be 0 (off) or a positive number such as 5")
    return args


def pick_precision(requested: str, device: torch.device, launcher: str | None = None) -> str:
    """Accelerate's mixed_precision for --precision. `launcher` is what `accelerate launch` passes on
    (ACCELERATE_MIXED_PRECISION, always set by it, "no" unless --mixed_precision says otherwise):
    "auto" defers to it; an explicit --precision wins over it."""
    if requested != "auto":
        return "no" if requested == "fp32" else requested
    if launcher:
        return launcher
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if bf16_is_fast(device) else "no"


class Trainer:
    def __init__(self, args: argparse.Namespace):
        from accelerate import Accelerator

        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.precision = pick_precision(args.precision, device, os.environ.get("ACCELERATE_MIXED_PRECISION"))
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=device.type == "cpu")
        self.device = self.accelerator.device
        self.out = Path(args.out)
        self.is_main = self.accelerator.is_main_process

        self.data: SpriteData = load_data(args.data, args.height)
        self.schedule = NoiseSchedule(args.T, args.schedule)
        # totals over every stage of training, and the stages before this run (see training_stages)
        self.history: dict = {"steps": 0, "images": 0, "seconds": 0.0, "prior_stages": []}

        ckpt_path = self.out / CHECKPOINT
        resume = None
        torch.manual_seed(args.seed)  # the initial weights too: the same --seed gives the same run
        if args.resume:
            if not ckpt_path.exists():
                raise TrainingError(f"{ckpt_path}: no checkpoint to resume from")
            resume = load_checkpoint(ckpt_path)
            config = resume[1]["config"]
            self.schedule = NoiseSchedule(**resume[1]["schedule"])
            self.model = ContextUnet(**config)
        elif args.init_from:
            # a local folder or a Hub repo id; the schedule and history come with the model, and a bad
            # scheduler_config.json or training.json is one clear CheckpointError
            self.model = load_model(args.init_from)
            self.schedule = self.model.noise_schedule
            before = self.model.training_info
            if before is not None:
                self.history = dict({k: before[k] for k in TOTALS}, prior_stages=training_stages(before))
            if args.n_feat and args.n_feat != self.model.n_feat:
                try:
                    self.model = widen(self.model, args.n_feat, torch.Generator().manual_seed(args.seed))
                except ValueError as e:
                    raise TrainingError(f"--n-feat with --init-from: {e}") from None
        else:
            self.model = ContextUnet(3, args.n_feat or DEFAULT_N_FEAT, len(self.data.class_names), args.height,
                                     self.data.class_names, args.norm, args.time_embedding)
        if self.model.class_names != self.data.class_names:
            raise TrainingError(f"the model's classes {self.model.class_names} differ from the data's "
                                f"{self.data.class_names}")
        self.model.train()
        if device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.generator = torch.Generator().manual_seed(args.seed + self.accelerator.process_index)
        self.step = 0
        self.lr_start: tuple[int, float] | None = None  # see learning_rate
        if resume is not None:
            tensors, meta = resume
            self.model.load_state_dict(_sub(tensors, "model."))
            self.ema.load_state_dict(_sub(tensors, "ema."))
            opt_tensors = {k: v for k, v in tensors.items() if k.startswith("opt.")}
            self.opt.load_state_dict(_unflatten_optimizer(opt_tensors, meta["param_groups"]))
            self.step = meta["step"]
            self.history = meta["history"]
            self.lr_start = resumed_lr_start(self.step, meta["args"], args,
                                             tuple(meta["lr_start"]) if meta.get("lr_start") else None)
            if self.accelerator.process_index == 0:
                self.generator.set_state(tensors["rng.data"])
            else:  # other processes: a fresh stream per (process, step)
                self.generator.manual_seed(args.seed + 1000003 * self.step + self.accelerator.process_index)
            torch.set_rng_state(tensors["rng.torch"])
        self.model, self.opt = self.accelerator.prepare(self.model, self.opt)
        self.ema.to(self.device)
        images, labels = self.data.to_tensors()
        self.images = images.to(self.device)
        if device.type == "cpu":
            self.images = self.images.contiguous(memory_format=torch.channels_last)
        self.labels = labels.to(self.device)
        self.started = time.time()
        self.seconds_before = self.history["seconds"]
        self.stop_requested = False

    # -- outputs --
    def meta(self) -> dict:
        m = self.accelerator.unwrap_model(self.model)
        return {"config": m.config_dict, "schedule": self.schedule.config(), "args": vars(self.args),
                "history": self.current_history(), "lr_start": self.lr_start}

    def current_history(self) -> dict:
        h = dict(self.history)
        h["seconds"] = self.seconds_before + (time.time() - self.started)
        return h

    def save(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.out / CHECKPOINT, self.accelerator.unwrap_model(self.model), self.ema, self.opt,
                            self.step, self.generator, self.meta())

    def export(self, folder: Path) -> None:
        if not self.is_main:
            return
        model = copy.deepcopy(self.ema).cpu().to(memory_format=torch.contiguous_format)
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

    def weights_finite(self) -> bool:
        """True when the weights are finite on every process (a decision all processes take together)."""
        states = (self.accelerator.unwrap_model(self.model).state_dict(), self.ema.state_dict())
        finite = all(bool(torch.isfinite(v).all()) for sd in states for v in sd.values() if v.is_floating_point())
        votes = self.accelerator.reduce(torch.tensor(float(finite), device=self.device), "sum")
        return int(votes.item()) == self.accelerator.num_processes

    def report_nan_weights(self) -> int:
        print(f"the weights became NaN or inf at step {self.step}; stopping without saving them. The last good "
              f"checkpoint is {self.out / CHECKPOINT} (resume with --resume, perhaps with a lower --lr)",
              file=sys.stderr)
        return 3

    # -- the loop --
    def train(self) -> int:
        args, acc = self.args, self.accelerator
        T = self.schedule.T
        total = args.steps
        if self.step >= total:
            print(f"already at step {self.step} of {total}; nothing to train (raise --steps to continue)")
        log_path = self.out / "log.csv"
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            counts = ", ".join(f"{k} {v}" for k, v in self.data.counts().items())
            print(f"{len(self.data.images)} sprites ({counts}); device {self.device}, precision {self.precision}, "
                  f"{torch.get_num_threads()} threads; steps {self.step}->{total}")
        if self.is_main:
            trim_log(log_path, self.step)
        log_file = open(log_path, "a", newline="") if self.is_main else None
        writer = csv.writer(log_file) if log_file else None
        if log_file is not None and log_file.tell() == 0:
            writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s"])
        from tqdm import tqdm

        bar = tqdm(total=total, initial=self.step, disable=not self.is_main, dynamic_ncols=True, mininterval=2)
        deadline = self.started + args.time_limit * 60 if args.time_limit else math.inf
        n_classes = len(self.data.class_names)
        snr = self.schedule.snr()
        batch = args.batch_size // acc.num_processes
        channels_last = self.device.type == "cpu"
        tick, ticked = time.time(), self.step
        rate = 0.0
        status = 0
        self.model.train()
        while self.step < total:
            lr = learning_rate(self.step, args.lr, args.warmup, total, start=self.lr_start)
            for group in self.opt.param_groups:
                group["lr"] = lr
            x0, t, noise, context = training_batch(self.images, self.labels, n_classes, batch, T, args.p_uncond,
                                                   self.generator, args.low_t_share, args.low_t_max)
            x_t = self.schedule.add_noise(x0, noise, t)
            if channels_last:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with acc.autocast():
                pred = self.model(x_t, (t.float() / T).to(self.device), context)
            per_sprite = (pred.float() - noise).pow(2).mean((1, 2, 3))
            loss = (per_sprite * min_snr_weights(snr[t], args.min_snr).to(per_sprite)).mean()
            # the mean over processes: what is logged is the whole batch's loss, and a NaN on any
            # process stops them all at the same step
            loss_value = acc.reduce(loss.detach(), "mean").item()
            if not math.isfinite(loss_value):
                msg = (f"loss became {loss_value} at step {self.step}; stopping. The last good checkpoint is "
                       f"{self.out / CHECKPOINT} (resume with --resume, perhaps with a lower --lr)")
                if self.is_main:
                    print(msg, file=sys.stderr)
                status = 3
                break
            self.opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            self.opt.step()
            update_ema(self.ema, acc.unwrap_model(self.model), ema_decay(self.history["steps"], args.ema))
            self.step += 1
            self.history["steps"] += 1
            self.history["images"] += args.batch_size
            now = time.time()
            if now - tick >= 2:
                rate = (self.step - ticked) * args.batch_size / (now - tick)
                tick, ticked = now, self.step
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
            if writer:
                writer.writerow([self.step, f"{loss_value:.6f}", f"{lr:.3e}", f"{rate:.1f}",
                                 f"{self.current_history()['seconds']:.1f}"])
            if self.step % args.checkpoint_every == 0:
                log_file and log_file.flush()
                if not self.weights_finite():
                    status = self.report_nan_weights()
                    break
                self.save()
            if self.step % args.sample_every == 0:
                self.sample_grid()
                self.model.train()
            # a signal or the time limit may reach one process first: all stop at the same step
            if self.stop_requested or now > deadline:
                acc.set_trigger()
            if acc.check_trigger():
                if self.is_main and now > deadline:
                    print(f"time limit of {args.time_limit} min reached at step {self.step}")
                break
        bar.close()
        if log_file:
            log_file.close()
        if status == 0 and not self.weights_finite():
            status = self.report_nan_weights()
        if status == 0:
            self.save()
            self.export(self.out / "model")
            if args.export:
                self.export(Path(args.export))
            if self.is_main:
                self.sample_grid()
                print(f"saved {self.out / CHECKPOINT} and the EMA model in {self.out / 'model'}"
                      + (f" and {args.export}" if args.export else ""))
        return status


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
