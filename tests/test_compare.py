"""ddpm.compare: slerp, the sampler race, the guidance sweep and morphs, on a tiny random model."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import compare as cp
from ddpm.conditioning import context_for
from ddpm.images import to_uint8
from ddpm.sampling import initial_noise, sample_steps
from helpers import CLASSES

SHAPE = (3, 16, 16)


def plain(model, schedule, cls, seed, sampler, steps, guidance) -> np.ndarray:
    """What sampling one sprite of cls with this seed gives, without any of ddpm.compare."""
    last = None
    for last in sample_steps(model, schedule, context_for(CLASSES, cls, 1), sampler=sampler, steps=steps,
                             guidance=guidance, seed=seed):
        pass
    return to_uint8(last.x_prev)[0]


# --- slerp ---------------------------------------------------------------------------------------------
def test_slerp_end_points_are_the_seeds_noise_exactly():
    a, b = initial_noise((1, *SHAPE), 3)[0][0], initial_noise((1, *SHAPE), 4)[0][0]
    assert torch.equal(cp.slerp(a, b, 0.0), a) and torch.equal(cp.slerp(a, b, 1.0), b)
    noise, _, fr = cp.morph_inputs(CLASSES, "hero", "food", 3, 4, 8, SHAPE)
    assert fr[0] == 0 and fr[-1] == 1 and len(fr) == 8
    assert torch.equal(noise[0], a) and torch.equal(noise[-1], b)


def test_slerp_keeps_the_length_where_a_straight_line_shrinks():
    a, b = initial_noise((1, *SHAPE), 0)[0][0], initial_noise((1, *SHAPE), 1)[0][0]
    mid = cp.slerp(a, b, 0.5)
    line = 0.5 * (a + b)
    assert abs(mid.norm() / a.norm() - 1) < 0.05 and line.norm() / a.norm() < 0.8
    assert torch.allclose(cp.slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: falls back to the line


def test_morph_context_slides_from_one_class_to_the_other():
    _, ctx, _ = cp.morph_inputs(CLASSES, "hero", "food", 0, 0, 9, SHAPE)
    assert torch.equal(ctx[0], context_for(CLASSES, "hero", 1)[0])
    assert torch.equal(ctx[-1], context_for(CLASSES, "food", 1)[0])
    assert torch.allclose(ctx.sum(1), torch.ones(9)) and abs(float(ctx[4, 0]) - 0.5) < 1e-6


def test_explicit_noise_equal_to_the_seeds_changes_nothing(tiny_unet, default_schedule):
    ctx = context_for(CLASSES, "hero", 2)
    drawn = initial_noise((2, *SHAPE), 5)[0]
    runs = [list(sample_steps(tiny_unet, default_schedule, ctx, sampler="ddpm", steps=4, seed=5, noise=n))
            for n in (None, drawn)]
    assert all(torch.equal(a.x_prev, b.x_prev) for a, b in zip(*runs))
    with pytest.raises(ValueError, match="noise must be"):
        next(sample_steps(tiny_unet, default_schedule, ctx, steps=4, noise=torch.zeros(1, *SHAPE)))


# --- morph ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
@pytest.mark.parametrize("ends", [(("hero", 0), ("food", 0)), (("spell", 1), ("spell", 2)),
                                  (("hero", 3), ("item", 4))])
def test_morph_end_frames_are_plain_sampling_of_each_end(tiny_unet, default_schedule, sampler, ends):
    (ca, sa), (cb, sb) = ends
    m = cp.morph(tiny_unet, default_schedule, CLASSES, ca, cb, sa, sb, 8, sampler=sampler, steps=6, guidance=2.0)
    assert m.frames.shape == (8, 16, 16, 3)
    for frame, (cls, seed) in ((m.frames[0], ends[0]), (m.frames[-1], ends[1])):
        # a batch of 8 may round differently from a batch of 1 in the last float bit
        assert np.abs(frame.astype(int) - plain(tiny_unet, default_schedule, cls, seed, sampler, 6, 2.0)).max() <= 1
    assert m.what == {("hero", "food"): "classes", ("spell", "spell"): "seeds"}.get((ca, cb), "seeds and classes")


def test_morph_frames_change_gradually_and_repeat_exactly(tiny_unet, default_schedule):
    kw = dict(class_a="hero", class_b="hero", seed_a=0, seed_b=1, n=16, steps=5)
    m = cp.morph(tiny_unet, default_schedule, CLASSES, **kw)
    again = cp.morph(tiny_unet, default_schedule, CLASSES, **kw)
    assert np.array_equal(m.frames, again.frames)
    f = m.frames.astype(int)
    steps = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))
    assert np.abs(f[-1] - f[0]).mean() > 2 * steps.max()  # no neighbour jumps as far as the two ends lie apart
    gif = Image.open(io.BytesIO(cp.morph_gif(m)))
    assert gif.n_frames == 2 * 16 - 2 and gif.size == (256, 256)  # forward, then back without the ends twice


@pytest.mark.parametrize("kwargs,match", [(dict(sampler="ddpm"), "deterministic sampler"),
                                          (dict(n=7), "frames must lie between 8 and 32"),
                                          (dict(n=33), "frames"), (dict(class_b="dragon"), "dragon"),
                                          (dict(seed_a=-1), "first seed"), (dict(steps=0), "steps")])
def test_morph_refuses_bad_settings(tiny_unet, default_schedule, kwargs, match):
    kw = dict(class_a="hero", class_b="food", seed_a=0, seed_b=0, n=8, sampler="ddim", steps=4)
    with pytest.raises(ValueError, match=match):
        cp.morph(tiny_unet, default_schedule, CLASSES, **dict(kw, **kwargs))


# --- the race -------------------------------------------------------------------------------------------
RACE = [("ddpm", 8), ("ddpm-beta", 8), ("ddim", 4), ("dpm++", 3)]


def test_every_race_column_ends_at_t0_with_plain_samplings_sprite(tiny_unet, default_schedule):
    ctx = context_for(CLASSES, "creature", 1)
    frames = list(cp.sampler_race(tiny_unet, default_schedule, ctx, RACE, 1.5, 7))
    assert len(frames) == 9 and frames[-1].done and [f.tick for f in frames] == list(range(9))
    first, last = frames[0], frames[-1]
    assert all(np.array_equal(c.x_t, first.columns[0].x_t) for c in first.columns)  # one starting noise
    assert all(c.t == default_schedule.T and c.taken == 0 for c in first.columns)
    for col, (name, steps) in zip(last.columns, RACE):
        assert col.t == 0 and col.taken == steps and col.done and col.seconds > 0
        assert np.array_equal(col.x_t, plain(tiny_unet, default_schedule, "creature", 7, name, steps, 1.5))


def test_race_moves_every_sampler_to_the_same_fraction_of_its_schedule(tiny_unet, default_schedule):
    frames = list(cp.sampler_race(tiny_unet, default_schedule, context_for(CLASSES, "hero", 1), RACE, 0.0, 0))
    for f in frames:
        for col in f.columns:
            # the last step due at fraction tick/ticks: never ahead, never a whole step behind
            assert col.taken / col.steps <= f.tick / f.ticks < (col.taken + 1) / col.steps
        ts = [c.t for c in f.columns]
        assert max(ts) - min(ts) <= default_schedule.T / min(s for _, s in RACE) + 1
    for k in range(len(RACE)):
        assert all(a.columns[k].t >= b.columns[k].t for a, b in zip(frames, frames[1:]))
        assert all(a.columns[k].seconds <= b.columns[k].seconds for a, b in zip(frames, frames[1:]))


def test_race_is_deterministic_and_draws_a_gif(tiny_unet, default_schedule):
    ctx = context_for(CLASSES, "hero", 1)
    a, b = (list(cp.sampler_race(tiny_unet, default_schedule, ctx, RACE[:2], 2.0, 3)) for _ in range(2))
    assert all(np.array_equal(ca.x_t, cb.x_t) and np.array_equal(ca.x0, cb.x0)
               for fa, fb in zip(a, b) for ca, cb in zip(fa.columns, fb.columns))
    race = cp.SamplerRace(tiny_unet, default_schedule, ctx, RACE[:2], 2.0, 3)
    while not race.done:
        race.advance()
    assert len(race.frames) == 9 and race.advance() is race.frames[-1]  # a finished race stays put
    gif = Image.open(io.BytesIO(cp.race_gif(race.frames)))
    assert gif.n_frames == 9 and gif.width > 2 * 16 * 4


@pytest.mark.parametrize("entries,match", [([("ddim", 4)], "2 to 4 samplers"), ([("ddim", 4)] * 5, "2 to 4"),
                                           ([("ddim", 4), ("euler", 4)], "unknown sampler 'euler' in column 2"),
                                           ([("ddim", 4), ("ddim", 501)], "steps of column 2")])
def test_race_refuses_bad_entries(tiny_unet, default_schedule, entries, match):
    with pytest.raises(ValueError, match=match):
        cp.SamplerRace(tiny_unet, default_schedule, context_for(CLASSES, "hero", 1), entries, 1.0, 0)


# --- the guidance sweep ---------------------------------------------------------------------------------
def test_sweep_columns_are_plain_sampling_at_each_guidance(tiny_unet, default_schedule):
    ctx = context_for(CLASSES, "item", 1)
    gs = [0.0, 2.0, 6.0]
    cols = dict(cp.guidance_sweep(tiny_unet, default_schedule, ctx, gs, [11], "ddpm", 5))
    assert sorted(cols) == [0, 1, 2]
    for j, g in enumerate(gs):  # with DDPM too: the same noise at every step for every column
        assert np.array_equal(cols[j][0], plain(tiny_unet, default_schedule, "item", 11, "ddpm", 5, g))
    assert not np.array_equal(cols[0], cols[2])  # (a random model saturates most pixels either way)


def test_sweep_rows_are_the_seeds_and_repeat_exactly(tiny_unet, default_schedule):
    ctx = context_for(CLASSES, "hero", 1)
    seeds = cp.sweep_seeds(4, 3)
    assert seeds == [4, 5, 6] and cp.sweep_seeds(2 ** 31 - 1, 2) == [2 ** 31 - 1, 0]
    a = [c for _, c in cp.guidance_sweep(tiny_unet, default_schedule, ctx, [1.0, 3.0], seeds, "ddim", 4)]
    b = [c for _, c in cp.guidance_sweep(tiny_unet, default_schedule, ctx, [1.0, 3.0], seeds, "ddim", 4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and a[0].shape == (3, 16, 16, 3)
    # a deterministic sampler
    assert np.array_equal(a[0][1], plain(tiny_unet, default_schedule, "hero", 5, "ddim", 4, 1.0))
    pic = cp.sweep_picture([a[0], None], [1.0, 3.0], seeds)
    assert pic.width > 2 * 16 * cp.SCALE and pic.height > 3 * 16 * cp.SCALE


@pytest.mark.parametrize("text,match", [("", "at least one"), ("1, x", "must be a number"),
                                        ("1 2 3 4 5 6 7 8 9 10 11 12 13", "at most 12"), ("-1", "between 0")])
def test_parse_numbers_explains_bad_lists(text, match):
    with pytest.raises(ValueError, match=match):
        cp.parse_numbers(text, "guidance", 0, 10, 12)


def test_parse_numbers_reads_commas_and_spaces():
    assert cp.parse_numbers("0, 0.5,1  1.5", "guidance", 0, 10, 12) == [0, 0.5, 1, 1.5]
    assert cp.parse_numbers([2, 3], "guidance", 0, 10, 12) == [2, 3]


def test_captioned_grid_keeps_pixels_crisp_and_captions_outside():
    sprite = np.zeros((16, 16, 3), np.uint8)
    sprite[::2] = 200
    im = np.asarray(cp.captioned_grid([[sprite]], col_labels=["a long caption here"], row_labels=["row"],
                                      footers=[["t = 0"]], scale=4))
    ys, xs = np.nonzero((im == 200).all(-1))
    block = im[ys.min():ys.min() + 64, xs.min():xs.min() + 64]
    assert block.shape == (64, 64, 3)
    assert np.array_equal(block, np.repeat(np.repeat(sprite, 4, 0), 4, 1))  # the sprite, untouched by text
