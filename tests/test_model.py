"""ContextUnet: shapes for every supported height, options, the course's defects fixed."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from ddpm.model import ContextUnet, EmbedFC, ResidualConvBlock, SelfAttention, inference_model, level_channels
from ddpm.resize import narrow, widen

from helpers import CLASSES, make_tiny_unet

HEIGHTS = [16, 32, 64, 128, 256]


def run_forward_backward(model: ContextUnet, batch: int = 2):
    h = model.height
    x = torch.randn(batch, model.in_channels, h, h, requires_grad=True)
    t = torch.rand(batch)
    c = torch.eye(model.n_classes)[torch.arange(batch) % model.n_classes]
    out = model(x, t, c)
    out.square().mean().backward()
    return x, out


@pytest.mark.parametrize("height", HEIGHTS)
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("time_embedding", ["scalar", "sinusoidal"])
def test_forward_backward_shapes(height, norm, time_embedding):
    torch.manual_seed(0)
    model = ContextUnet(in_channels=3, n_feat=8, n_classes=3, height=height, norm=norm, time_embedding=time_embedding)
    x, out = run_forward_backward(model)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert x.grad is not None and x.grad.shape == x.shape and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # one down level per halving down to the 4x4 bottleneck (16 px: the course's two levels)
    assert len(model.downs) == len(model.ups) == {16: 2, 32: 3, 64: 4, 128: 5, 256: 6}[height]


def test_other_channel_counts():
    torch.manual_seed(0)
    model = ContextUnet(in_channels=1, n_feat=16, n_classes=2, height=32)
    x, out = run_forward_backward(model, batch=3)
    assert out.shape == (3, 1, 32, 32)


def test_level_channels():
    assert level_channels(64, 16) == [64, 128]
    assert level_channels(8, 256) == [8, 16, 32, 32, 32, 32]


@pytest.mark.parametrize("height", [0, 8, 12, 24, 100, 15])
def test_invalid_height_raises(height):
    with pytest.raises(ValueError, match="height"):
        ContextUnet(n_feat=8, height=height)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="norm"):
        ContextUnet(n_feat=8, norm="layer")
    with pytest.raises(ValueError, match="time_embedding"):
        ContextUnet(n_feat=8, time_embedding="learned")
    with pytest.raises(ValueError, match="class names"):
        ContextUnet(n_feat=8, n_classes=5, class_names=["a", "b"])


def test_residual_shortcut_is_a_trained_parameter():
    torch.manual_seed(0)
    model = ContextUnet(n_feat=8, n_classes=5, height=16)
    # the init block maps 3 -> n_feat channels with is_res: its 1x1 shortcut is a registered conv
    assert isinstance(model.init_conv.shortcut, torch.nn.Conv2d)
    state = model.state_dict()
    assert "init_conv.shortcut.weight" in state and "init_conv.shortcut.bias" in state
    before = model.init_conv.shortcut.weight.detach().clone()
    # the shortcut is the same module every call (the course built a new random one in forward)
    with torch.no_grad():
        model.eval()
        x, t, c = torch.randn(2, 3, 16, 16), torch.rand(2), torch.eye(5)[:2]
        assert torch.equal(model(x, t, c), model(x, t, c))
    model.train()
    run_forward_backward(model)
    grad = model.init_conv.shortcut.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert not torch.equal(model.init_conv.shortcut.weight, before)


def test_residual_block_adds_the_shortcut():
    torch.manual_seed(0)
    block = ResidualConvBlock(3, 8, is_res=True).eval()
    plain = ResidualConvBlock(3, 8, is_res=False).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), (block.shortcut(x) + plain(x)) / 1.414)


def test_embedfc_sets_input_dim():
    e = EmbedFC(5, 12)
    assert e.input_dim == 5
    assert e(torch.randn(3, 5)).shape == (3, 12)
    assert EmbedFC(1, 4)(torch.rand(3)).shape == (3, 4)  # a (B,) time vector is reshaped to (B, 1)


def test_context_and_time_change_the_output(tiny_unet):
    x = torch.randn(2, 3, 16, 16)
    t = torch.full((2,), 0.5)
    c = torch.eye(5)[[0, 1]]
    with torch.no_grad():
        base = tiny_unet(x, t, c)
        assert not torch.allclose(base, tiny_unet(x, t, torch.eye(5)[[2, 3]]))
        assert not torch.allclose(base, tiny_unet(x, t * 0.2, c))
        # eval mode: each sprite is independent of the rest of the batch
        torch.testing.assert_close(tiny_unet(x[:1], t[:1], c[:1]), base[:1], rtol=1e-4, atol=1e-5)


def test_config_dict_rebuilds_the_same_architecture(tiny_unet):
    config = tiny_unet.config_dict
    assert config["class_names"] == CLASSES
    clone = ContextUnet(**config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == \
        {k: v.shape for k, v in tiny_unet.state_dict().items()}
    assert ContextUnet(n_feat=8, n_classes=3).class_names == ["class_0", "class_1", "class_2"]


SHIPPED = Path(__file__).resolve().parent.parent / "weights"


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped weights in weights/ yet")
def test_shipped_weights_match_the_architecture():
    # trained weights depend on the state_dict key names: the shipped file must still load strictly
    from ddpm.checkpoint import load_model

    model = load_model(SHIPPED)
    assert model.class_names == CLASSES


def test_every_trainable_parameter_gets_a_gradient():
    # parameters without a gradient break DistributedDataParallel (accelerate launch on several GPUs)
    torch.manual_seed(0)
    for height in (16, 64):
        model = ContextUnet(n_feat=8, n_classes=5, height=height)
        run_forward_backward(model)
        dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert dead == [], f"trainable parameters without a gradient at {height} px: {dead}"


def test_trains_under_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ddp = None
    try:
        torch.manual_seed(0)
        ddp = DistributedDataParallel(ContextUnet(n_feat=8, n_classes=5))
        for _ in range(2):  # DDP reports unused parameters at the start of the second step
            ddp(torch.randn(2, 3, 16, 16), torch.rand(2), torch.eye(5)[:2]).square().mean().backward()
    finally:
        # the reducer holds the process group: freed only after destroy_process_group, gloo's
        # destructor can wait forever on its worker threads
        ddp = None
        gc.collect()
        dist.destroy_process_group()


def inputs(n: int, height: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, t and one-hot contexts of 3 classes for n sprites."""
    return torch.randn(n, 3, height, height), torch.rand(n), torch.eye(3)[torch.arange(n) % 3]


