"""The diffusion loss: how well the network predicts the noise in x_t (Ho et al. 2020, eq. 14).

For a clean sprite x0, a time t and noise eps, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and the
network, given x_t, t / T and the class context, predicts eps; the loss is the mean squared error of
that prediction. A network that predicts v instead (the schedule's prediction "v_prediction") is
judged by the noise its v implies, and its loss weighs that error as the MSE of v does
(NoiseSchedule.prediction_loss_weights). The trainer minimises it over random batches
(training_batch); ddpm.evaluate reports the same error per range of t. Three recipe options change
what training averages, all off by default, as in the course: min-SNR weights (min_snr_weights), a
share of low times (training_batch's low_t_share) and rarer classes drawn more often
(class_balanced_weights).
A student distilled for guidance learns instead from a teacher's guided prediction
(guidance_distillation_error), and a network with a palette head from the cross-entropy of each
pixel's true colour (palette_cross_entropy).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from .images import nearest_colour
from .schedule import NoiseSchedule

LOW_T_MAX = 150  # the highest time a low_t_share draws, unless low_t_max says otherwise


def noised_input(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                 channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """What every loss feeds the network: x_t = add_noise(x0, noise, t) (in channels-last memory format
    when asked: faster convolutions on the CPU) and the time t/T on x_t's device."""
    x_t = schedule.add_noise(x0, noise, t)
    if channels_last:
        x_t = x_t.contiguous(memory_format=torch.channels_last)
    return x_t, (t.float() / schedule.T).to(x_t.device)


