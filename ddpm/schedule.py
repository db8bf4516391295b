"""Noise schedules and the forward process.

Time runs over integer steps t = 0..T as in the course: t = 0 is the clean image
(alpha_bar[0] = 1) and t = T is (almost) pure noise. The network is fed t / T.

What the network predicts is part of the schedule, as in diffusers' scheduler config: the noise eps
("epsilon", as the course), the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 ("v_prediction",
Salimans & Ho 2022) or the clean image x0 itself ("sample"; a network with a palette head gives it as
its expected colour per pixel). Samplers work with eps in every case: eps_from_output converts.
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v_prediction", "sample")  # diffusers' names for them

# The course counts time t = 1..T (t = 0 is the clean image); diffusers' schedulers count timesteps
# 0..T-1 and treat "before timestep 0" as clean. Course time t is diffusers timestep t - 1: this
# shift is applied in one place, to_diffusers_timestep, and scheduler_config() relies on it.
DIFFUSERS_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
DIFFUSERS_BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def to_diffusers_timestep(t: int) -> int:
    """The diffusers timestep of course time t (1..T): t - 1."""
    return t - 1


class ScheduleConfigError(ValueError):
    """A scheduler config this project cannot read as one of its schedules."""


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """The course's schedule: T + 1 betas from beta_start to beta_end (beta[0] is never used)."""
    return torch.linspace(0, 1, T + 1, dtype=torch.float64) * (beta_end - beta_start) + beta_start


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi / 2)."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = torch.zeros(T + 1, dtype=torch.float64)
    betas[1:] = (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    return betas


class NoiseSchedule:
    """alpha_bar over t = 0..T and the formulas that use it.

    All tensors are float64 on the CPU; results are cast to the dtype and device of the input.
    """

    def __init__(self, T: int = 500, kind: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction: str = "epsilon"):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"T must be a positive integer, got {T!r}")
        self.T, self.kind = T, kind
        self.beta_start, self.beta_end = beta_start, beta_end
        self.prediction = prediction
        self.betas = linear_betas(T, beta_start, beta_end) if kind == "linear" else cosine_betas(T)
        self.alphas = 1 - self.betas
        # cumulative product in log space (as the course does) for accuracy; abar[0] = 1 by definition.
        # The product starts at t = 1: the course also multiplied in 1 - beta[0], so abar_t / abar_{t-1}
        # was not 1 - beta_t at t = 1 (x_1 had the noise of beta_0 + beta_1, not beta_1).
        log_alphas = torch.log(self.alphas)
        log_alphas[0] = 0.0
        self.alpha_bars = torch.cumsum(log_alphas, 0).exp()
        self.alpha_bars[0] = 1.0

    def config(self) -> dict:
        """The constructor's arguments (what training checkpoints record)."""
        return dict(T=self.T, kind=self.kind, beta_start=self.beta_start, beta_end=self.beta_end,
                    prediction=self.prediction)

    def scheduler_config(self) -> dict:
        """scheduler_config.json in diffusers' format, the same schedule to within float32 rounding.

        trained_betas[i] is the course's beta at t = i + 1 (to_diffusers_timestep), so diffusers'
        alphas_cumprod[i] is alpha_bar[i + 1]; beta_schedule, beta_start and beta_end say the same
        in diffusers' own terms. "trailing" spacing is how ddpm.sampling picks its steps (from T
        down), set_alpha_to_one that alpha_bar at t = 0 is 1, prediction_type what the network
        predicts, and x0 is not clipped.
        """
        first, last = to_diffusers_timestep(1) + 1, to_diffusers_timestep(self.T) + 1  # betas[1], betas[T]
        return {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": self.T,
            "beta_schedule": DIFFUSERS_BETA_SCHEDULES[self.kind],
            "beta_start": float(self.betas[first]),
            "beta_end": float(self.betas[last]),
            "trained_betas": [float(b) for b in self.betas[first:last + 1]],
            "variance_type": "fixed_small",
            "clip_sample": False,
            "thresholding": False,
            "prediction_type": self.prediction,
            "timestep_spacing": "trailing",
            "steps_offset": 0,
            "set_alpha_to_one": True,
        }

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        """A schedule from scheduler_config.json: diffusers' format, or this project's older
        {"T": ..., "kind": ...}. Keys it does not use are ignored; values that contradict each other,
        or describe a schedule this project does not have, raise ScheduleConfigError."""
        if not isinstance(config, dict):
            raise ScheduleConfigError("expected a JSON object")
        if "num_train_timesteps" not in config and "_class_name" not in config:
            args = {k: config[k] for k in ("T", "kind", "beta_start", "beta_end", "prediction") if k in config}
            try:
                return cls(**args)
            except (TypeError, ValueError) as e:
                raise ScheduleConfigError(str(e)) from None
        name = config.get("_class_name", "DDPMScheduler")
        if name not in DIFFUSERS_SCHEDULERS:
            raise ScheduleConfigError(f"_class_name {name!r}: expected one of {DIFFUSERS_SCHEDULERS}")
        T = config.get("num_train_timesteps", 1000)  # diffusers' default
        if not (isinstance(T, int) and not isinstance(T, bool) and T >= 1):
            raise ScheduleConfigError(f"num_train_timesteps must be a positive integer, got {T!r}")
        if "T" in config and config["T"] != T:
            raise ScheduleConfigError(f"T {config['T']!r} contradicts num_train_timesteps {T}")
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTIONS:
            raise ScheduleConfigError(f"prediction_type {prediction!r}: expected one of {PREDICTIONS}")
        for flag in ("clip_sample", "thresholding"):
            if config.get(flag):
                raise ScheduleConfigError(f"{flag} true: this project samples without clipping x0")
        beta_schedule = config.get("beta_schedule", "linear")
        kinds = {v: k for k, v in DIFFUSERS_BETA_SCHEDULES.items()}
        if beta_schedule not in kinds:
            raise ScheduleConfigError(f"beta_schedule {beta_schedule!r}: expected one of {sorted(kinds)}")
        kind = kinds[beta_schedule]
        if "kind" in config and config["kind"] != kind:
            raise ScheduleConfigError(f"kind {config['kind']!r} contradicts beta_schedule {beta_schedule!r}")
        if kind == "linear":
            first, last = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (first, last)):
                raise ScheduleConfigError("beta_start and beta_end must be numbers")
            # diffusers' first beta is the course's beta at t = 1: step back one grid point to the
            # course's beta_start at t = 0, rounded to undo the float error of that step
            start = float(f"{first - (last - first) / (T - 1):.12g}") if T > 1 else 0.0001
            schedule = cls(T, kind, start, float(last), prediction)
        else:
            schedule = cls(T, kind, prediction=prediction)
        trained = config.get("trained_betas")
        if trained is not None:
            try:
                trained = torch.tensor(trained, dtype=torch.float64)
            except (TypeError, ValueError):
                raise ScheduleConfigError("trained_betas must be a list of numbers") from None
            if trained.shape != (T,):
                raise ScheduleConfigError(f"{tuple(trained.shape)[0] if trained.dim() == 1 else 'not'} trained_betas "
                                          f"for num_train_timesteps {T}")
            gap = float((trained - schedule.betas[1:]).abs().max())
            if gap > 1e-9:
                raise ScheduleConfigError(f"trained_betas contradict beta_schedule {beta_schedule!r} "
                                          f"(off by up to {gap:.2g})")
        return schedule

    def _gather(self, values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast over a batch like `like` (B, C, H, W)."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if (t < 0).any() or (t > self.T).any():
            raise ValueError(f"t must lie in 0..{self.T}")
        v = values[t].to(device=like.device, dtype=like.dtype)
        return v.reshape(-1, *([1] * (like.dim() - 1)))

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t, shaped to broadcast over a batch like `like`, in its dtype and on its device."""
        return self._gather(self.alpha_bars, t, like)

    # --- the forward process -------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the course scaled eps by 1 - abar_t)."""
        abar = self._gather(self.alpha_bars, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    # --- conversions between eps, x0 and x_t ---------------------------------------------
    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        abar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def predict_eps(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        abar = self._gather(self.alpha_bars, t, x_t)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, section 4)."""
        abar = self._gather(self.alpha_bars, t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def eps_from_output(self, x_t: torch.Tensor, output: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The noise in x_t that the network's output says: the output itself for "epsilon"; for
        "v_prediction", eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (x_t and v are a rotation of x0 and
        eps); for "sample", eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) (eq. 4 of Ho et al. solved for eps)."""
        if self.prediction == "epsilon":
            return output
        if self.prediction == "sample":
            return self.predict_eps(x_t, output, t)
        abar = self._gather(self.alpha_bars, t, x_t)
        return (1 - abar).sqrt() * x_t + abar.sqrt() * output

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the network should output for x_t = add_noise(x0, noise, t): the noise, v or x0."""
        if self.prediction == "sample":
            return x0
        return noise if self.prediction == "epsilon" else self.velocity(x0, noise, t)

    def noise_per_output(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """How much the implied noise moves per unit of output at fixed x_t (from eps_from_output), in
        size: 1 for "epsilon", sqrt(abar_t) for "v_prediction", sqrt(abar_t / (1 - abar_t)) (the square
        root of the SNR) for "sample". An output error times this is the noise's error, computed
        without the cancellation of forming eps near t = T."""
        abar = self._gather(self.alpha_bars, t, like)
        if self.prediction == "epsilon":
            return torch.ones_like(abar)
        if self.prediction == "sample":
            return (abar / (1 - abar)).sqrt()
        return abar.sqrt()

    def prediction_loss_weights(self) -> torch.Tensor:
        """Weights over t = 0..T that turn the noise MSE into the MSE of what the network predicts.

        1 for "epsilon". For "v_prediction" the error in v is the error in eps divided by
        sqrt(abar_t) (noise_per_output), so its MSE weighs the noise MSE by 1 / abar_t: the
        high-noise steps, where x0 is decided, weigh more. For "sample", 1 / SNR (0 at t = 0).
        """
        return self.noise_per_output(torch.arange(self.T + 1), self.alpha_bars).pow(-2)

    # --- per-t quantities for plots ------------------------------------------------------
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) for t = 0..T (infinite at t = 0)."""
        return self.alpha_bars / (1 - self.alpha_bars)

    def noise_level(self, t: int) -> float:
        """Standard deviation of the noise in x_t, sqrt(1 - abar_t)."""
        return float((1 - self.alpha_bars[t]).sqrt())
