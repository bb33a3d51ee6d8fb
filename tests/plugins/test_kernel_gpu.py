"""The plugin's CUDA kernel on a GPU against torchvision's ``roi_align`` and ``MultiScaleRoIAlign``.

The kernel (plugins/multilevel_roi_align_kernel.cu) is built with plain nvcc together with the test
launcher plugins/tests/roi_align_launcher.cu into a shared library with a C ABI, loaded here with
ctypes and run on torch's CUDA buffers. Each case compares the kernel with torchvision on the same
GPU, in float32 and float16, and records its statistics (junit properties, read by
scripts/gpu_check.sh into one table) and the kernel's time from CUDA events.

Tolerances:
  * float32: ``|kernel - torchvision| <= 1e-5 * |torchvision| + 1e-5`` (features are O(1); what is
    left is the order of float operations, FMA contraction included);
  * float16: the kernel reads half exactly, accumulates in float32 and rounds once, so against
    torchvision in float32 on the same (half) features the error is at most half a float16 ulp of
    the result, plus the float32 tolerance above.

Everything GPU-bound is marked ``gpu`` and skips with the reason elsewhere. ``build_launcher`` is
also used by tests/scripts/test_gpu_check.py, which compiles the launcher on a machine without a GPU.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.core.contract import PLUGIN_MAX_LEVELS, fpn_level_range
from mrcnn_edge.export.build import plugin_library as plugin_build
from mrcnn_edge.export.plugin_host import multilevel_roi_align_host

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins"
LAUNCHER_SOURCE = PLUGIN_DIR / "tests" / "roi_align_launcher.cu"
KERNEL_SOURCE = PLUGIN_DIR / "multilevel_roi_align_kernel.cu"
LAUNCHER_ABI_VERSION = 1
TIMED_RUNS = 20
FP32_RTOL = FP32_ATOL = 1e-5


class _Launch(ctypes.Structure):
    """ctypes mirror of ``RoiAlignLaunch`` (plugins/tests/roi_align_launcher.cu)."""

    _fields_ = [
        ("rois", ctypes.c_void_p),
        ("features", ctypes.c_void_p * PLUGIN_MAX_LEVELS),
        ("output", ctypes.c_void_p),
        ("stream", ctypes.c_void_p),
        ("batch", ctypes.c_int32),
        ("num_rois", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("num_levels", ctypes.c_int32),
        ("heights", ctypes.c_int32 * PLUGIN_MAX_LEVELS),
        ("widths", ctypes.c_int32 * PLUGIN_MAX_LEVELS),
        ("spatial_scales", ctypes.c_float * PLUGIN_MAX_LEVELS),
        ("output_height", ctypes.c_int32),
        ("output_width", ctypes.c_int32),
        ("sampling_ratio", ctypes.c_int32),
        ("aligned", ctypes.c_int32),
        ("canonical_scale", ctypes.c_float),
        ("canonical_level", ctypes.c_int32),
        ("k_min", ctypes.c_int32),
        ("k_max", ctypes.c_int32),
        ("feature_type", ctypes.c_int32),
        ("timed_runs", ctypes.c_int32),
    ]


def build_launcher(out_dir: Path, arch: str) -> Path:
    """Compile the kernel and its test launcher into ``out_dir/libroi_align_launcher.so``.

    ``arch`` is ``"sm_XY"`` (one real architecture) or ``"native"`` (the GPUs of this machine).
    Plain nvcc, no TensorRT; the CUDA runtime is linked statically (nvcc's default), so the library
    loads on a machine without a GPU. Raises RuntimeError with nvcc's output when it fails.
    """
    nvcc = plugin_build.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    if arch == "native":
        target = ["-arch=native"]
    else:
        number = arch.removeprefix("sm_")
        target = ["-gencode", f"arch=compute_{number},code=sm_{number}"]
    out = out_dir / "libroi_align_launcher.so"
    cmd = [str(nvcc), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-Wall,-Wextra", *target,
           "-I", str(PLUGIN_DIR), str(LAUNCHER_SOURCE), str(KERNEL_SOURCE), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return out


def load_launcher(path: Path) -> ctypes.CDLL:
    """Load a library from :func:`build_launcher` and check that it speaks this file's ABI."""
    lib = ctypes.CDLL(str(path))
    lib.roi_align_launcher_abi_version.restype = ctypes.c_int32
    lib.roi_align_launcher_args_size.restype = ctypes.c_int64
    lib.roi_align_launch.argtypes = [ctypes.POINTER(_Launch), ctypes.POINTER(ctypes.c_float)]
    lib.roi_align_launch.restype = ctypes.c_int32
    lib.roi_align_launcher_error_string.argtypes = [ctypes.c_int32]
    lib.roi_align_launcher_error_string.restype = ctypes.c_char_p
    if lib.roi_align_launcher_abi_version() != LAUNCHER_ABI_VERSION:
        raise RuntimeError(f"{path}: launcher ABI {lib.roi_align_launcher_abi_version()}, "
                           f"this test speaks {LAUNCHER_ABI_VERSION}")
    if lib.roi_align_launcher_args_size() != ctypes.sizeof(_Launch):
        raise RuntimeError(f"{path}: RoiAlignLaunch is {lib.roi_align_launcher_args_size()} bytes, "
                           f"the ctypes mirror {ctypes.sizeof(_Launch)}")
    return lib


@dataclass(frozen=True)
class Case:
    """One comparison: ``rois [batch, rois, 4]`` on ``channels``-deep maps of a ``canvas`` image."""

    name: str
    batch: int
    rois: int
    channels: int
    canvas: tuple[int, int]
    scales: tuple[float, ...] = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    output: tuple[int, int] = (7, 7)
    sampling_ratio: int = 2
    aligned: int = 0
    max_box: float = 900.0  # side of the largest box; past the canvas on purpose (level 5 and up)


CASES = [
    Case("fpn-4-levels", 2, 1000, 16, (256, 320)),
    Case("mask-14x14", 1, 100, 8, (256, 320), output=(14, 14)),
    Case("adaptive-aligned", 2, 300, 8, (256, 320), sampling_ratio=0, aligned=1),
    Case("one-roi", 1, 1, 4, (128, 160)),
    Case("zero-rois", 2, 0, 4, (128, 160)),
    # torchvision's MobileNetV3-FPN: two maps at 1/32, k_min = k_max = 5, every ROI pools from map 0
    Case("two-maps-at-stride-32", 1, 200, 8, (256, 320), scales=(1 / 32, 1 / 32), max_box=1500.0),
    # a ResNet-50-FPN at 800x1344: the box head's and the mask head's real workloads
    Case("r50-box-head", 1, 1000, 256, (800, 1344)),
    Case("r50-mask-head", 1, 100, 256, (800, 1344), output=(14, 14)),
]


def random_boxes(rng: np.random.Generator, case: Case) -> np.ndarray:
    """``[B, R, 4]`` float32 x1, y1, x2, y2: log-uniform sizes from 2 px to ``case.max_box`` (every
    FPN level), aspect 1:2 to 2:1, some past the canvas, some of zero width or height."""
    h, w = case.canvas
    size = np.exp(rng.uniform(np.log(2.0), np.log(case.max_box), (case.batch, case.rois)))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (case.batch, case.rois)))
    bw, bh = size * np.sqrt(aspect), size / np.sqrt(aspect)
    x1 = rng.uniform(-0.1 * w, w, (case.batch, case.rois))
    y1 = rng.uniform(-0.1 * h, h, (case.batch, case.rois))
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=-1)
    if case.rois >= 10:
        boxes[:, ::10, 2] = boxes[:, ::10, 0]  # zero width: level k_min, torchvision's 1x1 rule
    return boxes.astype(np.float32)


