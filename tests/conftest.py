"""Shared fixtures and the skip rules for the ``gpu`` and ``tensorrt`` markers."""
from __future__ import annotations

import importlib.util

import pytest


def _has_gpu() -> tuple[bool, str]:
    """Ask the CUDA driver (a Jetson may have no nvidia-smi), as the tools themselves do."""
    from mrcnn_edge.runtime.gpu.trt_platform import cuda_driver

    info = cuda_driver()
    return (True, "") if info.devices > 0 else (False, info.why or "no CUDA device")


def _has_tensorrt() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT's Python package is not installed"
    return True, ""


def pytest_collection_modifyitems(config, items):
    gpu_ok, gpu_why = _has_gpu()
    trt_ok, trt_why = _has_tensorrt()
    for item in items:
        # markers, not keywords: keywords hold the names of the test's folders too, so every test
        # under tests/runtime/gpu/ (the stand-in GPU's, which run anywhere) would count as marked
        if item.get_closest_marker("gpu") is not None and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {gpu_why}"))
        if item.get_closest_marker("tensorrt") is not None and not (trt_ok and gpu_ok):
            why = trt_why if not trt_ok else gpu_why
            item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and a GPU: {why}"))
