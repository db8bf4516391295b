"""Samplers for the reverse process, each a small step() over the model's noise prediction.

A sampler turns (x_t, predicted noise) at time t into x at an earlier time t_prev. The
generator `sample_steps` drives any sampler one step at a time and yields, for every step,
t, x_t, the predicted x0 and the predicted noise, which is what the app's stepper streams.

Classifier-free guidance (scale w): eps = eps_cond + w (eps_cond - eps_uncond), so w = 0 is the
plain conditional model with a single network pass. The unconditional model is the same
network with an all-zero context, learned by context dropout during training.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .device import check_precision, precision_autocast
from .limits import check_batch, check_guidance, check_number, check_seed, check_steps
from .model import ContextUnet, inference_model
from .schedule import NoiseSchedule

SAMPLER_ALIASES = {"ddpm": "ddpm", "ddpm-beta": "ddpm-beta", "ddim": "ddim", "dpm++": "dpm++", "dpmpp": "dpm++",
                   "dpm-solver++": "dpm++", "dpm++sde": "dpm++sde", "dpmpp-sde": "dpm++sde",
                   "sde-dpm-solver++": "dpm++sde", "sde-dpmsolver++": "dpm++sde"}
# Chosen with ddpm.evaluate at 100 samples per class on two seeds in two feature spaces
# (docs/experiments.md, docs/benchmarks.md): ancestral DDPM with 50 trailing steps and the posterior
# variance. Fewer steps, other spacings, guidance on an interval of t and the SDE and deterministic
# solvers were all measured worse than it in at least one feature space by more than the spread
# between seeds. Guidance 1.5 for the shipped n_feat 128 model: at 2 its sprites vary less than the
# real ones (higher FD).
DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULT_GUIDANCE = "ddpm", 50, 1.5


# How the steps are spread over t. "trailing" is even in t. The others put more steps at low t, where
# the pixels' colours are decided: "quadratic" in t (Song et al. 2021's "quad" DDIM spacing), "karras"
# even in sigma^(1/7) with sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, eq. 5, rho = 7) and
# "logsnr" even in log sigma, i.e. in log-SNR (Lu et al. 2022). The last two follow diffusers'
# use_karras_sigmas / use_lu_lambdas: `steps` grid points from t_start down to t = 1, then 0.
SPACINGS = ("trailing", "quadratic", "karras", "logsnr")
DEFAULT_SPACING = "trailing"
KARRAS_RHO = 7.0


def make_timesteps(t_start: int, steps: int, spacing: str = DEFAULT_SPACING,
                   schedule: NoiseSchedule | None = None) -> list[int]:
    """steps + 1 strictly decreasing integer times from t_start down to 0, spread as `spacing` says.

    "trailing" spacing is even in t and starts at t_start itself (rather than diffusers' default
    "leading" spacing, which starts below T), so the first step sees the noise level it was trained
    on. "karras" and "logsnr" need the schedule (they are even in a function of abar); where two
    grid points round to the same integer t, the lower ones move down (or up) one step at a time.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    steps = check_steps(steps, t_start)
    if spacing == "trailing":
        return torch.linspace(t_start, 0, steps + 1, dtype=torch.float64).round().long().tolist()
    if spacing == "quadratic":
        grid = t_start * np.linspace(1, 0, steps + 1) ** 2
    else:
        if schedule is None:
            raise ValueError(f"spacing {spacing!r} needs the noise schedule")
        if not 1 <= t_start <= schedule.T:
            raise ValueError(f"the start time must lie in 1..{schedule.T}, got {t_start}")
        grid = np.append(_sigma_spaced_times(schedule, t_start, steps, spacing), 0.0)
    return _strictly_decreasing(np.round(grid).astype(np.int64).tolist(), t_start)


def _sigma_spaced_times(schedule: NoiseSchedule, t_start: int, n: int, spacing: str) -> np.ndarray:
    """n times from t_start to 1, even in sigma^(1/rho) ("karras") or log sigma ("logsnr").

    Each sigma is mapped back to t by linear interpolation of log sigma between neighbouring integer
    times, as diffusers' _sigma_to_t does (there on its index t - 1).
    """
    abar = schedule.alpha_bars[1:].numpy()
    log_sigmas = 0.5 * np.log((1 - abar) / abar)  # increasing in t = 1..T
    lo, hi = log_sigmas[0], log_sigmas[t_start - 1]
    ramp = np.linspace(0, 1, n)
    if spacing == "karras":
        inv_max, inv_min = np.exp(hi / KARRAS_RHO), np.exp(lo / KARRAS_RHO)
        target = KARRAS_RHO * np.log(inv_max + ramp * (inv_min - inv_max))
    else:
        target = hi + ramp * (lo - hi)
    index = np.interp(target, log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))
    return np.round(index) + 1