def torchvision_reference(boxes, feats32: list, case: Case):
    """``(reference [B, R, C, oh, ow] float32, levels [B*R])``: per level ``torchvision.ops.roi_align``
    on the ROIs that torchvision's ``LevelMapper`` gives that level."""
    import torch
    from torchvision.ops import roi_align
    from torchvision.ops.poolers import LevelMapper

    k_min, k_max = fpn_level_range(case.scales)
    per_image = list(boxes.unbind(0))
    if len(feats32) > 1:
        levels = LevelMapper(k_min, k_max, canonical_scale=224, canonical_level=4)(per_image)
    else:
        levels = torch.zeros(case.batch * case.rois, dtype=torch.int64, device=boxes.device)
    index = torch.arange(case.batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(case.rois)
    rois5 = torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1)
    out = torch.zeros((case.batch * case.rois, case.channels, *case.output), device=boxes.device)
    for level, (feat, scale) in enumerate(zip(feats32, case.scales)):
        idx = torch.where(levels == level)[0]
        out[idx] = roi_align(feat, rois5[idx], case.output, spatial_scale=scale,
                             sampling_ratio=case.sampling_ratio, aligned=bool(case.aligned))
    return out.reshape(case.batch, case.rois, case.channels, *case.output), levels


def multiscale_reference(boxes, feats32: list, case: Case):
    """torchvision's own ``MultiScaleRoIAlign`` (aligned=0 only), ``[B, R, C, oh, ow]``."""
    from torchvision.ops import MultiScaleRoIAlign

    names = [str(i) for i in range(len(feats32))]
    pooler = MultiScaleRoIAlign(names, list(case.output), case.sampling_ratio)
    out = pooler(dict(zip(names, feats32)), list(boxes.unbind(0)), [case.canvas] * case.batch)
    return out.reshape(case.batch, case.rois, case.channels, *case.output)


