"""Would int8 convolutions make a whole guided step faster than bf16 on a CPU with VNNI? Timed and compared.

    python benchmarks/int8_step.py [--model weights] [--n 16] [--rounds 10] [--threads 2] [--keep out.]

int8_conv.py times one convolution alone. This times the sampler's guided step for --n sprites (the
folded channels-last inference copy's forward_guided) three ways, interleaved round by round, best of
the rounds: in fp32, under bf16 autocast (what the sampler runs where the CPU has bf16), and with every
Conv2d replaced by a static int8 one (per-channel int8 weights; uint8 activations with one scale per
tensor, calibrated from the minimum and maximum each conv saw over a DDPM-50 run of all classes; the
input is quantized and the output dequantized around each conv, everything else stays fp32). The
transposed convolutions, the embeddings and the convs named by --keep stay fp32: by default the output
head, whose wide activations lose the most to 8 bits. It then compares the guided predictions of
bf16 and int8 with fp32's on the states of another DDPM-50 run, every fifth step: a copy whose error
is far above bf16's would change the sprites, and needs a quality evaluation before it could be used.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ddpm.checkpoint import load_model, load_schedule  # noqa: E402
from ddpm.device import bf16_is_fast, cpu_description  # noqa: E402
from ddpm.model import inference_model  # noqa: E402
from ddpm.sampling import predict_noise, sample_steps  # noqa: E402
from int8_conv import int8_weights  # noqa: E402
from winograd_conv import guided_step_parser  # noqa: E402


def quantization(lo: float, hi: float, levels: int = 255) -> tuple[float, int]:
    """Scale and zero point of uint8 codes covering [lo, hi] (widened to hold 0, as zero padding needs)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-8) / levels
    return scale, int(round(-lo / scale))


class Int8Conv2d(torch.nn.Module):
    """conv with per-channel int8 weights, run on its input quantized to uint8 with a fixed scale."""

    def __init__(self, conv: torch.nn.Conv2d, input_range: tuple[float, float], output_range: tuple[float, float]):
        super().__init__()
        self.conv = int8_weights(conv)
        self.conv.scale, self.conv.zero_point = quantization(*output_range)
        self.input_scale, self.input_zero_point = quantization(*input_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.quantize_per_tensor(x.float(), self.input_scale, self.input_zero_point, torch.quint8)
        return self.conv(q).dequantize()


def record_ranges(model: torch.nn.Module, schedule, context: torch.Tensor, seed: int) -> tuple[dict, list]:
    """Each Conv2d's (input min, input max, output min, output max) over a DDPM-50 run of the inference
    copy, and the run's (x_t, t) states."""
    net = inference_model(model)
    ranges: dict[str, list[float]] = {}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0]
            seen = [x.min().item(), x.max().item(), output.min().item(), output.max().item()]
            old = ranges.get(name, seen)
            ranges[name] = [min(old[0], seen[0]), max(old[1], seen[1]), min(old[2], seen[2]), max(old[3], seen[3])]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_modules()
               if type(m) is torch.nn.Conv2d]
    states = []
    try:
        for step in sample_steps(model, schedule, context, seed=seed):
            states.append((step.x_t.clone(), step.t))
    finally:
        for h in handles:
            h.remove()
    return ranges, states


def int8_copy(net: torch.nn.Module, ranges: dict) -> torch.nn.Module:
    """A copy of net with every Conv2d named in ranges replaced by Int8Conv2d."""
    net = copy.deepcopy(net)
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Conv2d and full in ranges:
                lo_in, hi_in, lo_out, hi_out = ranges[full]
                setattr(module, child_name, Int8Conv2d(child, (lo_in, hi_in), (lo_out, hi_out)))
    return net


def main() -> int:
    p = guided_step_parser(__doc__.split("\n")[0])
    p.add_argument("--keep", default="out.", help="comma-separated prefixes of the convs left in fp32 ('' for none)")
    args = p.parse_args()
    keep = tuple(k for k in args.keep.split(",") if k)
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    model = load_model(args.model).eval()
    schedule = load_schedule(args.model)
    classes = torch.arange(args.n) % model.n_classes
    context = torch.nn.functional.one_hot(classes, model.n_classes).float()
    ranges, _ = record_ranges(model, schedule, context, seed=0)
    _, states = record_ranges(model, schedule, context, seed=1)
    fp32 = inference_model(model)
    int8 = int8_copy(fp32, {name: r for name, r in ranges.items() if not name.startswith(keep)})
    variants = {"fp32": (fp32, "fp32"), "int8 convs": (int8, "fp32")}
    if bf16_is_fast():
        variants["bf16 autocast"] = (fp32, "bf16")

    def guided(name: str, x: torch.Tensor, t: int) -> torch.Tensor:
        net, precision = variants[name]
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            return predict_noise(net, schedule, x, t, context, args.guidance).float()

    x_mid, t_mid = states[len(states) // 2]
    best = {name: float("inf") for name in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name in variants:
                start = time.perf_counter()
                guided(name, x_mid, t_mid)
                best[name] = min(best[name], time.perf_counter() - start)
        errors = {name: [] for name in variants if name != "fp32"}
        for x, t in states[::5]:
            reference = guided("fp32", x, t)
            for name in errors:
                d = guided(name, x, t) - reference
                errors[name].append((t, d.abs().max().item(), (d.pow(2).mean() / reference.pow(2).mean()).sqrt().item()))
    print(f"# {args.model}: one guided step for {args.n} sprites, {args.threads} threads, best of {args.rounds}, "
          f"{sum(isinstance(m, Int8Conv2d) for m in int8.modules())} of {len(ranges)} convs in int8 (engine {torch.backends.quantized.engine}), {cpu_description()}, "
          f"torch {torch.__version__}\n")
    print("| network | best (ms) | fp32 / this | largest difference from fp32 | worst relative RMS difference |")
    print("|---|---|---|---|---|")
    for name, seconds in best.items():
        worst = max(errors.get(name, [(0, 0.0, 0.0)]), key=lambda e: e[2])
        largest = max((e[1] for e in errors.get(name, [])), default=0.0)
        print(f"| {name} | {seconds * 1e3:.1f} | {best['fp32'] / seconds:.2f}x | {largest:.3f} | "
              f"{worst[2]:.1%} (t = {worst[0]}) |")
    print("\nRelative RMS difference from fp32 by t:\n")
    print("| t | " + " | ".join(errors) + " |\n|---|" + "---|" * len(errors))
    for i, (x, t) in enumerate(states[::5]):
        print(f"| {t} | " + " | ".join(f"{errors[name][i][2]:.2%}" for name in errors) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
