"""Would Winograd convolutions make an fp32 step faster here? A guided step with every 3x3 conv direct or Winograd.

    python benchmarks/winograd_conv.py [--model weights] [--n 16] [--rounds 10] [--threads 2]

3x3 convolutions take most of a reverse step's time. Winograd's minimal filtering (Lavin and Gray 2016,
"Fast Algorithms for Convolutional Neural Networks") computes each 4x4 block of a 3x3 conv's output
from a 6x6 tile of its input with 36 multiplications per channel pair instead of 144: the tiles and
the kernels are transformed once (B^T d B and G g G^T), multiplied channel by channel as 36 matrix
products, and transformed back (A^T m A). Here it is written in plain torch over the folded
channels-last inference copy the samplers run, and timed against that copy's direct (oneDNN)
convolutions, interleaved round by round, best of the rounds, in fp32 (bf16 would lose too much in
the transforms, whose entries reach 5 and 1/24). The table also gives the largest difference between
the two copies' guided predictions (the noise, or v).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ddpm.checkpoint import load_model  # noqa: E402
from ddpm.device import cpu_description  # noqa: E402
from ddpm.model import inference_model  # noqa: E402

# F(4x4, 3x3) (Lavin and Gray 2016, section 4.2): input tile transform B^T, kernel transform G, output A^T
B_T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
       [0, 4, 0, -5, 0, 1]]
G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6],
     [0, 0, 1]]
A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
M, TILE = 4, 6  # output block and input tile sizes


def is_plain_3x3(conv: torch.nn.Module) -> bool:
    """A 3x3 conv with stride 1, zero padding 1 and one group: what F(4x4, 3x3) here computes."""
    return (type(conv) is torch.nn.Conv2d and conv.padding_mode == "zeros"
            and (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
            == ((3, 3), (1, 1), (1, 1), (1, 1), 1))


class WinogradConv3x3(torch.nn.Module):
    """conv (3x3, stride 1, padding 1, one group) computed as F(4x4, 3x3) on maps whose sides are multiples of 4."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        if not is_plain_3x3(conv):
            raise ValueError(f"not a plain 3x3 conv with zero padding 1: {conv}")
        b_t, g, a_t = (torch.tensor(m, dtype=torch.float64) for m in (B_T, G, A_T))
        # the 2-D transforms as one matrix each, over a tile flattened row by row: (x kron y) vec(D) = vec(x D y^T)
        self.register_buffer("tile_transform", torch.kron(b_t, b_t).float())    # (36, 36)
        self.register_buffer("block_transform", torch.kron(a_t, a_t).float())   # (16, 36)
        u = torch.einsum("ai,ocij,bj->abco", g, conv.weight.detach().double(), g)  # G w G^T per channel pair
        self.register_buffer("kernel", u.reshape(TILE * TILE, conv.in_channels, conv.out_channels).float())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None
                             else torch.zeros(conv.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if h % M or w % M:
            raise ValueError(f"a {h}x{w} map: Winograd F(4x4, 3x3) here needs sides that are multiples of {M}")
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
        s_n, s_c, s_h, s_w = padded.stride()
        th, tw = h // M, w // M
        # every overlapping 6x6 tile, laid out (tile row, tile column, sprite, block row, block column, channel)
        tiles = padded.as_strided((TILE, TILE, n, th, tw, c), (s_h, s_w, s_n, M * s_h, M * s_w, s_c)).contiguous()
        v = (self.tile_transform @ tiles.view(TILE * TILE, -1)).view(TILE * TILE, n * th * tw, c)
        products = torch.bmm(v, self.kernel)  # (36, tiles, out channels): the only multiplications by weights
        out = (self.block_transform @ products.view(TILE * TILE, -1)).view(M, M, n, th, tw, -1)
        out = out.permute(2, 3, 0, 4, 1, 5).reshape(n, h, w, -1).permute(0, 3, 1, 2)  # channels-last NCHW view
        return out + self.bias.view(1, -1, 1, 1)


def winograd_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of net with every 3x3 conv (stride 1, padding 1) replaced by WinogradConv3x3."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if is_plain_3x3(child):
                setattr(parent, name, WinogradConv3x3(child))
    return net


def guided_step_parser(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that times one guided step of a model's inference copy."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "weights"))
    p.add_argument("--n", type=int, default=16, help="sprites in the guided step")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--guidance", type=float, default=1.5)
    return p


def main() -> int:
    args = guided_step_parser(__doc__.split("\n")[0]).parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    direct = inference_model(model)
    copies = {"direct (oneDNN)": direct, "Winograd F(4x4, 3x3)": winograd_copy(direct)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, model.height, model.height, generator=g).contiguous(memory_format=torch.channels_last)
    t = torch.full((args.n,), 0.5)
    c = torch.nn.functional.one_hot(torch.arange(args.n) % model.n_classes, model.n_classes).float()
    best = {name: float("inf") for name in copies}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, net in copies.items():
                start = time.perf_counter()
                outputs[name] = net.forward_guided(x, t, c, args.guidance)
                best[name] = min(best[name], time.perf_counter() - start)
    reference = outputs["direct (oneDNN)"]
    print(f"# {args.model}: one guided step for {args.n} sprites in fp32, {args.threads} threads, best of "
          f"{args.rounds}, {cpu_description()}, torch {torch.__version__}\n")
    print("| 3x3 convs | best (ms) | direct / this | largest difference in the output |\n|---|---|---|---|")
    for name, seconds in best.items():
        diff = (outputs[name] - reference).abs().max().item()
        print(f"| {name} | {seconds * 1e3:.1f} | {best['direct (oneDNN)'] / seconds:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
