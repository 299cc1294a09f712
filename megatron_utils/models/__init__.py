"""Models: image backbones, temporal heads, the pixels-to-verdict Megatron model, checkpoints."""
