"""Measure sample quality: python -m ddpm.evaluate --model weights

For conditional samples of each class it reports
- accuracy: the share a classifier trained on the real sprites assigns to the intended class;
- FD: the Frechet distance between the classifier's penultimate features of the samples and of
  real sprites of that class, beside the floor FD of held-out real sprites (same count);
- near copies: the share of samples within a small pixel distance of a training sprite
  (flips included), beside the same share for held-out real sprites;
- isolated pixels: the share of pixels whose colour differs from all four neighbours, which is
  what speckle looks like, beside the same share for held-out real sprites (pixel art has some).
With --noise-error it samples nothing and reports instead the network's noise-prediction error per
range of t and per class, on the same noised sprites for any model given the same --seed: a cheap,
paired way to compare two checkpoints, far steadier than training losses.
The classifier is trained once per data set and cached outside git (~/.cache/ddpm-sprite-lab).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_model, load_palette, load_schedule
from .data import DataError, SpriteData, load_data
from .images import snap_to_palette
from .sampling import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, PRECISIONS, SAMPLER_ALIASES, sample, to_uint8

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm-sprite-lab"
CLASSIFIER_VERSION = 1
NEAR_COPY_RMS = 0.05  # RMS pixel distance in [0, 1] units below which a sprite counts as a copy
FEATURES = 64
# Edges of the t ranges for --noise-error, as fractions of T: for T = 500, t 1-10, 11-25, 26-50,
# 51-100, 101-150, 151-250, 251-500. Finer at low t, where each pixel's colour is decided.
NOISE_ERROR_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


class SpriteClassifier(nn.Module):
    """A small CNN; its FEATURES-d penultimate layer is the feature space for the Frechet distance."""

    def __init__(self, n_classes: int, height: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, FEATURES), nn.GELU(),
        )
        self.head = nn.Linear(FEATURES, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def data_key(data: SpriteData) -> str:
    h = hashlib.sha1(data.images.tobytes())
    h.update(data.labels.tobytes())
    h.update(",".join(data.class_names).encode())
    return f"classifier-v{CLASSIFIER_VERSION}-{h.hexdigest()[:16]}"


def train_classifier(data: SpriteData, epochs: int = 60, seed: int = 0, verbose: bool = True
                     ) -> tuple[SpriteClassifier, float]:
    """Train on 85% of the sprites (flips as augmentation, class-balanced loss); return it and held-out accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = data.to_tensors()
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) * 15 // 100)
    val, tr = perm[:n_val], perm[n_val:]
    counts = torch.bincount(y[tr], minlength=len(data.class_names)).clamp(min=1).float()
    weights = counts.sum() / counts / len(counts)
    model = SpriteClassifier(len(data.class_names), data.height)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tr) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
    if verbose:
        print(f"classifier: held-out accuracy {acc:.3f} on {n_val} sprites", file=sys.stderr)
    return model, acc


