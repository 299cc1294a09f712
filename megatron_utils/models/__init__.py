"""Models: image backbones, temporal heads, the audio encoder and their persistence. A leaf over `core`:
nothing here imports a pipeline stage.

As in timm, a registry is filled by importing the modules that register into it, here, so every import of
the package sees every registered model."""

from . import baselines, heads  # noqa: F401 - heads defines HEADS; baselines registers lstm and frame-cnn
