"""CPU build of the MultilevelRoIAlign plugin's arithmetic, loaded with ctypes.

The plugin's sampling and level-mapping functions live in one ``__host__ __device__`` header
(``plugins/roi_align_math.h``). This module compiles that header's CPU entry points
(``plugins/roi_align_host.cpp``) with the system C++ compiler, caches the shared library under
``$MRCNN_EDGE_CACHE`` (default ``~/.cache/mrcnn-edge``) keyed by a hash of the sources, compiler and
flags, and exposes :func:`multilevel_roi_align_host`: the reference the tests compare with
torchvision and the implementation of the ``MultilevelRoIAlign`` ONNX node under ONNX Runtime.

Only numpy is imported at module level; the compiler runs on first use.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from mrcnn_edge.core.contract import PLUGIN_MAX_LEVELS, fpn_level_range
from mrcnn_edge.core.errors import UserError

__all__ = [
    "DEFAULT_SPATIAL_SCALES",
    "multilevel_roi_align_host",
    "level_of_rois",
    "half_to_float_host",
    "host_library_path",
    "cache_dir",
]

DEFAULT_SPATIAL_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
MAX_LEVELS = PLUGIN_MAX_LEVELS
_ABI_VERSION = 2
_SOURCES = ("roi_align_math.h", "roi_align_host.cpp")
_LIB_STEM = "libmrcnn_edge_roi_align_host"
# -ffp-contract=off: no fused multiply-adds, so the float32 results follow torchvision's CPU kernel
# operation for operation whatever the target's default.
_BASE_FLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-ffp-contract=off")
_OPENMP_FLAGS = ("-fopenmp",)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


class _Params(ctypes.Structure):
    """ctypes mirror of ``mrcnn_edge::MultilevelRoIAlignParams`` (plugins/roi_align_math.h)."""

    _fields_ = [
        ("rois", ctypes.c_void_p),
        ("features", ctypes.c_void_p * MAX_LEVELS),
        ("output", ctypes.c_void_p),
        ("batch", ctypes.c_int32),
        ("num_rois", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("num_levels", ctypes.c_int32),
        ("heights", ctypes.c_int32 * MAX_LEVELS),
        ("widths", ctypes.c_int32 * MAX_LEVELS),
        ("spatial_scales", ctypes.c_float * MAX_LEVELS),
        ("output_height", ctypes.c_int32),
        ("output_width", ctypes.c_int32),
        ("sampling_ratio", ctypes.c_int32),
        ("aligned", ctypes.c_int32),
        ("canonical_scale", ctypes.c_float),
        ("canonical_level", ctypes.c_int32),
        ("level_min", ctypes.c_int32),
        ("level_max", ctypes.c_int32),
    ]


def cache_dir() -> Path:
    """Root of mrcnn-edge's build cache: ``$MRCNN_EDGE_CACHE`` or ``~/.cache/mrcnn-edge``."""
    from mrcnn_edge.core.paths import cache_root

    return cache_root()


def _source_dir() -> Path:
    from mrcnn_edge.plugins import SOURCE_DIR

    return SOURCE_DIR


def _find_compiler() -> str:
    """$CXX, else g++, else c++; one-line error naming what to install."""
    env = os.environ.get("CXX")
    if env:
        found = shutil.which(env)
        if found:
            return found
        raise UserError(f"CXX={env} is not an executable: set CXX to a C++ compiler or unset it to use g++")
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    raise UserError(
        "a C++ compiler is needed to build the CPU MultilevelRoIAlign (the reference implementation): "
        "g++ not found (Debian/Ubuntu/JetPack: sudo apt install g++; or set CXX)"
    )


