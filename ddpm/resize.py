"""Growing a trained ContextUnet into another network: widen it (the same function, more channels),
narrow it (structured pruning, fewer channels) to keep training or distilling it at another size,
give it a low-noise expert that starts as its copy, or give it a palette head in place of its output
layer.

Both know the network's layout: which layers' channels scale with n_feat and where the U-Net's
concatenations join them (ddpm.model).
"""
from __future__ import annotations

import torch
from torch import nn

from .model import EXPERT_T_TOLERANCE, ContextUnet, ResidualConvBlock, level_channels


def _resized(model: ContextUnet, n_feat: int) -> ContextUnet:
    """A new network like model at another width, on its device, with the schedule, palette and
    training history that model's folder holds (what saving it needs)."""
    return _carrying_folder(model, ContextUnet(**dict(model.config_dict, n_feat=n_feat)))


def _carrying_folder(model: ContextUnet, new: ContextUnet) -> ContextUnet:
    """new, on model's device, with the schedule, palette and training history that model's folder holds."""
    new = new.to(next(model.parameters()).device)
    new.noise_schedule, new.palette, new.training_info = model.noise_schedule, model.palette, model.training_info
    return new


def with_low_noise_expert(model: ContextUnet, expert_t: float) -> ContextUnet:
    """model with a low-noise expert for t/T <= expert_t that starts as a copy of its network, so it computes
    the same function; a model that already has one for that time is returned as it is."""
    if model.expert is not None:
        if abs(model.expert_t - expert_t) > EXPERT_T_TOLERANCE:
            raise ValueError(f"the model's expert predicts at t/T <= {model.expert_t:g}, not {expert_t:g}")
        return model
    grown = _carrying_folder(model, ContextUnet(**dict(model.config_dict, expert_t=expert_t)))
    state = model.state_dict()
    grown.load_state_dict({**state, **{f"expert.{k}": v for k, v in state.items()}}, strict=True)
    return grown


def with_palette_head(model: ContextUnet, colours: list[list[int]]) -> ContextUnet:
    """model with its last convolution replaced by a fresh one that gives logits over `colours` (a palette
    head, ddpm.model), every other weight kept; the head's initial weights come from torch's global RNG.
    Its schedule must then predict "sample", as the head gives x0."""
    if model.output_palette is not None:
        raise ValueError("the model has a palette head already")
    grown = _carrying_folder(model, ContextUnet(**dict(model.config_dict, output_palette=colours)))
    head = [k for k in grown.state_dict() if k.startswith("out.3.") or ".out.3." in k]
    keys = grown.load_state_dict({k: v for k, v in model.state_dict().items() if k not in head}, strict=False)
    assert sorted(keys.missing_keys) == sorted(head) and not keys.unexpected_keys, keys
    return grown


def widen(model: ContextUnet, n_feat: int, generator: torch.Generator | None = None) -> ContextUnet:
    """A copy of model with n_feat multiplied by a whole factor that computes the same function.

    Net2WiderNet (Chen et al., 2016) for this U-Net: every channel that scales with n_feat is
    repeated factor times in place (old channel i becomes new channels factor*i ... factor*i +
    factor - 1, so concatenations and GroupNorm groups line up), and every weight reading such
    channels is split among the copies. The split fractions are random and sum to 1 for each
    weight, so the output is unchanged but the copies get different gradients and grow apart in
    training instead of staying twins. Used to continue a trained model with more capacity.
    """
    if model.attention:
        # repeated query and key channels would scale every attention logit by the factor
        raise ValueError("a network with self-attention cannot be widened this way")
    if model.distilled_guidance:
        raise ValueError("a network distilled for guidance cannot be widened: widen its teacher")
    if model.expert is not None:
        raise ValueError("a network with a low-noise expert is not resized; resize the model it was grown from")
    factor, rest = divmod(n_feat, model.n_feat)
    if rest or factor < 1:
        raise ValueError(f"n_feat {n_feat} is not a whole multiple of the model's {model.n_feat}")
    wide = _resized(model, n_feat)
    old_modules = dict(model.named_modules())

    def split(w: torch.Tensor, dim: int) -> torch.Tensor:
        # each input channel's weight spread over its copies with random fractions summing to 1
        w = w.repeat_interleave(factor, dim)
        shape = list(w.shape)
        shape[dim] //= factor
        shape.insert(dim + 1, factor)
        fractions = torch.rand(shape, generator=generator).to(w) + 0.5  # within 1:3 of each other
        fractions = fractions / fractions.sum(dim + 1, keepdim=True)
        return w * fractions.flatten(dim, dim + 1)

    with torch.no_grad():
        for name, new in wide.named_modules():
            old = old_modules[name]
            for key, target in list(new.named_parameters(recurse=False)) + list(new.named_buffers(recurse=False)):
                value = getattr(old, key)
                # (out, in, ...) for Conv2d and Linear; ConvTranspose2d stores (in, out, ...)
                in_dim = 0 if isinstance(new, nn.ConvTranspose2d) else 1
                for dim in range(value.dim()):
                    if target.shape[dim] == value.shape[dim]:
                        continue
                    if target.shape[dim] != factor * value.shape[dim]:
                        raise ValueError(f"{name}.{key}: cannot widen {tuple(value.shape)} to {tuple(target.shape)}")
                    is_input = key == "weight" and value.dim() >= 2 and dim == in_dim
                    value = split(value, dim) if is_input else value.repeat_interleave(factor, dim)
                target.copy_(value)
    return wide.train(model.training)


