"""Device and precision resolution: each choice comes with its reason; impossible ones fail."""

from __future__ import annotations

import pytest
import torch

from clipkit.errors import DeviceError
from clipkit.infra.device import autocast_dtype, resolve_device, resolve_precision


def test_auto_device_matches_the_machine():
    resolved = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else resolved.value
    assert resolved.value == expected
    assert resolved.reason.startswith("auto:")


def test_cpu_is_always_available():
    assert resolve_device("CPU").value == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("request_", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error(request_):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(request_)


@pytest.mark.parametrize("request_", ["gpu", "tpu", "cuda:x"])
def test_unknown_devices(request_):
    with pytest.raises(DeviceError):
        resolve_device(request_)


def test_precision_on_cpu():
    assert resolve_precision("cpu", "auto").value == "fp32"
    assert resolve_precision("cpu", "fp32").value == "fp32"
    with pytest.raises(DeviceError, match="needs a CUDA device"):
        resolve_precision("cpu", "bf16")
    with pytest.raises(DeviceError, match="Unknown precision"):
        resolve_precision("cpu", "int4")


def test_autocast_dtypes():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("bf16") is torch.bfloat16
