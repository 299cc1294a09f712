"""Device and numeric precision: one rule for preprocessing, training and inference.

bfloat16 runs natively from compute capability 8.0 (Ampere) on. Older GPUs (a Colab T4 is 7.5) report
`torch.cuda.is_bf16_supported()` through emulation, but their convolutions have no bf16 kernels, so they
get float16, which training pairs with a gradient scaler. The CPU stays in float32, where reduced
precision is slower, not faster.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO = "auto"
NATIVE_BF16_CAPABILITY = (8, 0)


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def precision_for(device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The reduced precision a device computes fastest without losing range: a pure function of the
    device type and, on CUDA, its compute capability."""
    if device_type != "cuda":
        return torch.float32
    if capability is None:
        raise ValueError("a CUDA device needs its compute capability to choose a precision")
    return torch.bfloat16 if tuple(capability) >= NATIVE_BF16_CAPABILITY else torch.float16


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: `precision_for` this device; else one of DTYPES by name."""
    if name == AUTO:
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        return precision_for(device.type, capability)
    if name not in DTYPES:
        raise ValueError(f"dtype must be {AUTO!r} or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def training_dtype(device: torch.device, amp: bool) -> torch.dtype:
    """The autocast dtype of a training or evaluation loop: `precision_for` the device with `amp`, else
    float32."""
    return resolve_dtype(AUTO, device) if amp else torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for reduced dtypes; weights stay float32 so outputs match across dtypes closely."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """A loss scaler for float16 (whose gradients underflow without one); a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