class _Space:
    """One set of channels that several layers share.

    producers: the layers whose output channels they are; readers: (layer, offset, through) for each
    layer whose input channels they are, from `offset` on where they are a later part of a
    concatenation, and `through` the module in between when the layer reads them transformed (else
    None); observe: the module whose output shows them, or with observe_input its first input.
    """

    def __init__(self, width: int, producers: list[nn.Module], observe: nn.Module | None,
                 observe_input: bool = False):
        self.width, self.producers, self.observe, self.observe_input = width, producers, observe, observe_input
        self.readers: list[tuple[nn.Module, int, nn.Module | None]] = []


def _channel_spaces(model: ContextUnet) -> tuple[list[_Space], set[nn.Module]]:
    """Every set of channels of model that scales with n_feat, and the 1x1 shortcuts that are unused
    (kept only for their state_dict keys)."""
    spaces: list[_Space] = []
    unused: set[nn.Module] = set()

    def block(b: ResidualConvBlock, width: int, input_readers: list) -> list[nn.Module]:
        """Registers the block as a reader of its input and its inner channels; returns the
        producers of its output."""
        input_readers.append((b.conv1[0], 0, None))
        shortcut = [b.shortcut] if isinstance(b.shortcut, nn.Conv2d) else []
        input_readers += [(m, 0, None) for m in shortcut]
        if shortcut and not b.is_res:
            unused.add(b.shortcut)
        inner = _Space(width, [b.conv1[0], b.conv1[1]], b.conv1)
        inner.readers.append((b.conv2[0], 0, None))
        spaces.append(inner)
        return [b.conv2[0], b.conv2[1]] + shortcut

    n = model.n_feat
    x = _Space(n, block(model.init_conv, n, []), model.init_conv)  # its input is the image
    spaces.append(x)
    skips, h = [], x
    for down, width in zip(model.downs, level_channels(n, model.height)):
        mid = _Space(width, block(down.model[0], width, h.readers), down.model[0])
        h = _Space(width, block(down.model[1], width, mid.readers), down)
        spaces += [mid, h]
        skips.append(h)
    h.readers.append((model.up0[0], 0, model.to_vec))  # pooled to one pixel and through GELU first
    h = _Space(model.up0[0].out_channels, [model.up0[0], model.up0[1]], None)
    for i in reversed(range(len(model.ups))):
        up = model.ups[i]
        # the level's context and time embeddings scale and shift h channel by channel
        for embed in (model.context_embeds[i].model, model.time_embeds[i].model):
            hidden = _Space(embed[0].out_features, [embed[0]], embed[1])
            hidden.readers.append((embed[2], 0, None))
            spaces.append(hidden)
            h.producers.append(embed[2])
        h.observe, h.observe_input = up, True  # as the up level reads it, scaled and shifted
        h.readers.append((up.model[0], 0, None))
        skips[i].readers.append((up.model[0], h.width, None))  # concatenated after h
        c_out = up.model[0].out_channels
        upsampled = _Space(c_out, [up.model[0]], up.model[0])
        mid = _Space(c_out, block(up.model[1], c_out, upsampled.readers), up.model[1])
        spaces += [h, upsampled, mid]
        h = _Space(c_out, block(up.model[2], c_out, mid.readers), up)
    h.readers.append((model.out[0], 0, None))
    x.readers.append((model.out[0], h.width, None))  # the out conv reads the first up level's output, then x
    last = _Space(model.out[0].out_channels, [model.out[0], model.out[1]], model.out[2])
    last.readers.append((model.out[3], 0, None))
    spaces += [h, last]
    return spaces, unused


def _input_dim(m: nn.Module) -> int:
    return 0 if isinstance(m, nn.ConvTranspose2d) else 1  # ConvTranspose2d stores (in, out, ...)