def give_running_statistics(model: ContextUnet, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> None:
    with torch.no_grad():  # train-mode passes give the BatchNorm running statistics real values
        for _ in range(3):
            model.train()(torch.randn_like(x), t, c)


def assert_computes_the_same(expected_model: ContextUnet, model: ContextUnet, x, t, c) -> None:
    for mode in (True, False):  # batch statistics, then running statistics
        expected_model.train(mode), model.train(mode)
        with torch.no_grad():
            expected, got = expected_model(x, t, c), model(x, t, c)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("time_embedding", ["scalar", "sinusoidal"])
@pytest.mark.parametrize("height,factor", [(16, 2), (32, 3)])
def test_widen_computes_the_same_function(norm, time_embedding, height, factor):
    torch.manual_seed(0)
    model = ContextUnet(n_feat=8, n_classes=3, height=height, norm=norm, time_embedding=time_embedding)
    x, t, c = inputs(6, height)
    give_running_statistics(model, x, t, c)
    wide = widen(model, 8 * factor, torch.Generator().manual_seed(1))
    assert wide.n_feat == 8 * factor and wide.config_dict == dict(model.config_dict, n_feat=8 * factor)
    assert sum(p.numel() for p in wide.parameters()) > (factor ** 2 - 1) * sum(p.numel() for p in model.parameters())
    assert_computes_the_same(model, wide, x, t, c)


def test_widened_copies_of_a_channel_grow_apart_in_training():
    torch.manual_seed(0)
    wide = widen(ContextUnet(n_feat=8, n_classes=3), 16, torch.Generator().manual_seed(0))
    first = wide.init_conv.conv1[0].weight  # its output channels 0 and 1 are copies of one old channel
    assert torch.equal(first[0], first[1])
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    _, out = run_forward_backward(wide, batch=4)
    opt.step()
    assert not torch.allclose(first[0], first[1])


def test_widen_needs_a_whole_multiple_of_the_width():
    model = ContextUnet(n_feat=16, n_classes=3)
    for n_feat in (24, 8):
        with pytest.raises(ValueError, match="whole multiple"):
            widen(model, n_feat)
    assert widen(model, 16).state_dict().keys() == model.state_dict().keys()


def test_a_resized_network_carries_what_saving_it_needs():
    from ddpm.schedule import NoiseSchedule

    model = ContextUnet(n_feat=16, n_classes=3)
    model.noise_schedule, model.palette, model.training_info = NoiseSchedule(), None, {"steps": 5}
    for resized in (widen(model, 32), narrow(model, 8, *inputs(4))):
        assert resized.noise_schedule is model.noise_schedule and resized.training_info == {"steps": 5}


def twins_read_once(small: ContextUnet, wide: ContextUnet) -> None:
    """In wide = widen(small, 2 * n_feat), give each channel's first copy the whole of every weight that
    reads the pair, and the second copy none: the same function, with one copy of each channel unread."""
    old = dict(small.named_modules())
    with torch.no_grad():
        for name, m in wide.named_modules():
            if not isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                continue
            dim = 0 if isinstance(m, torch.nn.ConvTranspose2d) else 1
            if m.weight.shape[dim] == 2 * old[name].weight.shape[dim]:
                pairs = m.weight.unflatten(dim, (-1, 2))
                pairs.select(dim + 1, 0).add_(pairs.select(dim + 1, 1))
                pairs.select(dim + 1, 1).zero_()


def twin_read_once_pair(**config) -> tuple[ContextUnet, ContextUnet, tuple]:
    """A small network (n_feat 8, 3 classes, with running statistics), its widened copy at 16 whose
    second copies are unread (twins_read_once), in eval mode, and 32 sprites' inputs."""
    torch.manual_seed(0)
    small = ContextUnet(n_feat=8, n_classes=3, **config)
    x, t, c = inputs(32, small.height)
    give_running_statistics(small, x, t, c)
    wide = widen(small.eval(), 16, torch.Generator().manual_seed(1)).eval()
    twins_read_once(small, wide)
    return small, wide, (x, t, c)


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("time_embedding,height", [("scalar", 16), ("sinusoidal", 32)])
def test_narrow_keeps_the_channels_that_are_read(norm, time_embedding, height):
    # A widened network whose second copy of every channel is read by nothing: narrowing it back to the
    # first width must keep exactly the read copies, in every set of channels, and compute as before.
    torch.manual_seed(0)
    small, wide, (x, t, c) = twin_read_once_pair(height=height, norm=norm, time_embedding=time_embedding)
    back = narrow(wide, 8, x, t, c)
    assert back.config_dict == small.config_dict and back.state_dict().keys() == small.state_dict().keys()
    assert_computes_the_same(small, back, x, t, c)


def test_narrow_folds_what_a_removed_constant_channel_gave_into_the_bias():
    # As above, but the second copy of every hidden channel of the context and time embeddings is a
    # constant that the next layer reads: removing it must leave what it added, as a bias.
    small, wide, (x, t, c) = twin_read_once_pair()
    with torch.no_grad():
        for embed in [*wide.context_embeds, *wide.time_embeds]:
            embed.model[0].weight[1::2] = 0
            embed.model[0].bias[1::2] = 1.0  # GELU(1) whatever the input
            embed.model[2].weight[:, 1::2] = torch.randn_like(embed.model[2].weight[:, 1::2])
        expected = wide(x, t, c)
        assert not torch.allclose(expected, small(x, t, c), atol=1e-3)  # the constants matter
        got = narrow(wide, 8, x, t, c)(x, t, c)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("reader", ["up0", "deepest up level"])
def test_narrow_keeps_the_mean_a_removed_constant_skip_gave_an_upsampling_layer(reader):
    # The second copy of every channel of the last down level is a constant, read by up0 (after
    # pooling and GELU) or by the deepest up level (concatenated after h), both transposed convs with
    # stride = kernel: the mean over the pixels of each of the reader's kept outputs must stay.
    small, wide, (x, t, c) = twin_read_once_pair()
    layer = wide.up0[0] if reader == "up0" else wide.ups[-1].model[0]
    first = layer.in_channels - wide.up0[0].in_channels  # where the last down level's channels begin
    with torch.no_grad():
        last_norm = wide.downs[-1].model[1].conv2[1]
        last_norm.weight[1::2], last_norm.bias[1::2] = 0, 0.7  # GELU(0.7) at every pixel of every sprite
        layer.weight[first + 1::2] = torch.randn_like(layer.weight[first + 1::2])
    name = next(n for n, m in wide.named_modules() if m is layer)
    pruned = narrow(wide, 8, x, t, c)
    means = {}
    for model in (wide, pruned):
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, a, out, model=model: means.__setitem__(model, out.mean((2, 3))))
        with torch.no_grad():
            model(x, t, c)
    expected, got = means[wide][:, 0::2], means[pruned]  # the first copies are the kept channels
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def test_narrow_keeps_the_same_number_of_channels_in_every_group():
    torch.manual_seed(0)
    model = ContextUnet(n_feat=16, n_classes=3).eval()
    x, t, c = inputs(32)
    with torch.no_grad():
        model.out[0].weight[:4] *= 100  # the first two groups of the out conv's GroupNorm(8, 16) carry the most
        model.out[1].weight.copy_(torch.arange(16.0))  # which channels were kept, readable after pruning
    kept = narrow(model, 8, x, t, c).out[1].weight.long()
    assert kept.div(2, rounding_mode="floor").tolist() == list(range(8)), kept  # one of each group's two


