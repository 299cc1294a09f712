"""Megatron: deepfake-video detection from RGB and depth face streams meeting in cross-attention."""

__version__ = "0.1.0"
