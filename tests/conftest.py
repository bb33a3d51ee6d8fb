"""Shared fixtures and the skip rules for the ``gpu`` and ``tensorrt`` markers."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest


def _has_gpu() -> tuple[bool, str]:
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU on this machine (nvidia-smi not found)"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi failed: {exc}"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return False, "nvidia-smi lists no GPU"
    return True, ""


def _has_tensorrt() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT's Python package is not installed"
    return True, ""


def pytest_collection_modifyitems(config, items):
    gpu_ok, gpu_why = _has_gpu()
    trt_ok, trt_why = _has_tensorrt()
    for item in items:
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {gpu_why}"))
        if "tensorrt" in item.keywords and not (trt_ok and gpu_ok):
            why = trt_why if not trt_ok else gpu_why
            item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and a GPU: {why}"))