def test_narrow_refuses_what_it_cannot_prune():
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    model = ContextUnet(n_feat=32)
    for n_feat in (12, 32, 64, 4):
        with pytest.raises(ValueError, match="multiple of 8 smaller"):
            narrow(model, n_feat, x, t, c)
    # any multiple of 8 below the width: every GroupNorm keeps the same number of channels a group
    small = narrow(ContextUnet(n_feat=32, norm="group"), 24, x, t, c)
    assert small.config_dict == dict(model.config_dict, n_feat=24, norm="group") and small(x, t, c).shape == x.shape
    for other in (ContextUnet(n_feat=32, attention=True), ContextUnet(n_feat=32, distilled_guidance=4.0),
                  ContextUnet(n_feat=32, expert_t=0.2)):
        with pytest.raises(ValueError, match="attention, a guidance input or a low-noise expert"):
            narrow(other, 16, x, t, c)


# --- dropout --------------------------------------------------------------------------------------
def test_dropout_adds_no_weights_and_acts_only_in_training():
    torch.manual_seed(0)
    plain = ContextUnet(n_feat=16, class_names=CLASSES)
    dropping = ContextUnet(n_feat=16, class_names=CLASSES, dropout=0.2)
    assert plain.state_dict().keys() == dropping.state_dict().keys()
    dropping.load_state_dict(plain.state_dict())
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    plain.eval(), dropping.eval()
    assert torch.equal(plain(x, t, c), dropping(x, t, c))  # nothing is dropped when sampling
    dropping.train()
    assert not torch.allclose(plain(x, t, c), dropping(x, t, c))
    assert ContextUnet(**dropping.config_dict).dropout == 0.2


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_outside_zero_to_one_raises(p):
    with pytest.raises(ValueError, match="dropout"):
        ContextUnet(n_feat=16, class_names=CLASSES, dropout=p)


