"""Builds of the plugin for the CPU-only tests: compiled once per process and per header set.

The tests of the plugin class (tests/plugins/test_compile.py), of its self-registration
(tests/plugins/test_registration.py) and of its attribute table (tests/plugins/test_attributes.py)
need the same objects; each is compiled here on first request into one temporary folder and reused
by every later request in the same pytest process. Test support only: nothing in mrcnn-edge's
commands imports this module.

TensorRT headers: ``$MRCNN_EDGE_TRT_HEADERS`` names a folder of header sets (``<dir>/<version>/include``,
as ``shared/tensorrt-headers`` in CI, which ``.ci/run`` points it at), ``$MRCNN_EDGE_TENSORRT_INCLUDE``
lists ``include`` folders (``os.pathsep``-separated), and an installed TensorRT is found too.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from . import SOURCE_DIR

__all__ = [
    "tensorrt_include_dirs", "nvcc", "cuda_home", "cxx", "cudart_static", "kernel_object", "plugin_objects",
    "selftest_executable", "gpu_selftest_executable", "plugin_libraries", "standin_nvinfer", "BuildError",
]

PLUGIN_SOURCES = ("multilevel_roi_align_plugin.cpp", "multilevel_roi_align_attributes.cpp", "plugin_entry.cpp",
                  "tensorrt_in_process.cpp")
AUTOREG_SOURCES = ("plugin_autoreg.cpp", "tensorrt_in_process.cpp")
_work: Path | None = None


class BuildError(RuntimeError):
    """A compile or link step failed; the message holds the command's output."""


def _workdir() -> Path:
    global _work
    if _work is None:
        _work = Path(tempfile.mkdtemp(prefix="mrcnn-edge-plugin-tests-"))
        atexit.register(shutil.rmtree, _work, True)
    return _work


