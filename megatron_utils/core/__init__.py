"""Shared machinery: the registry, stage caches, registry-package assets, Colab helpers."""