def _compiler_identity(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
        return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else compiler
    except (OSError, subprocess.SubprocessError):
        return compiler


def _build_key(compiler: str) -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode())
        h.update((_source_dir() / name).read_bytes())
    h.update(compiler.encode())
    h.update(_compiler_identity(compiler).encode())
    h.update(" ".join(_BASE_FLAGS + _OPENMP_FLAGS).encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def _compile(compiler: str, out: Path) -> None:
    src = _source_dir()
    missing = [n for n in _SOURCES if not (src / n).is_file()]
    if missing:
        raise UserError(f"plugin sources missing from {src}: {', '.join(missing)} (reinstall mrcnn-edge)")
    from mrcnn_edge.core.atomic import atomic_output

    # atomic: another process may load the cached library while this one writes it. The linker
    # keeps the mode of the file it overwrites, so the temporary file has the user's usual mode.
    with atomic_output(out) as tmp:
        errors = ""
        # OpenMP when the compiler has it; plain loops otherwise (same results, one core).
        for extra in (_OPENMP_FLAGS, ()):
            cmd = [compiler, *_BASE_FLAGS, *extra, str(src / "roi_align_host.cpp"), "-o", str(tmp)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                return
            errors = proc.stderr.strip()
        first = errors.splitlines()[0] if errors else "no output"
        raise UserError(f"building the CPU MultilevelRoIAlign with {compiler} failed: {first}")


def host_library_path() -> Path:
    """Path of the cached CPU library for the current sources (built if missing)."""
    compiler = _find_compiler()
    from mrcnn_edge.core.paths import host_library_dir

    path = host_library_dir() / f"{_LIB_STEM}-{_build_key(compiler)}.so"
    if not path.is_file():
        _compile(compiler, path)
    return path


def _load() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        path = host_library_path()
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise UserError(f"cannot load the CPU MultilevelRoIAlign library {path}: {exc}") from exc
        lib.mre_host_abi_version.restype = ctypes.c_int32
        lib.mre_host_params_size.restype = ctypes.c_int64
        if lib.mre_host_abi_version() != _ABI_VERSION or lib.mre_host_params_size() != ctypes.sizeof(_Params):
            raise UserError(f"{path} does not match this mrcnn-edge; delete it and retry")
        lib.mre_host_multilevel_roi_align.argtypes = [
            ctypes.POINTER(_Params),
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
        ]
        lib.mre_host_multilevel_roi_align.restype = ctypes.c_int32
        lib.mre_host_roi_levels.argtypes = [ctypes.POINTER(_Params), ctypes.c_void_p]
        lib.mre_host_roi_levels.restype = ctypes.c_int32
        lib.mre_host_half_to_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.mre_host_half_to_float.restype = None
        _lib = lib
        return lib


def _as_rois(rois: np.ndarray) -> np.ndarray:
    rois = np.ascontiguousarray(rois, dtype=np.float32)
    if rois.ndim != 3 or rois.shape[2] != 4:
        raise ValueError(f"rois must have shape [B, R, 4] (x1, y1, x2, y2), got {list(rois.shape)}")
    return rois


def _level_rule(
    spatial_scales: Sequence[float], canonical_scale: float, canonical_level: int
) -> tuple[list[float], int, int]:
    """Checked scales and torchvision LevelMapper's ``(k_min, k_max)`` for them; ``ValueError``, one line."""
    scales = [float(s) for s in spatial_scales]
    k_min, k_max = fpn_level_range(scales)
    if not (math.isfinite(canonical_scale) and canonical_scale > 0):
        raise ValueError(f"canonical_scale must be a positive finite number, got {canonical_scale}")
    if int(canonical_level) != canonical_level:
        raise ValueError(f"canonical_level must be an integer, got {canonical_level}")
    return scales, k_min, k_max


def _params(
    rois: np.ndarray,
    scales: list[float],
    level_range: tuple[int, int],
    canonical_scale: float,
    canonical_level: int,
) -> _Params:
    p = _Params()
    p.rois = rois.ctypes.data
    p.batch, p.num_rois = int(rois.shape[0]), int(rois.shape[1])
    p.num_levels = len(scales)
    for i, s in enumerate(scales):
        p.spatial_scales[i] = s
    p.canonical_scale = float(canonical_scale)
    p.canonical_level = int(canonical_level)
    p.level_min, p.level_max = level_range
    p.output_height = p.output_width = 1
    return p


def multilevel_roi_align_host(
    rois: np.ndarray,
    features: Sequence[np.ndarray],
    output_height: int = 7,
    output_width: int = 7,
    sampling_ratio: int = 2,
    aligned: int = 0,
    spatial_scales: Sequence[float] = DEFAULT_SPATIAL_SCALES,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> np.ndarray:
    """Multi-level ROIAlign on the CPU, with the plugin's own arithmetic.

    Args:
        rois: ``[B, R, 4]`` float32, x1, y1, x2, y2 in canvas pixels (other float dtypes are cast).
        features: one ``[B, C, H_l, W_l]`` array per level, finest first, all float32 or all float16.
        output_height, output_width: bins per ROI.
        sampling_ratio: samples per bin side; ``<= 0`` adaptive, ``ceil(roi_size / bins)``.
        aligned: 1 shifts by -0.5 pixel (Detectron2); 0 is torchvision's Mask R-CNN.
        spatial_scales: feature pixels per canvas pixel, one per level, each a power of two (1/4, 1/8, ...).
        canonical_scale, canonical_level: FPN level rule,
            ``floor(canonical_level + log2(sqrt(w*h) / canonical_scale) + 1e-6)`` clamped to
            ``[k_min, k_max]`` (levels of the first and the last scale, torchvision's ``LevelMapper``),
            minus ``k_min``: two 1/32 maps pool every ROI from the first.

    Returns:
        ``[B, R, C, output_height, output_width]`` in the features' dtype, accumulated in float32.
        ROIs with negative area or non-finite coordinates pool to zeros.
    """
    rois = _as_rois(rois)
    scales, k_min, k_max = _level_rule(spatial_scales, canonical_scale, canonical_level)
    feats = list(features)
    if len(feats) != len(scales):
        raise ValueError(f"{len(feats)} feature maps given but {len(scales)} spatial_scales")
    dtypes = {np.asarray(f).dtype for f in feats}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"feature maps must be all float32 or all float16, got {sorted(str(d) for d in dtypes)}")
    dtype = next(iter(dtypes))
    feats = [np.ascontiguousarray(f) for f in feats]
    batch, num_rois = rois.shape[:2]
    for i, f in enumerate(feats):
        if f.ndim != 4:
            raise ValueError(f"feature map {i} must have shape [B, C, H, W], got {list(f.shape)}")
        if f.shape[0] != batch:
            raise ValueError(f"feature map {i} has batch {f.shape[0]} but rois have batch {batch}")
        if f.shape[1] != feats[0].shape[1]:
            raise ValueError(f"feature map {i} has {f.shape[1]} channels, feature map 0 has {feats[0].shape[1]}")
    for name, v in (("output_height", output_height), ("output_width", output_width)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v}")
    if int(sampling_ratio) != sampling_ratio or sampling_ratio > 64:
        raise ValueError(f"sampling_ratio must be an integer <= 64, got {sampling_ratio}")
    if aligned not in (0, 1, False, True):
        raise ValueError(f"aligned must be 0 or 1, got {aligned}")

    channels = int(feats[0].shape[1])
    out = np.zeros((batch, num_rois, channels, int(output_height), int(output_width)), dtype=np.float32)
    if out.size == 0:
        return out.astype(dtype, copy=False)
    lib = _load()
    p = _params(rois, scales, (k_min, k_max), canonical_scale, canonical_level)
    p.channels = channels
    p.output_height, p.output_width = int(output_height), int(output_width)
    p.sampling_ratio, p.aligned = int(sampling_ratio), int(aligned)
    for i, f in enumerate(feats):
        p.features[i] = f.ctypes.data
        p.heights[i], p.widths[i] = int(f.shape[2]), int(f.shape[3])
    p.output = out.ctypes.data
    error = ctypes.c_char_p()
    if lib.mre_host_multilevel_roi_align(ctypes.byref(p), 0 if dtype == np.float32 else 1, out.ctypes.data,
                                         ctypes.byref(error)) != 0:
        raise ValueError(f"MultilevelRoIAlign: {(error.value or b'invalid parameters').decode()}")
    return out if dtype == np.float32 else out.astype(np.float16)


def level_of_rois(
    rois: np.ndarray,
    spatial_scales: Sequence[float] = DEFAULT_SPATIAL_SCALES,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> np.ndarray:
    """Level index (0 = finest map) each ROI is pooled from, ``[B, R]`` int32; -1 for none."""
    rois = _as_rois(rois)
    scales, k_min, k_max = _level_rule(spatial_scales, canonical_scale, canonical_level)
    levels = np.empty(rois.shape[:2], dtype=np.int32)
    if levels.size == 0:
        return levels
    p = _params(rois, scales, (k_min, k_max), canonical_scale, canonical_level)
    if _load().mre_host_roi_levels(ctypes.byref(p), levels.ctypes.data) != 0:
        raise ValueError("MultilevelRoIAlign: invalid level parameters")
    return levels


def half_to_float_host(values: np.ndarray) -> np.ndarray:
    """float16 -> float32 with the library's own converter (what the CPU pooling reads half with)."""
    bits = np.ascontiguousarray(values, dtype=np.float16).view(np.uint16)
    out = np.empty(bits.shape, dtype=np.float32)
    if bits.size:
        _load().mre_host_half_to_float(bits.ctypes.data, out.ctypes.data, bits.size)
    return out
