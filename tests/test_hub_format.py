"""The model folder as the Hub ecosystem reads it: diffusers' schedulers, ModelCard, save_pretrained,
push_to_hub and the Hub download options, and the package's import graph."""
from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from ddpm.folder import CheckpointError

from ddpm.checkpoint import load_model, load_schedule, save_model
from ddpm.model import ContextUnet
from ddpm.sampling import DDIMSampler, DDPMSampler, make_timesteps
from ddpm.schedule import NoiseSchedule, to_diffusers_timestep

from helpers import PROJECT, make_tiny_unet
SHIPPED = [PROJECT / "weights", PROJECT / "weights" / "n_feat64"]
FOLDER_FILES = {"config.json", "model.safetensors", "scheduler_config.json", "palette.json", "training.json",
                "README.md"}


# --- diffusers reads scheduler_config.json as the same schedule ---------------------------------------------
@pytest.mark.parametrize("folder", SHIPPED, ids=["weights", "n_feat64"])
@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_diffusers_reads_the_shipped_schedule(folder, name):
    diffusers = pytest.importorskip("diffusers")
    ours = load_schedule(folder)
    theirs = getattr(diffusers, name).from_pretrained(folder)
    assert theirs.config.num_train_timesteps == ours.T and not theirs.config.clip_sample
    assert theirs.config.prediction_type == "epsilon"
    t = torch.arange(1, ours.T + 1)
    gap = (theirs.alphas_cumprod.double()[to_diffusers_timestep(t)] - ours.alpha_bars[t]).abs().max()
    assert gap < 1e-6
    theirs.set_timesteps(50)
    assert theirs.timesteps.tolist() == [to_diffusers_timestep(t) for t in make_timesteps(ours.T, 50)[:-1]]