def _strictly_decreasing(ts: list[int], t_start: int) -> list[int]:
    """ts (t_start first, 0 last, non-increasing) with ties broken: every time differs from the next."""
    ts = list(ts)
    ts[0], ts[-1] = t_start, 0
    for i in range(len(ts) - 2, 0, -1):  # from the bottom: each at least one above the one below
        ts[i] = max(ts[i], ts[i + 1] + 1)
    for i in range(1, len(ts) - 1):  # from the top: each at least one below the one above
        ts[i] = min(ts[i], ts[i - 1] - 1)
    return ts


class Sampler:
    """Base class: holds the schedule; subclasses implement step()."""

    name = "base"

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def reset(self) -> None:
        """Forget any state kept between steps (multistep solvers)."""

    def _abar(self, t: int, like: torch.Tensor) -> torch.Tensor:
        return self.schedule.alpha_bar(t, like)

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x_t: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x_{t_prev}, predicted x0)."""
        raise NotImplementedError


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU so a seed gives the same numbers on every device.
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)


def posterior_mean_coefficients(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficients of x0 and x_t in the mean of q(x_prev | x_t, x0), Ho et al. 2020 eq. (7).

    With alpha = abar_t / abar_prev and beta = 1 - alpha the alpha and beta of the (possibly strided)
    step: mu = sqrt(abar_prev) beta / (1 - abar_t) x0 + sqrt(alpha) (1 - abar_prev) / (1 - abar_t) x_t.
    """
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    return abar_prev.sqrt() * beta / (1 - abar_t), alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)


