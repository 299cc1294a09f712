"""The embedded mini FaceForensics++-style dataset: real faces from registry packages, real manipulations."""

from .build import MiniReport, build_mini
from .presets import MINI_PRESETS, MiniPreset, get_preset, register_preset

__all__ = ["MINI_PRESETS", "MiniPreset", "MiniReport", "build_mini", "get_preset", "register_preset"]
