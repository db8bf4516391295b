"""DDPM Sprite Lab: a class-conditional DDPM for 16x16 pixel-art sprites."""
from .model import ContextUnet
from .schedule import NoiseSchedule
from .checkpoint import CheckpointError, load_model, load_schedule, save_model
from .sampling import make_sampler, sample, sample_steps

__all__ = ["ContextUnet", "NoiseSchedule", "CheckpointError", "load_model", "load_schedule", "save_model",
           "make_sampler", "sample", "sample_steps"]
