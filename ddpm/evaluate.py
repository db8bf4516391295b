"""Measure sample quality: python -m ddpm.evaluate --model weights --seeds 0,1

For n conditional samples of each class and each sampling seed it reports, per class and as the
mean over the classes (so every class counts alike although the real classes are far from balanced):
- accuracy: the share a classifier trained on the real sprites assigns to the intended class;
- FD: the Frechet distance between classifier features of the samples and of real sprites of that
  class, beside the floor FD of held-out real sprites (same count) against the same reference;
- precision and recall (Kynkaenniemi et al. 2019, k-NN manifolds, k = 3): the share of samples
  inside the real sprites' manifold (fidelity) and of real sprites inside the samples' (diversity),
  beside the same two figures for held-out real sprites;
- near copies: the share of samples within a small pixel distance of a real sprite of their class
  (flips included), beside the same share for held-out real sprites;
- isolated pixels: the share of pixels whose colour differs from all four neighbours, which is
  what speckle looks like, beside the same share for held-out real sprites (pixel art has some).
FD, accuracy, precision and recall are measured in two feature spaces, of two classifiers of
different architectures trained with different seeds and splits (A: SpriteClassifier, B:
LayoutClassifier). Every figure is given as the mean over the seeds with half its range, and per
seed; the decision table shows each sampler setting (--settings) and model (--compare) on the same
seeds, with the real-vs-real floors in its last row.
With --noise-error it samples nothing and reports instead the network's noise-prediction error per
range of t and per class, on the same noised sprites for any model given the same --seed: a cheap,
paired way to compare two checkpoints, far steadier than training losses.
The classifiers for the DawnLike build ship in ddpm/classifiers, so figures compare across machines;
for other data they are trained once per data set and cached outside git (~/.cache/ddpm-sprite-lab).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_model, load_palette, load_refiner, load_schedule
from .folder import CheckpointError
from .data import DataError, SpriteData, load_data
from .device import PRECISIONS
from .images import from_uint8, snap_to_palette, to_uint8
from .losses import noise_error
from .sampling import (DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_SPACING, SAMPLER_ALIASES, SPACINGS,
                       DEFAULT_REFINER_T_MAX, Refiner, sample)

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ddpm-sprite-lab"
# The classifiers for the DawnLike build, shipped so that every machine judges in the same feature
# spaces: trained on another CPU they round differently and give other floors and FDs.
SHIPPED_DIR = Path(__file__).resolve().parent / "classifiers"
CLASSIFIER_VERSION = 1
NEAR_COPY_RMS = 0.05  # RMS pixel distance in [0, 1] units below which a sprite counts as a copy
FEATURES = 64
LAYOUT_FEATURES = 48
KNN_K = 3  # Kynkaenniemi et al. 2019 found k = 3 a good balance for their precision and recall
# Edges of the t ranges for --noise-error, as fractions of T: for T = 500, t 1-10, 11-25, 26-50,
# 51-100, 101-150, 151-250, 251-500. Finer at low t, where each pixel's colour is decided.
NOISE_ERROR_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
# The real sprites of each class are split once, with this seed, into a reference half and a
# held-out half; every setting, model and sampling seed is measured against the same reference.
SPLIT_SEED = 1234


class SpriteClassifier(nn.Module):
    """Feature space A: a small CNN with global average pooling; its FEATURES-d penultimate layer is
    the feature space for the Frechet distance."""

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


class LayoutClassifier(nn.Module):
    """Feature space B, built to differ from A: a 5x5 first layer, strided convolutions with
    BatchNorm and ReLU instead of pooling and GELU, and a flattened 4x4 map instead of global
    pooling, so its LAYOUT_FEATURES-d features keep where things are in the sprite."""

    def __init__(self, n_classes: int, height: int = 16):
        super().__init__()
        side = math.ceil(math.ceil(height / 2) / 2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 48, 5, padding=2), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 96, 3, stride=2, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
            nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
            nn.Conv2d(96, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * side * side, LAYOUT_FEATURES), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(LAYOUT_FEATURES, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# Feature space name -> (architecture, training seed; the seed also chooses the held-out split).
CLASSIFIERS: dict[str, tuple[type[nn.Module], int]] = {"A": (SpriteClassifier, 0), "B": (LayoutClassifier, 1)}


def _classifier_kind(kind: str) -> tuple[type[nn.Module], int]:
    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown feature space {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[kind]


def data_key(data: SpriteData, kind: str = "A") -> str:
    """Cache name of the classifier of feature space `kind` for this data set."""
    _classifier_kind(kind)
    h = hashlib.sha1(data.images.tobytes())
    h.update(data.labels.tobytes())
    h.update(",".join(data.class_names).encode())
    prefix = "classifier" if kind == "A" else f"classifier-{kind.lower()}"  # A keeps its original name
    return f"{prefix}-v{CLASSIFIER_VERSION}-{h.hexdigest()[:16]}"


def train_classifier(data: SpriteData, epochs: int = 60, seed: int = 0, verbose: bool = True, kind: str = "A"
                     ) -> tuple[nn.Module, float]:
    """Train on 85% of the sprites (flips as augmentation, class-balanced loss); return it and held-out accuracy."""
    architecture, _ = _classifier_kind(kind)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = data.to_tensors()
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) * 15 // 100)
    val, tr = perm[:n_val], perm[n_val:]
    counts = torch.bincount(y[tr], minlength=len(data.class_names)).clamp(min=1).float()
    weights = counts.sum() / counts / len(counts)
    model = architecture(len(data.class_names), data.height)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tr) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()
    for _ in range(epochs):
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            if batch_norm and len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
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
        print(f"classifier {kind}: held-out accuracy {acc:.3f} on {n_val} sprites", file=sys.stderr)
    return model, acc


def cached_classifier(data: SpriteData, kind: str = "A") -> tuple[nn.Module, float]:
    """The classifier of feature space `kind` for this data: the shipped one (ddpm/classifiers) for
    the DawnLike build, else trained on first use and cached."""
    from safetensors.torch import load_file, save_file

    architecture, seed = _classifier_kind(kind)
    name = f"{data_key(data, kind)}.safetensors"
    path = CACHE_DIR / name
    for found in (SHIPPED_DIR / name, path):
        if not found.exists():
            continue
        try:
            state = load_file(str(found))
            acc = float(state.pop("heldout_accuracy").item())
            model = architecture(len(data.class_names), data.height)
            model.load_state_dict(state)
            return model.eval(), acc
        except Exception:  # a damaged cache entry is simply rebuilt
            pass
    model, acc = train_classifier(data, seed=seed, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["heldout_accuracy"] = torch.tensor(acc)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    return model.eval(), acc


# --- the measures ---------------------------------------------------------------------------------
def frechet_distance(a: torch.Tensor, b: torch.Tensor, weights_b: torch.Tensor | np.ndarray | None = None) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), computed with symmetric eigendecompositions.

    weights_b: optional weights of b's rows (as from balanced_weights) for its mean and covariance.
    """
    a, b = a.double(), b.double()
    mu_a, s_a = a.mean(0), torch.cov(a.T)
    if weights_b is None:
        mu_b, s_b = b.mean(0), torch.cov(b.T)
    else:
        w = torch.as_tensor(weights_b, dtype=torch.float64)
        w = w / w.sum()
        mu_b, s_b = w @ b, torch.cov(b.T, aweights=w)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    # rounding can leave a tiny negative value where the two sets agree
    return max(0.0, float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross))