def _run(cmd: Sequence[object], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return proc


def tensorrt_include_dirs() -> list[Path]:
    """Every distinct folder with ``NvInferRuntime.h`` named by the environment or installed."""
    from mrcnn_edge.export.build import plugin_library as plugin_build

    dirs: list[Path] = []
    sets = os.environ.get("MRCNN_EDGE_TRT_HEADERS")
    if sets:
        dirs += sorted(Path(sets).glob("*/include"))
    dirs += [Path(p) for p in os.environ.get("MRCNN_EDGE_TENSORRT_INCLUDE", "").split(os.pathsep) if p]
    auto = plugin_build.find_tensorrt_include()
    if auto is not None:
        dirs.append(auto)
    found: dict[Path, None] = {}
    for d in dirs:
        if (d / "NvInferRuntime.h").is_file():
            found.setdefault(d.resolve(), None)
    return list(found)


def nvcc() -> Path | None:
    from mrcnn_edge.export.build import plugin_library as plugin_build

    return plugin_build.find_nvcc()


def cuda_home() -> Path | None:
    from mrcnn_edge.export.build import plugin_library as plugin_build

    found = nvcc()
    return plugin_build._nvcc_cuda_home(found) if found else None


def cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def cudart_static() -> Path | None:
    home = cuda_home()
    if home is None:
        return None
    hits = sorted(home.glob("lib*/libcudart_static.a")) + sorted(home.glob("targets/*/lib/libcudart_static.a"))
    return hits[0] if hits else None


def _new_folder(what: str) -> Path:
    """A fresh folder in the work folder for one build product."""
    return Path(tempfile.mkdtemp(prefix=f"{what}-", dir=_workdir()))


def kernel_object(archs: Sequence[int]) -> tuple[subprocess.CompletedProcess, Path]:
    """The CUDA kernel compiled with plain nvcc (``-c``, ``-Xptxas -v``) for ``archs``; the process
    is returned whatever its exit status (the compile test reads its warnings and spills)."""
    return _kernel_object(tuple(archs))


# Each build below runs once per process and set of arguments (functools.cache): the compile tests
# of several files share them.
@functools.cache
def _kernel_object(archs: tuple[int, ...]) -> tuple[subprocess.CompletedProcess, Path]:
    out = _workdir() / f"kernel-{'-'.join(map(str, archs))}.o"
    cmd = [nvcc(), "-c", "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-Wall,-Wextra", "-Xptxas", "-v",
           "-I", SOURCE_DIR]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    proc = subprocess.run([str(c) for c in [*cmd, SOURCE_DIR / "multilevel_roi_align_kernel.cu", "-o", out]],
                          capture_output=True, text=True)
    return proc, out


def _flags(include: Path) -> list[object]:
    # -fno-gnu-unique: g++ gives some inline statics of the standard library (std::to_string's digit
    # table) STB_GNU_UNIQUE binding, and glibc never unloads a library that defines such a symbol.
    # Without it only what the build itself asks for (-z nodelete) keeps a library mapped after
    # dlclose, as with clang or a library that happens to have no such symbol.
    return ["-std=c++17", "-O1", "-fPIC", "-fno-gnu-unique", "-Wall", "-Wextra", "-Werror", "-I", SOURCE_DIR,
            "-isystem", include, "-isystem", cuda_home() / "include"]


@functools.cache
def plugin_objects(include: Path) -> tuple[Path, ...]:
    """The plugin class, attribute and entry files compiled against one header set (-Werror)."""
    folder = _new_folder("objects")
    objects = []
    for name in PLUGIN_SOURCES:
        obj = folder / (name + ".o")
        _run([cxx(), *_flags(include), "-fvisibility=hidden", "-c", SOURCE_DIR / name, "-o", obj],
             f"{name} against {include}")
        objects.append(obj)
    return tuple(objects)


@functools.cache
def selftest_executable(include: Path, kernel: Path) -> Path:
    """plugins/tests/plugin_selftest.cpp linked with the plugin's objects (no TensorRT library)."""
    exe = _new_folder("selftest") / "plugin_selftest"
    _run([cxx(), *_flags(include), SOURCE_DIR / "tests" / "plugin_selftest.cpp", *plugin_objects(include), kernel,
          cudart_static(), "-ldl", "-lpthread", "-lrt", "-o", exe], f"plugin self-test against {include}")
    return exe


def _nvcc_flags(include: Path) -> list[object]:
    """_flags() for nvcc: its own warnings are errors too (``-Werror all-warnings``)."""
    return ["-std=c++17", "-O1", "-Werror", "all-warnings", "-Xcompiler", "-fPIC,-Wall,-Wextra,-Werror",
            "-I", SOURCE_DIR, "-isystem", include]


@functools.cache
def gpu_selftest_executable(include: Path, kernel: Path) -> Path:
    """The self-test with its ``--gpu`` mode, compiled and linked by nvcc against the real CUDA runtime.

    plugins/tests/plugin_selftest.cpp (with ``MRE_SELFTEST_GPU``), plugin_selftest_gpu.cu (the
    enqueue cases) and roi_align_host.cpp (the CPU reference) are compiled by nvcc with -Werror and
    linked with the plugin's objects and ``kernel`` (a kernel object for the GPU that will run it, or
    for several architectures). nvcc links cudart statically, so the executable needs only the
    driver at run time, and without one its ``--gpu`` mode says so (exit 77).
    """
    folder = _new_folder("gpu-selftest")
    tests = SOURCE_DIR / "tests"
    sources = ((tests / "plugin_selftest.cpp", ["-DMRE_SELFTEST_GPU"]), (tests / "plugin_selftest_gpu.cu", []),
               (SOURCE_DIR / "roi_align_host.cpp", []))
    objects = []
    for source, defines in sources:
        obj = folder / (source.name + ".o")
        _run([nvcc(), *_nvcc_flags(include), *defines, "-c", source, "-o", obj],
             f"{source.name} (nvcc) against {include}")
        objects.append(obj)
    exe = folder / "plugin_selftest_gpu"
    _run([nvcc(), "--cudart", "static", *objects, *plugin_objects(include), kernel, "-o", exe],
         f"GPU self-test (nvcc link) against {include}")
    return exe


@functools.cache
def plugin_libraries(include: Path, kernel: Path) -> tuple[Path, Path]:
    """libmrcnn_edge_plugins.so and libmrcnn_edge_plugins_autoreg.so in one folder, linked as
    plugins/CMakeLists.txt links them: the first with static cudart, its soname, every symbol
    resolved; the second linked against the first (RUNPATH $ORIGIN) and ``-z nodelete``."""
    from mrcnn_edge.core.paths import PLUGIN_AUTOREG_LIBRARY_NAME, PLUGIN_LIBRARY_NAME

    folder = _new_folder("library")
    lib, autoreg = folder / PLUGIN_LIBRARY_NAME, folder / PLUGIN_AUTOREG_LIBRARY_NAME
    _run([cxx(), "-shared", "-fvisibility=hidden", *plugin_objects(include), kernel, cudart_static(),
          f"-Wl,-soname,{PLUGIN_LIBRARY_NAME}", "-Wl,--no-undefined", "-ldl", "-lpthread", "-lrt", "-o", lib],
         f"plugin library against {include}")
    objects = []
    for name in AUTOREG_SOURCES:
        obj = folder / (name + ".o")
        _run([cxx(), *_flags(include), "-fvisibility=hidden", "-c", SOURCE_DIR / name, "-o", obj],
             f"{name} against {include}")
        objects.append(obj)
    _run([cxx(), "-shared", "-fvisibility=hidden", *objects, "-L", folder, f"-l:{PLUGIN_LIBRARY_NAME}",
          "-Wl,-rpath,$ORIGIN", "-Wl,-z,nodelete", "-Wl,--no-undefined", "-ldl", "-o", autoreg],
         f"self-registering library against {include}")
    return lib, autoreg


@functools.cache
def standin_nvinfer(include: Path) -> Path:
    """plugins/tests/standin_nvinfer.cpp as ``<folder>/libnvinfer.so.<major>`` (soname alike)."""
    from mrcnn_edge.export.build import plugin_library as plugin_build

    major = (plugin_build.tensorrt_header_version(include) or "10").split(".")[0]
    name = f"libnvinfer.so.{major}"
    lib = _new_folder("standin") / name
    _run([cxx(), "-std=c++17", "-O1", "-fPIC", "-shared", "-Wall", "-isystem", include,
          "-isystem", cuda_home() / "include", SOURCE_DIR / "tests" / "standin_nvinfer.cpp",
          f"-Wl,-soname,{name}", "-ldl", "-o", lib], f"stand-in libnvinfer against {include}")
    return lib
