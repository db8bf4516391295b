"""The noise schedule and forward process, checked against diffusers' DDPMScheduler.

Our t runs over 0..T with alpha_bar[0] = 1; diffusers counts 0..T-1. With diffusers given our
betas[1:], our t corresponds to diffusers' t - 1.
"""
from __future__ import annotations

import math

import pytest
import torch

from ddpm.schedule import NoiseSchedule, cosine_betas, linear_betas

diffusers = pytest.importorskip("diffusers")

T = 500


def diffusers_ddpm(schedule: NoiseSchedule, **kwargs):
    return diffusers.DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas[1:].tolist(),
                                   clip_sample=False, **kwargs)


def test_linear_betas_are_the_seeds_grid():
    betas = linear_betas(T)
    assert betas.shape == (T + 1,)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    steps = betas[1:] - betas[:-1]
    assert torch.allclose(steps, torch.full_like(steps, (0.02 - 1e-4) / T))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bars_match_diffusers_with_index_shift(kind):
    ours = NoiseSchedule(T, kind)
    theirs = diffusers_ddpm(ours).alphas_cumprod.double()
    assert ours.alpha_bars[0].item() == 1.0
    assert ours.alpha_bars.shape == (T + 1,)
    # our t = diffusers t + 1
    torch.testing.assert_close(ours.alpha_bars[1:], theirs, rtol=2e-5, atol=1e-7)


def test_linear_schedule_agrees_with_diffusers_own_linear_betas():
    # diffusers' linear schedule over T points from 1e-4 to 0.02 is a slightly different grid, so
    # only a loose agreement is expected; this guards against gross errors (a wrong beta range).
    ours = NoiseSchedule(T)
    theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    torch.testing.assert_close(ours.alpha_bars[1:], theirs, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_and_alpha_bars_consistent(kind):
    s = NoiseSchedule(T, kind)
    # every step of the forward process has variance beta_t: abar_t / abar_{t-1} = 1 - beta_t
    torch.testing.assert_close(s.alpha_bars[1:] / s.alpha_bars[:-1], 1 - s.betas[1:])


def test_cosine_schedule_is_sane():
    s = NoiseSchedule(T, "cosine")
    abar = s.alpha_bars
    assert abar[0].item() == 1.0
    assert (abar[1:] < abar[:-1]).all(), "alpha_bar must decrease strictly"
    assert abar[-1].item() < 1e-3
    assert ((s.betas[1:] > 0) & (s.betas[1:] <= 0.999)).all()
    # close to the closed form cos^2 away from the clamped end
    t = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(abar[: T - 5], (f / f[0])[: T - 5], rtol=1e-9, atol=1e-12)
    assert cosine_betas(T)[0].item() == 0.0


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        NoiseSchedule(T, "quadratic")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="T must"):
            NoiseSchedule(bad)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_matches_diffusers(kind):
    s = NoiseSchedule(T, kind)
    sched = diffusers_ddpm(s)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(6, 3, 16, 16, generator=g)
    t = torch.tensor([1, 2, 50, 250, 499, 500])
    ours = s.add_noise(x0, noise, t)
    theirs = sched.add_noise(x0, noise, t - 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.dtype == x0.dtype


def test_add_noise_scalar_t_and_endpoints():
    s = NoiseSchedule(T)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    noise = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(s.add_noise(x0, noise, 0), x0)
    x_T = s.add_noise(x0, noise, T)
    # at T almost all signal is gone: correlation with the noise near 1
    assert torch.corrcoef(torch.stack([x_T.flatten(), noise.flatten()]))[0, 1] > 0.99
    torch.testing.assert_close(s.add_noise(x0, noise, 100), s.add_noise(x0, noise, torch.tensor([100, 100])))
    with pytest.raises(ValueError):
        s.add_noise(x0, noise, T + 1)
    with pytest.raises(ValueError):
        s.add_noise(x0, noise, -1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_predict_x0_and_eps_round_trip(kind):
    s = NoiseSchedule(T, kind)
    x0 = (torch.rand(4, 3, 16, 16, dtype=torch.float64) * 2 - 1)
    eps = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    for t in (1, 10, 250, 490):
        x_t = s.add_noise(x0, eps, t)
        torch.testing.assert_close(s.predict_x0(x_t, eps, t), x0, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(s.predict_eps(x_t, x0, t), eps, rtol=1e-8, atol=1e-8)


def test_predict_x0_matches_diffusers_pred_original_sample():
    s = NoiseSchedule(T)
    sched = diffusers_ddpm(s)
    x_t = torch.randn(2, 3, 16, 16)
    eps = torch.randn(2, 3, 16, 16)
    t = 321
    out = sched.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.predict_x0(x_t, eps, t), out.pred_original_sample, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_snr(kind):
    s = NoiseSchedule(T, kind)
    snr = s.snr()
    assert snr.shape == (T + 1,)
    assert math.isinf(snr[0].item())
    assert (snr[2:] < snr[1:-1]).all(), "SNR must fall with t"
    torch.testing.assert_close(snr[1:], s.alpha_bars[1:] / (1 - s.alpha_bars[1:]))
    assert s.noise_level(0) == 0.0
    assert s.noise_level(T) == pytest.approx(math.sqrt(1 - s.alpha_bars[T].item()))
    assert 0.99 < s.noise_level(T) <= 1.0


def test_config_round_trip():
    s = NoiseSchedule(100, "cosine")
    s2 = NoiseSchedule(**s.config())
    torch.testing.assert_close(s.alpha_bars, s2.alpha_bars)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_velocity_matches_diffusers_and_gives_back_the_noise(kind):
    s = NoiseSchedule(T, kind, prediction="v_prediction")
    sched = diffusers.DDPMScheduler.from_config(s.scheduler_config())
    x0 = torch.rand(4, 3, 16, 16, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([1, 100, 300, T])
    v = s.velocity(x0, eps, t)
    theirs = sched.get_velocity(x0.float(), eps.float(), t - 1)
    torch.testing.assert_close(v.float(), theirs, rtol=1e-5, atol=1e-5)
    x_t = s.add_noise(x0, eps, t)
    torch.testing.assert_close(s.eps_from_output(x_t, v, t), eps, rtol=1e-8, atol=1e-8)
    # the same output means the noise itself to a noise-predicting schedule
    assert torch.equal(NoiseSchedule(T, kind).eps_from_output(x_t, v, t), v)


def test_prediction_is_part_of_the_config_and_checked():
    s = NoiseSchedule(100, prediction="v_prediction")
    assert NoiseSchedule(**s.config()).prediction == "v_prediction"
    assert NoiseSchedule.from_config(s.scheduler_config()).config() == s.config()
    assert NoiseSchedule().prediction == "epsilon" and NoiseSchedule().scheduler_config()["prediction_type"] == "epsilon"
    # the MSE of v is the noise's MSE over abar_t (eps = sqrt(1 - abar) x_t + sqrt(abar) v)
    torch.testing.assert_close(s.prediction_loss_weights(), 1 / s.alpha_bars)
    assert torch.equal(NoiseSchedule(100).prediction_loss_weights(), torch.ones(101, dtype=torch.float64))
    with pytest.raises(ValueError, match="prediction"):
        NoiseSchedule(prediction="flow_prediction")
