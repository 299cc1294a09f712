"""Optional extras: what each adds, and a clear error naming the install command when one is missing.

A core install (`pip install megatron-deepfake`) covers data, preprocessing, training, evaluation and
predict. Everything else is an extra of `pyproject.toml`, imported only by the modules that need it:

    from ..core.extras import extra_imports

    with extra_imports("serve"):
        from fastapi import FastAPI
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

PACKAGE = "megatron-deepfake"

@dataclass(frozen=True)
class Extra:
    adds: str  # what it adds, in words
    module: str  # the import that tells whether it is installed
    # Its package pins dependencies too old to install with its own: installed without them, by this name.
    no_deps: str | None = None


# The packages of each are in pyproject.toml's [project.optional-dependencies], except the no-deps ones.
EXTRAS = {
    "serve": Extra("the web service and page (`megatron serve`)", "fastapi"),
    "audio": Extra("the audio stream (`megatron preprocess --audio-encoder`)", "librosa"),
    "explain": Extra("explanations of verdicts (`megatron predict --explain`)", "captum"),
    "attacks": Extra("adversarial evaluation (`megatron evaluate --attack`)", "torchattacks",
                     no_deps="torchattacks==3.5.1"),
    "ray": Extra("preprocessing on a Ray cluster (`megatron preprocess --ray`)", "ray"),
    "mini": Extra("the offline mini dataset's synthetic voices (`megatron data build-mini`)",
                  "espeakng_loader"),
    "mtcnn": Extra("the MTCNN face detector (facenet-pytorch's weights)", "facenet_pytorch",
                   no_deps="facenet-pytorch==2.6.0"),
}


class MissingExtraError(ImportError):
    """An optional dependency that is not installed; the message says which extra installs it."""


def install_hint(extra: str) -> str:
    no_deps = EXTRAS[extra].no_deps
    if no_deps:
        return f"pip install --no-deps {no_deps}"
    return f"pip install '{PACKAGE}[{extra}]'"


@contextmanager
def extra_imports(extra: str) -> Iterator[None]:
    """Turn a failed import inside the block into an error that names the extra and how to install it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; choose from {sorted(EXTRAS)}")
    try:
        yield
    except ImportError as error:
        missing = error.name or error
        raise MissingExtraError(f"{EXTRAS[extra].adds} needs the '{extra}' extra, and {missing} is not "
                                f"installed: {install_hint(extra)}") from error
