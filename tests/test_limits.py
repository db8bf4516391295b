"""The limits and their validation (ddpm.limits): the same bad value gets the same message in the
library, the sampling CLI and the app's handlers."""
from __future__ import annotations

import pytest
import torch

from ddpm import limits
from ddpm.interactive import generate
from ddpm.sample import main as sample_main
from ddpm.sampling import sample
from ddpm.schedule import NoiseSchedule
from helpers import CLASSES



@pytest.mark.parametrize("value,ok", [(3, True), ("4", True), (3.0, True), (float("nan"), False),
                                      (float("inf"), False), (None, False), ("x", False), (11, False), (2.5, False)])
def test_check_number(value, ok):
    if ok:
        assert limits.check_number(value, "n", 0, 10, integer=True) == int(float(value))
    else:
        with pytest.raises(ValueError, match="^n must"):
            limits.check_number(value, "n", 0, 10, integer=True)


def test_limits_hold_at_their_edges():
    assert limits.check_guidance(limits.MAX_GUIDANCE) == limits.MAX_GUIDANCE
    assert limits.check_seed(limits.MAX_SEED) == limits.MAX_SEED
    assert limits.check_steps(500, 500) == 500
    for bad in (lambda: limits.check_guidance(limits.MAX_GUIDANCE + 0.5), lambda: limits.check_seed(-1),
                lambda: limits.check_seed(limits.MAX_SEED + 1), lambda: limits.check_steps(501, 500),
                lambda: limits.check_batch(limits.MAX_BATCH + 1)):
        with pytest.raises(ValueError, match="must lie between"):
            bad()


def test_too_much_guidance_gets_one_message_everywhere(tiny_unet, tmp_path, tiny_model_dir, capsys):
    message = "guidance must lie between 0 and 10, got 12"
    context = torch.eye(5)[:1]
    with pytest.raises(ValueError) as library:
        sample(tiny_unet, NoiseSchedule(), context, steps=2, guidance=12)
    with pytest.raises(ValueError) as handler:
        generate(tiny_unet, NoiseSchedule(), CLASSES, "hero", 1, "ddpm", 2, 12, 0)
    assert str(library.value) == str(handler.value) == message
    with pytest.raises(SystemExit):
        sample_main(["--model", str(tiny_model_dir), "--guidance", "12", "--out", str(tmp_path / "x.png")])
    assert "--guidance must lie between 0 and 10, got 12" in capsys.readouterr().err


def test_seed_out_of_range_is_refused_by_the_library(tiny_unet):
    with pytest.raises(ValueError, match="seed must lie between 0 and 2147483647"):
        sample(tiny_unet, NoiseSchedule(), torch.eye(5)[:1], steps=2, seed=-1)
