"""Shared fixtures and the skip rules for the ``gpu`` and ``tensorrt`` markers.

``demo_onnx`` exports the shipped demo model once per variant and keeps the file on disk between
sessions (``tests/.cache/demo``, or ``$MRCNN_EDGE_TEST_CACHE``), keyed by the package version, the
versions of the exporting libraries and a hash of every source the export reads: the exports were
most of the suite's time. A test that needs an exported demo model and nothing else takes it from
here; tests of the exporter itself still export.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_CANVAS = (160, 160)
"""The one canvas of the cached demo exports: the demo model finds the shapes at this size, and a
small canvas keeps every run of the exported model cheap."""
# what an export reads: the graph, its ops and checkpoint loading, the contract, the exporter and
# its checks, and the demo weights; the libraries that trace and write it
_EXPORT_SOURCES = ("mrcnn_edge/core", "mrcnn_edge/model", "mrcnn_edge/assets", "mrcnn_edge/__init__.py", "export/*.py")
_EXPORT_LIBRARIES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime")
_STALE_AFTER_S = 3600  # other keys' files untouched this long are removed (a session in flight keeps its own)


def _export_key() -> str:
    from mrcnn_edge import __version__

    h = hashlib.sha256(f"{__version__} {sys.version_info[:2]}".encode())
    for lib in _EXPORT_LIBRARIES:
        try:
            h.update(f"{lib}={importlib.metadata.version(lib)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    files: list[Path] = []
    for pattern in _EXPORT_SOURCES:
        target = ROOT / pattern
        if "*" in pattern:
            files += ROOT.glob(pattern)
        elif target.is_dir():
            files += (p for p in target.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            files.append(target)
    for f in sorted(files):
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _prune(folder: Path, key: str) -> None:
    now = time.time()
    for old in folder.glob("*.onnx"):
        if not old.name.endswith(f"-{key}.onnx") and now - old.stat().st_mtime > _STALE_AFTER_S:
            old.unlink(missing_ok=True)


@pytest.fixture
def media_tools(monkeypatch):
    """tests/runtime/io/media_tools.py (real ffmpeg streams, a small tmpfs for a full or read-only
    disk) for the tests outside that folder."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "runtime" / "io"))
    import media_tools as module

    return module


@pytest.fixture(scope="session")
def demo_canvas() -> tuple[int, int]:
    """The canvas ``(H, W)`` of the ``demo_onnx`` exports."""
    return DEMO_CANVAS


@pytest.fixture(scope="session")
def demo_onnx() -> Callable[..., Path]:
    """``demo_onnx(flavor="portable", precision="fp32", **options) -> Path``: the demo model exported
    at :data:`DEMO_CANVAS` with these ``ExportOptions``, from the disk cache when it is there. The
    file is read-only: copy it to change it."""
    pytest.importorskip("torch", reason="exporting needs the [export] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    folder = Path(os.environ.get("MRCNN_EDGE_TEST_CACHE") or ROOT / "tests" / ".cache") / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    key = _export_key()
    _prune(folder, key)
    loaded: list[Any] = []

    def export(flavor: str = "portable", precision: str = "fp32", **options: Any) -> Path:
        from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx

        extra = "".join(f"-{k}={options[k]}" for k in sorted(options))
        path = folder / f"{flavor}-{precision}-{DEMO_CANVAS[0]}x{DEMO_CANVAS[1]}{extra}-{key}.onnx"
        if path.is_file():
            os.utime(path)  # in use: not stale for other sessions' pruning
            return path
        if not loaded:
            import mrcnn_edge
            from mrcnn_edge.model.checkpoint import load_checkpoint

            loaded.extend(load_checkpoint(mrcnn_edge.demo_checkpoint()))
        # export_onnx writes atomically: a session beside this one sees the whole file or none
        export_onnx(*loaded, path, ExportOptions(input_size=DEMO_CANVAS, flavor=flavor, precision=precision, **options),
                    log=lambda s: None)
        path.chmod(0o444)
        return path

    return export


def _has_gpu() -> tuple[bool, str]:
    """Ask the CUDA driver (a Jetson may have no nvidia-smi), as the tools themselves do."""
    from mrcnn_edge.runtime.gpu.trt_platform import cuda_driver

    info = cuda_driver()
    return (True, "") if info.devices > 0 else (False, info.why or "no CUDA device")


def _has_tensorrt() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "TensorRT's Python package is not installed"
    return True, ""


def pytest_collection_modifyitems(config, items):
    gpu_ok, gpu_why = _has_gpu()
    trt_ok, trt_why = _has_tensorrt()
    for item in items:
        # markers, not keywords: keywords hold the names of the test's folders too, so every test
        # under tests/runtime/gpu/ (the stand-in GPU's, which run anywhere) would count as marked
        if item.get_closest_marker("gpu") is not None and not gpu_ok:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {gpu_why}"))
        if item.get_closest_marker("tensorrt") is not None and not (trt_ok and gpu_ok):
            why = trt_why if not trt_ok else gpu_why
            item.add_marker(pytest.mark.skip(reason=f"needs TensorRT and a GPU: {why}"))
