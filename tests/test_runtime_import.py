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
    "mrcnn_edge.runtime.sources",
    "mrcnn_edge.runtime.sinks",
    "mrcnn_edge.runtime.detections",
    "mrcnn_edge.runtime.backends",
    "mrcnn_edge.runtime.backend_ort",
    "mrcnn_edge.runtime.backend_trt",
    "mrcnn_edge.runtime.cuda_ops",
    "mrcnn_edge.runtime.kernel_build",
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
