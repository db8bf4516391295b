"""ContextUnet: the course's class-conditional U-Net, with the course code's defects fixed.

Changes from the course's notebook, and why:
- the 1x1 shortcut conv of a residual block whose channel count changes is built in
  __init__ (the course built a fresh random one inside every forward call, so it never trained);
- EmbedFC stores its input_dim (the course used it in forward without ever setting it);
- the depth follows the image height: one down level per halving down to a 4x4 bottleneck,
  so 16 px gives the course's two levels and 256 px six, and every shape lines up;
- norm ("batch" as in the course, or "group") and the time embedding ("scalar" t/T through
  EmbedFC as in the course, or "sinusoidal") are config options; the course's choice is the default.

A network with a low-noise expert (expert_t > 0) holds a second network of the same architecture that
predicts in its place at t/T <= expert_t, as eDiff-I's ensemble of expert denoisers (Balaji et al.
2022): the low-noise steps, where each pixel's colour is decided, get a whole network to themselves
at no extra cost per step.

A network distilled for guidance (distilled_guidance > 0, Meng et al. 2023, "On Distillation of
Guided Diffusion Models", stage one) also takes the guidance scale w and gives, in one pass, what
classifier-free guidance gives with two.

A network with a palette head (output_palette, the data's colours) predicts the clean sprite as a
distribution over those colours at each pixel, and gives its expectation as x0 (its schedule's
prediction is "sample"); it is trained with the cross-entropy of the true colours, as CDCD trains
categorical data (Dieleman et al. 2022, "Continuous diffusion for categorical data"). Pixel art
is drawn from a few colours: such a network's x0 lies inside their hull, and where it is sure of
a colour it gives that colour exactly.

The network knows nothing about the noise schedule: it takes x_t, the normalised time t/T in
[0, 1] and a context vector (one-hot class, a mix of classes, or zeros for unconditional).

Saving and loading follow huggingface_hub's PyTorchModelHubMixin (save_pretrained, push_to_hub,
from_pretrained) on the model folder format of ddpm.folder; a saved folder is complete (schedule,
palette, training history and card included), and loading is strict.
"""
from __future__ import annotations

import inspect
import math
import os
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn
from huggingface_hub import ModelCard, PyTorchModelHubMixin

from . import card as model_card
from .folder import (CONFIG, CheckpointError, read_card, read_config, read_palette, read_schedule,
                     read_training_info, read_weights, resolve, write_extras)
from .schedule import NoiseSchedule

NORMS = ("batch", "group")
TIME_EMBEDDINGS = ("scalar", "sinusoidal")
MIN_HEIGHT, BOTTLENECK = 16, 4
ATTENTION_SIZE = 8  # the widest feature map the attention option attends over (64 positions)
DEFAULT_N_FEAT = 64  # the course's width
EXPERT_T_TOLERANCE = 1e-6  # t/T reaches the network in float32: 100 / 500 must count as 0.2


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(8, channels), channels)


class ResidualConvBlock(nn.Module):
    """Two [conv3x3, norm, GELU]; with is_res the input is added back and the sum scaled by 1/1.414.

    dropout > 0 drops activations between the two convolutions while training, where Ho et al. (2020,
    appendix B) put it in their residual blocks against overfitting a small data set.
    """

    def __init__(self, in_channels: int, out_channels: int, is_res: bool = False, norm: str = "batch",
                 dropout: float = 0.0):
        super().__init__()
        self.is_res = is_res
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1), _norm(norm, out_channels), nn.GELU())
        # no parameters, so the state_dict keys are the same with or without it
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1), _norm(norm, out_channels), nn.GELU())
        # Built once here so it trains (the course created a random one inside forward()).
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        if not is_res:
            # Unused without is_res, but kept so state_dict keys stay as trained; frozen, because
            # DistributedDataParallel (accelerate launch) fails on parameters that get no gradient.
            self.shortcut.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.dropout(self.conv1(x)))
        if not self.is_res:
            return h
        # Dividing by 1.414 keeps the variance of the sum near that of one branch.
        return (self.shortcut(x) + h) / 1.414


class UnetDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.model = nn.Sequential(
            ResidualConvBlock(in_channels, out_channels, norm=norm, dropout=dropout),
            ResidualConvBlock(out_channels, out_channels, norm=norm, dropout=dropout),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 2, 2),
            ResidualConvBlock(out_channels, out_channels, norm=norm, dropout=dropout),
            ResidualConvBlock(out_channels, out_channels, norm=norm, dropout=dropout),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((x, skip), 1))


