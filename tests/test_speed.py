"""The fast inference paths equal the plain model: the shared-encoder guidance pass, BatchNorm
folding and the cached inference copy that sample_steps runs (tiny models, one thread)."""
from __future__ import annotations

import pytest
import torch

from ddpm.model import ContextUnet, fold_batchnorm, inference_model
from ddpm.sampling import predict_noise, sample
from ddpm.schedule import NoiseSchedule

from helpers import CLASSES, make_tiny_unet

T = 500


class Wrapped(torch.nn.Module):
    """Hides the ContextUnet so predict_noise and sample_steps take their plain paths."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.height, self.in_channels = inner.height, inner.in_channels

    def forward(self, x, t, c):
        return self.inner(x, t, c)


def two_pass(model, x, t, c, w):
    with torch.no_grad():
        cond, uncond = model(x, t, c), model(x, t, torch.zeros_like(c))
    return cond + w * (cond - uncond)


@pytest.mark.parametrize("kwargs", [{}, dict(norm="group"), dict(time_embedding="sinusoidal"), dict(height=32)])
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_forward_guided_equals_two_passes(kwargs, w):
    model = make_tiny_unet(**kwargs)
    h = model.height
    x = torch.randn(3, 3, h, h, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.9, 0.4, 0.02])  # a different time per sprite must work too
    c = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 1]])
    with torch.no_grad():
        fast = model.forward_guided(x, t, c, w)
        assert torch.allclose(model(x, t, c), model.decode(model.encode(x, t), c))
        cond, uncond = model.conditional_and_unconditional(x, t, c)
        torch.testing.assert_close(cond, model(x, t, c), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(uncond, model(x, t, torch.zeros_like(c)), rtol=1e-4, atol=1e-5)
    ref = two_pass(model, x, t, c, w)
    assert not torch.allclose(ref, two_pass(model, x, t, c, 0.0)), "guidance must matter for the test to mean anything"
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_predict_noise_uses_the_shared_encoder_and_matches():
    model = make_tiny_unet()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    c = torch.eye(5)[[0, 1, 2, 3]]
    with torch.no_grad():
        fast = predict_noise(model, NoiseSchedule(T), x, 300, c, guidance=2.0)
        plain = predict_noise(Wrapped(model), NoiseSchedule(T), x, 300, c, guidance=2.0)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    calls = []
    model.encode = lambda *a, _enc=model.encode: calls.append(a[0].shape[0]) or _enc(*a)
    with torch.no_grad():
        predict_noise(model, NoiseSchedule(T), x, 300, c, guidance=2.0)
    assert calls == [4], "the encoder must run once on the undoubled batch"


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_batchnorm_equals_the_model_and_leaves_it_alone(channels_last):
    model = make_tiny_unet(seed=3)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    after = model.state_dict()
    assert list(after) == list(before), "the trained model's state_dict keys must not change"
    assert all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    t, c = torch.rand(5), torch.eye(5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x, t, c), model(x, t, c), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(folded.forward_guided(x, t, c, 3.0), two_pass(model, x, t, c, 3.0),
                                   rtol=1e-4, atol=1e-5)


def test_fold_batchnorm_keeps_a_group_norm_model_as_it_is():
    model = make_tiny_unet(norm="group")
    folded = fold_batchnorm(model)
    assert [type(m) for m in folded.modules()] == [type(m) for m in model.modules()]


def test_inference_copy_is_cached_and_follows_weight_changes():
    model = make_tiny_unet(seed=5)
    fast = inference_model(model)
    assert fast is not model and inference_model(model) is fast
    x = torch.randn(2, 3, 16, 16)
    t, c = torch.full((2,), 0.5), torch.eye(5)[:2]
    with torch.no_grad():
        model.out[-1].bias.add_(1.0)  # an in-place update, as an EMA step makes
    fresh = inference_model(model)
    assert fresh is not fast
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, c), model(x, t, c), rtol=1e-4, atol=1e-5)
        model.load_state_dict(make_tiny_unet(seed=6).state_dict())
        torch.testing.assert_close(inference_model(model)(x, t, c), model(x, t, c), rtol=1e-4, atol=1e-5)
    model.train()
    assert inference_model(model) is model, "a model in training mode is never swapped"
    wrapped = Wrapped(model.eval())
    assert inference_model(wrapped) is wrapped


@pytest.mark.parametrize("sampler,steps", [("ddpm", 6), ("ddim", 5), ("dpm++", 5)])
def test_sampling_with_the_fast_paths_equals_the_plain_model(sampler, steps):
    model = make_tiny_unet(seed=7)
    schedule = NoiseSchedule(T)
    c = torch.eye(5)[[0, 2, 4]]
    fast = sample(model, schedule, c, sampler=sampler, steps=steps, guidance=2.0, seed=3)
    plain = sample(Wrapped(model), schedule, c, sampler=sampler, steps=steps, guidance=2.0, seed=3)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert isinstance(model, ContextUnet) and model.out[-1].weight.is_contiguous(), "the model itself stays as it was"


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_suite_quick_smoke(tmp_path, benchmark_inputs):
    """benchmarks/run_all.py end to end on a tiny model and data (app and training sections skipped)."""
    import json

    model, data = benchmark_inputs
    out = tmp_path / "out"
    assert load_benchmark("run_all").main(["--model", str(model), "--data", str(data), "--out", str(out), "--quick",
                                           "--samples-per-class", "3", "--settings", "ddpm:6,ddim:3,dpm++:3,ddpm-beta:3",
                                           "--skip", "app,train"]) == 0
    res = json.loads((out / "benchmarks.json").read_text())
    assert [r["setting"] for r in res["quality"]] == ["DDPM-6", "DDIM-3", "DPM-Solver++-3", "DDPM (the course's variance)-3"]
    assert all(0 <= r["isolated"] <= 1 for r in res["quality"])
    assert {"DDPM-6", "DDIM-3", "DPM-Solver++-3"} <= set(res["generation"])
    assert [r["batch"] for r in res["steps"]] == [1, 16, 64]
    text = (out / "benchmarks.md").read_text()
    assert "| DDIM-3 |" in text and "| 64 |" in text and "| isolated pixels |" in text
    assert (out / "quality_vs_time.png").stat().st_size > 1000


def test_cpu_description_names_the_bf16_and_int8_features(monkeypatch):
    import ddpm.device

    class FakeCpuinfo:
        def __init__(self, path):
            pass

        def read_text(self):
            return "model name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16 avx512_vnni sse2\n"

    monkeypatch.setattr(ddpm.device, "Path", FakeCpuinfo)
    assert ddpm.device.cpu_description() == "Some CPU (avx512_bf16, avx512_vnni)"
    monkeypatch.setattr(FakeCpuinfo, "read_text", lambda self: "model name : Old CPU\nflags : fpu avx2\n")
    assert ddpm.device.cpu_description() == "Old CPU (no bf16 or int8 features)"


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch's eager int8 API is deprecated
def test_int8_conv_benchmark_computes_the_same_conv_and_reports_each_kernel(capsys, monkeypatch):
    import sys

    bench = load_benchmark("int8_conv")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    q, qx = bench.quantized_copy(conv, x)
    with torch.no_grad():
        want, got = conv(x), q(qx).dequantize()
    assert (got - want).abs().max() < 0.05 * want.abs().max(), "the int8 conv computes what the fp32 one does"
    engine = torch.backends.quantized.engine
    monkeypatch.setattr(sys, "argv", ["int8_conv.py", "--width", "8", "--batch", "2", "--rounds", "1", "--threads", "1"])
    assert bench.main() == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    columns = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {row.split("|")[1].strip(): [c.strip() for c in row.strip("|").split("|")] for row in rows[1:]}
    assert table["fp32"][columns.index("fp32 / this")] == "1.00x", rows
    assert ("bf16" in table) == ("bf16 / this" in columns), "a bf16 row comes with its column"
    if "bf16" in table:
        assert table["bf16"][columns.index("bf16 / this")] == "1.00x", rows
    assert any(name.startswith("int8 (") for name in table), rows
    assert torch.backends.quantized.engine == engine, "the benchmark leaves the quantized engine as it found it"


def test_winograd_conv_computes_the_3x3_conv_and_the_benchmark_compares_whole_steps(capsys, monkeypatch, tiny_model_dir):
    import sys

    bench = load_benchmark("winograd_conv")
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(8, 5, 3, padding=1)
    for side in (16, 8, 4):
        x = torch.randn(3, 8, side, side, generator=g)
        with torch.no_grad():
            want, got = conv(x), bench.WinogradConv3x3(conv)(x)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4), side
    with pytest.raises(ValueError, match="multiples of 4"):
        bench.WinogradConv3x3(conv)(torch.randn(1, 8, 6, 6))
    for other in (torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")):
        with pytest.raises(ValueError, match="3x3"):
            bench.WinogradConv3x3(other)
    net = inference_model(make_tiny_unet().eval())
    fast = bench.winograd_copy(net)
    assert any(isinstance(m, bench.WinogradConv3x3) for m in fast.modules())
    assert not any(bench.is_plain_3x3(m) for m in fast.modules()), "every plain 3x3 conv is replaced"
    assert not any(isinstance(m, bench.WinogradConv3x3) for m in net.modules()), "the copy leaves the net alone"
    x, t, c = torch.randn(4, 3, 16, 16, generator=g), torch.full((4,), 0.3), torch.eye(5)[:4]
    with torch.no_grad():
        assert torch.allclose(fast.forward_guided(x, t, c, 1.5), net.forward_guided(x, t, c, 1.5), atol=1e-4)
    monkeypatch.setattr(sys, "argv", ["winograd_conv.py", "--model", str(tiny_model_dir), "--n", "2", "--rounds", "1",
                                      "--threads", "1"])
    assert bench.main() == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| direct (oneDNN) |") and "| 1.00x | 0.0e+00 |" in rows[1], rows
    assert rows[2].startswith("| Winograd F(4x4, 3x3) |"), rows


def test_analytic_candidate_adds_the_x0_error_to_the_posterior_variance():
    from ddpm.sampling import make_sampler, posterior_mean_coefficients, posterior_variance

    bench = load_benchmark("sampler_candidates")
    schedule = NoiseSchedule(T)
    x, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)

    def step(sampler):
        return sampler.step(eps, 300, 250, x, torch.Generator().manual_seed(0))[0]

    plain = step(make_sampler("ddpm", schedule))
    assert torch.equal(step(bench.AnalyticDDPM(schedule, [1, T], [0.0, 0.0])), plain), "no error: the posterior variance"
    # an error of 0.05 widens the noise by the x0 error carried through the mean's x0 coefficient
    a_t, a_s = schedule.alpha_bar(300, x), schedule.alpha_bar(250, x)
    c, _ = posterior_mean_coefficients(a_t, a_s)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    widened = (posterior_variance(a_t, a_s) + c ** 2 * (1 - a_t) / a_t * 0.05).sqrt() - posterior_variance(a_t, a_s).sqrt()
    torch.testing.assert_close(step(bench.AnalyticDDPM(schedule, [1, T], [0.05, 0.05])) - plain, widened * noise)


def test_sampler_candidates_benchmark_measures_every_candidate(benchmark_inputs, capsys):
    pytest.importorskip("diffusers")
    model, data = benchmark_inputs
    bench = load_benchmark("sampler_candidates")
    assert bench.main(["--model", str(model), "--data", str(data), "--steps", "3", "--n", "3", "--seeds", "0",
                       "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for name in bench.CANDIDATES:
        assert f"| {model} | {name} | 3 |" in out, out
    for bad in (["--candidates", "ddpm,euler"], ["--seeds", "0,0"]):
        with pytest.raises(SystemExit):
            bench.main(bad)


def test_sa_solver_candidate_steps_on_the_library_grid_or_refuses():
    pytest.importorskip("diffusers")
    from ddpm.sampling import make_timesteps
    from ddpm.schedule import to_diffusers_timestep

    bench = load_benchmark("sampler_candidates")
    schedule = NoiseSchedule(T)
    sampler = bench.DiffusersSASolver(schedule, 10, lambda t: 1.0)
    assert sampler.scheduler.timesteps.tolist() == [to_diffusers_timestep(t) for t in make_timesteps(T, 10)[:-1]]
    with pytest.raises(ValueError, match="other times"):  # diffusers rounds the 24-step grid differently
        bench.DiffusersSASolver(schedule, 24, lambda t: 1.0)


def test_guidance_candidates_add_their_terms_to_the_conditional_prediction():
    bench = load_benchmark("guidance_candidates")
    good, bad = make_tiny_unet(0).eval(), make_tiny_unet(1).eval()
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(4, 3, 16, 16, generator=g), torch.full((4,), 0.4), torch.eye(5)[:4]
    zero = torch.zeros_like(c)
    with torch.no_grad():
        eps_c, eps_0 = good(x, t, c), good(x, t, zero)
        bad_c, bad_0 = bad(x, t, c), bad(x, t, zero)
        for text, want in [("cfg1.5", eps_c + 1.5 * (eps_c - eps_0)),
                           ("auto2", eps_c + 2 * (eps_c - bad_c)),
                           ("autou1.5", eps_c + 1.5 * (eps_c - bad_0)),
                           ("auto0.5+cfg1", eps_c + (eps_c - eps_0) + 0.5 * (eps_c - bad_c))]:
            torch.testing.assert_close(bench.Guided(good, bad, bench.parse_candidate(text, T), T)(x, t, c), want,
                                       atol=1e-4, rtol=1e-4, msg=text)
        # t = 0.4 is step 200 of 500: inside 150-250, outside 0-150
        torch.testing.assert_close(bench.Guided(good, bad, bench.parse_candidate("auto2@150-250+cfg1@0-150", T), T)(x, t, c),
                                   eps_c + 2 * (eps_c - bad_c), atol=1e-4, rtol=1e-4)
    for text in ("cfg", "auto1+auto2", "neg1", "cfg-1", "", "auto1@150"):
        with pytest.raises(ValueError, match="terms are"):
            bench.parse_candidate(text, T)
    for text in ("auto1@150-100", f"cfg1@0-{T + 1}"):
        with pytest.raises(ValueError, match="guidance interval"):
            bench.parse_candidate(text, T)
    # in the library's sampling loop at guidance 0, cfg1.5 draws what the library's guidance 1.5 draws
    context = torch.eye(5)[:3]
    torch.testing.assert_close(sample(bench.Guided(good, bad, bench.parse_candidate("cfg1.5", T), T), NoiseSchedule(T), context, steps=3,
                                      guidance=0.0, seed=0),
                               sample(good, NoiseSchedule(T), context, steps=3, guidance=1.5, seed=0),
                               atol=1e-4, rtol=1e-4)


def test_guidance_candidates_benchmark_measures_every_candidate(benchmark_inputs, tmp_path, capsys):
    from ddpm.checkpoint import save_model

    model, data = benchmark_inputs
    bench = load_benchmark("guidance_candidates")
    torch.manual_seed(1)
    save_model(ContextUnet(n_feat=8, class_names=CLASSES), NoiseSchedule(T), tmp_path / "bad")
    save_model(ContextUnet(n_feat=8, class_names=CLASSES), NoiseSchedule(400), tmp_path / "other")
    save_model(ContextUnet(n_feat=8, n_classes=4, class_names=CLASSES[:4]), NoiseSchedule(T), tmp_path / "four")
    common = ["--model", str(model), "--data", str(data), "--steps", "3", "--n", "3", "--seeds", "0", "--threads", "1"]
    assert bench.main(common + ["--bad", str(tmp_path / "bad"), "--candidates", "cfg1.5,autou1"]) == 0
    out = capsys.readouterr().out
    for name in ("cfg1.5", "autou1"):
        assert f"| {name} | ddpm | 3 |" in out, out
        assert f"Per class, {name} ddpm:3" in out, out  # ddpm.evaluate's per-class table for each candidate
    for wrong, says in [(["--bad", str(tmp_path / "other")], "must share"),
                        (["--bad", str(tmp_path / "four")], "must share"),
                        (["--candidates", "cfg1.5,euler2"], "terms are"), (["--sampler", "euler"], "--sampler")]:
        with pytest.raises(SystemExit):
            bench.main(common + wrong)
        assert says in capsys.readouterr().err, wrong


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # torch's eager int8 API is deprecated
@pytest.mark.filterwarnings("ignore:.*_empty_affine_quantized:UserWarning")
def test_int8_step_quantizes_the_convs_it_calibrated_and_reports_each_network(capsys, monkeypatch, tiny_model_dir):
    import sys

    bench = load_benchmark("int8_step")
    assert bench.quantization(-1.0, 3.0) == (4.0 / 255, 64)
    assert bench.quantization(0.5, 2.0)[1] == 0, "the range is widened to hold 0"
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).eval()
    x = torch.randn(2, 8, 16, 16, generator=g)
    with torch.no_grad():
        want = conv(x)
        got = bench.Int8Conv2d(conv, (x.min().item(), x.max().item()), (want.min().item(), want.max().item()))(x)
    assert got.dtype == torch.float32 and (got - want).abs().max() < 0.05 * want.abs().max()
    net = inference_model(make_tiny_unet().eval())
    names = [n for n, m in net.named_modules() if type(m) is torch.nn.Conv2d]
    copy = bench.int8_copy(net, {names[0]: [-1.0, 1.0, -1.0, 1.0]})
    assert sum(isinstance(m, bench.Int8Conv2d) for m in copy.modules()) == 1, "only the convs named are replaced"
    assert not any(isinstance(m, bench.Int8Conv2d) for m in net.modules()), "the copy leaves the net alone"
    monkeypatch.setattr(sys, "argv", ["int8_step.py", "--model", str(tiny_model_dir), "--n", "2", "--rounds", "1",
                                      "--threads", "1"])
    assert bench.main() == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert any(row.startswith("| int8 convs |") for row in rows), rows
    assert rows[1].startswith("| fp32 |") and "| 1.00x |" in rows[1], rows
