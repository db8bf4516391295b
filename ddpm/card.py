"""The model card (README.md of a model folder), built with huggingface_hub's ModelCard.

Its metadata tells the Hub what the model is: pipeline_tag "other", because the Hub's task list
has no class-conditional image generation ("unconditional-image-generation" takes no input at all,
"text-to-image" promises free-text prompts); the tag class-conditional-image-generation says what
it does. DawnLike is not a Hub dataset, so it is credited in the text, not under `datasets:`.
Links are absolute or to files in the same repository, so they work on the Hub as well as on disk.
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from .device import from_accelerate, precision_label
from .history import training_stages

LICENSE = "cc-by-4.0"
LIBRARY_NAME = "ddpm-sprite-lab"
PIPELINE_TAG = "other"
TAGS = ["diffusion", "ddpm", "class-conditional-image-generation", "image-generation", "pixel-art", "sprites",
        "pytorch_model_hub_mixin", "model_hub_mixin"]
DAWNLIKE_URL = "https://opengameart.org/content/dawnlike-16x16-universal-rogue-like-tileset-v181"

BODY = """
# DDPM Sprite Lab: class-conditional sprite model

A class-conditional DDPM (ContextUnet, {params:,} parameters) that draws {height}x{height} pixel-art
sprites of {n_classes} classes: {classes}. Made with DDPM Sprite Lab (the `ddpm` Python package); load it
with `ddpm.checkpoint.load_model("<this repo id or folder>")` or `ContextUnet.from_pretrained(...)`.
scheduler_config.json holds the noise schedule in diffusers' format (`DDPMScheduler.from_pretrained`).

![samples](samples.png)
{before_after}
## Training

- Data: the [DawnLike 16x16 tileset]({dawnlike}) by **DragonDePlatino**, palette by **DawnBringer**
  (CC-BY 4.0), sliced into 16x16 cells, empty cells and exact duplicates dropped, transparency on
  white. Sprites per class: {counts}.
- Architecture: n_feat {n_feat}, norm {norm}, time embedding {time_embedding}{attention}{guidance}{expert}{head}.
- Recipe: Adam, {target}, t ~ U{{1..T}}, horizontal flips, EMA weights shipped.
- Trained for {steps:,} steps ({images:,} images) in {hours:.2f} hours ({precision}), in stages
  (each later stage continued from the weights the one before it exported):
{stages}

## Evaluation

{evaluation}

## Licence and credit

The weights are derived from DawnLike and shared under CC-BY 4.0. Credit: DawnLike tileset by
DragonDePlatino, DawnBringer palette by DawnBringer.
"""
# Pictures a card may show outside the Hub, inlined (data URIs): a relative link resolves against the page
# showing the card, not against the model folder. Larger files are left out rather than bloat the page.
INLINE_PICTURE_TYPES = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_INLINE_PICTURE_BYTES = 2_000_000
PICTURE = re.compile(r"!\[([^\]]*)\]\(([^)\s]*)\)\n?")

NO_EVALUATION = "Run `python -m ddpm.evaluate --model <folder> --write-card` for the table."

RECIPE_KEYS = ["n_feat", "low_noise_expert", "distill_guidance", "teacher", "batch_size", "lr", "warmup", "ema",
               "p_uncond", "dropout", "weight_decay", "class_balance", "min_snr", "low_t_share", "low_t_max", "schedule",
               "T", "prediction", "palette_head", "seed"]
# Options listed only when a stage used them: the course's uniform loss and no regularisation are the
# unstated defaults.
UNLESS_OFF = {"low_noise_expert": "low_noise_expert", "distill_guidance": "distill_guidance", "dropout": "dropout",
              "weight_decay": "weight_decay", "class_balance": "class_balance",
              "min_snr": "min_snr", "low_t_share": "low_t_share", "low_t_max": "low_t_share",
              "palette_head": "palette_head"}


def recipe_text(recipe: dict) -> str:
    # None: the option was left to the model a stage started from (n_feat with --init-from)
    return ", ".join(f"{k} {recipe[k]}" for k in RECIPE_KEYS
                     if recipe.get(k) is not None and (k not in UNLESS_OFF or recipe.get(UNLESS_OFF[k])))


def training_target(prediction: str, palette_head: bool = False) -> str:
    """What the loss measured for a network that predicts this (NoiseSchedule.prediction), with or
    without a palette head."""
    if palette_head:
        return ("cross-entropy of each pixel's colour under the palette head's distribution over the "
                "palette (x0 predicted as its expectation; CDCD, Dieleman et al. 2022)")
    if prediction == "v_prediction":
        return "MSE on v = sqrt(abar) eps - sqrt(1 - abar) x0 (v-prediction, Salimans & Ho 2022)"
    if prediction == "sample":
        return "MSE on x0"
    return "MSE on the noise"


def stage_lines(info: dict) -> str:
    lines = []
    prediction = "epsilon"  # listed only where a stage changed it (from the course's noise prediction)
    for i, stage in enumerate(training_stages(info), 1):
        recipe = dict(stage.get("recipe", {}))
        if recipe.get("prediction", prediction) == prediction:
            recipe.pop("prediction", None)
        else:
            prediction = recipe["prediction"]
        threads = f", CPU threads: {recipe['threads']}" if recipe.get("threads") else ""
        precision = f", {precision_label(stage['precision'])}" if "precision" in stage else ""
        lines.append(f"  {i}. {stage['steps']:,} steps ({stage['images']:,} images, {stage['seconds'] / 3600:.2f} h"
                     f"{threads}{precision}): " + recipe_text(recipe))
    return "\n".join(lines)


def overall_precision(info: dict) -> str:
    """The precision of the whole training, or "by stage" when the stages differ. Stages record their own;
    a training.json written before they did holds only info["precision"], the last run's."""
    recorded = [stage.get("precision") for stage in training_stages(info)]
    if not any(recorded):
        return precision_label(info.get("precision"))
    if len({from_accelerate(p) for p in recorded if p}) == 1 and all(recorded):
        return precision_label(recorded[0])
    return "precision by stage below"