def cached_classifier(data: SpriteData) -> tuple[SpriteClassifier, float]:
    from safetensors.torch import load_file, save_file

    path = CACHE_DIR / f"{data_key(data)}.safetensors"
    if path.exists():
        try:
            state = load_file(str(path))
            acc = float(state.pop("heldout_accuracy").item())
            model = SpriteClassifier(len(data.class_names), data.height)
            model.load_state_dict(state)
            return model.eval(), acc
        except Exception:  # a damaged cache entry is simply rebuilt
            pass
    model, acc = train_classifier(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["heldout_accuracy"] = torch.tensor(acc)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return model, acc


# --- the measures ---------------------------------------------------------------------------------
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed with symmetric eigendecompositions."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def isolated_pixel_share(images: torch.Tensor) -> float:
    """Share of pixels of (B, C, H, W) images in [-1, 1] whose colour differs from each of its
    neighbours inside the image (four, fewer at the border). 0 for flat images, 1 for a checkerboard."""
    padded = F.pad(images, (1, 1, 1, 1), value=3.0)  # outside the image: unlike every colour
    centre = padded[..., 1:-1, 1:-1]
    h, w = images.shape[-2:]
    isolated = torch.ones(images.shape[0], h, w, dtype=torch.bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[..., dy:dy + h, dx:dx + w]
        isolated &= (centre - neighbour).abs().amax(1) > 1 / 255  # colours quantised to 8 bits
    return float(isolated.float().mean())


def near_copy_share(samples: torch.Tensor, train: torch.Tensor, threshold: float = NEAR_COPY_RMS) -> float:
    """Share of samples whose RMS distance (in [0, 1] pixel units) to some training sprite or its mirror is below threshold."""
    ref = torch.cat([train, train.flip(-1)]).flatten(1) / 2  # [-1, 1] -> half-range so distances are in [0, 1] units
    s = samples.flatten(1) / 2
    d2 = torch.cdist(s, ref).pow(2) / s.shape[1]
    return float((d2.min(1).values.sqrt() < threshold).float().mean())


@dataclass
class ClassResult:
    name: str
    accuracy: float
    fd: float
    fd_floor: float
    near_copies: float
    near_copies_real: float
    isolated: float
    isolated_real: float


@torch.no_grad()
def evaluate(model, schedule, data: SpriteData, sampler: str = DEFAULT_SAMPLER, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, n_per_class: int = 100, seed: int = 0,
             classifier: SpriteClassifier | None = None, batch: int = 250,
             palette: "np.ndarray | None" = None, precision: str = "fp32") -> list[ClassResult]:
    """Sample n_per_class sprites of each class and measure them against the real ones.

    With a palette, samples are snapped to it (ddpm.images.snap_to_palette) as the app and CLI do.
    precision: what the network runs in while sampling (ddpm.sampling.PRECISIONS).
    """
    if classifier is None:
        classifier, _ = cached_classifier(data)
    x_real, y_real = data.to_tensors()
    split = torch.Generator().manual_seed(1234)
    results = []
    for c, name in enumerate(data.class_names):
        real = x_real[y_real == c]
        perm = torch.randperm(len(real), generator=split)
        ref, held = real[perm[: len(real) // 2]], real[perm[len(real) // 2:]]
        context = torch.zeros(n_per_class, len(data.class_names))
        context[:, c] = 1
        chunks = []
        for i in range(0, n_per_class, batch):
            chunks.append(sample(model, schedule, context[i:i + batch], sampler=sampler, steps=steps,
                                 guidance=guidance, seed=seed + 7919 * c + i, precision=precision))
        # quantise as a saved PNG would be (and snap to the palette as the app does)
        fake = to_uint8(torch.cat(chunks))
        if palette is not None:
            fake = snap_to_palette(fake, palette)
        fake = torch.from_numpy(fake).permute(0, 3, 1, 2).float() / 127.5 - 1
        m = min(n_per_class, len(held))
        f_fake = classifier.features(fake)
        acc = float((classifier.head(f_fake).argmax(1) == c).float().mean())
        f_ref, f_held = classifier.features(ref), classifier.features(held[:m])
        results.append(ClassResult(
            name, acc, frechet_distance(f_fake[:m], f_ref), frechet_distance(f_held, f_ref),
            near_copy_share(fake, real), near_copy_share(held, ref),
            isolated_pixel_share(fake), isolated_pixel_share(held),
        ))
    return results


def t_ranges(T: int) -> list[tuple[int, int]]:
    """Consecutive ranges (first, last) of t covering 1..T, cut at NOISE_ERROR_EDGES."""
    edges = sorted({round(f * T) for f in NOISE_ERROR_EDGES})
    return [(a + 1, b) for a, b in zip(edges, edges[1:])]


@torch.no_grad()
def noise_error_by_t(model, schedule, data: SpriteData, seed: int = 0, batch: int = 256
                     ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Mean squared error of the predicted noise, per range of t (rows) and per class (columns; the
    last column is over all sprites).

    Every sprite is noised once in each range, conditioned on its own class; t and the noise come
    from `seed` alone, so two models evaluated with the same seed see exactly the same inputs.
    """
    x, y = data.to_tensors()
    k, n = len(data.class_names), len(x)
    ranges = t_ranges(schedule.T)
    g = torch.Generator().manual_seed(seed)
    errors = np.zeros((len(ranges), k + 1))
    model.eval()
    for i, (first, last) in enumerate(ranges):
        t = torch.randint(first, last + 1, (n,), generator=g)
        noise = torch.randn(x.shape, generator=g)
        per_sprite = torch.empty(n)
        for j in range(0, n, batch):
            part = slice(j, j + batch)
            x_t = schedule.add_noise(x[part], noise[part], t[part])
            predicted = model(x_t, t[part].float() / schedule.T, F.one_hot(y[part], k).float())
            per_sprite[part] = ((predicted - noise[part]) ** 2).mean((1, 2, 3))
        for c in range(k):
            errors[i, c] = per_sprite[y == c].mean() if (y == c).any() else float("nan")
        errors[i, k] = per_sprite.mean()
    return ranges, errors


def noise_error_table(ranges: list[tuple[int, int]], errors: np.ndarray, class_names: list[str]) -> str:
    rows = ["| t | " + " | ".join(class_names) + " | all |", "|---" * (len(class_names) + 2) + "|"]
    for (first, last), row in zip(ranges, errors):
        rows.append(f"| {first}-{last} | " + " | ".join(f"{e:.4f}" for e in row) + " |")
    return "\n".join(rows)


def markdown_table(results: list[ClassResult]) -> str:
    rows = ["| class | accuracy | FD | FD floor (real vs real) | near copies | near copies (real vs real) "
            "| isolated pixels | isolated pixels (real) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.name} | {r.accuracy:.1%} | {r.fd:.2f} | {r.fd_floor:.2f} | {r.near_copies:.1%} | "
                    f"{r.near_copies_real:.1%} | {r.isolated:.1%} | {r.isolated_real:.1%} |")
    mean = lambda attr: sum(getattr(r, attr) for r in results) / len(results)  # noqa: E731
    rows.append(f"| **mean** | {mean('accuracy'):.1%} | {mean('fd'):.2f} | {mean('fd_floor'):.2f} | "
                f"{mean('near_copies'):.1%} | {mean('near_copies_real'):.1%} | {mean('isolated'):.1%} | "
                f"{mean('isolated_real'):.1%} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm.evaluate", description="Measure sample quality per class.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="weights")
    p.add_argument("--data", default="dawnlike")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=sorted(SAMPLER_ALIASES))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--n", type=int, default=100, help="samples per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="run the network in bf16 autocast while sampling (fast only on CPUs with AVX512_BF16/AMX)")
    p.add_argument("--no-palette", action="store_true", help="measure raw colours, not snapped to palette.json")
    p.add_argument("--noise-error", action="store_true",
                   help="sample nothing; report the noise-prediction error per range of t and per class instead")
    p.add_argument("--write-card", action="store_true",
                   help="also rewrite the model directory's README.md (with this table) and samples.png")
    args = p.parse_args(argv)
    if args.noise_error and args.write_card:
        p.error("--write-card needs samples; leave out --noise-error")
    if args.n < 2:
        p.error("--n must be at least 2 (a covariance needs two samples)")
    try:
        model = load_model(args.model)
        schedule = load_schedule(args.model)
        data = load_data(args.data, model.height)
        if data.class_names != model.class_names:
            raise DataError(f"the data's classes {data.class_names} differ from the model's {model.class_names}")
        if args.noise_error:
            start = time.time()
            ranges, errors = noise_error_by_t(model, schedule, data, seed=args.seed)
            print(f"noise MSE of {args.model}: each of the {len(data.images)} sprites noised once per range of t, "
                  f"seed {args.seed} ({time.time() - start:.0f} s)\n")
            print(noise_error_table(ranges, errors, data.class_names))
            return 0
        classifier, clf_acc = cached_classifier(data)
        start = time.time()
        palette = None if args.no_palette else load_palette(args.model)
        results = evaluate(model, schedule, data, args.sampler, args.steps, args.guidance, args.n, args.seed, classifier,
                           palette=palette, precision=args.precision)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    settings = (f"{args.n} samples per class, {args.sampler} {args.steps} steps, guidance {args.guidance}, "
                f"seed {args.seed}, {args.precision}, {'snapped to the palette' if palette is not None else 'raw colours'}")
    print(f"{settings} ({time.time() - start:.0f} s); classifier held-out accuracy {clf_acc:.1%}\n")
    table = markdown_table(results)
    print(table)
    if args.write_card:
        command = "python -m ddpm.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
        write_card(Path(args.model), model, schedule, palette, args, f"{settings}; classifier held-out accuracy "
                   f"{clf_acc:.1%}. Measured with `{command}`.\n\n{table}")
        print(f"\nwrote {Path(args.model) / 'README.md'} and {Path(args.model) / 'samples.png'}")
    return 0


def write_card(folder: Path, model, schedule, palette, args, evaluation: str) -> None:
    """Rewrite folder/README.md with the evaluation, and folder/samples.png (8 per class, one row each)."""
    from .card import model_card
    from .images import sprite_sheet

    k, n = model.n_classes, 8
    context = torch.eye(k).repeat_interleave(n, 0)
    sprites = to_uint8(sample(model, schedule, context, sampler=args.sampler, steps=args.steps,
                              guidance=args.guidance, seed=args.seed, precision=args.precision))
    if palette is not None:
        sprites = snap_to_palette(sprites, palette)
    sprite_sheet(list(sprites.reshape(k, n, *sprites.shape[1:])), scale=4, pad=2).save(folder / "samples.png")
    n_params = sum(p.numel() for p in model.parameters())
    model_card(model.config_dict, n_params, model.training_info, evaluation).save(folder / "README.md")

if __name__ == "__main__":
    sys.exit(main())