def posterior_variance(abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """beta tilde = (1 - abar_prev) / (1 - abar_t) beta, the variance of q(x_prev | x_t, x0), eq. (7)."""
    return (1 - abar_t / abar_prev) * (1 - abar_prev) / (1 - abar_t)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2), for any stride between t and t_prev.

    x_prev = mu(x0, x_t) + sigma z with x0 predicted from eps (eq. 15 solved for x0). variance
    "posterior" (sampler "ddpm") takes sigma^2 = beta tilde, the variance of q(x_prev | x_t, x0)
    (diffusers' "fixed_small"); "beta" (sampler "ddpm-beta") is the course's sigma^2 = beta
    ("fixed_large"). The two agree except near t = 0 when every step is taken, but with strided
    steps beta is several times larger at small t, and the last steps cannot remove the extra
    noise: it shows as speckle, which ddpm.evaluate measures as the share of isolated pixels.
    """

    def __init__(self, schedule: NoiseSchedule, variance: str = "posterior"):
        super().__init__(schedule)
        if variance not in ("beta", "posterior"):
            raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")
        self.variance = variance

    @property
    def name(self) -> str:
        return "ddpm" if self.variance == "posterior" else "ddpm-beta"

    def step_variance(self, t: int, abar_t: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
        """sigma^2 of the step from t (abar_t) to t_prev (abar_prev)."""
        return 1 - abar_t / abar_prev if self.variance == "beta" else posterior_variance(abar_t, abar_prev)

    def step(self, eps, t, t_prev, x_t, generator=None):
        abar_t, abar_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        x0 = self.schedule.predict_x0(x_t, eps, t)
        coef_x0, coef_xt = posterior_mean_coefficients(abar_t, abar_prev)
        mean = coef_x0 * x0 + coef_xt * x_t
        if t_prev == 0:
            return mean, x0
        return mean + self.step_variance(t, abar_t, abar_prev).sqrt() * _noise_like(x_t, generator), x0


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021); eta = 0 is deterministic, eta = 1 matches DDPM's posterior variance."""

    name = "ddim"

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0):
        super().__init__(schedule)
        if not (math.isfinite(eta) and 0 <= eta <= 1):
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = eta

    def step(self, eps, t, t_prev, x_t, generator=None):
        abar_t, abar_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        x0 = self.schedule.predict_x0(x_t, eps, t)
        # Song et al. 2021 eq. (16): sigma = eta sqrt(beta tilde); eq. (12) for x_prev.
        sigma = self.eta * posterior_variance(abar_t, abar_prev).sqrt()
        x_prev = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if self.eta > 0 and t_prev > 0:
            x_prev = x_prev + sigma * _noise_like(x_t, generator)
        return x_prev, x0


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, as in diffusers.

    In the paper's notation a step goes from t_{i-1} to t_i with lambda = log(alpha / sigma):
    h_i = lambda_{t_i} - lambda_{t_{i-1}}, r_i = h_{i-1} / h_i,
    D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2},
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i.
    Here t_{i-1} is `t` and t_i is `t_prev`. The first step has no earlier x0 and is first order
    (D = x0); the final step to t = 0 returns the predicted x0.
    """

    name = "dpm++"

    def __init__(self, schedule: NoiseSchedule):
        super().__init__(schedule)
        self.reset()

    def reset(self) -> None:
        self._last_x0: torch.Tensor | None = None  # x0_{i-2}: the x0 predicted one step earlier
        self._last_lambda: torch.Tensor | None = None  # lambda at that step's t

    def _alpha_sigma_lambda(self, t: int, like: torch.Tensor):
        abar = self._abar(t, like)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def step(self, eps, t, t_prev, x_t, generator=None):
        x0 = self.schedule.predict_x0(x_t, eps, t)
        _, sigma_t, lambda_t = self._alpha_sigma_lambda(t, x_t)
        if t_prev == 0:
            self.reset()
            return x0, x0
        alpha_prev, sigma_prev, lambda_prev = self._alpha_sigma_lambda(t_prev, x_t)
        h = lambda_prev - lambda_t
        if self._last_x0 is None:
            d = x0
        else:
            r = (lambda_t - self._last_lambda) / h
            d = x0 + 0.5 / r * (x0 - self._last_x0)
        x_prev = self._update(x_t, d, h, sigma_t, alpha_prev, sigma_prev, generator)
        self._last_x0, self._last_lambda = x0, lambda_t
        return x_prev, x0

    def _update(self, x_t, d, h, sigma_t, alpha_prev, sigma_prev, generator):
        return (sigma_prev / sigma_t) * x_t - alpha_prev * torch.expm1(-h) * d


class DPMSolverPP2MSDE(DPMSolverPP2M):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, section 5 and appendix; diffusers' "sde-dpmsolver++",
    midpoint): the same data-prediction multistep D_i, integrated along the reverse SDE instead of
    the ODE, so every step but the last adds fresh noise, like ancestral DDPM:
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-h_i} x_{t_{i-1}} + alpha_{t_i} (1 - e^{-2 h_i}) D_i
              + sigma_{t_i} sqrt(1 - e^{-2 h_i}) z.
    Its first-order step (the first, which has no earlier x0) is exactly ancestral DDPM's step with the
    posterior variance.
    """

    name = "dpm++sde"

    def _update(self, x_t, d, h, sigma_t, alpha_prev, sigma_prev, generator):
        kept = -torch.expm1(-2 * h)  # 1 - e^{-2h}, accurate for small h
        return ((sigma_prev / sigma_t) * torch.exp(-h) * x_t + alpha_prev * kept * d
                + sigma_prev * kept.sqrt() * _noise_like(x_t, generator))


SAMPLER_FACTORIES = {"ddpm": functools.partial(DDPMSampler, variance="posterior"),
                     "ddpm-beta": functools.partial(DDPMSampler, variance="beta"),
                     "ddim": DDIMSampler, "dpm++": DPMSolverPP2M, "dpm++sde": DPMSolverPP2MSDE}


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs) -> Sampler:
    key = SAMPLER_ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_FACTORIES)}")
    return SAMPLER_FACTORIES[key](schedule, **kwargs)


def predict_noise(model: torch.nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t: int,
                  context: torch.Tensor, guidance: float = 0.0) -> torch.Tensor:
    """The noise in x_t at integer time t that the network predicts (or implies, when it predicts v:
    NoiseSchedule.eps_from_output), with classifier-free guidance scale `guidance`.

    Guidance mixes the network's two outputs with weights that sum to one, (1 + w) and -w, and the
    conversion to noise is affine in the output, so guiding v gives the same noise as guiding eps.
    """
    b = x_t.shape[0]
    t_in = torch.full((b,), t / schedule.T, device=x_t.device)
    if guidance == 0:
        output = model(x_t, t_in, context).float()
    elif isinstance(model, ContextUnet) and not model.training:
        # The same numbers, with the context-free encoder run once for both passes (~25% less work).
        output = model.forward_guided(x_t, t_in, context, guidance)
    else:
        # One batched pass for the conditional and the unconditional (all-zero context) predictions.
        both = model(torch.cat([x_t, x_t]), torch.cat([t_in, t_in]),
                     torch.cat([context, torch.zeros_like(context)])).float()
        cond, uncond = both[:b], both[b:]
        output = cond + guidance * (cond - uncond)
    return schedule.eps_from_output(x_t, output, t)


