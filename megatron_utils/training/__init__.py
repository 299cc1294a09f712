"""Training and evaluation: fine-tuning, self-blended pseudo-fakes, the head's trainer, metrics."""
