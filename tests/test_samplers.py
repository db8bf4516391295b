"""Samplers: one step of each against diffusers, full DPM-Solver++(2M) runs (ODE and SDE), timestep
spacings, guidance and its interval, class mixes, determinism, batch sizes and SDEdit starts.

Our t = diffusers t + 1, and our t = 0 (alpha_bar 1) is diffusers' "one" after its last step.
"""
from __future__ import annotations

import math

import pytest
import torch

from ddpm.conditioning import class_index, class_weights
from ddpm.sampling import (SPACINGS, DDIMSampler, DDPMSampler, DPMSolverPP2M, DPMSolverPP2MSDE, guidance_at,
                           make_sampler, make_timesteps, predict_noise, sample, sample_steps)
from ddpm.schedule import NoiseSchedule

from helpers import CLASSES

diffusers = pytest.importorskip("diffusers")

T = 500
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers


def trained_betas(schedule):
    return schedule.betas[1:].tolist()


def fake_eps(x: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in for the network: smooth in x, varying with t."""
    return 0.6 * torch.tanh(x) + 0.3 * math.sin(t / 37.0) * torch.cos(2 * x) + 0.05 * t / T


def inputs(seed=0, shape=(3, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# --- one step against diffusers -------------------------------------------------------------------
@pytest.mark.parametrize("variance,variance_type", [("beta", "fixed_large"), ("posterior", "fixed_small")])
# strided cases: diffusers needs t - 1 on its own grid (0, 10, ..., 490 for 50 steps)
@pytest.mark.parametrize("t,inference_steps", [(300, None), (1, None), (2, None), (301, 50), (11, 50), (1, 50)])
def test_ddpm_step_matches_diffusers(schedule, variance, variance_type, t, inference_steps):
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=trained_betas(schedule),
                                    variance_type=variance_type, clip_sample=False)
    stride = 1
    if inference_steps:
        sched.set_timesteps(inference_steps)
        stride = T // inference_steps
    x_t, eps = inputs()
    theirs = sched.step(eps, t - 1, x_t, generator=torch.Generator().manual_seed(7))
    ours_x, ours_x0 = DDPMSampler(schedule, variance).step(eps, t, max(t - stride, 0), x_t, torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours_x0, theirs.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_x, theirs.prev_sample, rtol=1e-4, atol=1e-4)


def test_ddpm_variances_differ_and_noise_is_used(schedule):
    x_t, eps = inputs()
    a, _ = DDPMSampler(schedule, "beta").step(eps, 300, 299, x_t, torch.Generator().manual_seed(1))
    b, _ = DDPMSampler(schedule, "posterior").step(eps, 300, 299, x_t, torch.Generator().manual_seed(1))
    c, _ = DDPMSampler(schedule, "beta").step(eps, 300, 299, x_t, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert not torch.equal(a, c)
    # the last step is the posterior mean, without noise
    d, x0 = DDPMSampler(schedule).step(eps, 1, 0, x_t, torch.Generator().manual_seed(1))
    e, _ = DDPMSampler(schedule).step(eps, 1, 0, x_t, torch.Generator().manual_seed(2))
    assert torch.equal(d, e)
    torch.testing.assert_close(d, x0)  # abar_0 = 1: the mean is the predicted x0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("t,inference_steps", [(300, 50), (10, 50), (251, 2), (500, 25)])
def test_ddim_step_matches_diffusers(schedule, eta, t, inference_steps):
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=trained_betas(schedule),
                                    clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(inference_steps)
    stride = T // inference_steps
    x_t, eps = inputs(1)
    theirs = sched.step(eps, t - 1, x_t, eta=eta, generator=torch.Generator().manual_seed(3))
    ours_x, ours_x0 = DDIMSampler(schedule, eta).step(eps, t, t - stride, x_t, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours_x0, theirs.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_x, theirs.prev_sample, rtol=1e-4, atol=1e-4)


def test_ddim_eta1_equals_ddpm_posterior_step(schedule):
    x_t, eps = inputs(2)
    a, _ = DDIMSampler(schedule, 1.0).step(eps, 200, 190, x_t, torch.Generator().manual_seed(5))
    b, _ = DDPMSampler(schedule, "posterior").step(eps, 200, 190, x_t, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,spacing", [(10, "linspace"), (7, "trailing"), (25, "linspace"), (1, "trailing")])
def test_dpm_solver_pp_2m_full_run_matches_diffusers(schedule, steps, spacing):
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=trained_betas(schedule), algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    ours_times = [int(t) + 1 for t in sched.timesteps] + [0]
    if spacing == "trailing":  # diffusers' trailing spacing is our make_timesteps, shifted by one
        assert ours_times == make_timesteps(T, steps)
    x_theirs, _ = inputs(4)
    x_ours = x_theirs.clone()
    sampler = DPMSolverPP2M(schedule)
    sampler.reset()
    for i, (t, t_prev) in enumerate(zip(ours_times[:-1], ours_times[1:])):
        x_theirs = sched.step(fake_eps(x_theirs, t), int(sched.timesteps[i]), x_theirs).prev_sample
        x_ours, x0 = sampler.step(fake_eps(x_ours, t), t, t_prev, x_ours)
        torch.testing.assert_close(x_ours, x_theirs, rtol=2e-4, atol=2e-4, msg=f"step {i}: t {t} -> {t_prev}")
    torch.testing.assert_close(x_ours, x0)  # the last step lands on the predicted x0


def test_dpm_solver_second_order_differs_from_first_order(schedule):
    # guards against the multistep correction being silently skipped
    x, _ = inputs(5)
    s = DPMSolverPP2M(schedule)
    x1, _ = s.step(fake_eps(x, 500), 500, 400, x)
    second, _ = s.step(fake_eps(x1, 400), 400, 300, x1)
    s.reset()
    first, _ = s.step(fake_eps(x1, 400), 400, 300, x1)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("steps", [5, 8, 10, 25])
def test_sde_dpm_solver_pp_2m_full_run_matches_diffusers(schedule, steps):
    # the same noise stream: diffusers draws one randn per step from the generator, as we do
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=trained_betas(schedule), algorithm_type="sde-dpmsolver++",
        solver_order=2, solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True,
        timestep_spacing="trailing")
    sched.set_timesteps(steps)
    ours_times = make_timesteps(T, steps)
    assert [int(t) + 1 for t in sched.timesteps] == ours_times[:-1]
    x_theirs, _ = inputs(10, (2, 3, 8, 8))
    x_ours = x_theirs.clone()
    g_theirs, g_ours = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    sampler = make_sampler("dpm++sde", schedule)
    for td, t, t_prev in zip(sched.timesteps, ours_times[:-1], ours_times[1:]):
        x_theirs = sched.step(fake_eps(x_theirs, t), int(td), x_theirs, generator=g_theirs).prev_sample
        x_ours, x0 = sampler.step(fake_eps(x_ours, t), t, t_prev, x_ours, g_ours)
        torch.testing.assert_close(x_ours, x_theirs, rtol=2e-4, atol=2e-4, msg=f"t {t} -> {t_prev}")
    torch.testing.assert_close(x_ours, x0)  # no noise on the last step: it lands on the predicted x0


def test_sde_dpm_solver_first_step_is_ddpm_and_later_steps_are_not(schedule):
    # a first-order SDE-DPM-Solver++ step is the DDPM posterior step; the second-order ones differ
    x, _ = inputs(11)
    sde, ddpm = DPMSolverPP2MSDE(schedule), DDPMSampler(schedule, "posterior")
    a, _ = sde.step(fake_eps(x, 500), 500, 400, x, torch.Generator().manual_seed(2))
    b, _ = ddpm.step(fake_eps(x, 500), 500, 400, x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c, _ = sde.step(fake_eps(a, 400), 400, 300, a, torch.Generator().manual_seed(3))
    d, _ = ddpm.step(fake_eps(a, 400), 400, 300, a, torch.Generator().manual_seed(3))
    assert not torch.allclose(c, d, atol=1e-3)
    # and the noise is used: another noise draw, another x
    e, _ = DPMSolverPP2MSDE(schedule).step(fake_eps(x, 500), 500, 400, x, torch.Generator().manual_seed(5))
    assert not torch.allclose(a, e)


# --- timesteps ---------------------------------------------------------------------------------------
def test_make_timesteps():
    assert make_timesteps(500, 10) == list(range(500, -1, -50))
    assert make_timesteps(500, 1) == [500, 0]
    assert make_timesteps(7, 7) == [7, 6, 5, 4, 3, 2, 1, 0]
    for t_start in (1, 2, 3, 17, 100, 499, 500):
        for steps in sorted({s for s in (1, 2, 3, t_start // 3, t_start - 1, t_start) if 1 <= s <= t_start}):
            ts = make_timesteps(t_start, steps)
            assert len(ts) == steps + 1 and ts[0] == t_start and ts[-1] == 0
            assert all(a > b for a, b in zip(ts, ts[1:])), (t_start, steps, ts)
    with pytest.raises(ValueError):
        make_timesteps(500, 0)
    with pytest.raises(ValueError):
        make_timesteps(10, 11)


@pytest.mark.parametrize("spacing,option", [("karras", "use_karras_sigmas"), ("logsnr", "use_lu_lambdas")])
@pytest.mark.parametrize("steps", [5, 8, 10, 15, 25])
def test_sigma_spacings_match_diffusers(schedule, spacing, option, steps):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=T, trained_betas=trained_betas(schedule),
                                                  algorithm_type="dpmsolver++", **{option: True})
    sched.set_timesteps(steps)
    theirs = [int(t) + 1 for t in sched.timesteps] + [0]
    ours = make_timesteps(T, steps, spacing, schedule)
    if len(set(theirs)) == len(theirs):
        assert ours == theirs
    else:  # diffusers keeps rounding ties; ours breaks them but stays as close as it can
        assert len(ours) == len(theirs) and max(abs(a - b) for a, b in zip(ours, theirs)) <= steps


@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_spacing_gives_strictly_decreasing_times(schedule, spacing):
    for t_start in (1, 2, 3, 17, 100, 499, 500):
        for steps in sorted({s for s in (1, 2, 3, 5, 8, t_start // 3, t_start - 1, t_start) if 1 <= s <= t_start}):
            ts = make_timesteps(t_start, steps, spacing, schedule)
            assert len(ts) == steps + 1 and ts[0] == t_start and ts[-1] == 0, (t_start, steps, ts)
            assert all(a > b for a, b in zip(ts, ts[1:])), (t_start, steps, ts)


@pytest.mark.parametrize("steps", [5, 8, 10, 15, 25])
def test_low_t_spacings_put_more_steps_at_low_t(steps):
    # the course's linear schedule (the cosine one's sigma at T is so large that "karras" spends its
    # first steps near T, as it does in diffusers)
    schedule = NoiseSchedule(T)
    below = lambda ts: sum(t < T // 4 for t in ts[:-1])  # noqa: E731  steps taken from t < T/4
    trailing = below(make_timesteps(T, steps))
    for spacing in ("quadratic", "karras", "logsnr"):
        assert below(make_timesteps(T, steps, spacing, schedule)) > trailing, spacing


def test_quadratic_spacing_and_bad_spacings():
    assert make_timesteps(500, 5, "quadratic") == [500, 320, 180, 80, 20, 0]
    assert make_timesteps(500, 10, "trailing") == make_timesteps(500, 10)
    with pytest.raises(ValueError, match="spacing must be one of"):
        make_timesteps(500, 10, "cosine")
    with pytest.raises(ValueError, match="needs the noise schedule"):
        make_timesteps(500, 10, "karras")


@pytest.mark.parametrize("spacing", SPACINGS)
def test_sample_steps_follows_the_spacing(tiny_unet, spacing):
    schedule = NoiseSchedule(T)
    steps = list(sample_steps(tiny_unet, schedule, torch.eye(5)[:2], sampler="ddpm", steps=5, guidance=1.0,
                              seed=0, spacing=spacing))
    ts = make_timesteps(T, 5, spacing, schedule)
    assert [s.t for s in steps] == ts[:-1] and [s.t_prev for s in steps] == ts[1:]


# --- guidance ----------------------------------------------------------------------------------------
class CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.batches = inner, []
        self.height, self.in_channels = inner.height, inner.in_channels

    def forward(self, x, t, c):
        self.batches.append(x.shape[0])
        return self.inner(x, t, c)


def test_guidance_zero_is_the_plain_conditional_model(tiny_unet):
    model = CountingModel(tiny_unet)
    x, _ = inputs(6, (4, 3, 16, 16))
    c = torch.eye(5)[[0, 2, 4, 1]]
    with torch.no_grad():
        eps = predict_noise(model, NoiseSchedule(T), x, 123, c, guidance=0.0)
        plain = tiny_unet(x, torch.full((4,), 123 / T), c)
    assert model.batches == [4], "guidance 0 must make a single conditional pass"
    assert torch.equal(eps, plain)


@pytest.mark.parametrize("w", [0.5, 2.0, 7.5])
def test_guidance_follows_the_cfg_formula(tiny_unet, w):
    x, _ = inputs(7, (3, 3, 16, 16))
    c = torch.eye(5)[[1, 3, 0]]
    t_in = torch.full((3,), 250 / T)
    with torch.no_grad():
        eps = predict_noise(tiny_unet, NoiseSchedule(T), x, 250, c, guidance=w)
        cond = tiny_unet(x, t_in, c)
        uncond = tiny_unet(x, t_in, torch.zeros_like(c))
    assert not torch.allclose(cond, uncond), "the context must matter for this test to mean anything"
    torch.testing.assert_close(eps, cond + w * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_sampling_with_guidance_zero_equals_a_manual_loop(tiny_unet):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[0, 3]]
    out = sample(tiny_unet, schedule, c, sampler="ddim", steps=4, guidance=0, seed=11)
    torch.testing.assert_close(out, manual_ddim(lambda x, t: tiny_unet(x, t, c), schedule, 2, 4, 11),
                               rtol=1e-5, atol=1e-5)


def manual_ddim(eps_of, schedule: NoiseSchedule, n: int, steps: int, seed: int) -> torch.Tensor:
    """DDIM written out step by step from the noise of `seed`, with eps_of(x_t, t / T) the noise prediction."""
    x = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    ddim = DDIMSampler(schedule)
    ts = make_timesteps(schedule.T, steps)
    with torch.no_grad():
        for t, t_prev in zip(ts[:-1], ts[1:]):
            x, _ = ddim.step(eps_of(x, torch.full((n,), t / schedule.T)), t, t_prev, x)
    return x


def test_guidance_interval_guides_only_inside_it(tiny_unet):
    model = CountingModel(tiny_unet)
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[0, 3, 1]]
    ts = make_timesteps(T, 10)[:-1]  # 500, 450, ..., 50
    run = list(sample_steps(model, schedule, c, sampler="ddpm", steps=10, guidance=2.0, seed=1,
                            guidance_interval=(100, 300)))
    # one conditional pass (batch 3) outside, the conditional and unconditional together (6) inside
    assert model.batches == [6 if 100 <= t <= 300 else 3 for t in ts]
    assert [guidance_at(t, 2.0, (100, 300)) for t in (99, 100, 300, 301)] == [0.0, 2.0, 2.0, 0.0]
    # the steps outside are the plain conditional model's
    with torch.no_grad():
        plain = tiny_unet(run[0].x_t, torch.full((3,), 500 / T), c)
    torch.testing.assert_close(run[0].eps, plain)


def test_guidance_interval_covering_every_step_is_bit_identical(tiny_unet):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[2, 4]]
    kw = dict(sampler="ddpm", steps=6, guidance=1.5, seed=3)
    everywhere = sample(tiny_unet, schedule, c, **kw)
    assert torch.equal(everywhere, sample(tiny_unet, schedule, c, guidance_interval=(0, T), **kw))
    assert not torch.equal(everywhere, sample(tiny_unet, schedule, c, guidance_interval=(0, 200), **kw))


@pytest.mark.parametrize("bad", [(300, 100), (-1, 100), (0, T + 1), (10.5, 20), (float("nan"), 10), (5,), "ab", 7])
def test_bad_guidance_interval_refused(tiny_unet, bad):
    with pytest.raises(ValueError, match="guidance interval"):
        sample(tiny_unet, NoiseSchedule(T), torch.eye(5)[:1], steps=2, guidance_interval=bad)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 51])
def test_bad_guidance_refused(tiny_unet, bad):
    with pytest.raises(ValueError, match="guidance"):
        sample(tiny_unet, NoiseSchedule(T), torch.eye(5)[:1], steps=2, guidance=bad)


# --- class mixes ---------------------------------------------------------------------------------------
def test_class_weights_one_class():
    w = class_weights(CLASSES, "food")
    assert w.tolist() == [0, 0, 1, 0, 0]
    assert class_weights(CLASSES, 4).tolist() == [0, 0, 0, 0, 1]


def test_class_weights_mix_is_normalised():
    w = class_weights(CLASSES, {"hero": 3, "food": 1})
    torch.testing.assert_close(w, torch.tensor([0.75, 0, 0.25, 0, 0]))
    w = class_weights(CLASSES, {"hero": 0.2, "spell": 0.2, "item": 0})
    torch.testing.assert_close(w, torch.tensor([0.5, 0, 0, 0.5, 0]))
    assert w.sum().item() == pytest.approx(1.0)


def test_class_weights_huge_finite_weights_stay_finite():
    for big in (1e39, 1e308):
        w = class_weights(CLASSES, {"hero": big, "food": big})
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w, torch.tensor([0.5, 0, 0.5, 0, 0]))


@pytest.mark.parametrize("mix,match", [
    ({"hero": 0, "food": 0}, "positive"),
    ({}, "positive"),
    ({"hero": -1, "food": 2}, "non-negative"),
    ({"hero": float("nan")}, "non-negative"),
    ({"hero": float("inf")}, "non-negative"),
    ({"dragon": 1}, "unknown class"),
])
def test_class_weights_bad_mixes_refused(mix, match):
    with pytest.raises(ValueError, match=match):
        class_weights(CLASSES, mix)


def test_class_index_refuses_unknown():
    assert class_index(CLASSES, "spell") == 3
    for bad in ("dragon", 5, -1, True):
        with pytest.raises(ValueError):
            class_index(CLASSES, bad)


# --- whole runs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "dpm++sde"])
def test_same_seed_is_bit_identical_and_other_seeds_differ(tiny_unet, sampler):
    schedule = NoiseSchedule(T)
    c = torch.stack([class_weights(CLASSES, "hero"), class_weights(CLASSES, {"hero": 1, "food": 1})])
    kw = dict(sampler=sampler, steps=4, guidance=2.0)
    a = sample(tiny_unet, schedule, c, seed=42, **kw)
    b = sample(tiny_unet, schedule, c, seed=42, **kw)
    d = sample(tiny_unet, schedule, c, seed=43, **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, d)
    assert torch.isfinite(a).all()


def test_stochastic_sampler_uses_its_noise(tiny_unet):
    # DDPM and DDIM eta>0 draw noise every step: with the same start they still differ from DDIM eta=0
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[:2]
    a = sample(tiny_unet, schedule, c, sampler=DDIMSampler(schedule, 0.0), steps=4, seed=1)
    b = sample(tiny_unet, schedule, c, sampler=DDIMSampler(schedule, 1.0), steps=4, seed=1)
    assert not torch.allclose(a, b)


def test_random_seed_when_none(tiny_unet):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[:1]
    a = sample(tiny_unet, schedule, c, sampler="ddim", steps=2, seed=None)
    b = sample(tiny_unet, schedule, c, sampler="ddim", steps=2, seed=None)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "dpm++sde"])
def test_any_batch_size(tiny_unet, batch, sampler):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[torch.arange(batch) % 5]
    steps = list(sample_steps(tiny_unet, schedule, c, sampler=sampler, steps=3, guidance=1.0, seed=0))
    assert [s.t for s in steps] == make_timesteps(T, 3)[:-1]
    assert [s.t_prev for s in steps] == make_timesteps(T, 3)[1:]
    assert [(s.index, s.steps) for s in steps] == [(0, 3), (1, 3), (2, 3)]
    for s, nxt in zip(steps, steps[1:]):
        assert torch.equal(s.x_prev, nxt.x_t)
    for s in steps:
        for tensor in (s.x_t, s.x0, s.eps, s.x_prev):
            assert tensor.shape == (batch, 3, 16, 16)
            assert torch.isfinite(tensor).all()
        torch.testing.assert_close(s.x0, schedule.predict_x0(s.x_t, s.eps, s.t), rtol=1e-4, atol=1e-4)


def test_bad_context_and_start_refused(tiny_unet):
    schedule = NoiseSchedule(T)
    with pytest.raises(ValueError, match="context"):
        sample(tiny_unet, schedule, torch.zeros(5), steps=2)
    with pytest.raises(ValueError, match="context"):
        sample(tiny_unet, schedule, torch.zeros(0, 5), steps=2)
    with pytest.raises(ValueError, match="start time"):
        sample(tiny_unet, schedule, torch.eye(5)[:1], steps=2, t_start=T + 1)
    with pytest.raises(ValueError, match="start time"):
        sample(tiny_unet, schedule, torch.eye(5)[:1], steps=2, t_start=0)
    with pytest.raises(ValueError, match="steps"):
        sample(tiny_unet, schedule, torch.eye(5)[:1], steps=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(tiny_unet, schedule, torch.eye(5)[:1], sampler="euler", steps=2)


def test_sampler_options_validated():
    schedule = NoiseSchedule(T)
    assert isinstance(make_sampler("DPM-Solver++", schedule), DPMSolverPP2M)
    assert isinstance(make_sampler("sde-dpmsolver++", schedule), DPMSolverPP2MSDE)
    assert make_sampler("dpm++sde", schedule).name == "dpm++sde"
    assert make_sampler("ddim", schedule, eta=0.3).eta == 0.3
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            DDIMSampler(schedule, eta)
    with pytest.raises(ValueError, match="variance"):
        DDPMSampler(schedule, "learned")


def test_ddpm_names_pick_the_variance():
    schedule = NoiseSchedule(T)
    default, seed_style = make_sampler("ddpm", schedule), make_sampler("ddpm-beta", schedule)
    assert (default.variance, default.name) == ("posterior", "ddpm")
    assert (seed_style.variance, seed_style.name) == ("beta", "ddpm-beta")
    assert make_sampler("ddpm", schedule, variance="beta").variance == "beta"


def test_strided_posterior_variance_adds_less_noise_near_the_end(schedule):
    # why "ddpm" defaults to the posterior variance: the spread of x_prev around the mean, for a
    # 10-step stride near t = 0, is several times smaller than with the course's beta
    x_t, eps = inputs(3, (64, 3, 16, 16))
    spread = {}
    for variance in ("beta", "posterior"):
        a, _ = DDPMSampler(schedule, variance).step(eps, 20, 10, x_t, torch.Generator().manual_seed(1))
        b, _ = DDPMSampler(schedule, variance).step(eps, 20, 10, x_t, torch.Generator().manual_seed(2))
        spread[variance] = float((a - b).std())
    assert spread["posterior"] < spread["beta"] / 1.5
    # one step at a time the two agree far from t = 0
    a, _ = DDPMSampler(schedule, "beta").step(eps, 400, 399, x_t, torch.Generator().manual_seed(1))
    b, _ = DDPMSampler(schedule, "posterior").step(eps, 400, 399, x_t, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=2e-3)


def test_sdedit_start_stays_close_to_x_start(tiny_unet):
    schedule = NoiseSchedule(T)
    g = torch.Generator().manual_seed(0)
    x_start = (torch.rand(2, 3, 16, 16, generator=g) > 0.5).float() * 2 - 1
    c = torch.eye(5)[[0, 2]]
    distances = {}
    for t_start in (10, 100, T):
        steps = min(5, t_start)
        run = list(sample_steps(tiny_unet, schedule, c, sampler="ddim", steps=steps, guidance=0, seed=1,
                                x_start=x_start, t_start=t_start))
        assert run[0].t == t_start
        # the first x_t is x_start noised to t_start with the sampling seed's noise
        noise = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(run[0].x_t, schedule.add_noise(x_start, noise, t_start))
        distances[t_start] = (run[-1].x_prev - x_start).abs().mean().item()
    assert distances[10] < distances[100] < distances[T]
    assert distances[10] < 0.2


def test_full_ddpm_run_matches_diffusers(schedule):
    # the course's 500 ancestral steps; the noise comes from one generator in the same order
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, trained_betas=trained_betas(schedule),
                                    variance_type="fixed_large", clip_sample=False)
    x_theirs, _ = inputs(8, (2, 3, 8, 8))
    x_ours = x_theirs.clone()
    g_theirs, g_ours = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    sampler = make_sampler("ddpm-beta", schedule)
    for t in range(T, 0, -1):
        x_theirs = sched.step(fake_eps(x_theirs, t), t - 1, x_theirs, generator=g_theirs).prev_sample
        x_ours, _ = sampler.step(fake_eps(x_ours, t), t, t - 1, x_ours, g_ours)
    torch.testing.assert_close(x_ours, x_theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_full_ddim_run_matches_diffusers(schedule, eta):
    steps = 20
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=trained_betas(schedule), clip_sample=False,
                                    set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    ours_times = make_timesteps(T, steps)
    assert [int(t) + 1 for t in sched.timesteps] == ours_times[:-1]
    x_theirs, _ = inputs(9, (2, 3, 8, 8))
    x_ours = x_theirs.clone()
    g_theirs, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sampler = DDIMSampler(schedule, eta)
    for td, t, t_prev in zip(sched.timesteps, ours_times[:-1], ours_times[1:]):
        x_theirs = sched.step(fake_eps(x_theirs, t), int(td), x_theirs, eta=eta, generator=g_theirs).prev_sample
        x_ours, _ = sampler.step(fake_eps(x_ours, t), t, t_prev, x_ours, g_ours)
        torch.testing.assert_close(x_ours, x_theirs, rtol=2e-4, atol=2e-4, msg=f"t {t} -> {t_prev}")


def test_sdedit_start_shape_checked(tiny_unet):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[0, 1, 2]]
    one = torch.zeros(1, 3, 16, 16)
    out = sample(tiny_unet, schedule, c, sampler="ddim", steps=2, seed=0, x_start=one, t_start=50)
    assert out.shape == (3, 3, 16, 16)  # one start image, three variations
    for bad in (torch.zeros(2, 3, 16, 16), torch.zeros(3, 4, 16, 16), torch.zeros(3, 3, 32, 32), torch.zeros(3, 16, 16)):
        with pytest.raises(ValueError, match="x_start"):
            sample(tiny_unet, schedule, c, sampler="ddim", steps=2, x_start=bad, t_start=50)


# --- precision -------------------------------------------------------------------------------------------
def test_bf16_sampling_runs_the_network_in_bf16_and_keeps_steps_fp32(tiny_unet):
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[0, 2]]
    kw = dict(sampler="ddim", steps=3, guidance=2.0, seed=5)
    fp32 = list(sample_steps(tiny_unet, schedule, c, **kw))
    bf16 = list(sample_steps(tiny_unet, schedule, c, precision="bf16", **kw))
    for a, b in zip(fp32, bf16):
        for x, y in ((a.eps, b.eps), (a.x0, b.x0), (a.x_prev, b.x_prev)):
            assert y.dtype == torch.float32
            assert not torch.equal(x, y)  # it did run in bf16...
        # ...which keeps 8 significant bits: the noise predictions differ by about 1% of their size
        assert (a.eps - b.eps).pow(2).mean().sqrt() < 0.05 * a.eps.std()
    assert (fp32[-1].x_prev - bf16[-1].x_prev).abs().mean() < 0.05


def test_unknown_precision_refused(tiny_unet):
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        sample(tiny_unet, NoiseSchedule(T), torch.eye(5)[:1], steps=2, precision="fp16")


def test_a_student_distilled_for_guidance_samples_in_one_pass_a_step(tiny_unet, monkeypatch):
    from ddpm.model import ContextUnet

    student = ContextUnet(**dict(tiny_unet.config_dict, distilled_guidance=4.0)).eval()
    student.load_state_dict(tiny_unet.state_dict(), strict=False)
    with torch.no_grad():
        for embed in student.guidance_embeds:
            torch.nn.init.normal_(embed.model[-1].weight, std=0.5)
    batches = []
    decode = ContextUnet.decode
    monkeypatch.setattr(ContextUnet, "decode", lambda self, encoded, c, *a: batches.append(len(c)) or decode(
        self, encoded, c, *a))
    schedule, c = NoiseSchedule(T), torch.eye(5)[[0, 3]]
    out = sample(student, schedule, c, sampler="ddim", steps=4, guidance=1.5, seed=11)
    assert batches == [2] * 4  # the teacher decodes 4: the conditional and unconditional rows
    torch.testing.assert_close(out, manual_ddim(lambda x, t: student(x, t, c, 1.5), schedule, 2, 4, 11),
                               rtol=1e-4, atol=1e-4)
    batches.clear()
    sample(tiny_unet, schedule, c, sampler="ddim", steps=4, guidance=1.5, seed=11)
    assert batches == [4] * 4


# --- v-prediction and x0 prediction --------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_sampling_a_v_or_x0_prediction_matches_diffusers(name, prediction):
    # diffusers' schedulers take v or x0 itself; ours take the noise eps_from_output gives for it
    schedule = NoiseSchedule(T, prediction=prediction)
    cls = diffusers.DDPMScheduler if name == "ddpm" else diffusers.DDIMScheduler
    sched = cls.from_config(schedule.scheduler_config())
    assert sched.config.prediction_type == prediction
    steps = 25
    sched.set_timesteps(steps)
    ts = make_timesteps(T, steps)
    assert [t - 1 for t in ts[:-1]] == sched.timesteps.tolist()
    x_theirs, _ = inputs(8, (2, 3, 8, 8))
    x_ours = x_theirs.clone()
    g_theirs, g_ours = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    sampler = make_sampler(name, schedule)
    for t, t_prev in zip(ts[:-1], ts[1:]):
        kwargs = {"generator": g_theirs} if name == "ddpm" else {}
        x_theirs = sched.step(fake_eps(x_theirs, t), t - 1, x_theirs, **kwargs).prev_sample
        eps = schedule.eps_from_output(x_ours, fake_eps(x_ours, t), t)
        x_ours, _ = sampler.step(eps, t, t_prev, x_ours, g_ours)
    torch.testing.assert_close(x_ours, x_theirs, rtol=1e-3, atol=1e-3)


class Plain(torch.nn.Module):
    """Hides the ContextUnet, so predict_noise guides from one batched pass of both contexts."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, c):
        return self.inner(x, t, c)


@pytest.mark.parametrize("w", [0.0, 1.5])
@pytest.mark.parametrize("wrap", [False, True], ids=["shared encoder", "batched pass"])
def test_predict_noise_converts_a_v_prediction_and_guides_it(tiny_unet, w, wrap):
    schedule = NoiseSchedule(T, prediction="v_prediction")
    x, c, t = torch.randn(3, 3, 16, 16), torch.eye(5)[:3], 250
    with torch.no_grad():
        eps = predict_noise(Plain(tiny_unet.eval()) if wrap else tiny_unet.eval(), schedule, x, t, c, guidance=w)
        t_in = torch.full((3,), t / T)
        v_c, v_0 = tiny_unet(x, t_in, c), tiny_unet(x, t_in, torch.zeros_like(c))
    eps_c, eps_0 = (schedule.eps_from_output(x, v, t) for v in (v_c, v_0))
    # guiding v and then converting gives the guided noise of the two converted predictions
    torch.testing.assert_close(eps, eps_c + w * (eps_c - eps_0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(eps, v_c + w * (v_c - v_0), atol=1e-3)