def knn_radii(x: torch.Tensor, k: int = KNN_K) -> torch.Tensor:
    """Distance from each row of x to its k-th nearest other row (k is lowered for tiny sets)."""
    k = min(k, len(x) - 1)
    if k < 1:
        raise ValueError("a k-NN manifold needs at least two points")
    d = torch.cdist(x.double(), x.double())
    return d.kthvalue(k + 1, dim=1).values  # the row's own zero distance is the first


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = KNN_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019) of feature sets (N, D) and (M, D).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: the share of fake points inside the real manifold; recall: the share of
    real points inside the fake manifold.
    """
    real, fake = real.double(), fake.double()
    d = torch.cdist(fake, real)  # (M, N)
    precision = (d <= knn_radii(real, k)[None, :]).any(1).double().mean()
    recall = (d <= knn_radii(fake, k)[:, None]).any(0).double().mean()
    return float(precision), float(recall)


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


def balanced_weights(labels: np.ndarray, counts: dict[int, int] | np.ndarray) -> np.ndarray:
    """Weights for real sprites with `labels` so that each class weighs as much as `counts` gives it
    (the samples' class counts): an unbalanced real set reweighted to compare like with like.
    The weights sum to 1; a class with no real sprites cannot be matched and raises ValueError."""
    labels = np.asarray(labels)
    target = np.asarray([counts[c] for c in range(len(counts))] if isinstance(counts, dict) else counts, float)
    have = np.bincount(labels, minlength=len(target)).astype(float)
    if ((target > 0) & (have == 0)).any():
        raise ValueError("a class the samples have is missing from the real sprites")
    w = np.where(have[labels] > 0, target[labels] / np.maximum(have[labels], 1), 0.0)
    return w / w.sum()


@dataclass
class Spread:
    """A figure over sampling seeds: the mean, half the range and each seed's value."""
    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def half_range(self) -> float:
        return float((max(self.values) - min(self.values)) / 2)

    def format(self, percent: bool = False) -> str:
        f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.2f}")  # noqa: E731
        if len(self.values) == 1:
            return f(self.mean)
        half = f"{self.half_range * 100:.1f}" if percent else f"{self.half_range:.2f}"
        return f"{f(self.mean)} ± {half}"


