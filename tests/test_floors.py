"""``import mrcnn_edge.runtime`` (and every module the ``run`` command imports) never imports torch,
and optional GPU/ORT dependencies stay lazy."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI_MODULES = [
    "mrcnn_edge.runtime",
    "mrcnn_edge.runtime.cli",
    "mrcnn_edge.runtime.segmenter",
    "mrcnn_edge.runtime.pipeline",
    "mrcnn_edge.runtime.io.sources",
    "mrcnn_edge.runtime.io.sinks",
    "mrcnn_edge.runtime.detections",
    "mrcnn_edge.runtime.backends",
    "mrcnn_edge.runtime.backends.ort",
    "mrcnn_edge.runtime.backends.trt",
    "mrcnn_edge.runtime.gpu.cuda_ops",
    "mrcnn_edge.runtime.gpu.kernel_build",
]


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_runtime_and_cli_modules_import_without_torch():
    mods = _modules_after("\n".join(f"import {m}" for m in CLI_MODULES))
    assert "torch" not in mods and "torchvision" not in mods
    # heavy optional dependencies are imported on use, not at import
    for lazy in ("onnxruntime", "tensorrt", "cuda", "cuda.bindings", "onnx"):
        assert lazy not in mods, f"{lazy} imported at module level"


def test_run_command_parser_builds_without_torch():
    code = ("import argparse\nfrom mrcnn_edge.runtime.cli import add_run_arguments\n"
            "p = argparse.ArgumentParser(); add_run_arguments(p)\n"
            "p.parse_args(['m.onnx', '--source', '0', '--no-display'])")
    assert "torch" not in _modules_after(code)


def test_public_names_resolve():
    import mrcnn_edge.runtime as rt

    for name in rt.__all__:
        assert getattr(rt, name) is not None
    with pytest.raises(AttributeError):
        rt.not_a_name  # noqa: B018


_NO_TORCH = """
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is not installed (simulated Jetson)")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_run_command_works_where_torch_cannot_be_imported(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mrcnn_edge.runtime.testing import make_contract_model, moving_squares, write_video

    model = make_contract_model(tmp_path / "m.onnx")
    video = write_video(tmp_path / "v.avi", moving_squares(5, hw=(60, 80)))
    code = _NO_TORCH + (
        "from mrcnn_edge.commands.cli import main\n"
        f"sys.exit(main(['run', {str(model)!r}, '--source', {str(video)!r}, '--no-display', '--quiet',"
        f" '--output', {str(tmp_path / 'o.avi')!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "5 frames in" in out.stdout and (tmp_path / "o.avi").is_file()


def _package_modules(package: str) -> list[str]:
    """Every module of ``package`` by its dotted name, found from the files (nothing imported)."""
    import importlib.util
    from pathlib import Path

    root = Path(importlib.util.find_spec(package).origin).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
        names.append(".".join([package, *parts]))
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("mrcnn_edge.runtime", ("torch", "torchvision", "onnx")),
    ("mrcnn_edge.export.build", ("torch", "torchvision", "onnx")),
    ("mrcnn_edge.export.serve", ("torch", "torchvision")),
    ("mrcnn_edge.plugins", ("torch", "torchvision")),
])
def test_each_floor_imports_what_it_promises(package, forbidden):
    """The floors of docs/DESIGN.md: the runtime and the engine build run on a device without torch
    or onnx; serving writes configs for NVIDIA's engines and needs no torch; neither do the plugin
    sources. Every module of the package is imported, in a fresh interpreter."""
    modules = [m for m in _package_modules(package)
               if m != "mrcnn_edge.export.serve.prepost_model"]  # runs inside Triton's Python backend
    loaded = _modules_after("\n".join(f"import {m}" for m in modules))
    offenders = sorted(f for f in forbidden if f in loaded)
    assert not offenders, f"importing {package} loads {offenders}"


def test_the_floor_check_sees_a_forbidden_import():
    """The check above can fail: the edge graph, a module of the torch floor, loads torch."""
    assert "torch" in _modules_after("import mrcnn_edge.model.edge")