def run_kernel(lib: ctypes.CDLL, boxes, feats: list, case: Case, timed_runs: int):
    """``(pooled [B, R, C, oh, ow] in the features' dtype, ms per launch)`` from the plugin's kernel."""
    import torch

    out = torch.full((case.batch, case.rois, case.channels, *case.output), 7.0, dtype=feats[0].dtype,
                     device=feats[0].device)  # not zero: a kernel that skipped an element shows
    k_min, k_max = fpn_level_range(case.scales)
    a = _Launch()
    a.rois, a.output = boxes.data_ptr(), out.data_ptr()
    a.stream = torch.cuda.current_stream().cuda_stream or None
    a.batch, a.num_rois, a.channels, a.num_levels = case.batch, case.rois, case.channels, len(feats)
    for i, (f, s) in enumerate(zip(feats, case.scales)):
        a.features[i] = f.data_ptr()
        a.heights[i], a.widths[i] = f.shape[2], f.shape[3]
        a.spatial_scales[i] = s
    a.output_height, a.output_width = case.output
    a.sampling_ratio, a.aligned = case.sampling_ratio, case.aligned
    a.canonical_scale, a.canonical_level = 224.0, 4
    a.k_min, a.k_max = k_min, k_max
    a.feature_type = 0 if feats[0].dtype == torch.float32 else 1
    a.timed_runs = timed_runs
    ms = ctypes.c_float(float("nan"))
    rc = lib.roi_align_launch(ctypes.byref(a), ctypes.byref(ms))
    assert rc == 0, f"roi_align_launch: {lib.roi_align_launcher_error_string(rc).decode()} ({rc})"
    return out, ms.value


def torchvision_ms(boxes, feats: list, case: Case, runs: int) -> float:
    """Mean time of torchvision's ``MultiScaleRoIAlign`` on the same input, CUDA events."""
    import torch
    from torchvision.ops import MultiScaleRoIAlign

    names = [str(i) for i in range(len(feats))]
    pooler = MultiScaleRoIAlign(names, list(case.output), case.sampling_ratio)
    x, per_image = dict(zip(names, feats)), list(boxes.to(feats[0].dtype).unbind(0))
    shapes = [case.canvas] * case.batch
    pooler(x, per_image, shapes)  # warm-up
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(runs):
        pooler(x, per_image, shapes)
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / runs


