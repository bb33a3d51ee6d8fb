"""The plugin compiles: the kernel with plain nvcc (no TensorRT), the plugin class against every set
of TensorRT headers found, and the whole library with CMake. No GPU needed.

TensorRT headers come from ``$MRCNN_EDGE_TENSORRT_INCLUDE`` (several folders separated by
``os.pathsep``, e.g. the ``include/`` of TensorRT 10.3 and 11.x) and the usual install places;
the tests that need them skip with the reason where there are none.

Each compiled plugin class also runs plugins/tests/plugin_selftest.cpp: the creator, attribute
checks, serialisation and the build/runtime checks through TensorRT's interfaces, on the CPU.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from mrcnn_edge.export import plugin_build
from mrcnn_edge.plugins import SOURCE_DIR

NVCC = plugin_build.find_nvcc()
CUDA_HOME = plugin_build._nvcc_cuda_home(NVCC) if NVCC else None
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
NO_NVCC = "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
# Orin, and desktop Turing, Ada and Hopper: compile only, in one nvcc call.
KERNEL_ARCHS = (75, 87, 89, 90)


def _tensorrt_include_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("MRCNN_EDGE_TENSORRT_INCLUDE", "").split(os.pathsep) if p]
    auto = plugin_build.find_tensorrt_include()
    if auto is not None:
        dirs.append(auto)
    found = {}
    for d in dirs:
        if (d / "NvInferRuntime.h").is_file():
            found.setdefault(d.resolve(), None)
    return list(found)


TRT_DIRS = _tensorrt_include_dirs()
NO_TRT = ("TensorRT headers not found: set MRCNN_EDGE_TENSORRT_INCLUDE=DIR[:DIR...] "
          "(folders with NvInferRuntime.h) or install libnvinfer-dev")


def _trt_id(d: Path | None) -> str:
    return f"trt{plugin_build.tensorrt_header_version(d)}" if d else "no-trt-headers"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def _cudart_static() -> Path | None:
    if CUDA_HOME is None:
        return None
    hits = sorted(CUDA_HOME.glob("lib*/libcudart_static.a")) + sorted(CUDA_HOME.glob("targets/*/lib/libcudart_static.a"))
    return hits[0] if hits else None


@pytest.fixture(scope="session")
def kernel_object(tmp_path_factory):
    """The kernel compiled once for every architecture in KERNEL_ARCHS (plain nvcc, -c)."""
    if NVCC is None:
        pytest.skip(NO_NVCC)
    out = tmp_path_factory.mktemp("kernel") / "multilevel_roi_align_kernel.o"
    cmd = [NVCC, "-c", "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-Wall,-Wextra", "-Xptxas", "-v",
           "-I", SOURCE_DIR]
    for a in KERNEL_ARCHS:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    t0 = time.perf_counter()
    proc = _run([*cmd, SOURCE_DIR / "multilevel_roi_align_kernel.cu", "-o", out])
    print(f"nvcc kernel for sm_{', sm_'.join(map(str, KERNEL_ARCHS))}: {time.perf_counter() - t0:.1f} s")
    return proc, out


def test_kernel_compiles_with_plain_nvcc_for_orin_and_desktop(kernel_object):
    proc, out = kernel_object
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    assert not warnings, "\n".join(warnings)
    compiled = set(re.findall(r"for 'sm_(\d+)'", proc.stderr))
    assert compiled >= {str(a) for a in KERNEL_ARCHS}
    # no local-memory spills in either instantiation
    assert not re.search(r"[1-9]\d* bytes spill", proc.stderr)


def test_kernel_has_no_tensorrt_dependency():
    text = (SOURCE_DIR / "multilevel_roi_align_kernel.cu").read_text() + (
        SOURCE_DIR / "multilevel_roi_align_kernel.h").read_text() + (SOURCE_DIR / "roi_align_math.h").read_text()
    assert "NvInfer" not in text and "nvinfer1" not in text


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++) on this machine")
def test_shared_header_is_plain_cpp_without_cuda(tmp_path):
    """roi_align_math.h compiles as ordinary C++ with no CUDA headers anywhere on the path."""
    src = tmp_path / "use_header.cpp"
    src.write_text('#include "roi_align_math.h"\nint main() { return mrcnn_edge::roiLevel(0, 0, 10, 10, 224.f, 4, 2, 4); }\n')
    proc = _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", SOURCE_DIR, src,
                 "-o", tmp_path / "a.out"])
    assert proc.returncode == 0, proc.stderr
    proc = _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", SOURCE_DIR / "roi_align_host.cpp"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("trt_include", TRT_DIRS or [None], ids=_trt_id)
def test_plugin_class_compiles_and_passes_selftest(trt_include, kernel_object, tmp_path):
    if trt_include is None:
        pytest.skip(NO_TRT)
    if CXX is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    cudart = _cudart_static()
    if cudart is None:
        pytest.skip(f"libcudart_static.a not found under {CUDA_HOME}")
    proc, kernel = kernel_object
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = ["-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I", SOURCE_DIR,
             "-isystem", trt_include, "-isystem", CUDA_HOME / "include"]
    t0 = time.perf_counter()
    objects = []
    for name in ("multilevel_roi_align_plugin.cpp", "multilevel_roi_align_attributes.cpp", "plugin_entry.cpp"):
        obj = tmp_path / (name + ".o")
        proc = _run([CXX, *flags, "-c", SOURCE_DIR / name, "-o", obj])
        assert proc.returncode == 0, f"{name} against {trt_include}:\n{proc.stderr[-4000:]}"
        objects.append(obj)
    exe = tmp_path / "plugin_selftest"
    proc = _run([CXX, *flags, SOURCE_DIR / "tests" / "plugin_selftest.cpp", *objects, kernel, cudart,
                 "-ldl", "-lpthread", "-lrt", "-o", exe])
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"plugin class against TensorRT {plugin_build.tensorrt_header_version(trt_include)} headers: "
          f"{time.perf_counter() - t0:.1f} s")
    run = _run([exe], timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: 0 failure(s)" in run.stdout
    # the refusals said why, one line each
    assert "unknown attribute 'output_size'" in run.stderr
    assert "feature map 3 has 128 channels but feature map 0 has 256" in run.stderr


def test_cmake_builds_the_library(tmp_path):
    if NVCC is None:
        pytest.skip(NO_NVCC)
    if not TRT_DIRS:
        pytest.skip(NO_TRT)
    cmake = plugin_build._find_cmake()
    if cmake is None:
        pytest.skip("cmake >= 3.18 not found")
    trt = TRT_DIRS[0]
    common = [f"-DCMAKE_CUDA_COMPILER={NVCC}", f"-DTENSORRT_INCLUDE_DIR={trt}", "-DCMAKE_BUILD_TYPE=Release"]
    t0 = time.perf_counter()
    # the default architecture list: Turing and newer, Orin included, PTX for the newest
    proc = _run([cmake, "-S", SOURCE_DIR, "-B", tmp_path / "default", *common])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    archs = re.search(r"CUDA architectures (\S+)", proc.stdout).group(1).split(";")
    assert {"75-real", "87-real", "89-real"} <= set(archs) and not archs[-1].endswith("-real")
    # a build for Orin only, to keep the test short
    build = tmp_path / "orin"
    proc = _run([cmake, "-S", SOURCE_DIR, "-B", build, *common, "-DCMAKE_CUDA_ARCHITECTURES=87"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = _run([cmake, "--build", build, "--parallel", str(os.cpu_count() or 2)])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    print(f"CMake configure x2 + build for sm_87: {time.perf_counter() - t0:.1f} s")
    lib_path = build / plugin_build.LIBRARY_NAME
    assert lib_path.is_file()
    # TensorRT's entry points are exported; loading needs no TensorRT library and no GPU
    lib = ctypes.CDLL(str(lib_path))
    lib.getCreators.restype = ctypes.c_void_p
    n = ctypes.c_int32(-1)
    assert lib.getCreators(ctypes.byref(n)) and n.value == 1
    assert hasattr(lib, "setLoggerFinder")
    assert plugin_build.plugin_library_tensorrt_version(lib_path) == plugin_build.tensorrt_header_version(trt)
    lib.mrcnnEdgePluginDescription.restype = ctypes.c_char_p
    assert lib.mrcnnEdgePluginDescription() == b"MultilevelRoIAlign/1@mrcnn_edge"