# --- feature spaces, the reference and the floors ---------------------------------------------------
@dataclass
class FeatureSpace:
    """A classifier whose penultimate features FD, precision and recall are measured in."""
    name: str
    classifier: nn.Module
    heldout_accuracy: float


def feature_spaces(data: SpriteData, names: tuple[str, ...] = tuple(CLASSIFIERS)) -> list[FeatureSpace]:
    """The cached classifiers of the named feature spaces (each trained on first use)."""
    return [FeatureSpace(name, *cached_classifier(data, name)) for name in names]


def space_metrics(spaces: list[FeatureSpace]) -> list[str]:
    """Names of the per-class figures, in table order."""
    names = [f"accuracy {s.name}" for s in spaces] + [f"FD {s.name}" for s in spaces]
    for s in spaces:
        names += [f"precision {s.name}", f"recall {s.name}"]
    return names + ["near copies", "isolated pixels"]


@torch.no_grad()
def _features(space: FeatureSpace, images: torch.Tensor) -> torch.Tensor:
    return space.classifier.features(images).float()


class Reference:
    """The real sprites of each class split (SPLIT_SEED) into a reference half and a held-out half,
    with their features in each space, and the real-vs-real floors: held-out sprites measured
    against the reference exactly as samples are.

    FD, precision and recall compare compared[c] = min(n_per_class, held-out count) sprites of a
    class with its reference half, so samples and floor are measured at the same count. Pooled over
    the classes, the reference half is reweighted to those counts (balanced_weights), never taken
    in the real set's own unbalanced mix.
    """

    def __init__(self, data: SpriteData, spaces: list[FeatureSpace], n_per_class: int):
        x, y = data.to_tensors()
        split = torch.Generator().manual_seed(SPLIT_SEED)
        self.class_names, self.spaces = list(data.class_names), spaces
        self.real, self.ref, self.held = [], [], []
        for c in range(len(self.class_names)):
            real = x[y == c]
            if len(real) < 4:
                raise DataError(f"class {self.class_names[c]!r} has {len(real)} sprites; "
                                "the evaluation needs at least 4")
            perm = torch.randperm(len(real), generator=split)
            self.real.append(real)
            self.ref.append(real[perm[: len(real) // 2]])
            self.held.append(real[perm[len(real) // 2:]])
        self.compared = [min(n_per_class, len(h)) for h in self.held]
        self.ref_features = {s.name: [_features(s, r) for r in self.ref] for s in spaces}
        self.ref_labels = np.concatenate([np.full(len(r), c) for c, r in enumerate(self.ref)])
        self.pooled_weights = balanced_weights(self.ref_labels, np.asarray(self.compared))
        self.floor = self.measure([h[: m] for h, m in zip(self.held, self.compared)], real_vs_real=True)
        # near copies and isolated pixels of the real sprites use every held-out sprite
        self.floor["near copies"] = [near_copy_share(h, r) for h, r in zip(self.held, self.ref)]
        self.floor["isolated pixels"] = [isolated_pixel_share(h) for h in self.held]
        self.floor.update({f"accuracy {s.name}": [s.heldout_accuracy] * len(self.held) for s in spaces})

    def measure(self, images: list[torch.Tensor], real_vs_real: bool = False) -> dict[str, list[float]]:
        """Every figure per class for images[c] (B, 3, H, W) in [-1, 1], meant to be of class c;
        "FD <space> pooled" holds one value: all classes against the reweighted reference."""
        out: dict[str, list[float]] = {}
        for s in self.spaces:
            feats = [_features(s, im) for im in images]
            if not real_vs_real:
                logits = [s.classifier.head(f) for f in feats]
                out[f"accuracy {s.name}"] = [float((lg.argmax(1) == c).float().mean()) for c, lg in enumerate(logits)]
            fds, prs, compared = [], [], []
            for c, (f, ref) in enumerate(zip(feats, self.ref_features[s.name])):
                f = f[: self.compared[c]]
                compared.append(f)
                fds.append(frechet_distance(f, ref))
                prs.append(precision_recall(ref, f))
            out[f"FD {s.name}"] = fds
            out[f"precision {s.name}"] = [p for p, _ in prs]
            out[f"recall {s.name}"] = [r for _, r in prs]
            out[f"FD {s.name} pooled"] = [frechet_distance(torch.cat(compared), torch.cat(self.ref_features[s.name]),
                                                           self.pooled_weights)]
        if not real_vs_real:
            out["near copies"] = [near_copy_share(im, real) for im, real in zip(images, self.real)]
            out["isolated pixels"] = [isolated_pixel_share(im) for im in images]
        return out


# --- sampler settings and their measurement ---------------------------------------------------------
@dataclass
class Setting:
    """A way of sampling: sampler, steps, guidance and any further keyword arguments of ddpm.sampling.sample."""
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The setting as --settings spells it; the guidance is left out only where it is the default
        and nothing follows it, so two settings never share a label."""
        parts = [self.sampler, str(self.steps), f"{self.guidance:g}", self.options.get("spacing", "")]
        if "guidance_interval" in self.options:
            parts.append("-".join(map(str, self.options["guidance_interval"])))
        while len(parts) > 2 and (not parts[-1] or (len(parts) == 3 and self.guidance == DEFAULT_GUIDANCE)):
            parts.pop()
        return ":".join(parts)


def parse_settings(text: str, guidance: float = DEFAULT_GUIDANCE) -> list[Setting]:
    """'ddpm:50,ddim:10:2.0,ddpm:8::quadratic:57-320' -> settings.

    Each is sampler:steps[:guidance[:spacing[:t_lo-t_hi]]]: guidance defaults to `guidance`, spacing
    to the library's (ddpm.sampling.SPACINGS), and t_lo-t_hi is a guidance interval.
    """
    settings = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if not 2 <= len(parts) <= 5 or not parts[0]:
            raise ValueError(f"setting {item.strip()!r} is not sampler:steps[:guidance[:spacing[:t_lo-t_hi]]]")
        if parts[0].lower() not in SAMPLER_ALIASES:
            raise ValueError(f"unknown sampler {parts[0]!r} in {item.strip()!r}; "
                             f"choose one of {', '.join(sorted(SAMPLER_ALIASES))}")
        try:
            steps = int(parts[1])
            g = float(parts[2]) if len(parts) >= 3 and parts[2] else guidance
            interval = tuple(int(v) for v in parts[4].split("-")) if len(parts) == 5 else None
        except ValueError:
            raise ValueError(f"setting {item.strip()!r}: steps must be an integer, guidance a number and the "
                             f"guidance interval t_lo-t_hi") from None
        if steps < 1 or not math.isfinite(g):
            raise ValueError(f"setting {item.strip()!r}: steps must be at least 1 and guidance finite")
        options = {}
        if len(parts) >= 4 and parts[3]:
            if parts[3] not in SPACINGS:
                raise ValueError(f"setting {item.strip()!r}: spacing must be one of {', '.join(SPACINGS)}")
            options["spacing"] = parts[3]
        if interval is not None:
            if len(interval) != 2:
                raise ValueError(f"setting {item.strip()!r}: the guidance interval is t_lo-t_hi")
            options["guidance_interval"] = interval
        settings.append(Setting(SAMPLER_ALIASES[parts[0].lower()], steps, g, options))
    return settings


def parse_seeds(text: str) -> list[int]:
    """'0,1' -> [0, 1]; seeds must be distinct non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a comma-separated list of integers") from None
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r}: seeds must be distinct and non-negative")
    return seeds


@torch.no_grad()
def sample_class(model, schedule, c: int, n: int, setting: Setting, seed: int, batch: int = 250,
                 palette: "np.ndarray | None" = None, precision: str = "fp32",
                 refiner: Refiner | None = None) -> torch.Tensor:
    """n sprites of class c as (n, 3, H, W) in [-1, 1], quantised as a saved PNG would be (and snapped
    to the palette as the app does). Class c's draw depends only on seed, c and the setting."""
    context = torch.zeros(n, model.n_classes)
    context[:, c] = 1
    chunks = []
    for i in range(0, n, batch):
        chunks.append(sample(model, schedule, context[i:i + batch], sampler=setting.sampler, steps=setting.steps,
                             guidance=setting.guidance, seed=seed + 7919 * c + i, precision=precision,
                             refiner=refiner, **setting.options))
    fake = to_uint8(torch.cat(chunks))
    if palette is not None:
        fake = snap_to_palette(fake, palette)
    return from_uint8(fake)


@dataclass
class SettingResult:
    """One model and setting measured on each seed: per_seed[i][figure] holds a value per class."""
    model: str
    setting: Setting
    precision: str
    n_per_class: int
    seeds: list[int]
    per_seed: list[dict[str, list[float]]]
    seconds: list[float]

    def spread(self, figure: str, c: int | None = None) -> Spread:
        """The class mean (or class c's value) of a figure over the seeds."""
        return Spread([float(np.mean(d[figure]) if c is None else d[figure][c]) for d in self.per_seed])


def measure(model, schedule, reference: Reference, setting: Setting, n_per_class: int, seeds: list[int],
            palette: "np.ndarray | None" = None, precision: str = "fp32", batch: int = 250,
            model_name: str = "model", refiner: Refiner | None = None) -> SettingResult:
    """Sample n_per_class sprites of every class with each seed and measure them against the reference
    (with `refiner` taking the low-noise steps, if given)."""
    per_seed, seconds = [], []
    for seed in seeds:
        start = time.perf_counter()
        fakes = [sample_class(model, schedule, c, n_per_class, setting, seed, batch, palette, precision, refiner)
                 for c in range(len(reference.class_names))]
        per_seed.append(reference.measure(fakes))
        seconds.append(time.perf_counter() - start)
    return SettingResult(model_name, setting, precision, n_per_class, list(seeds), per_seed, seconds)


# --- the tables ----------------------------------------------------------------------------------
def _percent(figure: str) -> bool:
    return not figure.startswith("FD")


def _floor_cell(reference: Reference, figure: str, c: int | None = None) -> str:
    values = reference.floor[figure]
    v = float(np.mean(values)) if c is None else values[c]
    return f"{v:.1%}" if _percent(figure) else f"{v:.2f}"


def decision_table(results: list[SettingResult], reference: Reference) -> str:
    """One row per model and setting: every figure as the class mean, mean ± half the range over the
    seeds; the last row holds the real-vs-real floors."""
    figures = space_metrics(reference.spaces)
    head = ["model", "sampler", "steps", "spacing", "guidance", "guided t", "precision", "n per class", "seeds"] + figures
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        options = r.setting.options
        interval = options.get("guidance_interval")
        cells = [r.model, r.setting.sampler, str(r.setting.steps), options.get("spacing", DEFAULT_SPACING),
                 f"{r.setting.guidance:g}", "-".join(map(str, interval)) if interval else "all", r.precision,
                 str(r.n_per_class), ",".join(map(str, r.seeds))]
        cells += [r.spread(f).format(_percent(f)) for f in figures]
        rows.append("| " + " | ".join(cells) + " |")
    floor = ["real vs real (held-out)", "", "", "", "", "", "", "/".join(map(str, reference.compared)), ""]
    floor += [_floor_cell(reference, f) for f in figures]
    rows.append("| " + " | ".join(floor) + " |")
    return "\n".join(rows)


def per_seed_table(results: list[SettingResult], reference: Reference) -> str:
    """Each seed's class means (FD also pooled over the classes), with the time it took."""
    names = [s.name for s in reference.spaces]
    figures = space_metrics(reference.spaces)
    head = ["model", "setting", "seed"] + figures + [f"FD {n} pooled" for n in names] + ["seconds"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in results:
        for i, seed in enumerate(r.seeds):
            d = r.per_seed[i]
            cells = [r.model, r.setting.label, str(seed)]
            cells += [f"{np.mean(d[f]):.1%}" if _percent(f) else f"{np.mean(d[f]):.2f}" for f in figures]
            cells += [f"{d[f'FD {n} pooled'][0]:.2f}" for n in names] + [f"{r.seconds[i]:.0f}"]
            rows.append("| " + " | ".join(cells) + " |")
    floor = ["real vs real (held-out)", "", ""] + [_floor_cell(reference, f) for f in figures]
    floor += [f"{reference.floor[f'FD {n} pooled'][0]:.2f}" for n in names] + [""]
    rows.append("| " + " | ".join(floor) + " |")
    return "\n".join(rows)


def per_class_table(result: SettingResult, reference: Reference) -> str:
    """Per class: each figure as mean ± half the range over the seeds, with its real-vs-real floor in brackets."""
    figures = [f for f in space_metrics(reference.spaces) if not f.startswith("accuracy")]
    head = ["class", "compared"] + [f"accuracy {s.name}" for s in reference.spaces] + figures
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for c, name in enumerate(reference.class_names):
        cells = [name, str(reference.compared[c])]
        cells += [result.spread(f"accuracy {s.name}", c).format(True) for s in reference.spaces]
        cells += [f"{result.spread(f, c).format(_percent(f))} ({_floor_cell(reference, f, c)})" for f in figures]
        rows.append("| " + " | ".join(cells) + " |")
    cells = ["**mean**", ""] + [result.spread(f"accuracy {s.name}").format(True) for s in reference.spaces]
    cells += [f"{result.spread(f).format(_percent(f))} ({_floor_cell(reference, f)})" for f in figures]
    rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def report(results: list[SettingResult], reference: Reference) -> str:
    """The decision table, what its figures mean, the per-seed table and one per-class table per result."""
    return "\n\n".join([
        decision_table(results, reference),
        "Each figure is the mean over the classes (every class counts alike), as mean ± half its range over the "
        "seeds (in percentage points for shares). FD, precision and recall compare min(n, held-out real count) "
        f"samples per class ({'/'.join(map(str, reference.compared))}) with half the real sprites of that class; "
        "the last row measures the other half of the real sprites in the same way (the floor). Accuracy there is the "
        "classifier's own held-out accuracy.",
        "Per seed (FD pooled: all classes against the reference reweighted to the samples' class counts):",
        per_seed_table(results, reference),
    ] + [f"Per class, {r.model} {r.setting.label} guidance {r.setting.guidance:g} (real-vs-real floor in brackets):"
         f"\n\n{per_class_table(r, reference)}" for r in results])


def results_json(results: list[SettingResult], reference: Reference) -> dict:
    """Everything measured, per seed and class, for scripts that build their own tables."""
    return dict(
        classes=reference.class_names, compared=reference.compared,
        feature_spaces={s.name: dict(architecture=type(s.classifier).__name__, heldout_accuracy=s.heldout_accuracy)
                        for s in reference.spaces},
        floor=reference.floor,
        results=[dict(model=r.model, sampler=r.setting.sampler, steps=r.setting.steps, guidance=r.setting.guidance,
                      options=r.setting.options, precision=r.precision, n_per_class=r.n_per_class,
                      seeds=r.seeds, seconds=r.seconds, per_seed=r.per_seed,
                      mean={f: r.spread(f).mean for f in r.per_seed[0]},
                      half_range={f: r.spread(f).half_range for f in r.per_seed[0]})
                 for r in results])


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
             classifier: nn.Module | None = None, batch: int = 250,
             palette: "np.ndarray | None" = None, precision: str = "fp32", **sample_options) -> list[ClassResult]:
    """Sample n_per_class sprites of each class with one seed and measure them in feature space A only.

    With a palette, samples are snapped to it (ddpm.images.snap_to_palette) as the app and CLI do.
    precision: what the network runs in while sampling (ddpm.device.PRECISIONS); sample_options
    go on to ddpm.sampling.sample. `measure` gives both feature spaces, several seeds and precision
    and recall.
    """
    if classifier is None:
        classifier, _ = cached_classifier(data)
    reference = Reference(data, [FeatureSpace("A", classifier, float("nan"))], n_per_class)
    r = measure(model, schedule, reference, Setting(sampler, steps, guidance, sample_options), n_per_class, [seed],
                palette, precision, batch).per_seed[0]
    f = reference.floor
    return [ClassResult(name, r["accuracy A"][c], r["FD A"][c], f["FD A"][c], r["near copies"][c],
                        f["near copies"][c], r["isolated pixels"][c], f["isolated pixels"][c])
            for c, name in enumerate(reference.class_names)]


def t_ranges(T: int) -> list[tuple[int, int]]:
    """Consecutive ranges (first, last) of t covering 1..T, cut at NOISE_ERROR_EDGES."""
    edges = sorted({round(f * T) for f in NOISE_ERROR_EDGES})
    return [(a + 1, b) for a, b in zip(edges, edges[1:])]


@torch.no_grad()
def noise_error_by_t(model, schedule, data: SpriteData, seed: int = 0, batch: int = 256
                     ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Mean squared error of the predicted noise (ddpm.losses.noise_error, the training loss unweighted),
    per range of t (rows) and per class (columns; the last column is over all sprites).

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
            context = F.one_hot(y[part], k).float()
            per_sprite[part] = noise_error(model, schedule, x[part], noise[part], t[part], context)
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
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR",
                   help="further model directories, measured on the same seeds and settings as --model")
    p.add_argument("--data", default="dawnlike")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=sorted(SAMPLER_ALIASES))
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--settings", default=None, metavar="SAMPLER:STEPS[:GUIDANCE[:SPACING[:T_LO-T_HI]]],...",
                   help="several settings measured on the same seeds, e.g. ddpm:50,ddim:10,ddpm:8::quadratic:57-320 "
                        "(instead of --sampler/--steps; guidance defaults to --guidance, spacing to trailing; "
                        "T_LO-T_HI applies guidance only for t in that range)")
    p.add_argument("--refiner", default=None, metavar="DIR",
                   help="a second model that predicts --model's low-noise steps, t <= --refiner-t-max (as SDXL's "
                        "refiner); the --compare models sample alone")
    p.add_argument("--refiner-t-max", type=int, default=None, metavar="T",
                   help=f"the highest t the --refiner predicts (default {DEFAULT_REFINER_T_MAX})")
    p.add_argument("--n", type=int, default=100, help="samples per class")
    p.add_argument("--seed", type=int, default=None, help="one sampling seed (as --seeds SEED)")
    p.add_argument("--seeds", default=None, help="comma-separated sampling seeds; default 0,1 unless --seed is given")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="run the network in bf16 autocast while sampling (fast only on CPUs with AVX512_BF16/AMX)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every figure, per seed and class, as JSON")
    p.add_argument("--no-palette", action="store_true", help="measure raw colours, not snapped to palette.json")
    p.add_argument("--noise-error", action="store_true",
                   help="sample nothing; report the noise-prediction error per range of t and per class instead")
    p.add_argument("--write-card", action="store_true",
                   help="also rewrite the model directory's README.md (with this table) and samples.png; with "
                        "--compare, also before_after.png: the first compared model's sprites beside this one's")
    args = p.parse_args(argv)
    if args.noise_error and args.write_card:
        p.error("--write-card needs samples; leave out --noise-error")
    if args.refiner_t_max is not None and args.refiner is None:
        p.error("--refiner-t-max needs --refiner")
    if args.refiner is not None and (args.noise_error or args.write_card):
        p.error("--refiner samples with two models; --noise-error and --write-card describe --model alone")
    if args.n < 2:
        p.error("--n must be at least 2 (a covariance needs two samples)")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed] if args.seed is not None else [0, 1]
        settings = (parse_settings(args.settings, args.guidance) if args.settings is not None
                    else [Setting(args.sampler, args.steps, args.guidance)])
    except ValueError as e:
        p.error(str(e))
    args.seed = seeds[0]  # what --write-card's sample sheet is drawn with
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
        # every model is measured in its own palette, as the app would draw it
        palette = None if args.no_palette else load_palette(args.model)
        refiner, name = None, args.model
        if args.refiner is not None:
            refiner = load_refiner(args.refiner, model, schedule, args.refiner_t_max, t_max_name="--refiner-t-max")
            name = f"{args.model} + refiner {args.refiner} (t <= {refiner.t_max})"
        models = [(name, model, schedule, palette, refiner)]
        for folder in args.compare:
            other = load_model(folder)
            if other.class_names != model.class_names or other.height != model.height:
                raise DataError(f"{folder}: its classes or size differ from {args.model}'s")
            models.append((folder, other, load_schedule(folder), None if args.no_palette else load_palette(folder),
                           None))
        spaces = feature_spaces(data)
        start = time.time()
        reference = Reference(data, spaces, args.n)
        results = []
        for name, m, s, own_palette, own_refiner in models:
            for setting in settings:
                results.append(measure(m, s, reference, setting, args.n, seeds, own_palette, args.precision,
                                       model_name=name, refiner=own_refiner))
                print(f"measured {name} {setting.label} guidance {setting.guidance:g} on seeds "
                      f"{','.join(map(str, seeds))} ({sum(results[-1].seconds):.0f} s)", file=sys.stderr, flush=True)
    except (CheckpointError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    accuracies = ", ".join(f"{s.name} ({type(s.classifier).__name__}) {s.heldout_accuracy:.1%}" for s in spaces)
    first = settings[0]
    summary = (f"{args.n} samples per class, seeds {','.join(map(str, seeds))}, {args.precision}, "
               f"{'snapped to the palette' if palette is not None else 'raw colours'}")
    print(f"{summary} ({time.time() - start:.0f} s); classifier held-out accuracy: {accuracies}\n")
    table = report(results, reference)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results_json(results, reference), indent=1))
        print(f"\nwrote {args.json}")
    if args.write_card:
        command = reproducing_command(argv if argv is not None else sys.argv[1:])
        before = models[1][:4] if args.compare else None  # the card shows its sprites against the first compared model
        written = write_card(Path(args.model), model, schedule, palette, first, args.seed, args.precision,
                             f"{summary}; classifier held-out accuracy {accuracies}. Measured with `{command}`."
                             f"\n\n{table}", before)
        print(f"\nwrote {', '.join(str(f) for f in written)}")
    return 0