def tolerance(ref, dtype_is_half: bool) -> np.ndarray:
    """Allowed ``|kernel - reference|`` per element (module docstring)."""
    ref = np.abs(ref)
    tol = FP32_RTOL * ref + FP32_ATOL
    if dtype_is_half:
        tol += 0.5 * np.spacing(ref.astype(np.float16)).astype(np.float32)
    return tol


# ---- on a GPU ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def launcher(tmp_path_factory):
    """The launcher built for this machine's GPU (``sm_XY`` from torch, ``native`` as a fallback)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    if plugin_build.find_nvcc() is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    major, minor = torch.cuda.get_device_capability()
    arch = os.environ.get("MRCNN_EDGE_GPU_ARCH") or f"sm_{major}{minor}"
    return load_launcher(build_launcher(tmp_path_factory.mktemp("launcher"), arch))


@pytest.mark.gpu
def test_launcher_builds_and_loads_for_this_gpu(launcher, record_property):
    """First in the file: its duration is the nvcc build (gpu_check.sh's table shows it)."""
    torch = pytest.importorskip("torch")
    record_property("gpu", torch.cuda.get_device_name())
    assert launcher.roi_align_launcher_abi_version() == LAUNCHER_ABI_VERSION


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kernel_matches_torchvision(launcher, case: Case, precision: str, record_property):
    torch = pytest.importorskip("torch")
    half = precision == "fp16"
    dev = torch.device("cuda")
    rng = np.random.default_rng(sum(map(ord, case.name)))
    boxes = torch.from_numpy(random_boxes(rng, case)).to(dev).contiguous()
    gen = torch.Generator(device=dev).manual_seed(len(case.name))
    h, w = case.canvas
    feats = [torch.randn((case.batch, case.channels, round(h * s), round(w * s)), generator=gen, device=dev)
             for s in case.scales]
    if half:
        feats = [f.half() for f in feats]
    feats32 = [f.float() for f in feats]  # the reference reads exactly what the kernel reads

    got, kernel_ms = run_kernel(launcher, boxes, feats, case, TIMED_RUNS)
    assert got.dtype == feats[0].dtype
    assert tuple(got.shape) == (case.batch, case.rois, case.channels, *case.output)
    record_property("kernel_ms", f"{kernel_ms:.4f}")
    if case.rois == 0:
        record_property("max_abs_err", "0")
        return

    ref, levels = torchvision_reference(boxes, feats32, case)
    refs = [ref] if case.aligned else [ref, multiscale_reference(boxes, feats32, case)]
    got32 = got.float().cpu().numpy()
    assert np.isfinite(got32).all()
    worst = 0.0
    for r in refs:
        r = r.cpu().numpy()
        err = np.abs(got32 - r)
        bad = err > tolerance(r, half)
        worst = max(worst, float(err.max()))
        assert not bad.any(), (f"{case.name} {precision}: {int(bad.sum())} of {bad.size} elements off, "
                               f"max abs err {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}")
    # per level: the kernel's level rule against torchvision's LevelMapper, ROI by ROI
    err_per_roi = np.abs(got32 - ref.cpu().numpy()).reshape(case.batch * case.rois, -1).max(axis=1)
    lv = levels.cpu().numpy()
    per_level = {int(k): float(err_per_roi[lv == k].max()) for k in np.unique(lv)}
    if case.name == "fpn-4-levels":
        assert sorted(per_level) == [0, 1, 2, 3], f"the boxes reach only levels {sorted(per_level)}"
    try:
        tv_ms = torchvision_ms(boxes, feats, case, TIMED_RUNS)
    except RuntimeError as exc:  # torchvision without a half kernel: the timing is informational
        tv_ms = float("nan")
        print(f"torchvision timing unavailable: {exc}")
    record_property("max_abs_err", f"{worst:.3g}")
    record_property("per_level_max_err", " ".join(f"L{k}:{v:.2g}" for k, v in per_level.items()))
    record_property("torchvision_ms", f"{tv_ms:.4f}")
    print(f"{case.name} {precision}: max abs err {worst:.3g}, mean {float(err_per_roi.mean()):.3g}; "
          f"per level {per_level}; kernel {kernel_ms:.4f} ms, torchvision {tv_ms:.4f} ms")


# ---- the kernel against the plugin's CPU build ---------------------------------------------------

HARNESS = r"""
#include "multilevel_roi_align_kernel.h"
#include <cuda_runtime_api.h>
extern "C" int run_multilevel_roi_align(mrcnn_edge::MultilevelRoIAlignParams const* p, int type)
{
    cudaError_t e = mrcnn_edge::launchMultilevelRoIAlign(*p, static_cast<mrcnn_edge::FeatureType>(type), nullptr);
    if (e != cudaSuccess) return static_cast<int>(e);
    return static_cast<int>(cudaDeviceSynchronize());
}
"""


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernel_matches_cpu_build_on_gpu(tmp_path, dtype):
    """The launcher through a 10-line ctypes harness, on torch's CUDA buffers, against the CPU build
    (roi_align_host.cpp, the reference ONNX Runtime and validation use), non-finite boxes included."""
    import torch

    from mrcnn_edge.export import plugin_host
    from mrcnn_edge.plugins import SOURCE_DIR

    nvcc = plugin_build.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit)")
    src = tmp_path / "harness.cu"
    src.write_text(HARNESS)
    lib_path = tmp_path / "libharness.so"
    subprocess.run([str(nvcc), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-arch=native", "-I",
                    str(SOURCE_DIR), str(src), str(SOURCE_DIR / "multilevel_roi_align_kernel.cu"), "-o",
                    str(lib_path)], check=True)
    harness = ctypes.CDLL(str(lib_path))
    harness.run_multilevel_roi_align.argtypes = [ctypes.POINTER(plugin_host._Params), ctypes.c_int]

    rng = np.random.default_rng(1)
    for batch, n in [(2, 1000), (1, 0)]:
        rois = random_boxes(rng, Case("cpu-build", batch, n, 16, (128, 160)))
        if n:
            rois[:, :5] = np.nan  # non-finite boxes pool to zeros
        feats = [rng.standard_normal((batch, 16, 128 // s, 160 // s)).astype(dtype) for s in (4, 8, 16, 32)]
        want = multilevel_roi_align_host(rois, feats, 7, 7, 2, 0)
        d_rois = torch.from_numpy(rois).cuda()
        d_feats = [torch.from_numpy(f).cuda() for f in feats]
        d_out = torch.full((batch, n, 16, 7, 7), 7.0, dtype=d_feats[0].dtype, device="cuda")
        p = plugin_host._params(rois, list(Case.scales), 2, 224.0, 4)
        p.rois, p.output, p.channels = d_rois.data_ptr(), d_out.data_ptr(), 16
        p.output_height = p.output_width = 7
        p.sampling_ratio, p.aligned = 2, 0
        for i, f in enumerate(d_feats):
            p.features[i] = f.data_ptr()
            p.heights[i], p.widths[i] = f.shape[2], f.shape[3]
        assert harness.run_multilevel_roi_align(ctypes.byref(p), 0 if dtype == np.float32 else 1) == 0
        got = d_out.cpu().numpy()
        if n:
            assert np.all(got[:, :5] == 0)
        err = np.abs(got.astype(np.float32) - want.astype(np.float32))
        tol = 1e-4 if dtype == np.float32 else np.spacing(np.abs(want).astype(np.float16)).astype(np.float32) + 1e-4
        assert np.all(err <= tol), float(err.max())
