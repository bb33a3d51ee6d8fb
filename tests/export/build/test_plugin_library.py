"""``mrcnn-edge build-plugin``: what it finds, what it refuses in one line, and the pair of libraries
it writes (each atomically, only once both are built).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from build_models import error_line, files_in, private_cache, real_tensorrt_headers  # noqa: F401
from mrcnn_edge.commands.cli import main
from mrcnn_edge.export.build import plugin_library as plugin_build


# ---- build-plugin: bad input ------------------------------------------------------------------


def test_build_plugin_without_tensorrt_headers(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "lib" / "libx.so"
    assert main(["build-plugin", "--tensorrt-include", str(empty), "-o", str(out)]) != 0
    line = error_line(capsys)
    assert line.startswith("mrcnn-edge: error: cannot build the plugin: ")
    assert f"TensorRT headers (NvInferRuntime.h, NvInferVersion.h) not in {empty}" in line
    assert not out.parent.exists()


def test_build_plugin_without_nvcc(tmp_path, capsys):
    assert main(["build-plugin", "--cuda-home", str(tmp_path / "no-cuda"), "-o", str(tmp_path / "l.so")]) != 0
    assert f"nvcc not found in {tmp_path / 'no-cuda'}/bin" in error_line(capsys)
    assert files_in(tmp_path) == set()


def test_default_plugin_path_follows_the_cache(private_cache):
    assert plugin_build.default_plugin_path() == private_cache / "plugins" / "libmrcnn_edge_plugins.so"


needs_nvcc = pytest.mark.skipif(plugin_build.find_nvcc() is None, reason="nvcc not found (CUDA toolkit)")


def fake_tensorrt_headers(folder: Path, body: str = "") -> Path:
    """Headers that pass the toolchain search (version 10.3) but break the compile."""
    folder.mkdir(parents=True)
    (folder / "NvInferVersion.h").write_text(
        "#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 3\n#define NV_TENSORRT_PATCH 0\n")
    (folder / "NvInferRuntime.h").write_text(body or '#error "not the real TensorRT"\n')
    return folder


@needs_nvcc
def test_build_plugin_failure_leaves_nothing(tmp_path, capsys):
    headers = fake_tensorrt_headers(tmp_path / "trt")
    out = tmp_path / "out"
    rc = main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "87", "--no-cmake", "-o", f"{out}/"])
    assert rc != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "building the plugin failed" in line and "not the real TensorRT" in line and "full log:" in line
    assert files_in(out) == set()


@needs_nvcc
def test_build_plugin_failure_keeps_the_older_pair(tmp_path, capsys):
    """Neither library of an earlier build is touched when the new build fails."""
    headers = fake_tensorrt_headers(tmp_path / "trt")
    out = tmp_path / "out"
    out.mkdir()
    old = {plugin_build.LIBRARY_NAME: b"old plugin", plugin_build.AUTOREG_LIBRARY_NAME: b"old autoreg"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    assert main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "87", "--no-cmake",
                 "-o", str(out / plugin_build.LIBRARY_NAME)]) != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old


@needs_nvcc
def test_build_plugin_keeps_the_library_names(tmp_path, capsys):
    """The self-registering library loads the plugin library by its name: a renamed pair would not load."""
    headers = fake_tensorrt_headers(tmp_path / "trt")
    out = tmp_path / "out" / "libother.so"
    assert main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "87", "--no-cmake",
                 "-o", str(out)]) != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"must be named {plugin_build.LIBRARY_NAME}" in line and "give a folder" in line
    assert files_in(tmp_path / "out") == set()


@needs_nvcc
def test_build_plugin_refuses_unknown_arch(tmp_path, capsys):
    headers = fake_tensorrt_headers(tmp_path / "trt")
    assert main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "35", "-o",
                 str(tmp_path / "l.so")]) != 0
    assert "cannot compile for sm_35" in capsys.readouterr().err


@needs_nvcc
def test_build_plugin_check_prints_the_toolchain(tmp_path, capsys):
    headers = fake_tensorrt_headers(tmp_path / "trt")
    assert main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "87", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"{headers} (TensorRT 10.3.0)" in out and "sm_87" in out


@needs_nvcc
def test_build_plugin_writes_a_loadable_library(tmp_path, capsys):
    headers = real_tensorrt_headers()
    if headers is None:
        pytest.skip("TensorRT headers not found: set MRCNN_EDGE_TENSORRT_INCLUDE=DIR or install libnvinfer-dev")
    out_dir = tmp_path / "out"
    assert main(["build-plugin", "--tensorrt-include", str(headers), "--cuda-archs", "87", "--no-cmake",
                 "-o", f"{out_dir}/"]) == 0
    lib = out_dir / plugin_build.LIBRARY_NAME
    assert files_in(out_dir) == {plugin_build.LIBRARY_NAME, plugin_build.AUTOREG_LIBRARY_NAME}
    assert plugin_build.plugin_library_tensorrt_version(lib) == plugin_build.tensorrt_header_version(headers)
    assert plugin_build.autoreg_library_beside(lib) == out_dir / plugin_build.AUTOREG_LIBRARY_NAME
    assert f"--plugin-lib {lib}" in capsys.readouterr().out
    # the pair loads from wherever it is copied: the self-registering one finds the plugin beside it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in (plugin_build.LIBRARY_NAME, plugin_build.AUTOREG_LIBRARY_NAME):
        shutil.copy(out_dir / name, elsewhere / name)
    run = subprocess.run([sys.executable, "-c", "import ctypes, sys; "
                          "print(ctypes.CDLL(sys.argv[1]).mrcnnEdgePluginAutoregStatus())",
                          str(elsewhere / plugin_build.AUTOREG_LIBRARY_NAME)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "-1", run  # loaded; no TensorRT here to register with
