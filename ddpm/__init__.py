"""DDPM Sprite Lab: a class-conditional DDPM for 16x16 pixel-art sprites."""
from .model import ContextUnet
from .schedule import NoiseSchedule
from .folder import CheckpointError
from .checkpoint import load_model, load_schedule, save_model
# Samplers live in ddpm.sampling (ddpm.sample is the sampling CLI module, so no `sample` name here).

__all__ = ["ContextUnet", "NoiseSchedule", "CheckpointError", "load_model", "load_schedule", "save_model"]
