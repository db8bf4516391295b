"""The model card (weights/README.md) written with every export."""
from __future__ import annotations

CARD = """---
license: cc-by-4.0
library_name: ddpm-sprite-lab
tags:
- diffusion
- ddpm
- pixel-art
- sprites
- unconditional-image-generation
pipeline_tag: unconditional-image-generation
---

# DDPM Sprite Lab: class-conditional sprite model

A class-conditional DDPM (ContextUnet, {params:,} parameters) that draws {height}x{height} pixel-art
sprites of {n_classes} classes: {classes}. Made with [DDPM Sprite Lab](../README.md); load it with
`ddpm.checkpoint.load_model("weights")` or `ContextUnet.from_pretrained(...)`.

![samples](samples.png)

## Training

- Data: the DawnLike 16x16 tileset by **DragonDePlatino**, palette by **DawnBringer**
  (CC-BY 4.0), sliced into 16x16 cells, empty cells and exact duplicates dropped, transparency on
  white. Sprites per class: {counts}.
- Architecture: n_feat {n_feat}, norm {norm}, time embedding {time_embedding}.
- Recipe: Adam, MSE on the noise, t ~ U{{1..T}}, horizontal flips, EMA weights shipped.
- Trained for {steps:,} steps ({images:,} images) in {hours:.2f} hours ({precision}), in stages
  (each later stage continued from the weights the one before it exported):
{stages}

## Evaluation

{evaluation}

## Licence and credit

The weights are derived from DawnLike and shared under CC-BY 4.0. Credit: DawnLike tileset by
DragonDePlatino, DawnBringer palette by DawnBringer.
"""


PRECISION_NAMES = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
RECIPE_KEYS = ["n_feat", "batch_size", "lr", "warmup", "ema", "p_uncond", "min_snr", "low_t_share", "low_t_max", "schedule",
               "T", "seed"]
# Options listed only when a stage used them: the seed's uniform loss is the unstated default.
UNLESS_OFF = {"min_snr": "min_snr", "low_t_share": "low_t_share", "low_t_max": "low_t_share"}


def recipe_text(recipe: dict) -> str:
    # None: the option was left to the model a stage started from (n_feat with --init-from)
    return ", ".join(f"{k} {recipe[k]}" for k in RECIPE_KEYS
                     if recipe.get(k) is not None and (k not in UNLESS_OFF or recipe.get(UNLESS_OFF[k])))


def stage_lines(info: dict) -> str:
    from .train import training_stages  # the one reader of training.json's history

    lines = []
    for i, stage in enumerate(training_stages(info), 1):
        recipe = stage.get("recipe", {})
        threads = f", CPU threads: {recipe['threads']}" if recipe.get("threads") else ""
        precision = f", {PRECISION_NAMES.get(stage['precision'], stage['precision'])}" if "precision" in stage else ""
        lines.append(f"  {i}. {stage['steps']:,} steps ({stage['images']:,} images, {stage['seconds'] / 3600:.2f} h"
                     f"{threads}{precision}): " + recipe_text(recipe))
    return "\n".join(lines)


def model_card(config: dict, info: dict, evaluation: str | None = None) -> str:
    params = sum_params(config)
    return CARD.format(
        params=params, height=config["height"], n_classes=config["n_classes"],
        classes=", ".join(config["class_names"]),
        counts=", ".join(f"{k} {v}" for k, v in info.get("data_counts", {}).items()) or "unknown",
        n_feat=config["n_feat"], norm=config["norm"], time_embedding=config["time_embedding"],
        stages=stage_lines(info),
        steps=info.get("steps", 0), images=info.get("images", 0), hours=info.get("seconds", 0) / 3600,
        precision=overall_precision(info),
        evaluation=evaluation or "Run `python -m ddpm.evaluate --model weights` for the table.",
    )


def overall_precision(info: dict) -> str:
    """The precision of the whole training, or "by stage" when the stages differ. Stages record their own;
    a training.json written before they did holds only info["precision"], the last run's."""
    from .train import training_stages

    recorded = [stage.get("precision") for stage in training_stages(info)]
    if not any(recorded):
        return PRECISION_NAMES.get(info.get("precision"), "fp32")
    if len(set(recorded)) == 1:
        return PRECISION_NAMES.get(recorded[0], recorded[0])
    return "precision by stage below"


def sum_params(config: dict) -> int:
    from .model import ContextUnet

    return sum(p.numel() for p in ContextUnet(**config).parameters())