# --- self-attention -------------------------------------------------------------------------------
@pytest.mark.parametrize("height, attended", [(16, [8, 4, 8]), (32, [8, 4, 8])])
def test_attention_sits_on_the_8x8_and_smaller_maps(height, attended):
    model = ContextUnet(n_feat=8, height=height, class_names=CLASSES, attention=True)
    sizes = []
    for block in [*model.down_attention, *model.up_attention]:
        if isinstance(block, SelfAttention):
            block.register_forward_hook(lambda m, args, out: sizes.append(out.shape[-1]))
    x, out = run_forward_backward(model)
    assert out.shape == x.shape and sorted(sizes) == sorted(attended)
    assert ContextUnet(**model.config_dict).attention is True
    assert not any("attention" in k for k in ContextUnet(n_feat=8, class_names=CLASSES).state_dict())


def test_attention_starts_as_the_identity_and_then_changes_the_output():
    """Blocks added to a trained network leave its function as it was; once their output conv has
    weights they do act, and the BatchNorm-folded inference copy computes the same as the model."""
    torch.manual_seed(0)
    plain = ContextUnet(n_feat=16, class_names=CLASSES).eval()
    attending = ContextUnet(n_feat=16, class_names=CLASSES, attention=True).eval()
    keys = attending.load_state_dict(plain.state_dict(), strict=False)
    assert not keys.unexpected_keys and keys.missing_keys and all("attention" in k for k in keys.missing_keys)
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    with torch.no_grad():
        assert torch.equal(plain(x, t, c), attending(x, t, c))
        for block in attending.down_attention:
            torch.nn.init.normal_(block.proj.weight, std=0.1)
        out = attending(x, t, c)
        assert not torch.allclose(out, plain(x, t, c), atol=1e-3)
        assert torch.allclose(inference_model(attending)(x, t, c), out, atol=1e-5)