def reproducing_command(argv: list[str]) -> str:
    """The command a card gives for measuring its figures again: these arguments less --json, whose path
    names a file on the machine that measured them and changes nothing in the figures."""
    kept, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--json":
            skip_next = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    return "python -m ddpm.evaluate " + shlex.join(kept)


CARD_SPRITES_PER_CLASS = 8


def card_rows(model, schedule, palette, setting: Setting, seed: int, precision: str) -> np.ndarray:
    """The card's sprites, CARD_SPRITES_PER_CLASS per class drawn with this setting: (classes, n, H, W, 3)."""
    k, n = model.n_classes, CARD_SPRITES_PER_CLASS
    context = torch.eye(k).repeat_interleave(n, 0)
    sprites = to_uint8(sample(model, schedule, context, sampler=setting.sampler, steps=setting.steps,
                              guidance=setting.guidance, seed=seed, precision=precision, **setting.options))
    if palette is not None:
        sprites = snap_to_palette(sprites, palette)
    return sprites.reshape(k, n, *sprites.shape[1:])


def before_after_rows(before: np.ndarray, after: np.ndarray) -> list[np.ndarray]:
    """Each class's row of `before` sprites, a blank sprite, then its row of `after` sprites."""
    blank = np.full_like(before[0, :1], 255)
    return [np.concatenate([b, blank, a]) for b, a in zip(before, after)]