class EmbedFC(nn.Module):
    """Linear-GELU-Linear from input_dim features to emb_dim."""

    def __init__(self, input_dim: int, emb_dim: int):
        super().__init__()
        self.input_dim = input_dim  # the course read this attribute without ever setting it
        self.model = nn.Sequential(nn.Linear(input_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(-1, self.input_dim))


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, added back to its input.

    As in the DDPM U-Net (Ho et al. 2020, at 16x16 there): GroupNorm, one 1x1 conv to queries, keys
    and values, attention over all H*W positions, a 1x1 output conv. The output conv starts at zero,
    so a block added to a trained network leaves its function unchanged until training moves it.
    """

    HEAD_CHANNELS = 32

    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // self.HEAD_CHANNELS)
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 3, heads, H*W, C/heads): one sequence of H*W tokens per head
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        out = nn.functional.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class SinusoidalTime(nn.Module):
    """Transformer-style features of t/T, scaled to 0..1000 as in DDPM."""

    def __init__(self, dim: int = 32):
        super().__init__()
        freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.reshape(-1, 1) * 1000.0 * self.freqs
        return torch.cat((angles.sin(), angles.cos()), 1)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of model with every eval-mode BatchNorm folded into the conv before it.

    conv -> BatchNorm becomes one conv with scaled weights and a shifted bias (the BatchNorm is
    replaced by nn.Identity), which saves a pass over every activation. The copy computes the same
    as model.eval() up to float rounding; its state_dict differs (no BatchNorm entries), so it is
    for sampling only: the model passed in is left untouched, with its keys as trained.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return folded.requires_grad_(False)


_INFERENCE_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """What the samplers run (ddpm.sampling.sample_steps): for an eval-mode ContextUnet, a copy with BatchNorm folded into the
    convs (fold_batchnorm) and, on the CPU, channels-last weights; else model itself.

    The copy is cached per model and rebuilt when any of its weights changes (in place, as an EMA
    update or load_state_dict does, or replaced). It computes the same as the model up to float
    rounding; the model itself and its state_dict keys are left as they are.
    """
    if not isinstance(model, ContextUnet) or model.training:
        return model
    tensors = [*model.parameters(), *model.buffers()]
    try:
        key = tuple((v.data_ptr(), v._version) for v in tensors)
    except RuntimeError:  # inference tensors have no version counter: no safe cache key
        key = None
    cached = _INFERENCE_COPIES.get(model)
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    with torch.inference_mode(False), torch.no_grad():
        fast = fold_batchnorm(model)
        if tensors[0].device.type == "cpu":
            fast = fast.to(memory_format=torch.channels_last)
    if key is not None:
        _INFERENCE_COPIES[model] = (key, fast)
    return fast


def level_channels(n_feat: int, height: int) -> list[int]:
    """Channels after each down level: n_feat, 2 n_feat, then capped at 4 n_feat."""
    levels = int(math.log2(height // BOTTLENECK))
    return [n_feat * min(2 ** i, 4) for i in range(levels)]


class ContextUnet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=model_card.LIBRARY_NAME,
    tags=model_card.TAGS,
    license=model_card.LICENSE,
    pipeline_tag=model_card.PIPELINE_TAG,
):
    """Class-conditional U-Net predicting the noise in x_t (or v, or x0).

    forward(x, t, c): x (B, C, H, H) in [-1, 1]; t (B,) time as the fraction t/T; c (B, n_classes)
    context weights (one-hot, a mix, or zeros for the unconditional model). Returns (B, C, H, H): the
    noise, v, or with a palette head x0, as its schedule's prediction says.

    Besides the weights, a model carries what its folder records beside them: noise_schedule (the
    schedule it was trained with; saving needs it), palette, training_info and evaluation (the
    card's table). from_pretrained sets them; the trainer sets them before it exports.
    """

    noise_schedule: NoiseSchedule | None
    palette: np.ndarray | None
    training_info: dict | None
    evaluation: str | None

    def __init__(
        self,
        in_channels: int = 3,
        n_feat: int = DEFAULT_N_FEAT,
        n_classes: int = 5,
        height: int = 16,
        class_names: list[str] | None = None,
        norm: str = "batch",
        time_embedding: str = "scalar",
        dropout: float = 0.0,
        attention: bool = False,
        distilled_guidance: float = 0.0,
        expert_t: float = 0.0,
        output_palette: list[list[int]] | None = None,
    ):
        super().__init__()
        if height < MIN_HEIGHT or height & (height - 1):
            raise ValueError(f"height must be a power of two and at least {MIN_HEIGHT}, got {height}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if time_embedding not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {TIME_EMBEDDINGS}, got {time_embedding!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if not (math.isfinite(distilled_guidance) and distilled_guidance >= 0):
            raise ValueError(f"distilled_guidance must be 0 (none) or a positive guidance scale, "
                             f"got {distilled_guidance!r}")
        if not (math.isfinite(expert_t) and 0 <= expert_t < 1):
            raise ValueError(f"expert_t must be 0 (no low-noise expert) or a time t/T in (0, 1), got {expert_t!r}")
        if output_palette is not None:
            output_palette = [[int(v) for v in colour] for colour in output_palette]
            if len(output_palette) < 2 or any(len(colour) != in_channels or not all(0 <= v <= 255 for v in colour)
                                              for colour in output_palette):
                raise ValueError(f"output_palette must be two or more colours of {in_channels} values in 0..255")
        class_names = list(class_names) if class_names else [f"class_{i}" for i in range(n_classes)]
        if len(class_names) != n_classes:
            raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
        self.in_channels, self.n_feat, self.n_classes, self.height = in_channels, n_feat, n_classes, height
        self.class_names, self.norm, self.time_embedding = class_names, norm, time_embedding
        self.dropout, self.attention = float(dropout), bool(attention)
        self.distilled_guidance = float(distilled_guidance)
        self.expert_t = float(expert_t)
        self.output_palette = output_palette
        # not saved with the weights: config.json holds the colours
        self.register_buffer("palette_colours", None if output_palette is None else
                             torch.tensor(output_palette, dtype=torch.float32) / 127.5 - 1, persistent=False)
        self.noise_schedule, self.palette, self.training_info, self.evaluation = None, None, None, None

        channels = level_channels(n_feat, height)
        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True, norm=norm, dropout=dropout)
        self.downs = nn.ModuleList(UnetDown(c_in, c_out, norm, dropout)
                                   for c_in, c_out in zip([n_feat] + channels, channels))
        if self.attention:
            # after every down and up level whose maps are at most ATTENTION_SIZE wide, where attending
            # over all positions costs little (at 16 px: 8x8 and 4x4 down, 8x8 up)
            def attend(c: int, size: int) -> nn.Module:
                return SelfAttention(c) if size <= ATTENTION_SIZE else nn.Identity()
            self.down_attention = nn.ModuleList(attend(c, height >> (i + 1)) for i, c in enumerate(channels))
            self.up_attention = nn.ModuleList(attend(c, height >> i)
                                              for i, c in enumerate([n_feat] + channels[:-1]))
        self.to_vec = nn.Sequential(nn.AvgPool2d(BOTTLENECK), nn.GELU())
        top = channels[-1]
        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(top, top, BOTTLENECK, BOTTLENECK), nn.GroupNorm(8, top), nn.ReLU()
        )
        # Up level i takes the deeper activations (channels[i]) and the skip from down level i.
        self.ups = nn.ModuleList(UnetUp(2 * c, c_out, norm, dropout)
                                 for c, c_out in zip(channels, [n_feat] + channels[:-1]))

        if time_embedding == "sinusoidal":
            self.time_features = SinusoidalTime(32)
            t_dim = 32
        else:
            self.time_features = nn.Identity()
            t_dim = 1
        self.time_embeds = nn.ModuleList(EmbedFC(t_dim, c) for c in channels)
        self.context_embeds = nn.ModuleList(EmbedFC(n_classes, c) for c in channels)
        if self.distilled_guidance:
            # The guided context w * c adds to the scale the context gives the features and to the
            # shift the time gives them. Its embedding starts at zero, so a student grown from a
            # teacher begins as the teacher's conditional network; a zero context (unconditional)
            # gives the same input for every w, as guidance of it would.
            self.guidance_embeds = nn.ModuleList(EmbedFC(n_classes, 2 * c) for c in channels)
            for embed in self.guidance_embeds:
                nn.init.zeros_(embed.model[-1].weight)
                nn.init.zeros_(embed.model[-1].bias)
        self.out = nn.Sequential(
            nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1), nn.GroupNorm(8, n_feat), nn.ReLU(),
            nn.Conv2d(n_feat, in_channels if output_palette is None else len(output_palette), 3, 1, 1),
        )
        # Built last, so a model without an expert draws the same initial weights from the same seed.
        self.expert = (ContextUnet(**dict(self.config_dict, expert_t=0.0))
                       if self.expert_t else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                guidance: float | torch.Tensor = 0.0, logits: bool = False) -> torch.Tensor:
        """The noise in x, or v or x0 for a model trained to predict it (its NoiseSchedule.prediction).
        `guidance` (a scale, or one per sprite (B,)) is an input of a network with distilled_guidance
        only; forward_guided is what samplers call. `logits`: a palette head's logits of each pixel's
        colour (B, K, H, W) instead of their expected colour, what its cross-entropy loss trains."""
        if logits and self.palette_colours is None:
            raise ValueError("logits: this network has no palette head (output_palette)")
        return self._by_noise_level(ContextUnet._forward, x, t, c, guidance, logits)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                 guidance: float | torch.Tensor = 0.0, logits: bool = False) -> torch.Tensor:
        return self.decode(self.encode(x, t), c, guidance, logits)

    def _by_noise_level(self, method, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, *rest):
        """method(network, x, t, c, *rest) of this network, or of the low-noise expert for the sprites
        whose t/T is at most expert_t; each entry of rest is a scalar or a tensor with one row per sprite."""
        if self.expert is None:
            return method(self, x, t, c, *rest)
        low = t.reshape(-1) <= self.expert_t + EXPERT_T_TOLERANCE
        if bool(low.all()) or not bool(low.any()):  # a sampler's steps: every sprite at the same t
            return method(self.expert if bool(low.all()) else self, x, t, c, *rest)

        def rows(v, keep):
            return v[keep] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == x.shape[0] else v

        outs = [method(net, *(rows(v, keep) for v in (x, t, c, *rest)))
                for net, keep in ((self.expert, low), (self, ~low))]
        if isinstance(outs[0], tuple):  # conditional_and_unconditional's pair
            return tuple(self._merge(low, a, b) for a, b in zip(*outs))
        return self._merge(low, *outs)

    @staticmethod
    def _merge(low: torch.Tensor, from_expert: torch.Tensor, from_self: torch.Tensor) -> torch.Tensor:
        merged = from_self.new_empty((low.shape[0], *from_self.shape[1:]))
        merged[low], merged[~low] = from_expert.to(merged.dtype), from_self
        return merged

    def encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple:
        """The part of forward that never sees the context: the down path, up0 and the time features."""
        x = self.init_conv(x)
        skips = []
        h = x
        for i, down in enumerate(self.downs):
            h = down(h)
            if self.attention:
                h = self.down_attention[i](h)
            skips.append(h)
        h = self.up0(self.to_vec(h))
        t_feat = self.time_features(t.to(x.dtype).reshape(-1, 1))
        return x, skips, h, t_feat

    def decode(self, encoded: tuple, c: torch.Tensor, guidance: float | torch.Tensor = 0.0,
               logits: bool = False) -> torch.Tensor:
        """The context-dependent rest of forward, from what encode() returned; with a palette head, the
        logits of the colours (B, K, H, W) when `logits`, else their expected colour."""
        x, skips, h, t_feat = encoded
        c = c.to(x.dtype)
        if self.distilled_guidance:
            guided_c = c * torch.as_tensor(guidance, dtype=c.dtype, device=c.device).reshape(-1, 1)
        for i in reversed(range(len(self.ups))):
            channels = h.shape[1]
            c_emb = self.context_embeds[i](c).view(-1, channels, 1, 1)
            t_emb = self.time_embeds[i](t_feat).view(-1, channels, 1, 1)
            if self.distilled_guidance:
                scale, shift = self.guidance_embeds[i](guided_c).view(-1, 2 * channels, 1, 1).chunk(2, 1)
                c_emb, t_emb = c_emb + scale, t_emb + shift
            # As in the course: the context scales the features, the time shifts them.
            h = self.ups[i](c_emb * h + t_emb, skips[i])
            if self.attention:
                h = self.up_attention[i](h)
        out = self.out(torch.cat((h, x), 1))
        return out if self.palette_colours is None or logits else self.expected_colour(out)

    def expected_colour(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in fp32: each pixel's palette colours weighted by the softmax of its logits."""
        return torch.einsum("bkhw,kc->bchw", logits.float().softmax(1), self.palette_colours)

    def conditional_and_unconditional(self, x: torch.Tensor, t: torch.Tensor,
                                      c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predictions (forward) for context c and for the zero context, (eps_c, eps_0), in fp32.

        The context enters only on the up path, so the two passes share encode(); only decode()
        runs on the doubled batch. Equal to two forward() calls up to float rounding, at about 3/4
        of their cost for the course network (BatchNorm in eval mode treats every sample on its own).
        """
        return self._by_noise_level(ContextUnet._conditional_and_unconditional, x, t, c)

    def _conditional_and_unconditional(self, x: torch.Tensor, t: torch.Tensor,
                                       c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, skips, h, t_feat = self.encode(x, t)
        two = lambda v: torch.cat((v, v))  # noqa: E731
        eps = self.decode((two(x), [two(s) for s in skips], two(h), two(t_feat)),
                          torch.cat((c, torch.zeros_like(c)))).float()
        return eps[:x.shape[0]], eps[x.shape[0]:]

    def forward_guided(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor,
                       guidance: float | torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance, eps_c + guidance (eps_c - eps_0), in fp32, with the encoder run once
        (conditional_and_unconditional).

        `guidance` is a scale or one per sprite (B,). A network with distilled_guidance gives
        guidance up to that scale in one pass; beyond it, it guides itself as a teacher would, from
        its passes at guidance 0.
        """
        if self.distilled_guidance and bool((torch.as_tensor(guidance) <= self.distilled_guidance).all()):
            return self(x, t, c, guidance).float()
        eps_cond, eps_uncond = self.conditional_and_unconditional(x, t, c)
        scale = torch.as_tensor(guidance, dtype=eps_cond.dtype, device=eps_cond.device).reshape(-1, 1, 1, 1)
        return eps_cond + scale * (eps_cond - eps_uncond)

    @property
    def config_dict(self) -> dict:
        return dict(
            in_channels=self.in_channels, n_feat=self.n_feat, n_classes=self.n_classes, height=self.height,
            class_names=self.class_names, norm=self.norm, time_embedding=self.time_embedding,
            dropout=self.dropout, attention=self.attention, distilled_guidance=self.distilled_guidance,
            expert_t=self.expert_t, output_palette=self.output_palette,
        )

    # --- the Hub mixin, on the folder format of ddpm.folder ------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs) -> "ContextUnet":  # type: ignore[override]
        """A local model directory or a Hub repo id, loaded strictly, in eval mode.

        The mixin's own from_pretrained reads config.json before _from_pretrained runs, so a missing
        path, a bad JSON file or an uncached repo id escaped as raw huggingface_hub or json errors
        instead of a CheckpointError. map_location is honoured; other keyword arguments (such as
        strict=False) are ignored: loading is always strict.
        """
        folder = resolve(pretrained_model_name_or_path, local_files_only=local_files_only, revision=revision,
                         cache_dir=cache_dir, token=token, force_download=force_download)
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        config = read_config(folder, known)
        try:
            model = cls(**config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{folder / CONFIG}: invalid config ({e})") from None
        model.load_state_dict(read_weights(folder, model.state_dict()), strict=True)
        model.noise_schedule = read_schedule(folder)
        model.palette = read_palette(folder)
        model.training_info = read_training_info(folder)
        model.evaluation = model_card.evaluation_section(read_card(folder))
        model.source = str(pretrained_model_name_or_path)
        return model.to(model_kwargs.get("map_location", "cpu")).eval()

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir=None,
                         force_download: bool = False, local_files_only: bool = False, token=None,
                         **model_kwargs) -> "ContextUnet":  # type: ignore[override]
        return cls.from_pretrained(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                   local_files_only=local_files_only, token=token, **model_kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: dict | None = None,
                        **kwargs) -> str | None:  # type: ignore[override]
        """The complete model folder (see ddpm.folder); push_to_hub uploads the same. The card is
        always rewritten: an old one would describe other weights."""
        (Path(save_directory) / "README.md").unlink(missing_ok=True)
        return super().save_pretrained(save_directory, config=config or self.config_dict, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.noise_schedule is None:
            raise ValueError("the model has no noise_schedule: set it to the NoiseSchedule it was trained with "
                             "before saving (ddpm.checkpoint.save_model takes it as an argument)")
        super()._save_pretrained(save_directory)
        write_extras(Path(save_directory), self.noise_schedule, self.palette, self.training_info)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        n_params = sum(p.numel() for p in self.parameters())
        prediction = self.noise_schedule.prediction if self.noise_schedule is not None else "epsilon"
        return model_card.model_card(self.config_dict, n_params, self.training_info, self.evaluation, prediction)