@dataclass
class Step:
    """One reverse step: x_t at time t went to x_prev at t_prev; x0 and eps are the predictions."""

    index: int
    steps: int
    t: int
    t_prev: int
    x_t: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    x_prev: torch.Tensor


def check_guidance_interval(interval: Sequence[float] | None, T: int) -> tuple[int, int] | None:
    """(t_lo, t_hi) as integers with 0 <= t_lo <= t_hi <= T, or None (guidance at every step)."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"the guidance interval must be two times (t_lo, t_hi), got {interval!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo == int(lo) and hi == int(hi) and 0 <= lo <= hi <= T):
        raise ValueError(f"the guidance interval must be two integer times with 0 <= t_lo <= t_hi <= {T}, "
                         f"got {interval!r}")
    return int(lo), int(hi)


def guidance_at(t: int, guidance: float, interval: tuple[int, int] | None) -> float:
    """The guidance scale for the step at time t: `guidance` inside the interval (t_lo <= t <= t_hi), else 0.

    Kynkaanniemi et al. 2024 ("Applying guidance in a limited interval improves sample and
    distribution quality") found guidance harmful at high noise, where it narrows the variety of
    the samples, and of little use at low noise; outside the interval a step costs one conditional
    pass instead of two.
    """
    if interval is None or interval[0] <= t <= interval[1]:
        return guidance
    return 0.0


# The refiner's steps by default: the low-noise ones, where each pixel's colour is decided.
DEFAULT_REFINER_T_MAX = 150


@dataclass(frozen=True)
class Refiner:
    """A second model that takes over the low-noise steps (t <= t_max) from the model that starts the
    sampling, as SDXL's refiner takes the last steps from its base model (Podell et al. 2023) and as
    eDiff-I gives each range of noise its own denoiser (Balaji et al. 2022). Each model predicts in its
    own terms (noise, v or x0: its schedule's prediction); both schedules must give the same noise
    levels, so the sampler's steps are the same whichever model predicted them."""

    model: torch.nn.Module
    schedule: NoiseSchedule
    t_max: int


def check_refiner(refiner: Refiner, model: torch.nn.Module, schedule: NoiseSchedule) -> Refiner:
    """The refiner, if it can take over from `model`: the same noise levels, classes and sprite size,
    and 1 <= t_max <= T; else ValueError saying what differs."""
    r_schedule = refiner.schedule
    if r_schedule.T != schedule.T or not torch.allclose(r_schedule.alpha_bars, schedule.alpha_bars,
                                                         rtol=1e-6, atol=0):
        raise ValueError("the refiner's noise schedule differs from the model's (T, schedule or betas): "
                         "it would denoise other noise levels than the sampler steps through")
    for attr in ("class_names", "height", "in_channels"):
        if getattr(refiner.model, attr, None) != getattr(model, attr, None):
            raise ValueError(f"the refiner's {attr} ({getattr(refiner.model, attr, None)!r}) differs from "
                             f"the model's ({getattr(model, attr, None)!r})")
    t_max = check_number(refiner.t_max, "the refiner's t_max", 1, schedule.T, integer=True)
    return Refiner(refiner.model, r_schedule, t_max)


def predictor_at(t: int, model: torch.nn.Module, schedule: NoiseSchedule,
                 refiner: Refiner | None = None) -> tuple[torch.nn.Module, NoiseSchedule]:
    """The model that predicts at time t, with its schedule: the refiner's at t <= refiner.t_max."""
    if refiner is not None and t <= refiner.t_max:
        return refiner.model, refiner.schedule
    return model, schedule


def initial_noise(shape: Sequence[int], seed: int | None) -> tuple[torch.Tensor, torch.Generator]:
    """x_T ~ N(0, I) from a CPU generator seeded with `seed` (a random seed when None)."""
    g = torch.Generator("cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=g), g


@torch.inference_mode()
def sample_steps(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    context: torch.Tensor,
    sampler: str | Sampler = DEFAULT_SAMPLER,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int | None = 0,
    x_start: torch.Tensor | None = None,
    t_start: int | None = None,
    precision: str = "fp32",
    noise: torch.Tensor | None = None,
    spacing: str = DEFAULT_SPACING,
    guidance_interval: Sequence[int] | None = None,
    refiner: Refiner | None = None,
) -> Iterator[Step]:
    """Run the reverse process one step at a time, yielding a Step for each.

    context: (B, n_classes) class weights, one row per sprite. Starts from pure noise at T, or,
    for SDEdit, from `x_start` (clean images in [-1, 1]) noised to `t_start`. precision "bf16" runs
    the network under bf16 autocast; every Step's tensors are fp32 either way. `noise` (B, C, H, W)
    replaces the x_T drawn from `seed` (a morph starts from interpolated noise); the generator of the
    later steps' noise is the seed's either way, so noise=initial_noise(shape, seed)[0] changes nothing.
    spacing: how the steps are spread over t (see make_timesteps). guidance_interval (t_lo, t_hi):
    guide only the steps whose t lies in it, the others run the conditional pass alone (None: guide
    every step). refiner: a second model that predicts the steps with t <= refiner.t_max (Refiner).
    """
    if context.ndim != 2:
        raise ValueError(f"context must be (B, classes), one row per sprite, got {tuple(context.shape)}")
    check_batch(context.shape[0], "sprites (rows of the context)")
    guidance = check_guidance(guidance)
    seed = None if seed is None else check_seed(seed)
    check_precision(precision)
    sampler = make_sampler(sampler, schedule) if isinstance(sampler, str) else sampler
    sampler.reset()
    t_start = schedule.T if t_start is None else int(t_start)
    if not 1 <= t_start <= schedule.T:
        raise ValueError(f"the start time must lie in 1..{schedule.T}, got {t_start}")
    ts = make_timesteps(t_start, steps, spacing, schedule)
    interval = check_guidance_interval(guidance_interval, schedule.T)
    refiner = None if refiner is None else check_refiner(refiner, model, schedule)
    device = next(model.parameters()).device
    b, h = context.shape[0], model.height
    drawn, generator = initial_noise((b, model.in_channels, h, h), seed)
    if noise is None:
        noise = drawn
    elif tuple(noise.shape) != tuple(drawn.shape) or not torch.isfinite(noise).all():
        raise ValueError(f"noise must be finite, of shape {tuple(drawn.shape)}, got {tuple(noise.shape)}")
    noise = noise.float().cpu()
    if x_start is None:
        x = noise
    else:
        if x_start.ndim != 4 or x_start.shape[0] not in (1, b) or tuple(x_start.shape[1:]) != tuple(noise.shape[1:]):
            raise ValueError(f"x_start must be ({b} or 1, {model.in_channels}, {h}, {h}) images in [-1, 1], "
                             f"got {tuple(x_start.shape)}")
        x = schedule.add_noise(x_start.float().cpu(), noise, t_start)
    x, context = x.to(device), context.to(device, torch.float32)
    model.eval()
    if refiner is not None:
        if next(refiner.model.parameters()).device != device:
            raise ValueError(f"the refiner is on {next(refiner.model.parameters()).device}, the model on {device}")
        refiner.model.eval()
    # each network's inference copy, looked up once per run rather than once per step
    folded = {id(net): inference_model(net) for net in (model, refiner.model if refiner else model)}
    for i, (t, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        net, net_schedule = predictor_at(t, model, schedule, refiner)
        with precision_autocast(precision, device.type):
            eps = predict_noise(folded[id(net)], net_schedule, x, t, context, guidance_at(t, guidance, interval))
        x_prev, x0 = sampler.step(eps, t, t_prev, x, generator)
        yield Step(i, len(ts) - 1, t, t_prev, x, x0, eps, x_prev)
        x = x_prev


def sample(model: torch.nn.Module, schedule: NoiseSchedule, context: torch.Tensor, **kwargs) -> torch.Tensor:
    """Final images in [-1, 1] (B, C, H, W) on the CPU; kwargs as for sample_steps."""
    last = None
    for last in sample_steps(model, schedule, context, **kwargs):
        pass
    return last.x_prev.float().cpu()
