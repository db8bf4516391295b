"""Sampler candidates measured as ddpm.evaluate measures the library's samplers, before any joins the library.

    python benchmarks/sampler_candidates.py --model weights --steps 10 --candidates ddpm,analytic,sa-sde,sa-mid

Every candidate samples the same classes, counts and seeds as `python -m ddpm.evaluate --settings`, with
the same figures (both feature spaces, precision and recall, speckle, near copies), so its rows compare with
docs/quality.json and docs/experiments.md:
- ddpm: the library's ancestral DDPM (posterior variance), the baseline.
- analytic: ancestral DDPM with the variance of the model's own x0 error added to the posterior variance,
  sigma^2 = beta_tilde + c^2 (1 - abar_t) / abar_t mse(t), c the mean's x0 coefficient and mse(t) the
  network's noise MSE at t on the training sprites: the optimal isotropic variance of Bao et al. 2022
  (Analytic-DPM), with the error measured as their NPR-DPM does rather than taken from the noise's norm.
- sa-sde, sa-mid: diffusers' SASolverScheduler (Xue et al. 2023, SA-Solver), predictor and corrector of
  order 2 on the data prediction, driven by the library's sampling loop; tau = 1 at every step (sde) or
  only for t in [0.2 T, 0.8 T] (mid: diffusers' default, scaled to T).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ddpm.checkpoint import load_model, load_palette, load_schedule  # noqa: E402
from ddpm.data import load_data  # noqa: E402
from ddpm.evaluate import Reference, Setting, feature_spaces, measure, parse_seeds, report  # noqa: E402
from ddpm.losses import noise_error  # noqa: E402
from ddpm.sampling import (DEFAULT_GUIDANCE, DDPMSampler, Sampler, make_timesteps,  # noqa: E402
                           posterior_mean_coefficients, posterior_variance)
from ddpm.schedule import to_diffusers_timestep  # noqa: E402

CANDIDATES = ("ddpm", "analytic", "sa-sde", "sa-mid")
# Where the noise MSE is measured; it changes fast at low t and slowly above, and is interpolated between.
MSE_TIMES = (1, 2, 3, 4, 6, 8, 10, 13, 16, 20, 25, 30, 35, 40, 45)


@torch.no_grad()
def noise_mse_by_t(model, schedule, data, n: int = 256, seed: int = 0) -> tuple[list[int], list[float]]:
    """The network's noise MSE at a grid of t, each on n training sprites drawn anew, conditioned on their class."""
    x, y = data.to_tensors()
    times = sorted({t for t in MSE_TIMES if t <= schedule.T} | set(range(50, schedule.T + 1, 10)) | {schedule.T})
    g = torch.Generator().manual_seed(seed)
    model.eval()
    mse = []
    for t in times:
        idx = torch.randperm(len(x), generator=g)[:n]
        noise = torch.randn((len(idx),) + tuple(x.shape[1:]), generator=g)
        context = F.one_hot(y[idx], len(data.class_names)).float()
        mse.append(float(noise_error(model, schedule, x[idx], noise, torch.full((len(idx),), t), context).mean()))
    return times, mse


class AnalyticDDPM(DDPMSampler):
    """Ancestral DDPM whose variance adds the model's x0 error, carried into x_prev by the mean's x0 coefficient."""

    def __init__(self, schedule, times: list[int], mse: list[float]):
        super().__init__(schedule)
        self.times, self.mse = times, mse

    @property
    def name(self) -> str:
        return "ddpm-analytic"

    def step_variance(self, t, abar_t, abar_prev):
        coef_x0, _ = posterior_mean_coefficients(abar_t, abar_prev)
        x0_error = (1 - abar_t) / abar_t * float(np.interp(t, self.times, self.mse))
        return posterior_variance(abar_t, abar_prev) + coef_x0 ** 2 * x0_error


class DiffusersSASolver(Sampler):
    """diffusers' SASolverScheduler behind the library's step(), built from the model's own scheduler config.

    It steps on diffusers' trailing grid, which for most step counts is make_timesteps' shifted by one
    (to_diffusers_timestep); where the two round differently the candidate refuses the step count rather
    than sample at other noise levels than the library's loop asks for. It ends at diffusers' timestep 0
    (our t = 1, noise level 0.01), not at t = 0.
    """

    def __init__(self, schedule, steps: int, tau):
        import diffusers

        super().__init__(schedule)
        self.name, self.steps = "sa-solver", steps
        self.scheduler = diffusers.SASolverScheduler.from_config(
            dict(schedule.scheduler_config(), prediction_type="epsilon"),  # the loop hands step() the noise
            predictor_order=2, corrector_order=2, algorithm_type="data_prediction",
            tau_func=tau)
        self.reset()

    def reset(self) -> None:
        self.scheduler.set_timesteps(self.steps)
        ours = [to_diffusers_timestep(t) for t in make_timesteps(self.schedule.T, self.steps)[:-1]]
        if self.scheduler.timesteps.tolist() != ours:
            raise ValueError(f"diffusers' SA-Solver steps on other times than make_timesteps at {self.steps} steps")

    def step(self, eps, t, t_prev, x_t, generator=None):
        x_prev = self.scheduler.step(eps, to_diffusers_timestep(t), x_t, generator=generator).prev_sample
        return x_prev, self.schedule.predict_x0(x_t, eps, t)


def make_candidate(name: str, schedule, steps: int, model=None, data=None) -> Sampler:
    if name == "ddpm":
        return DDPMSampler(schedule)
    if name == "analytic":
        start = time.time()
        times, mse = noise_mse_by_t(model, schedule, data)
        print(f"noise MSE at {len(times)} times of t ({time.time() - start:.0f} s): "
              + ", ".join(f"t {t}: {e:.4f}" for t, e in list(zip(times, mse))[::6]), file=sys.stderr, flush=True)
        return AnalyticDDPM(schedule, times, mse)
    T = schedule.T
    tau = (lambda t: 1.0) if name == "sa-sde" else (lambda t: 1.0 if 0.2 * T <= t <= 0.8 * T else 0.0)
    return DiffusersSASolver(schedule, steps, tau)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights")
    p.add_argument("--data", default="dawnlike")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--n", type=int, default=100, help="samples per class")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    names = args.candidates.split(",")
    if not set(names) <= set(CANDIDATES):
        p.error(f"--candidates: choose from {', '.join(CANDIDATES)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    model, schedule = load_model(args.model), load_schedule(args.model)
    data = load_data(args.data, model.height)
    reference = Reference(data, feature_spaces(data), args.n)
    results = []
    for name in names:
        sampler = make_candidate(name, schedule, args.steps, model, data)
        result = measure(model, schedule, reference, Setting(sampler, args.steps, args.guidance), args.n, seeds,
                         load_palette(args.model), "fp32", model_name=args.model)
        result.setting = Setting(name, args.steps, args.guidance)  # the tables print the candidate's name
        results.append(result)
        print(f"measured {name} ({sum(result.seconds):.0f} s)", file=sys.stderr, flush=True)
    print(f"{args.model}, {args.steps} steps, guidance {args.guidance:g}, {args.n} per class, seeds {args.seeds}, fp32; "
          "the sampler column names the candidate\n")
    print(report(results, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