def card_data() -> ModelCardData:
    return ModelCardData(license=LICENSE, library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAG, tags=list(TAGS))


def model_card(config: dict, n_params: int, info: dict | None, evaluation: str | None = None,
               prediction: str = "epsilon", before: str | None = None, setting: str = "") -> ModelCard:
    """The card of a model with this config.json, parameter count, training history, evaluation table and
    prediction (its NoiseSchedule's). `before`: the model that before_after.png sets this one beside,
    drawn with `setting`."""
    info = info or {}
    before_after = (f"\nBefore and after: per class, `{before}` on the left and this model on the right, from the "
                    f"same starting noise ({setting}).\n\n![before and after](before_after.png)\n" if before else "")
    body = BODY.format(
        params=n_params, height=config["height"], n_classes=config["n_classes"],
        classes=", ".join(config["class_names"]), dawnlike=DAWNLIKE_URL,
        counts=", ".join(f"{k} {v}" for k, v in info.get("data_counts", {}).items()) or "unknown",
        n_feat=config["n_feat"], norm=config["norm"], time_embedding=config["time_embedding"],
        attention=", self-attention on the 8x8 and smaller feature maps" if config.get("attention") else "",
        guidance=(f"; the guidance scale is an input, distilled from a teacher's classifier-free guidance for "
                  f"scales 0 to {config['distilled_guidance']:g} (one pass a step)")
                 if config.get("distilled_guidance") else "",
        expert=(f"; a low-noise expert, a second network of the same architecture, predicts at t/T <= "
                f"{config['expert_t']:g} (eDiff-I's expert denoisers, Balaji et al. 2022), so each step runs "
                "one network" if config.get("expert_t") else ""),
        head=(f"; a palette head: logits over the {len(config['output_palette'])} palette colours at each pixel"
              if config.get("output_palette") else ""),
        stages=stage_lines(info) if info else "  (no training history recorded)",
        steps=info.get("steps", 0), images=info.get("images", 0), hours=info.get("seconds", 0) / 3600,
        precision=overall_precision(info),
        target=training_target(prediction, config.get("output_palette") is not None),
        evaluation=(evaluation or NO_EVALUATION).strip(), before_after=before_after,
    )
    return ModelCard(f"---\n{card_data().to_yaml()}\n---\n{body}")


def evaluation_section(card_text: str | None) -> str | None:
    """The text under "## Evaluation" in a card this module wrote, or None when it has no measured table."""
    if not card_text:
        return None
    match = re.search(r"^## Evaluation\n(.*?)(?=^## |\Z)", card_text, flags=re.S | re.M)
    if not match or NO_EVALUATION in match.group(1) or "|" not in match.group(1):
        return None
    return match.group(1).strip()


def inline_picture(folder: Path, link: str) -> str | None:
    """A data URI of the picture a card links to as `link`, or None unless it is a file of a picture type
    in `folder` itself or below it, at most MAX_INLINE_PICTURE_BYTES: a card never reaches outside its folder."""
    rel = Path(link)
    kind = INLINE_PICTURE_TYPES.get(rel.suffix.lower())
    if not link or kind is None or rel.is_absolute() or ".." in rel.parts or ":" in link:
        return None
    path = folder / rel  # not resolved: a Hub snapshot's files are links into its blob store
    try:
        if not path.is_file() or path.stat().st_size > MAX_INLINE_PICTURE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def card_for_display(card_text: str, folder: Path) -> str:
    """A model card's text as a page other than the Hub shows it: without its YAML front matter (the Hub
    shows that as tags), and with its pictures inlined from the model folder; a picture that is not
    there, or links elsewhere, is left out."""
    def picture(match: re.Match) -> str:
        uri = inline_picture(Path(folder), match.group(2))
        return f"![{match.group(1)}]({uri})\n" if uri else ""

    # the Hub's own definition of the front matter; ModelCard(text).text would also parse the YAML, and a
    # card whose YAML is broken must still show
    front = REGEX_YAML_BLOCK.search(card_text)
    return PICTURE.sub(picture, card_text[front.end():] if front else card_text)
