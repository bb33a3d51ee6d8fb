"""The plugin library registers its creator when merely dlopen'ed, once, and loadLibrary still works.

No TensorRT library here: plugins/tests/standin_nvinfer.cpp is a stand-in libnvinfer whose plugin
registry records registrations and refuses what NvInferRuntimeCommon.h says the real one refuses (a
duplicate name/version/namespace; a loadLibrary whose creators are already registered). The plugin
library is built as the real build links it (static cudart, no libnvinfer) and loaded with ctypes,
each scenario in a fresh interpreter, as each loader of plugins/README.md ("Loading") loads it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrcnn_edge.export.build import plugin_library as plugin_build
from mrcnn_edge.plugins import _testbuild

pytestmark = pytest.mark.slow

KERNEL_ARCHS = (75, 87, 89, 90)  # as tests/plugins/test_compile.py: one kernel object for both
TRT_DIRS = _testbuild.tensorrt_include_dirs()
IDENTITY = "MultilevelRoIAlign/1@mrcnn_edge (mrcnn_edge)"  # name/version@registered-namespace (creator's)

# Runs in a fresh interpreter: argv = scenario, plugin library, stand-in libnvinfer. Prints JSON.
SCENARIO = r"""
import ctypes, json, shutil, sys, tempfile
scenario, plugin_path, standin_path = sys.argv[1:4]
out = {}

def standin(mode=ctypes.DEFAULT_MODE):
    s = ctypes.CDLL(standin_path, mode=mode)
    s.standin_registration.restype = ctypes.c_char_p
    return s

def registry(s, tag):
    n = s.standin_registered_count()
    out[tag] = {"count": n, "calls": s.standin_register_calls(),
                "entries": [s.standin_registration(i).decode() for i in range(n)]}

def creators(p):
    p.getCreators.restype = ctypes.c_void_p
    n = ctypes.c_int32(-1)
    p.getCreators(ctypes.byref(n))
    return n.value

if scenario in ("after-local", "after-global"):
    # TensorRT first (Python's tensorrt loads libnvinfer RTLD_LOCAL; trtexec/Triton link it), then a
    # plain dlopen of the plugin (ctypes.CDLL, DeepStream custom-lib-path, trtexec --staticPlugins)
    s = standin(ctypes.RTLD_GLOBAL if scenario == "after-global" else ctypes.RTLD_LOCAL)
    p = ctypes.CDLL(plugin_path)
    registry(s, "dlopen")
    out["self"] = p.mrcnnEdgePluginSelfRegistered()
    out["getCreators"] = creators(p)
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
    # a second copy of the file in the same process: refused as a duplicate, quietly
    copy = tempfile.mkdtemp() + "/libmrcnn_edge_plugins_copy.so"
    shutil.copyfile(plugin_path, copy)
    q = ctypes.CDLL(copy)
    out["copy_self"] = q.mrcnnEdgePluginSelfRegistered()
    registry(s, "copy")
elif scenario == "loadlibrary-first":
    # trtexec --dynamicPlugins / trt.get_plugin_registry().load_library: the registry dlopens it
    s = standin()
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
    out["loaded_again"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_again")
elif scenario == "before-tensorrt":
    # the plugin first, TensorRT nowhere in the process: nothing to register with; loadLibrary later
    p = ctypes.CDLL(plugin_path)
    out["self"] = p.mrcnnEdgePluginSelfRegistered()
    out["getCreators"] = creators(p)
    s = standin()
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
elif scenario == "preload":
    # LD_PRELOAD=plugin: it ran before anything loaded TensorRT; the program loads libnvinfer by soname
    s = standin()
    registry(s, "preload")
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
print(json.dumps(out))
"""


def _ids(d: Path) -> str:
    return f"trt{plugin_build.tensorrt_header_version(d)}"


@pytest.fixture(scope="module", params=TRT_DIRS or [None], ids=lambda d: _ids(d) if d else "no-trt-headers")
def libraries(request):
    """(plugin library, stand-in libnvinfer) built against one header set."""
    include = request.param
    if include is None:
        pytest.skip("TensorRT headers not found: set MRCNN_EDGE_TRT_HEADERS (see tests/plugins/test_compile.py)")
    if _testbuild.nvcc() is None or _testbuild.cxx() is None:
        pytest.skip("nvcc and g++ are needed to build the plugin library")
    if _testbuild.cudart_static() is None:
        pytest.skip("libcudart_static.a not found next to nvcc")
    proc, kernel = _testbuild.kernel_object(KERNEL_ARCHS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _testbuild.plugin_library(include, kernel), _testbuild.standin_nvinfer(include)


def _scenario(name: str, plugin: Path, standin: Path, env: dict[str, str] | None = None) -> dict:
    run = subprocess.run([sys.executable, "-c", SCENARIO, name, str(plugin), str(standin)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


ONCE = {"count": 1, "calls": 1, "entries": [IDENTITY]}


@pytest.mark.parametrize("mode", ["after-local", "after-global"])
def test_dlopen_registers_once_and_loadlibrary_still_loads(libraries, mode):
    plugin, standin = libraries
    out = _scenario(mode, plugin, standin)
    assert out["dlopen"] == ONCE, out
    assert out["self"] == 1
    # what loadLibrary is handed after the self-registration: nothing to register twice ...
    assert out["getCreators"] == 0
    # ... so it reports the library loaded, and the registry holds the creator once
    assert out["loaded"] == 1 and out["after_load"] == ONCE, out
    # another copy of the file: its registration is refused as a duplicate, quietly
    assert out["copy_self"] == 0 and out["copy"]["entries"] == [IDENTITY], out


def test_loadlibrary_first_registers_once(libraries):
    """trtexec --dynamicPlugins: loadLibrary's own dlopen runs the registrar first."""
    plugin, standin = libraries
    out = _scenario("loadlibrary-first", plugin, standin)
    assert out["loaded"] == 1 and out["after_load"] == ONCE, out
    assert out["loaded_again"] == 1 and out["after_again"] == ONCE, out  # twice is not an error


def test_dlopen_without_tensorrt_leaves_it_to_getcreators(libraries):
    plugin, standin = libraries
    out = _scenario("before-tensorrt", plugin, standin)
    assert out["self"] == 0 and out["getCreators"] == 1
    assert out["loaded"] == 1
    assert out["after_load"] == {"count": 1, "calls": 1, "entries": [IDENTITY]}, out


def test_ld_preload_registers_with_the_tensorrt_the_program_loads(libraries):
    plugin, standin = libraries
    env = {"LD_PRELOAD": str(plugin), "LD_LIBRARY_PATH": f"{standin.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    out = _scenario("preload", plugin, standin, env)
    assert out["preload"] == ONCE, out
    assert out["loaded"] == 1 and out["after_load"] == ONCE, out