def _bias_from_mean(m: nn.Module, w: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """What input channels with these means give layer m through its weights w on average, per output."""
    if isinstance(m, nn.ConvTranspose2d):  # stride = kernel: each output pixel sees one tap
        return torch.einsum("iokl,i->o", w, mean) / (w.shape[2] * w.shape[3])
    if isinstance(m, nn.Conv2d):  # exact away from the zero-padded border
        return torch.einsum("oikl,i->o", w, mean)
    return w @ mean


def narrow(model: ContextUnet, n_feat: int, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> ContextUnet:
    """A copy of model at a smaller n_feat that keeps, of every set of channels, those that carry the most.

    Structured pruning for this U-Net (as Fang et al. 2023, "Structural Pruning for Diffusion
    Models", prune a trained DDPM before training it on): every set of channels that scales with
    n_feat keeps the same share, chosen on the calibration inputs x (x_t), t (t/T) and c (contexts)
    by how much each channel varies there times the size of the weights that read it; a GroupNorm's
    groups each keep the same number. A removed channel's mean on those inputs is added to the biases
    of the layers that read it. The copy computes near the model, not the same: re-estimate its
    BatchNorm statistics, then train it on (for example distil the model into it).
    """
    if model.attention or model.distilled_guidance or model.expert is not None:
        raise ValueError("only a network without self-attention, a guidance input or a low-noise expert "
                         "can be narrowed")
    if not (0 < n_feat < model.n_feat and n_feat % 8 == 0):  # 8: every GroupNorm keeps whole groups
        raise ValueError(f"n_feat {n_feat} must be a multiple of 8 smaller than the model's {model.n_feat}")
    spaces, unused = _channel_spaces(model)
    seen: dict[object, torch.Tensor] = {}  # (samples, channels), by space index or `through` module

    def record(key: object, a: torch.Tensor) -> None:
        seen[key] = a.detach().float().movedim(1, -1).reshape(-1, a.shape[1])

    hooks = []
    for i, s in enumerate(spaces):
        if s.observe_input:
            hooks.append(s.observe.register_forward_pre_hook(lambda m, args, i=i: record(i, args[0])))
        else:
            hooks.append(s.observe.register_forward_hook(lambda m, args, out, i=i: record(i, out)))
    for through in {through for s in spaces for _, _, through in s.readers if through is not None}:
        hooks.append(through.register_forward_hook(lambda m, args, out: record(m, out)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x, t, c)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)

    out_index: dict[nn.Module, torch.Tensor] = {}
    in_parts: dict[nn.Module, list] = {}
    bias: dict[nn.Module, torch.Tensor] = {}
    for i, s in enumerate(spaces):
        readers = [(m, offset, through, m.weight.detach().float().narrow(_input_dim(m), offset, s.width))
                   for m, offset, through in s.readers]
        # how strongly the next layers read each channel, times how much it varies
        reach = sum(w.transpose(0, _input_dim(m)).reshape(s.width, -1).pow(2).sum(1)
                    for m, _, _, w in readers if m not in unused)
        score = seen[i].std(0) * reach.sqrt()
        groups = next((m.num_groups for m in s.producers if isinstance(m, nn.GroupNorm)), 1)
        size = s.width // groups
        kept = size * n_feat // model.n_feat  # exact: n_feat is a multiple of 8, and no norm has more groups
        keep = torch.cat([g * size + score[g * size:(g + 1) * size].topk(kept).indices.sort().values
                          for g in range(groups)])
        for m in s.producers:
            out_index[m] = keep
        for m, offset, through, w in readers:
            in_parts.setdefault(m, []).append((offset, keep + offset))
            # what a removed channel gave the layer on average becomes a constant in its bias
            removed_mean = seen[through if through is not None else i].mean(0)
            removed_mean[keep] = 0
            bias[m] = bias.get(m, m.bias.detach().float()) + _bias_from_mean(m, w, removed_mean)

    small = _resized(model, n_feat)
    old = dict(model.named_modules())
    with torch.no_grad():
        for name, new in small.named_modules():
            m = old[name]
            index_in = None
            if m in in_parts:  # the kept channels of each part of a concatenated input, in order
                index_in = torch.cat([idx for _, idx in sorted(in_parts[m], key=lambda p: p[0])])
            for key, target in list(new.named_parameters(recurse=False)) + list(new.named_buffers(recurse=False)):
                value = bias[m] if key == "bias" and m in bias else getattr(m, key).detach()
                if m in out_index and value.dim() >= 1:
                    value = value.index_select(1 if isinstance(m, nn.ConvTranspose2d) and key == "weight" else 0,
                                               out_index[m])
                if index_in is not None and key == "weight":
                    value = value.index_select(_input_dim(m), index_in)
                if value.shape != target.shape:
                    raise ValueError(f"{name}.{key}: cannot narrow {tuple(getattr(m, key).shape)} to "
                                     f"{tuple(target.shape)}")
                target.copy_(value)
    return small.train(was_training)
