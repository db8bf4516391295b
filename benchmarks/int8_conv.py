"""Would int8 make the sampler faster here? The largest convolution of a guided step, fp32 against int8.

    python benchmarks/int8_conv.py [--width 128] [--batch 32] [--rounds 20] [--threads 2]

Convolutions take most of a reverse step's time, and the largest is a 3x3 conv of width x width channels
on the full 16x16 map (batch 32: the conditional and unconditional halves of 16 guided sprites). It is
timed in fp32 (channels-last, as the inference copy runs) and as a quantized conv (uint8 activations,
per-channel int8 weights) on every quantized engine torch offers, interleaved round by round, best of
the rounds. Where the CPU runs bf16 natively, the same conv in bf16 (what the sampler uses there) is
timed too, since there int8 has to beat bf16, not fp32. If this conv gains nothing, a whole int8
network cannot gain either: the quantize and dequantize steps around GELU, norms and concatenations
only add time. int8 kernels are fast on CPUs with VNNI (AVX512_VNNI or AVX-VNNI) or AMX;
cpu_description says which features this CPU has.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.ao.nn.quantized as nnq  # noqa: E402

from ddpm.device import bf16_is_fast, cpu_description  # noqa: E402


def int8_weights(conv: torch.nn.Conv2d) -> nnq.Conv2d:
    """A quantized conv with conv's weights in int8, one scale per output channel, and its bias."""
    q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.bias is not None)
    w = conv.weight.detach().float()
    w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp(min=1e-8).double()
    q.set_weight_bias(torch.quantize_per_channel(w, w_scale, torch.zeros_like(w_scale, dtype=torch.long), 0,
                                                 torch.qint8), None if conv.bias is None else conv.bias.detach().float())
    return q


def quantized_copy(conv: torch.nn.Conv2d, x: torch.Tensor) -> tuple[nnq.Conv2d, torch.Tensor]:
    """conv with per-channel int8 weights and x as uint8, each scale set from its own range.

    Activations use 7 of the 8 bits (torch's reduce_range for x86): without VNNI the kernels add pairs
    of uint8 x int8 products in 16 bits, which saturate with the full range.
    """
    q = int8_weights(conv)
    with torch.no_grad():
        y = conv(x)
    y_scale = float((y.max() - y.min()) / 255)
    q.scale, q.zero_point = y_scale, int((-y.min() / y_scale).round())
    x_scale = float((x.max() - x.min()) / 127)
    qx = torch.quantize_per_tensor(x, x_scale, int((-x.min() / x_scale).round()), torch.quint8)
    return q, qx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=128, help="channels in and out (the shipped model's n_feat)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(args.width, args.width, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, args.width, 16, 16).contiguous(memory_format=torch.channels_last)
    engine_before = torch.backends.quantized.engine
    runs = {"fp32": (conv, x, engine_before)}
    if bf16_is_fast():
        runs["bf16"] = (copy.deepcopy(conv).to(torch.bfloat16), x.to(torch.bfloat16), engine_before)
    for engine in torch.backends.quantized.supported_engines:
        if engine == "qnnpack":  # ARM's engine; on x86 it runs a slow reference path
            continue
        torch.backends.quantized.engine = engine
        runs[f"int8 ({engine})"] = (*quantized_copy(conv, x), engine)
    best = {name: float("inf") for name in runs}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, (f, inp, engine) in runs.items():
                torch.backends.quantized.engine = engine
                start = time.perf_counter()
                f(inp)
                best[name] = min(best[name], time.perf_counter() - start)
    torch.backends.quantized.engine = engine_before
    flops = 2 * args.batch * args.width * 256 * args.width * 9
    print(f"# {args.batch} x {args.width} x 16 x 16 by {args.width} x 3 x 3, {args.threads} threads, "
          f"{cpu_description()}, torch {torch.__version__}\n")
    columns = ["fp32"] + ["bf16"] * ("bf16" in best)
    print("| kernel | best (ms) | G(FL)OP/s | " + " | ".join(f"{c} / this" for c in columns) + " |\n|---|---|---|"
          + "---|" * len(columns))
    for name, seconds in best.items():
        ratios = " | ".join(f"{best[c] / seconds:.2f}x" for c in columns)
        print(f"| {name} | {seconds * 1e3:.2f} | {flops / seconds / 1e9:.0f} | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
