"""The ``build`` and ``build-plugin`` command line: cheap to import, and ``build`` runs on a base
install (no onnx, no torch) as far as asking for TensorRT.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from build_models import files_in, plugin_onnx, private_cache  # noqa: F401
from fakes.fake_tensorrt import write_plugin_library
from mrcnn_edge.export.build import plugin_library as plugin_build


def test_build_cli_imports_nothing_heavy():
    code = ("import sys, mrcnn_edge.commands.cli as c; c._build_parser(); "
            "print(sorted(m for m in ('tensorrt', 'torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "tensorrt"):
            raise ImportError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_build_needs_neither_onnx_nor_torch(tmp_path):
    """A base install on the device: `build` gets as far as asking for TensorRT."""
    pytest.importorskip("onnx")  # to write the model here; the command itself does not import it
    model = plugin_onnx(tmp_path / "m.onnx")
    lib = write_plugin_library(tmp_path / "lib" / plugin_build.LIBRARY_NAME)
    code = _BLOCK + ("from mrcnn_edge.commands.cli import main\n"
                     f"sys.exit(main(['build', {str(model)!r}, '-o', {str(tmp_path / 'out' / 'm.engine')!r}, "
                     f"'--plugin-lib', {str(lib)!r}]))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MRCNN_EDGE_CACHE"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mrcnn-edge: error: TensorRT is not installed"), out.stderr
    assert files_in(tmp_path) == {"m.onnx", "lib", f"lib/{plugin_build.LIBRARY_NAME}"}