def write_card(folder: Path, model, schedule, palette, setting: Setting, seed: int, precision: str,
               evaluation: str, before: tuple[str, torch.nn.Module, object, np.ndarray | None] | None = None) -> list[Path]:
    """Rewrite folder/README.md with the evaluation, and folder/samples.png (one row per class).

    With `before` (name, model, schedule, palette of another model, e.g. the one this one would replace),
    also write folder/before_after.png: per class, that model's sprites on the left and this one's on the
    right, drawn with the same setting and seed (the same starting noise), and show it in the card; without,
    remove a before_after.png an earlier card showed. Returns the files written.
    """
    from .card import model_card
    from .images import sprite_sheet

    rows = card_rows(model, schedule, palette, setting, seed, precision)
    written = [folder / "README.md", folder / "samples.png"]
    sprite_sheet(list(rows), scale=4, pad=2).save(written[1])
    compared = None
    if before is not None:
        name, other, other_schedule, other_palette = before
        sheet = before_after_rows(card_rows(other, other_schedule, other_palette, setting, seed, precision), rows)
        written.append(folder / "before_after.png")
        sprite_sheet(sheet, scale=4, pad=2).save(written[-1])
        compared = name
    else:  # a sheet against a model the card no longer names would mislead, on the Hub too
        (folder / "before_after.png").unlink(missing_ok=True)
    n_params = sum(p.numel() for p in model.parameters())
    card = model_card(model.config_dict, n_params, model.training_info, evaluation, schedule.prediction,
                      before=compared, setting=f"`--settings {setting.label}`, seed {seed}, {precision}")
    card.save(written[0])
    return written


if __name__ == "__main__":
    sys.exit(main())