@pytest.mark.parametrize("course_t,course_prev", [(250, 240), (10, 0)])
def test_a_diffusers_step_equals_ours(course_t, course_prev):
    diffusers = pytest.importorskip("diffusers")
    folder = SHIPPED[0]
    ours = load_schedule(folder)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    for scheduler, sampler in ((diffusers.DDIMScheduler, DDIMSampler(ours)), (diffusers.DDPMScheduler, DDPMSampler(ours))):
        theirs = scheduler.from_pretrained(folder)
        theirs.set_timesteps(50)
        out = theirs.step(eps, to_diffusers_timestep(course_t), x, generator=torch.Generator().manual_seed(1))
        prev, x0 = sampler.step(eps, course_t, course_prev, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(out.pred_original_sample, x0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.prev_sample, prev, atol=1e-4, rtol=1e-4)


def test_a_schedule_diffusers_wrote_loads(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    ours = NoiseSchedule(300, "cosine")
    diffusers.DDIMScheduler.from_config(ours.scheduler_config()).save_config(tmp_path)
    assert load_schedule(tmp_path).config() == ours.config()


# --- the project's loader: both formats, unused keys ignored, contradictions refused ----------------------
def write_schedule(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scheduler_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("schedule", [NoiseSchedule(), NoiseSchedule(300, "cosine"), NoiseSchedule(40, "linear", 2e-4, 0.05)],
                         ids=["default", "cosine", "custom linear"])
def test_the_loader_reads_both_formats(tmp_path, schedule):
    old = write_schedule(tmp_path / "old", dict(schedule.config(), unused="ignored"))
    new = write_schedule(tmp_path / "new", dict(schedule.scheduler_config(), _diffusers_version="0.42.1",
                                                 variance_type="fixed_large"))
    for folder in (old, new):
        loaded = load_schedule(folder)
        assert loaded.config() == schedule.config()
        assert torch.equal(loaded.alpha_bars, schedule.alpha_bars)


def contradictions() -> dict[str, tuple[dict, str]]:
    good = NoiseSchedule().scheduler_config()
    return {
        "T and num_train_timesteps": (dict(good, T=400), "contradicts num_train_timesteps"),
        "kind and beta_schedule": (dict(good, kind="cosine"), "contradicts beta_schedule"),
        "trained_betas too few": (dict(good, trained_betas=good["trained_betas"][:-1]), "trained_betas"),
        "trained_betas other values": (dict(good, trained_betas=[b * 1.01 for b in good["trained_betas"]]),
                                       "trained_betas contradict"),
        "unknown prediction": (dict(good, prediction_type="flow_prediction"), "prediction_type"),
        "clipped": (dict(good, clip_sample=True), "clip_sample"),
        "other scheduler": (dict(good, _class_name="EulerDiscreteScheduler"), "_class_name"),
        "other beta schedule": (dict(good, beta_schedule="scaled_linear", trained_betas=None), "beta_schedule"),
        "not an object": ([1, 2], "JSON object"),
    }


@pytest.mark.parametrize("case", sorted(contradictions()))
def test_the_loader_refuses_contradictions_in_one_line(tmp_path, case):
    config, fragment = contradictions()[case]
    folder = write_schedule(tmp_path, config)
    with pytest.raises(CheckpointError) as info:
        load_schedule(folder)
    message = str(info.value)
    assert "scheduler_config.json" in message and fragment in message and "\n" not in message, message


# --- complete folders: save_pretrained, push_to_hub, the Hub download options ---------------------------
def tiny_model_with_history() -> ContextUnet:
    model = make_tiny_unet(seed=5)
    model.noise_schedule = NoiseSchedule(120, "cosine")
    model.palette = np.array([[0, 0, 0], [255, 255, 255], [10, 20, 30]], np.uint8)
    model.training_info = {"steps": 7, "images": 112, "seconds": 3.5, "data_counts": {"hero": 4},
                           "stages": [{"steps": 7, "images": 112, "seconds": 3.5, "recipe": {"lr": 0.001}}]}
    return model


def check_card(path: Path) -> ModelCard:
    card = ModelCard.load(path)
    assert card.data.license == "cc-by-4.0" and card.data.library_name == "ddpm-sprite-lab"
    assert card.data.pipeline_tag == "other"
    assert {"class-conditional-image-generation", "diffusion", "pixel-art"} <= set(card.data.tags)
    assert "unconditional-image-generation" not in card.content
    assert "DragonDePlatino" in card.text and "DawnBringer" in card.text and "CC-BY 4.0" in card.text
    assert "](../" not in card.text and "More Information Needed" not in card.text
    return card


def test_save_pretrained_writes_the_complete_folder(tmp_path):
    model = tiny_model_with_history()
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == FOLDER_FILES
    card = check_card(tmp_path / "m" / "README.md")
    assert "7 steps" in card.text and "hero 4" in card.text
    again = ContextUnet.from_pretrained(tmp_path / "m")
    assert again.noise_schedule.config() == model.noise_schedule.config()
    assert np.array_equal(again.palette, model.palette) and again.training_info == model.training_info
    assert again.evaluation is None  # nothing measured yet: the card says how to measure it


def test_saving_again_keeps_the_evaluation_and_rewrites_the_card(tmp_path):
    save_model(load_model(SHIPPED[1]), load_schedule(SHIPPED[1]), tmp_path / "copy")
    shipped, copy = ModelCard.load(SHIPPED[1] / "README.md"), check_card(tmp_path / "copy" / "README.md")
    assert copy.text == shipped.text and "| **mean** |" in copy.text


def test_saving_without_a_schedule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="noise_schedule"):
        make_tiny_unet().save_pretrained(tmp_path / "m")


def test_push_to_hub_uploads_the_complete_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    uploaded = {}

    class Repo:
        repo_id = "someone/sprites"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files={p.name for p in Path(folder_path).iterdir()},
                        card=(Path(folder_path) / "README.md").read_text())

    monkeypatch.setattr(HfApi, "create_repo", lambda self, **kwargs: Repo())
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    tiny_model_with_history().push_to_hub("someone/sprites", token="hf_test")
    assert uploaded["repo_id"] == "someone/sprites" and uploaded["files"] == FOLDER_FILES
    assert "pipeline_tag: other" in uploaded["card"]


def test_hub_download_options_reach_the_download(loader, tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(dict(kwargs, repo_id=repo_id))
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = loader("someone/sprites", token="hf_test", revision="v1", cache_dir=tmp_path / "cache",
                   local_files_only=True)
    assert isinstance(model, ContextUnet)
    (call,) = calls
    assert call["repo_id"] == "someone/sprites" and call["token"] == "hf_test" and call["revision"] == "v1"
    assert call["cache_dir"] == tmp_path / "cache" and call["local_files_only"] is True
    assert "training.json" in call["allow_patterns"] and "scheduler_config.json" in call["allow_patterns"]


@pytest.mark.parametrize("folder", SHIPPED, ids=["weights", "n_feat64"])
def test_the_shipped_cards_parse_with_their_metadata(folder):
    card = check_card(folder / "README.md")
    assert "| **mean** |" in card.text and "python -m ddpm.evaluate" in card.text


CANDIDATES = sorted(p for p in (PROJECT / "weights" / "candidates").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", CANDIDATES, ids=[p.name for p in CANDIDATES])
def test_each_candidate_is_a_complete_folder_that_loads_and_says_what_it_predicts(folder):
    assert FOLDER_FILES | {"samples.png"} <= {p.name for p in folder.iterdir()}
    model, schedule = load_model(folder), load_schedule(folder)
    card = check_card(folder / "README.md")
    assert "| **mean** |" in card.text and f"n_feat {model.n_feat}" in card.text
    assert f"prediction {schedule.prediction}" in card.text
    if (folder / "before_after.png").exists():  # the sheet against another model is shown where it is kept
        assert "![before and after](before_after.png)" in card.text


def test_a_card_shown_outside_the_hub_inlines_only_pictures_in_its_own_folder(tmp_path):
    from ddpm.card import MAX_INLINE_PICTURE_BYTES, card_for_display

    folder, outside = tmp_path / "model", tmp_path / "secret.png"
    (folder / "sub").mkdir(parents=True)
    (folder / "samples.png").write_bytes(b"\x89PNG one")
    (folder / "sub" / "sheet.gif").write_bytes(b"GIF89a two")
    (folder / "big.png").write_bytes(b"0" * (MAX_INLINE_PICTURE_BYTES + 1))
    (folder / "notes.txt").write_bytes(b"not a picture")
    outside.write_bytes(b"\x89PNG secret")
    card = ("---\r\nlicense: cc-by-4.0\r\n---\r\n# Card\n![samples](samples.png)\n![sheet](sub/sheet.gif)\n"
            f"![up](../secret.png)\n![abs]({outside})\n![big](big.png)\n![txt](notes.txt)\n![gone](gone.png)\n"
            "![web](https://example.com/a.png)\nText after.\n")
    shown = card_for_display(card, folder)
    assert shown.startswith("# Card\n") and shown.endswith("Text after.\n")
    uris = re.findall(r"!\[(\w+)\]\(data:(image/\w+);base64,([^)]+)\)", shown)
    assert [(alt, kind, base64.b64decode(data)) for alt, kind, data in uris] == [
        ("samples", "image/png", b"\x89PNG one"), ("sheet", "image/gif", b"GIF89a two")]
    assert not re.search(r"secret|big|txt|gone|example\.com", shown)
    assert card_for_display("---\nlicense: [broken\n---\n# Card\n", folder) == "# Card\n"  # YAML not parsed


# --- the import graph ---------------------------------------------------------------------------------------
def package_imports() -> dict[str, set[str]]:
    """ddpm module -> the ddpm modules it imports anywhere in its file (functions included)."""
    graph = {}
    for path in sorted((PROJECT / "ddpm").glob("*.py")):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpm."):
                deps.add(node.module.split(".")[1])
        graph[name] = {d.split(".")[0] for d in deps} - {name}
    return graph


def test_the_package_has_no_import_cycles():
    graph = package_imports()
    graph.pop("__init__")
    assert "checkpoint" not in graph["model"] and "train" not in graph["card"]
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_ddpm_model_imports_on_its_own():
    proc = subprocess.run([sys.executable, "-c", "import ddpm.model, sys; print(sorted(m for m in sys.modules "
                           "if m.startswith('ddpm.')))"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- the package: pyproject.toml ------------------------------------------------------------------------------
def test_pyproject_declares_what_the_package_imports_and_its_commands():
    import importlib
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("-", "_"): Requirement(r) for r in project["dependencies"]}
    distribution = {"PIL": "pillow"}  # import name -> distribution name, where they differ
    imported = set()
    for path in (PROJECT / "ddpm").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            imported |= {n.split(".")[0] for n in names}
    third_party = {n for n in imported if n not in sys.stdlib_module_names and n != "ddpm"}
    missing = {distribution.get(n, n).lower() for n in third_party} - set(declared)
    assert not missing, f"imported by ddpm but not in pyproject.toml: {sorted(missing)}"
    assert declared["torch"].specifier.contains(torch.__version__.split("+")[0])
    for command, target in project["scripts"].items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), command
    assert set(project["scripts"]) == {"ddpm-train", "ddpm-sample", "ddpm-evaluate"}
