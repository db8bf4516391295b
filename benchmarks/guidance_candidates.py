"""Guidance candidates measured as ddpm.evaluate measures the library's settings, before any joins the library.

    python benchmarks/guidance_candidates.py --model weights --bad weights/n_feat64 --steps 50 \
        --candidates cfg1.5,auto1,auto1+cfg0.5,autou1.5

Each candidate is a sum of guidance terms added to the model's conditional prediction eps_c:
- cfg<g>: classifier-free guidance, + g (eps_c - eps_0), eps_0 the model's own unconditional prediction
  (the library's guidance; cfg1.5 is the default).
- auto<a>: autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"),
  + a (eps_c - bad_c), bad_c the conditional prediction of a smaller, less trained model of the same
  data and schedule (--bad); in their D_bad + w (D_good - D_bad), w = 1 + a.
- autou<a>: the same with the bad model's unconditional prediction, + a (eps_c - bad_0), so that one
  term carries both the class and the quality direction.
A term followed by @lo-hi applies only to the steps with t in lo..hi. Terms join with "+":
auto1+cfg0.5, auto0.5@0-150+cfg1.5. Every candidate samples the same classes, counts and seeds as
`python -m ddpm.evaluate --settings`, with the same figures, so its rows compare with docs/quality.json
and docs/experiments.md.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ddpm.checkpoint import load_model, load_palette, load_schedule  # noqa: E402
from ddpm.data import load_data  # noqa: E402
from ddpm.evaluate import Reference, Setting, feature_spaces, measure, parse_seeds, report  # noqa: E402
from ddpm.model import inference_model  # noqa: E402
from ddpm.sampling import SAMPLER_ALIASES, check_guidance_interval, guidance_at  # noqa: E402

TERM = re.compile(r"^(cfg|autou|auto)(\d+(?:\.\d+)?)(?:@(\d+)-(\d+))?$")


def parse_candidate(text: str, T: int) -> dict[str, tuple[float, tuple[int, int] | None]]:
    """'auto1@0-150+cfg0.5' -> {'auto': (1.0, (0, 150)), 'cfg': (0.5, None)}: each term's scale and guidance
    interval (ddpm.sampling.check_guidance_interval; None: every step)."""
    terms = {}
    for part in text.split("+"):
        m = TERM.match(part.strip())
        if not m or m.group(1) in terms:
            raise ValueError(f"candidate {text!r}: terms are cfg<g>, auto<a> or autou<a>, each at most once, "
                             "optionally for t in lo-hi (auto1@0-150)")
        interval = check_guidance_interval((int(m.group(3)), int(m.group(4))), T) if m.group(3) else None
        terms[m.group(1)] = (float(m.group(2)), interval)
    return terms


class Guided(torch.nn.Module):
    """The guided prediction as one network: forward(x, t, c) = eps_c + the candidate's terms.

    Every term comes from passes at guidance 0, also for a network with distilled guidance."""

    def __init__(self, good, bad, terms: dict[str, tuple[float, tuple[int, int] | None]], T: int):
        super().__init__()
        self.good, self.bad, self.terms, self.T = inference_model(good.eval()), inference_model(bad.eval()), terms, T
        self.height, self.in_channels, self.n_classes = good.height, good.in_channels, good.n_classes

    def scale(self, term: str, t: torch.Tensor) -> float:
        """The term's scale at this step (the loop's t is t / T, one value for the batch), 0 outside its interval."""
        a, interval = self.terms.get(term, (0.0, None))
        return guidance_at(round(float(t[0]) * self.T), a, interval)

    def forward(self, x, t, c):
        zero = torch.zeros_like(c)
        g = self.scale("cfg", t)
        if g:
            eps_c, eps_0 = self.good.conditional_and_unconditional(x, t, c)
            eps = eps_c + g * (eps_c - eps_0)
        else:
            eps_c = eps = self.good(x, t, c).float()
        if a := self.scale("auto", t):
            eps = eps + a * (eps_c - self.bad(x, t, c).float())
        if a := self.scale("autou", t):
            eps = eps + a * (eps_c - self.bad(x, t, zero).float())
        return eps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="weights")
    p.add_argument("--bad", default="weights/n_feat64", help="the bad model for auto and autou terms")
    p.add_argument("--data", default="dawnlike")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--candidates", default="cfg1.5,auto1,auto1+cfg0.5,autou1.5")
    p.add_argument("--n", type=int, default=100, help="samples per class")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.sampler.lower() not in SAMPLER_ALIASES:
        p.error(f"--sampler: choose one of {', '.join(sorted(SAMPLER_ALIASES))}")
    torch.set_num_threads(args.threads)
    model, bad, schedule = load_model(args.model), load_model(args.bad), load_schedule(args.model)
    try:
        candidates = [(name, parse_candidate(name, schedule.T)) for name in args.candidates.split(",")]
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        p.error(str(e))
    same = (load_schedule(args.bad).config(), bad.n_classes, bad.height) == (schedule.config(), model.n_classes,
                                                                           model.height)
    if not same:
        p.error(f"--bad {args.bad} must share the model's schedule, classes and size")
    data = load_data(args.data, model.height)
    reference = Reference(data, feature_spaces(data), args.n)
    results = []
    for name, terms in candidates:
        result = measure(Guided(model, bad, terms, schedule.T), schedule, reference, Setting(args.sampler, args.steps, 0.0),
                         args.n, seeds, load_palette(args.model), "fp32", model_name=name)
        result.setting = Setting(args.sampler, args.steps, terms.get("cfg", (0.0,))[0])  # the tables print the cfg scale
        results.append(result)
        print(f"measured {name} ({sum(result.seconds):.0f} s)", file=sys.stderr, flush=True)
    print(f"{args.model} guided by its terms (bad model {args.bad}), {args.sampler}-{args.steps}, {args.n} per class, "
          f"seeds {args.seeds}, fp32; the model column names the candidate\n")
    print(report(results, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
