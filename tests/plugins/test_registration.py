"""How each host finds the plugin: loadLibrary on libmrcnn_edge_plugins.so, and the self-registering
libmrcnn_edge_plugins_autoreg.so for the hosts that only dlopen (plugins/README.md, "Loading").

No TensorRT library here: plugins/tests/standin_nvinfer.cpp is a stand-in libnvinfer whose plugin
registry records registrations and every call it gets, refuses what NvInferRuntimeCommon.h says the
real one refuses (a duplicate name/version/namespace; a loadLibrary whose creators are already
registered), and whose getLogger() records what reaches TensorRT's logger. It is built against the
headers of the major it stands in for, so a plugin of the other major meets the other virtual table,
as it would in a real process. Both libraries are linked as the real build links them and loaded with
ctypes, each scenario in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import shutil
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
ONCE = {"count": 1, "entries": [IDENTITY]}
NOTHING = {"count": 0, "entries": []}
# mrcnnEdgePluginAutoregStatus() (plugins/plugin_autoreg.cpp)
REGISTERED, ALREADY, NO_TENSORRT, OTHER_MAJOR = 1, 2, -1, -2

# Runs in a fresh interpreter: argv = scenario, plugin library, autoreg library, stand-in libnvinfer.
# Prints one JSON line.
SCENARIO = r"""
import _ctypes, ctypes, json, os, shutil, sys, tempfile
scenario, plugin_path, autoreg_path, standin_path = sys.argv[1:5]
out = {}
KEY = (b"MultilevelRoIAlign", b"1", b"mrcnn_edge")

def standin(mode=ctypes.RTLD_LOCAL):
    s = ctypes.CDLL(standin_path, mode=mode)
    s.standin_registration.restype = s.standin_logged.restype = s.standin_creator_name.restype = ctypes.c_char_p
    return s

def registry(s, tag):
    n = s.standin_registered_count()
    out[tag] = {"count": n, "entries": [s.standin_registration(i).decode() for i in range(n)]}

def mapped(path):
    return any(os.path.basename(path) in line for line in open("/proc/self/maps"))

def logged(s):
    return [s.standin_logged(i).decode() for i in range(s.standin_logged_count())]