def test_attention_mixes_positions():
    """Each output pixel depends on pixels far from it (a 3x3 conv alone reaches one pixel away)."""
    torch.manual_seed(0)
    block = SelfAttention(32)
    torch.nn.init.normal_(block.proj.weight, std=0.1)
    x = torch.randn(1, 32, 8, 8, requires_grad=True)
    block(x)[0, :, 0, 0].sum().backward()
    assert x.grad[0, :, 7, 7].abs().sum() > 0 and block.heads == 1


def test_a_network_with_attention_is_not_widened():
    with pytest.raises(ValueError, match="attention"):
        widen(ContextUnet(n_feat=8, class_names=CLASSES, attention=True), 16)


# --- guidance as an input (a student distilled for guidance) ----------------------------------------------
def distilled_student(plain: ContextUnet, scale: float = 4.0, std: float = 0.0) -> ContextUnet:
    """plain grown to take guidance up to `scale`; std > 0 gives its guidance embeddings weights."""
    student = ContextUnet(**dict(plain.config_dict, distilled_guidance=scale)).eval()
    keys = student.load_state_dict(plain.state_dict(), strict=False)
    assert not keys.unexpected_keys and all(k.startswith("guidance_embeds") for k in keys.missing_keys)
    if std:
        with torch.no_grad():
            for embed in student.guidance_embeds:
                torch.nn.init.normal_(embed.model[-1].weight, std=std)
    return student


def test_a_distilled_student_starts_as_its_teachers_conditional_network():
    torch.manual_seed(0)
    plain = ContextUnet(n_feat=16, class_names=CLASSES).eval()
    student = distilled_student(plain)
    assert ContextUnet(**student.config_dict).distilled_guidance == 4.0
    assert not any("guidance" in k for k in plain.state_dict())
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    with torch.no_grad():
        for w in (0.0, 1.5, 4.0):
            assert torch.equal(student(x, t, c, w), plain(x, t, c))


def test_a_distilled_student_guides_in_one_pass_within_its_range_and_as_a_teacher_beyond():
    torch.manual_seed(0)
    plain = ContextUnet(n_feat=16, class_names=CLASSES).eval()
    student = distilled_student(plain, scale=4.0, std=0.5)
    x, t, c = torch.randn(4, 3, 16, 16), torch.rand(4), torch.eye(5)[:4]
    with torch.no_grad():
        one_pass = student(x, t, c, 1.5)
        assert not torch.allclose(one_pass, student(x, t, c, 0.0), atol=1e-3)  # the input acts
        assert torch.equal(student.forward_guided(x, t, c, 1.5), one_pass)
        # per-sprite scales: each row as if guided alone
        w = torch.tensor([0.0, 1.0, 2.5, 4.0])
        rows = torch.cat([student(x[i:i + 1], t[i:i + 1], c[i:i + 1], float(w[i])) for i in range(4)])
        assert torch.allclose(student.forward_guided(x, t, c, w), rows, atol=1e-5)
        # beyond its range: eps_c + w (eps_c - eps_0) from its own passes at guidance 0
        cond, uncond = student(x, t, c, 0.0), student(x, t, torch.zeros_like(c), 0.0)
        assert torch.allclose(student.forward_guided(x, t, c, 6.0), cond + 6.0 * (cond - uncond), atol=1e-4)
        # a zero context sees the same input whatever the scale, as guidance of it would
        zero = torch.zeros_like(c)
        assert torch.equal(student(x, t, zero, 3.0), student(x, t, zero, 0.0))
        assert torch.allclose(inference_model(student).forward_guided(x, t, c, 1.5), one_pass, atol=1e-5)


