"""cuda-python access for the GPU parts of the runtime: imports, error checks, device queries.

NVIDIA's ``cuda-python`` (``cuda.bindings``) ships binary wheels for x86-64 and Jetson (aarch64),
and TensorRT's own Python samples use it; PyCUDA is not used (it compiles from source at install).
Everything here is imported lazily: ``import mrcnn_edge.runtime`` works without cuda-python.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from mrcnn_edge.errors import UserError

__all__ = ["cuda_modules", "check", "device_compute_capability"]

_MODULES: tuple[ModuleType, ModuleType, ModuleType] | None = None


def cuda_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(driver, runtime, nvrtc)`` from cuda-python 12.6+ / 13 (``cuda.bindings``) or older 12.x."""
    global _MODULES
    if _MODULES is None:
        try:
            mods = tuple(importlib.import_module(f"cuda.bindings.{m}") for m in ("driver", "runtime", "nvrtc"))
        except ImportError:
            try:
                mods = tuple(importlib.import_module(f"cuda.{m}") for m in ("cuda", "cudart", "nvrtc"))
            except ImportError as exc:
                raise UserError(
                    "cuda-python is not installed (needed for the GPU runtime): pip install 'mrcnn-edge[gpu]'"
                ) from exc
        _MODULES = mods  # type: ignore[assignment]
    return _MODULES  # type: ignore[return-value]


def _error_text(err: Any) -> str:
    driver, runtime, nvrtc = cuda_modules()
    name = type(err).__name__
    try:
        if name == "cudaError_t":
            return runtime.cudaGetErrorString(err)[1].decode()
        if name == "CUresult":
            return driver.cuGetErrorString(err)[1].decode()
        if name == "nvrtcResult":
            return nvrtc.nvrtcGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001 - the message is a courtesy; the code is what matters
        pass
    return str(err)


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result; raise with ``what`` on a non-success code.

    Returns None, the single value, or the tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {_error_text(err)} ({err})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) of a CUDA device; one-line error when there is none."""
    _, runtime, _ = cuda_modules()
    try:
        count = check(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except RuntimeError as exc:
        raise UserError(f"no usable CUDA device: {exc}") from exc
    if not count or device >= count:
        raise UserError(f"CUDA device {device} not found ({count or 0} device(s) visible)")
    attr = runtime.cudaDeviceAttr
    major = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "query")
    minor = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "query")
    return int(major), int(minor)