if scenario == "loadlibrary":
    # trtexec --dynamicPlugins, trt.get_plugin_registry().load_library (mrcnn-edge build and run)
    s = standin()
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    out["from_getcreators"] = s.standin_library_creators()
    registry(s, "after_load")
    # no logger finder handed over (the stand-in's loadLibrary, like TensorRT's, owes none): a refused
    # attribute is logged through TensorRT's getLogger()
    out["created"] = s.standin_create_plugin(*KEY, b"output_size")
    out["logged"] = logged(s)
    # "The call will fail and return nullptr if any of the plugins are already registered."
    out["loaded_again"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_again")
elif scenario == "dlopen-plugin":
    # the plugin library merely dlopen'ed, TensorRT linked (global): it registers nothing by itself
    s = standin(ctypes.RTLD_GLOBAL)
    ctypes.CDLL(plugin_path)
    out["calls"] = s.standin_registry_calls()
    registry(s, "dlopen")
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
elif scenario in ("autoreg-local", "autoreg-global"):
    # TensorRT first (Python's tensorrt loads libnvinfer RTLD_LOCAL; trtexec, Triton and nvinfer link
    # it), then a plain dlopen of the autoreg library (Triton plugins=, DeepStream custom-lib-path)
    s = standin(ctypes.RTLD_GLOBAL if scenario == "autoreg-global" else ctypes.RTLD_LOCAL)
    a = ctypes.CDLL(autoreg_path)
    out["status"] = a.mrcnnEdgePluginAutoregStatus()
    registry(s, "dlopen")
    out["created"] = s.standin_create_plugin(*KEY, b"output_size")
    out["logged"] = logged(s)
    # both libraries copied to another folder and loaded too: refused as a duplicate, quietly
    folder = tempfile.mkdtemp()
    for path in (plugin_path, autoreg_path):
        shutil.copy(path, folder)
    copy = ctypes.CDLL(os.path.join(folder, os.path.basename(autoreg_path)))
    out["copy_status"] = copy.mrcnnEdgePluginAutoregStatus()
    registry(s, "copy")
elif scenario == "autoreg-before-tensorrt":
    # no TensorRT in the process: one line, nothing registered; loadLibrary later still works
    a = ctypes.CDLL(autoreg_path)
    out["status"] = a.mrcnnEdgePluginAutoregStatus()
    s = standin()
    out["loaded"] = s.standin_load_library(plugin_path.encode())
    registry(s, "after_load")
elif scenario == "other-major":
    # a TensorRT of the other major linked into the program: nothing may be called on its registry
    s = standin(ctypes.RTLD_GLOBAL)
    a = ctypes.CDLL(autoreg_path)
    out["status"] = a.mrcnnEdgePluginAutoregStatus()
    out["calls"] = s.standin_registry_calls()
    registry(s, "dlopen")
elif scenario == "dlclose-cycle":
    # DeepStream dlcloses custom-lib-path when an element is destroyed and dlopens it again for the
    # next pipeline; TensorRT keeps the creator pointer all along and calls it
    s = standin(ctypes.RTLD_GLOBAL)
    a = ctypes.CDLL(autoreg_path)
    _ctypes.dlclose(a._handle)
    out["mapped_after_dlclose"] = [mapped(autoreg_path), mapped(plugin_path)]
    out["name_after_dlclose"] = s.standin_creator_name(*KEY).decode()
    b = ctypes.CDLL(autoreg_path)
    out["status_again"] = b.mrcnnEdgePluginAutoregStatus()
    registry(s, "again")
    out["name_again"] = s.standin_creator_name(*KEY).decode()
elif scenario == "preload":
    # LD_PRELOAD=autoreg: it ran before the program loaded TensorRT; the program loads it by soname
    s = standin()
    registry(s, "preload")
    out["created"] = s.standin_create_plugin(*KEY, b"output_height")
elif scenario == "preload-unreachable":
    # LD_PRELOAD=autoreg with a TensorRT the dynamic loader cannot find (pip's tensorrt_libs)
    out["nothing"] = True
print(json.dumps(out))
"""


def _ids(d: Path) -> str:
    return f"trt{plugin_build.tensorrt_header_version(d)}"


def _major(d: Path) -> str:
    return (plugin_build.tensorrt_header_version(d) or "0").split(".")[0]


@pytest.fixture(scope="module", params=TRT_DIRS or [None], ids=lambda d: _ids(d) if d else "no-trt-headers")
def built(request):
    """(header folder, plugin library, autoreg library, stand-in libnvinfer) for one header set."""
    include = request.param
    if include is None:
        pytest.skip("TensorRT headers not found: set MRCNN_EDGE_TRT_HEADERS (see tests/plugins/test_compile.py)")
    if _testbuild.nvcc() is None or _testbuild.cxx() is None:
        pytest.skip("nvcc and g++ are needed to build the plugin libraries")
    if _testbuild.cudart_static() is None:
        pytest.skip("libcudart_static.a not found next to nvcc")
    proc, kernel = _testbuild.kernel_object(KERNEL_ARCHS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plugin, autoreg = _testbuild.plugin_libraries(include, kernel)
    return include, plugin, autoreg, _testbuild.standin_nvinfer(include)


def _scenario(name: str, plugin: Path, autoreg: Path, standin: Path,
              env: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """(the scenario's JSON, its stderr lines)."""
    run = subprocess.run([sys.executable, "-c", SCENARIO, name, str(plugin), str(autoreg), str(standin)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}{run.stderr}"
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr.strip().splitlines()


def _refused_field(logged: list[str], field: str) -> list[str]:
    return [line for line in logged if f"unknown attribute '{field}'" in line]


def test_loadlibrary_takes_the_creator_from_getcreators_and_logs_through_tensorrt(built):
    """trtexec --dynamicPlugins and mrcnn-edge: documented entry points only, TensorRT's logger."""
    _, plugin, autoreg, standin = built
    out, err = _scenario("loadlibrary", plugin, autoreg, standin)
    assert out["loaded"] == 1 and out["from_getcreators"] == 1 and out["after_load"] == ONCE, out
    # the plugin's refusal reached TensorRT's getLogger(), not raw stderr
    assert out["created"] == 0 and len(_refused_field(out["logged"], "output_size")) == 1, out
    assert not any("unknown attribute" in line for line in err), err
    # a second loadLibrary fails as documented, and the registry still holds the creator once
    assert out["loaded_again"] == 0 and out["after_again"] == ONCE, out


def test_the_plugin_library_registers_nothing_when_merely_loaded(built):
    _, plugin, autoreg, standin = built
    out, err = _scenario("dlopen-plugin", plugin, autoreg, standin)
    assert out["calls"] == 0 and out["dlopen"] == NOTHING, out
    assert out["loaded"] == 1 and out["after_load"] == ONCE, out
    assert err == []


@pytest.mark.parametrize("mode", ["autoreg-local", "autoreg-global"])
def test_autoreg_registers_once_when_dlopened(built, mode):
    _, plugin, autoreg, standin = built
    out, err = _scenario(mode, plugin, autoreg, standin)
    assert out["status"] == REGISTERED and out["dlopen"] == ONCE, out
    # no loadLibrary, so no logger finder: the plugin still logs through TensorRT's logger
    assert out["created"] == 0 and len(_refused_field(out["logged"], "output_size")) == 1, out
    # another copy of both files: its registration is refused as a duplicate, quietly
    assert out["copy_status"] == ALREADY and out["copy"] == ONCE, out
    assert err == []


def test_autoreg_without_tensorrt_says_so_and_loadlibrary_still_works(built):
    _, plugin, autoreg, standin = built
    out, err = _scenario("autoreg-before-tensorrt", plugin, autoreg, standin)
    assert out["status"] == NO_TENSORRT
    assert len(err) == 1 and "no TensorRT (libnvinfer) in this process: MultilevelRoIAlign not registered" in err[0]
    assert out["loaded"] == 1 and out["after_load"] == ONCE, out


def test_autoreg_refuses_a_tensorrt_of_another_major_without_calling_it(built):
    """A 10.x build under an 11 registry (and the reverse) would call the wrong virtual function."""
    include, plugin, autoreg, _ = built
    others = [d for d in TRT_DIRS if _major(d) != _major(include)]
    if not others:
        pytest.skip(f"no TensorRT headers of a major other than {_major(include)} (MRCNN_EDGE_TRT_HEADERS)")
    other = others[0]
    out, err = _scenario("other-major", plugin, autoreg, _testbuild.standin_nvinfer(other))
    assert out["status"] == OTHER_MAJOR and out["calls"] == 0 and out["dlopen"] == NOTHING, out
    assert len(err) == 1, err
    assert f"built for TensorRT {_major(include)} but this process has TensorRT {_major(other)}" in err[0]
    assert "not registered" in err[0] and "mrcnn-edge build-plugin" in err[0]


def test_dlclose_and_dlopen_again_keep_the_registered_creator_alive(built):
    _, plugin, autoreg, standin = built
    out, err = _scenario("dlclose-cycle", plugin, autoreg, standin)
    assert out["mapped_after_dlclose"] == [True, True], out  # -z nodelete, and its plugin library with it
    assert out["name_after_dlclose"] == "MultilevelRoIAlign" and out["name_again"] == "MultilevelRoIAlign", out
    assert out["status_again"] == REGISTERED and out["again"] == ONCE, out
    assert err == []


def test_ld_preload_registers_with_the_tensorrt_the_program_loads(built):
    _, plugin, autoreg, standin = built
    env = {"LD_PRELOAD": str(autoreg), "LD_LIBRARY_PATH": f"{standin.parent}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    out, err = _scenario("preload", plugin, autoreg, standin, env)
    assert out["preload"] == ONCE, out
    assert out["created"] == 1, out  # a valid attribute: the registered creator makes a plugin
    assert err == []


def test_ld_preload_without_a_reachable_tensorrt_says_so_in_one_line(built, tmp_path):
    """A pip-only TensorRT: libnvinfer lives in site-packages, where the dynamic loader never looks."""
    include, plugin, autoreg, standin = built
    # only a folder without the stand-in on the library path
    env = {"LD_PRELOAD": str(autoreg), "LD_LIBRARY_PATH": str(tmp_path)}
    out, err = _scenario("preload-unreachable", plugin, autoreg, standin, env)
    assert out == {"nothing": True}
    soname = f"libnvinfer.so.{_major(include)}"
    assert len(err) == 1, err
    assert f"LD_PRELOAD: {soname} is not on the library path" in err[0] and "LD_LIBRARY_PATH" in err[0], err


def test_the_libraries_export_only_their_entry_points(built):
    """libmrcnn_edge_plugins.so: TensorRT's two entry points and two diagnostics, nothing else of ours."""
    _, plugin, autoreg, _ = built
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")

    def exported(lib: Path) -> set[str]:
        lines = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        # C symbols only: C++ ones are the standard library's inline functions (weak, vague linkage)
        return {parts[2] for parts in (line.split() for line in lines) if len(parts) == 3 and parts[1] == "T"
                and not parts[2].startswith("_")}

    assert exported(plugin) == {"getCreators", "setLoggerFinder", "mrcnnEdgePluginTensorRTVersion",
                                "mrcnnEdgePluginDescription"}
    assert exported(autoreg) == {"mrcnnEdgePluginAutoregStatus"}
