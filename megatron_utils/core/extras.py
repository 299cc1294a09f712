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

PACKAGE = "megatron-deepfake"

# extra -> what it adds; the packages are in pyproject.toml's [project.optional-dependencies]
EXTRAS = {
    "serve": "the web service and page (`megatron serve`)",
    "audio": "the audio stream (`megatron preprocess --audio`)",
    "explain": "explanations of verdicts (`megatron predict --explain`)",
    "attacks": "adversarial evaluation (`megatron evaluate --attack`)",
    "ray": "preprocessing on a Ray cluster (`megatron preprocess --ray`)",
    "mini": "the offline mini dataset's synthetic voices (`megatron data build-mini`)",
}


# Extras whose packages pin dependencies too old to install with theirs: installed without them.
NO_DEPS = {"attacks": "torchattacks==3.5.1", "mtcnn": "facenet-pytorch==2.6.0"}
EXTRAS["mtcnn"] = "the MTCNN face detector (facenet-pytorch's weights)"


class MissingExtraError(ImportError):
    """An optional dependency that is not installed; the message says which extra installs it."""


def install_hint(extra: str) -> str:
    if extra in NO_DEPS:
        return f"pip install --no-deps {NO_DEPS[extra]}"
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
        raise MissingExtraError(f"{EXTRAS[extra]} needs the '{extra}' extra, and {missing} is not installed: "
                                f"{install_hint(extra)}") from error
