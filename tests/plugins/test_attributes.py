"""One attribute table: what the C++ creator advertises equals mrcnn_edge.core.contract.PLUGIN_ATTRIBUTES.

The plugin self-test binary (plugins/tests/plugin_selftest.cpp, ``--fields``) prints the creator's
getFieldNames() (name, PluginFieldType, length) and the values of a plugin created with no field
(its defaults, through getFieldsToSerialize()). Names and order, types (ONNX ``int`` -> kINT32,
``float``/``floats`` -> kFLOAT32, as TensorRT's ONNX parser converts node attributes), lengths and
defaults must agree: a change on either side fails here.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.core.contract import PLUGIN_ATTRIBUTES
from mrcnn_edge.export.build import plugin_library as plugin_build
from mrcnn_edge.plugins import _testbuild

pytestmark = pytest.mark.slow

KERNEL_ARCHS = (75, 87, 89, 90)  # as tests/plugins/test_compile.py: one kernel object for all
TRT_DIRS = _testbuild.tensorrt_include_dirs()
ONNX_TO_FIELD = {"int": "kINT32", "float": "kFLOAT32", "floats": "kFLOAT32"}


def _field_types(include: Path) -> dict[int, str]:
    """PluginFieldType's enumerators by value, read from the headers the binary was built with."""
    for header in sorted(include.glob("NvInfer*.h")):
        m = re.search(r"enum class PluginFieldType\s*:\s*\w+\s*\{(.*?)\};", header.read_text(), re.S)
        if m:
            body = re.sub(r"//.*", "", m.group(1))
            return {int(v): k for k, v in re.findall(r"(k\w+)\s*=\s*(\d+)", body)}
    raise AssertionError(f"PluginFieldType not found in {include}")


@pytest.fixture(scope="module", params=TRT_DIRS or [None],
                ids=lambda d: f"trt{plugin_build.tensorrt_header_version(d)}" if d else "no-trt-headers")
def advertised(request):
    """(fields: [(name, type name, length)], defaults: {name: [values]}) as the C++ creator says."""
    include = request.param
    if include is None:
        pytest.skip("TensorRT headers not found: set MRCNN_EDGE_TRT_HEADERS (see tests/plugins/test_compile.py)")
    if _testbuild.nvcc() is None or _testbuild.cxx() is None or _testbuild.cudart_static() is None:
        pytest.skip("nvcc, g++ and libcudart_static.a are needed to build the plugin self-test")
    proc, kernel = _testbuild.kernel_object(KERNEL_ARCHS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    exe = _testbuild.selftest_executable(include, kernel)
    run = subprocess.run([str(exe), "--fields"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    types = _field_types(include)
    fields, defaults = [], {}
    for line in run.stdout.splitlines():
        kind, name, *rest = line.split()
        if kind == "field":
            fields.append((name, types[int(rest[0])], int(rest[1])))
        elif kind == "default":
            defaults[name] = [float(v) for v in rest]
    return fields, defaults


def test_names_and_order(advertised):
    fields, defaults = advertised
    assert [f[0] for f in fields] == [a.name for a in PLUGIN_ATTRIBUTES]
    assert list(defaults) == [a.name for a in PLUGIN_ATTRIBUTES]


def test_types_and_lengths(advertised):
    fields, _ = advertised
    want = [(a.name, ONNX_TO_FIELD[a.onnx_type], len(a.default) if a.onnx_type == "floats" else 1)
            for a in PLUGIN_ATTRIBUTES]
    assert fields == want


def test_defaults(advertised):
    _, defaults = advertised
    for a in PLUGIN_ATTRIBUTES:
        want = list(a.default) if a.onnx_type == "floats" else [a.default]
        got = defaults[a.name]
        if a.onnx_type == "int":
            assert got == [float(v) for v in want], a.name
        else:  # the C++ side holds float32
            assert np.array_equal(np.float32(got), np.float32(want)), (a.name, got, want)
