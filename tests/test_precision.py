"""One rule picks the numeric precision from the device's capability."""

from __future__ import annotations

import pytest
import torch

from megatron_utils.core.precision import grad_scaler, precision_for, resolve_dtype, training_dtype


@pytest.mark.parametrize(("capability", "dtype"), [
    ((6, 0), torch.float16),  # P100
    ((7, 0), torch.float16),  # V100
    ((7, 5), torch.float16),  # T4: bf16 only through emulation, no bf16 convolutions
    ((8, 0), torch.bfloat16),  # A100
    ((8, 9), torch.bfloat16),  # L4
    ((9, 0), torch.bfloat16),  # H100
])
def test_cuda_precision_follows_compute_capability(capability, dtype):
    assert precision_for("cuda", capability) == dtype


def test_cpu_and_other_devices_stay_float32():
    assert precision_for("cpu") == torch.float32
    assert precision_for("mps") == torch.float32


def test_cuda_without_capability_is_refused():
    with pytest.raises(ValueError, match="compute capability"):
        precision_for("cuda")


def test_names_and_amp_switch():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    assert training_dtype(cpu, amp=True) == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype("fp8", cpu)


def test_only_float16_scales_the_loss():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, torch.float16).is_enabled()
    assert not grad_scaler(cpu, torch.bfloat16).is_enabled()
    assert not grad_scaler(cpu, torch.float32).is_enabled()