def test_a_teacher_guides_with_one_scale_per_sprite():
    torch.manual_seed(0)
    model = ContextUnet(n_feat=16, class_names=CLASSES).eval()
    x, t, c = torch.randn(3, 3, 16, 16), torch.rand(3), torch.eye(5)[:3]
    w = torch.tensor([0.0, 1.5, 4.0])
    with torch.no_grad():
        rows = torch.cat([model.forward_guided(x[i:i + 1], t[i:i + 1], c[i:i + 1], float(w[i])) for i in range(3)])
        assert torch.allclose(model.forward_guided(x, t, c, w), rows, atol=1e-5)


def test_bad_distilled_guidance_and_widening_a_student_are_refused():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="distilled_guidance"):
            ContextUnet(n_feat=8, class_names=CLASSES, distilled_guidance=bad)
    with pytest.raises(ValueError, match="teacher"):
        widen(ContextUnet(n_feat=8, class_names=CLASSES, distilled_guidance=4.0), 16)


# --- a low-noise expert ----------------------------------------------------------------------------------
def test_a_low_noise_expert_predicts_at_and_below_its_time_and_the_network_above():
    from ddpm.resize import with_low_noise_expert

    base = make_tiny_unet(seed=3)
    paired = with_low_noise_expert(base, 0.2).eval()
    x, c = torch.randn(6, 3, 16, 16), torch.eye(5)[[0, 1, 2, 3, 4, 0]]
    t = torch.tensor([0.1, 0.5, 100 / 500, 0.9, 0.02, 0.2001])
    with torch.no_grad():
        assert torch.allclose(paired(x, t, c), base(x, t, c), atol=1e-6)  # it starts as a copy
        for weight in paired.expert.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
        low = (torch.arange(6) % 2 == 0).view(-1, 1, 1, 1)  # t/T <= 0.2, with 100 / 500 in float32 among them
        expected = torch.where(low, paired.expert(x, t, c), base(x, t, c))
        assert not torch.allclose(paired.expert(x, t, c), base(x, t, c), atol=1e-3)
        assert torch.allclose(paired(x, t, c), expected, atol=1e-5)
        guided = torch.where(low, paired.expert.forward_guided(x, t, c, 1.5), base.forward_guided(x, t, c, 1.5))
        assert torch.allclose(paired.forward_guided(x, t, c, 1.5), guided, atol=1e-5)
        assert torch.allclose(inference_model(paired).forward_guided(x, t, c, 1.5), guided, atol=1e-4)
        # a sampler's step, every sprite at one time, runs one network: the expert's, or the model's
        for time, net in ((torch.full((6,), 0.2), paired.expert), (torch.full((6,), 0.3), base)):
            assert torch.equal(paired(x, time, c), net(x, time, c))


def test_a_network_with_a_low_noise_expert_saves_loads_and_is_not_resized(tmp_path):
    from ddpm.checkpoint import load_model, save_model
    from ddpm.schedule import NoiseSchedule
    from ddpm.resize import with_low_noise_expert

    paired = with_low_noise_expert(make_tiny_unet(seed=4), 0.3)
    save_model(paired, NoiseSchedule(), tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.expert_t == pytest.approx(0.3) and loaded.config_dict == paired.config_dict
    assert all(torch.equal(v, paired.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert "low-noise expert" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(ValueError, match="low-noise expert"):
        widen(paired, 32)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="expert_t"):
            ContextUnet(n_feat=16, expert_t=bad)