def noise_error(model: torch.nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor,
                t: torch.Tensor, context: torch.Tensor, channels_last: bool = False,
                autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """The squared error of the predicted noise, one mean per sprite (B,), in fp32.

    x0 (B, C, H, W) in [-1, 1], noise like x0, t (B,) integer times in 1..T, context (B, n_classes).
    `autocast` is the context the network runs in (mixed precision); channels_last: see noised_input.
    """
    x_t, time = noised_input(schedule, x0, noise, t, channels_last)
    with autocast():
        output = model(x_t, time, context)
    error = schedule.noise_per_output(t, x_t) * (output.float() - schedule.target(x0, noise, t))
    return error.pow(2).mean((1, 2, 3))


def palette_cross_entropy(model: torch.nn.Module, schedule: NoiseSchedule, colours: torch.Tensor, x0: torch.Tensor,
                          noise: torch.Tensor, t: torch.Tensor, context: torch.Tensor, channels_last: bool = False,
                          autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """The cross-entropy of each pixel's colour in x0 under a palette head's logits, one mean per
    sprite (B,), in fp32; colours (K, C) are the head's (ContextUnet.palette_colours), the other
    arguments as for noise_error.

    Each pixel's true colour is the palette colour nearest to it (the sprites are drawn in it). The
    softmax that minimises it is the posterior of each pixel's colour given x_t, whose expectation
    is the best x0 in squared error, so no weighting over t is needed to make forward's x0 right
    (Dieleman et al. 2022 train categorical data the same way).
    """
    x_t, time = noised_input(schedule, x0, noise, t, channels_last)
    with autocast():
        logits = model(x_t, time, context, logits=True)
    return F.cross_entropy(logits.float(), nearest_colour(x0.permute(0, 2, 3, 1), colours).to(x0.device), reduction="none").mean((1, 2))


def guidance_distillation_error(student: torch.nn.Module, teacher: torch.nn.Module, schedule: NoiseSchedule,
                                x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                                guidance: torch.Tensor, channels_last: bool = False,
                                autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """The squared error of the student's one-pass prediction at guidance w against the teacher's
    classifier-free guided noise at w, one mean per sprite (B,), in fp32.

    Stage one of Meng et al. 2023 ("On Distillation of Guided Diffusion Models", eq. 4): x_t from
    training sprites as in noise_error, w (B,) one guidance scale per sprite; the teacher (in eval
    mode, not trained) computes eps_c + w (eps_c - eps_0) with its two passes.
    """
    x_t, time = noised_input(schedule, x0, noise, t, channels_last)
    with autocast():
        with torch.no_grad():
            target = teacher.forward_guided(x_t, time, context, guidance)
        predicted = student(x_t, time, context, guidance)
    # in noise terms, so that diffusion_loss weighs the error as for noise_error
    error = schedule.noise_per_output(t, x_t) * (predicted.float() - target.float())
    return error.pow(2).mean((1, 2, 3))


def min_snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for noise prediction (Hang et al. 2023): min(SNR, gamma) / SNR.

    The plain noise MSE weights the low-noise steps as heavily as the rest; the idea of capping
    their weight is to leave more of the network's capacity to the steps that decide shapes (on
    the shipped model it did not help: README, "Where the speckle comes from"). gamma = 0 keeps
    the uniform weights of the course.
    """
    if gamma <= 0:
        return torch.ones_like(snr)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(per_sprite: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
                   min_snr: float = 0.0) -> torch.Tensor:
    """The batch's loss: noise_error per sprite, weighted at its t by min_snr_weights, or when min_snr
    is 0 by the schedule's prediction_loss_weights (uniform for noise prediction), averaged.

    Min-SNR's weights on the noise MSE are the same whichever the network predicts: Hang et al.
    weigh the MSE of v by min(SNR, gamma) / (SNR + 1), which is min(SNR, gamma) / SNR on the noise's.
    """
    weights = min_snr_weights(schedule.snr(), min_snr) if min_snr > 0 else schedule.prediction_loss_weights()
    return (per_sprite * weights[t].to(per_sprite)).mean()


def class_balanced_weights(labels: torch.Tensor, n_classes: int, power: float) -> torch.Tensor | None:
    """Each sprite's weight for being drawn into a batch: its class's count ** -power.

    power 0 draws every sprite alike (None: training_batch then draws as the course does), so each
    class as often as it is common; 1 draws every class alike; 0.5, in between, draws each class in
    proportion to the square root of its count ("square-root sampling", Mahajan et al. 2018). The
    small classes are seen more often, and each of their sprites more often too.
    """
    if power == 0:
        return None
    counts = torch.bincount(labels.cpu(), minlength=n_classes).double()
    return counts.pow(-power)[labels.cpu()]


def training_batch(images: torch.Tensor, labels: torch.Tensor, n_classes: int, batch_size: int, T: int,
                   p_uncond: float, generator: torch.Generator, low_t_share: float = 0.0,
                   low_t_max: int = LOW_T_MAX, sprite_weights: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, t, noise, context): random sprites with random horizontal flips, times t, noise, and
    one-hot contexts zeroed with probability p_uncond (for classifier-free guidance), all drawn from
    one generator. t and the noise stay on the CPU generator's side: t on the CPU, the rest on the
    images' device.

    t ~ U{1..T} as in the course; with low_t_share > 0, that share of the batch draws t ~ U{1..low_t_max}
    instead (--low-t-share of ddpm.train). Sprites are drawn uniformly, or with replacement in
    proportion to sprite_weights (one per image, as from class_balanced_weights).
    """
    n = images.shape[0]
    g = generator
    if sprite_weights is None:
        idx = torch.randint(n, (batch_size,), generator=g)
    else:
        idx = torch.multinomial(sprite_weights, batch_size, replacement=True, generator=g)
    flip = torch.rand(batch_size, generator=g) < 0.5
    t = torch.randint(1, T + 1, (batch_size,), generator=g)
    if low_t_share > 0:  # drawn only then, so that the course's recipe gives the same batches as before
        low = torch.rand(batch_size, generator=g) < low_t_share
        t = torch.where(low, torch.randint(1, min(low_t_max, T) + 1, (batch_size,), generator=g), t)
    noise = torch.randn((batch_size, *images.shape[1:]), generator=g)
    keep = (torch.rand(batch_size, generator=g) >= p_uncond).float()
    x0 = images[idx.to(images.device)]
    x0 = torch.where(flip.to(images.device).view(-1, 1, 1, 1), x0.flip(-1), x0)
    context = F.one_hot(labels[idx.to(labels.device)], n_classes).float() * keep.to(images.device)[:, None]
    return x0, t, noise.to(images.device), context
