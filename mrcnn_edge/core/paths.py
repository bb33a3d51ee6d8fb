"""Every place on disk that mrcnn-edge reads or writes by default, in one module (no heavy imports).

One cache root, ``$MRCNN_EDGE_CACHE`` or ``~/.cache/mrcnn-edge``, holds everything the tools build
for this machine; the functions below name the parts of it. Nothing here creates a folder.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "PLUGIN_LIBRARY_NAME", "PLUGIN_AUTOREG_LIBRARY_NAME", "cache_root", "plugin_library_path", "plugin_build_log", "timing_cache_path",
    "host_library_dir", "kernel_cache_dir", "ort_tensorrt_cache_dir",
]

PLUGIN_LIBRARY_NAME = "libmrcnn_edge_plugins.so"
PLUGIN_AUTOREG_LIBRARY_NAME = "libmrcnn_edge_plugins_autoreg.so"
"""The library that registers the plugin when merely dlopen'ed (Triton, DeepStream, LD_PRELOAD);
``build-plugin`` writes it next to :data:`PLUGIN_LIBRARY_NAME`, which it needs (plugins/README.md)."""


def cache_root() -> Path:
    """``$MRCNN_EDGE_CACHE``, else ``~/.cache/mrcnn-edge``."""
    env = os.environ.get("MRCNN_EDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mrcnn-edge"


def plugin_library_path() -> Path:
    """Where ``mrcnn-edge build-plugin`` writes the TensorRT plugin library and ``build``/``run`` look."""
    return cache_root() / "plugins" / PLUGIN_LIBRARY_NAME


def plugin_build_log() -> Path:
    """The compiler output of the last ``mrcnn-edge build-plugin``."""
    return cache_root() / "plugins" / "build-plugin.log"


def timing_cache_path() -> Path:
    """TensorRT's timing cache, shared by every ``mrcnn-edge build`` on this machine."""
    return cache_root() / "tensorrt" / "timing.cache"


def host_library_dir() -> Path:
    """CPU builds of the plugin's arithmetic (validation runs the tensorrt flavor through them)."""
    return cache_root() / "host"


def kernel_cache_dir(arch: str) -> Path:
    """NVRTC-compiled pre/post-processing kernels for one GPU architecture (``sm_87``, ...)."""
    return cache_root() / "kernels" / arch


def ort_tensorrt_cache_dir(model_stem: str) -> Path:
    """Engine and timing caches of ONNX Runtime's TensorRT execution provider, per model."""
    return cache_root() / "ort-trt" / model_stem
