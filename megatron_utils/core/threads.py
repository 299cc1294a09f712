"""Native models that must not be shared between threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_thread(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter that builds `factory()` once in each thread that calls it. dlib's detectors and shape
    predictors, OpenCV cascades and TFLite interpreters keep scratch state inside: two threads in one
    object crash the process (seen with `megatron serve`'s workers), so each thread gets its own."""
    local = threading.local()

    def get() -> T:
        if not hasattr(local, "value"):
            local.value = factory()
        return local.value

    return get
