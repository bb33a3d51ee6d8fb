"""The plugin compiles: the kernel with plain nvcc (no TensorRT), the plugin class against every set
of TensorRT headers found, and the whole library with CMake. No GPU needed.

TensorRT headers: ``$MRCNN_EDGE_TRT_HEADERS`` (a folder of header sets, ``<dir>/<version>/include``;
``.ci/run`` points it at ``shared/tensorrt-headers``, which holds 10.3, 10.16 and 11.1), or
``$MRCNN_EDGE_TENSORRT_INCLUDE`` (``include`` folders separated by ``os.pathsep``), or an installed
TensorRT; the tests that need them skip with the reason where there are none.

Each compiled plugin class also runs plugins/tests/plugin_selftest.cpp: the creator, attribute
checks, serialisation and the build/runtime checks through TensorRT's interfaces, on the CPU. Its
nvcc build (with plugin_selftest_gpu.cu) has a ``--gpu`` mode that runs enqueue on a GPU and compares
with the CPU build: compiled here against every header set, run by the ``gpu`` test where there is a
GPU (scripts/gpu_check.sh runs it with the other self-tests).
Compiles happen once per process and header set (mrcnn_edge.plugins._testbuild) and are shared
with tests/plugins/test_registration.py and tests/plugins/test_attributes.py.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mrcnn_edge.export.build import plugin_library as plugin_build
from mrcnn_edge.plugins import SOURCE_DIR
from mrcnn_edge.plugins import _testbuild

NVCC = _testbuild.nvcc()
CUDA_HOME = _testbuild.cuda_home()
CXX = _testbuild.cxx()
NO_NVCC = "nvcc not found (install the CUDA toolkit or set CUDA_HOME)"
# Orin, and desktop Turing, Ada and Hopper: compile only, in one nvcc call.
KERNEL_ARCHS = (75, 87, 89, 90)
TRT_DIRS = _testbuild.tensorrt_include_dirs()
NO_TRT = ("TensorRT headers not found: set MRCNN_EDGE_TRT_HEADERS=DIR (folders DIR/<version>/include), "
          "MRCNN_EDGE_TENSORRT_INCLUDE=DIR[:DIR...] (folders with NvInferRuntime.h) or install libnvinfer-dev")


def _trt_id(d: Path | None) -> str:
    return f"trt{plugin_build.tensorrt_header_version(d)}" if d else "no-trt-headers"


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def kernel_object():
    """The kernel compiled once for every architecture in KERNEL_ARCHS (plain nvcc, -c)."""
    if NVCC is None:
        pytest.skip(NO_NVCC)
    t0 = time.perf_counter()
    proc, out = _testbuild.kernel_object(KERNEL_ARCHS)
    print(f"nvcc kernel for sm_{', sm_'.join(map(str, KERNEL_ARCHS))}: {time.perf_counter() - t0:.1f} s")
    return proc, out


@pytest.mark.slow
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
    src.write_text('#include "roi_align_math.h"\nint main() { return mrcnn_edge::roiLevel(0, 0, 10, 10, 224.f, 4, 2, 5, 4); }\n')
    proc = _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", SOURCE_DIR, src,
                 "-o", tmp_path / "a.out"])
    assert proc.returncode == 0, proc.stderr
    proc = _run([CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", SOURCE_DIR / "roi_align_host.cpp"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("trt_include", TRT_DIRS or [None], ids=_trt_id)
def test_plugin_class_compiles_and_passes_selftest(trt_include, kernel_object):
    if trt_include is None:
        pytest.skip(NO_TRT)
    if CXX is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    if _testbuild.cudart_static() is None:
        pytest.skip(f"libcudart_static.a not found under {CUDA_HOME}")
    proc, kernel = kernel_object
    assert proc.returncode == 0, proc.stderr[-2000:]
    t0 = time.perf_counter()
    exe = _testbuild.selftest_executable(trt_include, kernel)  # the objects compile with -Werror
    print(f"plugin class against TensorRT {plugin_build.tensorrt_header_version(trt_include)} headers: "
          f"{time.perf_counter() - t0:.1f} s")
    run = _run([exe], timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: 0 failure(s)" in run.stdout
    # the refusals said why, one line each
    assert "unknown attribute 'output_size'" in run.stderr
    assert "feature map 3 has 128 channels but feature map 0 has 256" in run.stderr
    assert "spatial_scales must be powers of two (1/4, 1/8, ...) as FPN maps are, got 0.1" in run.stderr


# The --gpu mode's exit status when the CUDA runtime finds no device (plugin_selftest_gpu.cu).
NO_GPU_EXIT = 77


def _gpu_selftest(trt_include: Path | None, kernel: Path) -> Path:
    """The nvcc build of the self-test for one header set, skipping where it cannot be built."""
    if trt_include is None:
        pytest.skip(NO_TRT)
    if NVCC is None:
        pytest.skip(NO_NVCC)
    t0 = time.perf_counter()
    exe = _testbuild.gpu_selftest_executable(trt_include, kernel)  # nvcc -Werror all-warnings
    print(f"GPU self-test (nvcc) against TensorRT {plugin_build.tensorrt_header_version(trt_include)} headers: "
          f"{time.perf_counter() - t0:.1f} s")
    return exe


@pytest.mark.slow
@pytest.mark.parametrize("trt_include", TRT_DIRS or [None], ids=_trt_id)
def test_gpu_selftest_builds_with_nvcc_and_says_when_there_is_no_gpu(trt_include, kernel_object):
    proc, kernel = kernel_object
    assert proc.returncode == 0, proc.stderr[-2000:]
    exe = _gpu_selftest(trt_include, kernel)
    # the nvcc build passes the CPU self-test as the g++ build does
    run = _run([exe], timeout=120)
    assert run.returncode == 0 and "ok: 0 failure(s)" in run.stdout, run.stdout + run.stderr
    # no device (none here, or hidden: CUDA_VISIBLE_DEVICES="" leaves the runtime none): one line, exit 77
    run = _run([exe, "--gpu"], timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert run.returncode == NO_GPU_EXIT, run.stdout + run.stderr
    assert run.stdout.startswith("plugin self-test --gpu: no CUDA device (") and run.stdout.count("\n") == 1
    assert run.stderr == ""


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("trt_include", TRT_DIRS or [None], ids=_trt_id)
def test_gpu_selftest_enqueue_matches_the_cpu_build(trt_include, record_property):
    """enqueue on this GPU, fp32 and fp16, 1 to 4 maps, zero ROIs, against the plugin's CPU build."""
    from mrcnn_edge.runtime.gpu.trt_platform import cuda_driver

    arch = cuda_driver().capabilities[0]
    # the compile test's kernel object when it has this GPU's sm_XY (one build less), else one for it
    proc, kernel = _testbuild.kernel_object(KERNEL_ARCHS if arch in KERNEL_ARCHS else (arch,))
    assert proc.returncode == 0, proc.stderr[-2000:]
    exe = _gpu_selftest(trt_include, kernel)
    run = _run([exe, "--gpu"], timeout=300)
    print(run.stdout)
    if run.returncode == NO_GPU_EXIT:
        pytest.skip(run.stdout.strip())
    errors = [float(e) for e in re.findall(r"max abs err (\S+)", run.stdout)]
    if errors:
        record_property("max_abs_err", f"{max(errors):.2e}")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert re.search(r"^gpu: ok, 0 of (\d+) case\(s\) failed$", run.stdout, re.M), run.stdout
    assert not re.search(r"^FAIL", run.stdout, re.M), run.stdout


@pytest.mark.slow
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
    # the self-registering library: found next to it, linked against it by its soname, never unloaded
    autoreg = build / plugin_build.AUTOREG_LIBRARY_NAME
    dynamic = _run(["readelf", "-d", autoreg]).stdout
    assert f"Shared library: [{plugin_build.LIBRARY_NAME}]" in dynamic and "[$ORIGIN" in dynamic, dynamic
    assert re.search(r"FLAGS_1\)\s+Flags:.*NODELETE", dynamic), dynamic
    assert f"Library soname: [{plugin_build.LIBRARY_NAME}]" in _run(["readelf", "-d", lib_path]).stdout
    run = _run([sys.executable, "-c", "import ctypes, sys; "
                "print(ctypes.CDLL(sys.argv[1]).mrcnnEdgePluginAutoregStatus())", autoreg])
    # no TensorRT in that process to register with: it says so and registers nothing
    assert run.stdout.strip() == "-1" and "no TensorRT (libnvinfer) in this process" in run.stderr, run
