"""Backends: one interface for every way of running the model, and the one table that lists them.

Every backend (Polygraphy's runner shape) is a context manager with

- ``inputs`` / ``outputs``: ``{name: TensorSpec}``, read from the artefact;
- ``metadata``: the artefact's decoded metadata (ONNX ``metadata_props`` or the engine sidecar);
- ``infer(feed: {name: array}) -> {name: array}``: outputs by name, never by order. The returned
  arrays are the backend's own buffers, allocated once and overwritten by the next call: copy
  what you keep.

:data:`BACKENDS` drives dispatch (``open_backend``), the CLI's ``--backend`` choices and the docs.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from mrcnn_edge.core.contract import ENGINE_SUFFIXES, ONNX_SUFFIXES
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["Backend", "BackendEntry", "BACKENDS", "backend_for", "open_backend", "check_feed", "url_scheme"]


class Backend(abc.ABC):
    """Runs one model; see the module docstring for the contract."""

    name: str = ""
    path: Path
    metadata: dict[str, Any]
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    @abc.abstractmethod
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feed`` (every input, exact shape and dtype); outputs by name."""

    def close(self) -> None:
        """Release sessions, device memory and streams (idempotent)."""

    @property
    def description(self) -> str:
        return self.name

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_feed(feed: Mapping[str, np.ndarray], inputs: Mapping[str, TensorSpec]) -> None:
    """Programming errors in a feed (wrong names, shapes or dtypes) fail loudly, before the backend."""
    if set(feed) != set(inputs):
        raise ValueError(f"feed has {sorted(feed)}, the model takes {sorted(inputs)}")
    for name, spec in inputs.items():
        a = feed[name]
        if a.dtype != spec.dtype or (spec.static and tuple(a.shape) != spec.shape):
            raise ValueError(f"input {name!r}: got {a.dtype} {tuple(a.shape)}, expected {spec.dtype} {spec.shape}")


@dataclass(frozen=True)
class BackendEntry:
    name: str
    suffixes: tuple[str, ...]   # artefacts it runs
    module: str                 # defines `cls`; imported on use
    cls: str
    extra: str                  # pip extra that brings its dependencies
    help: str
    schemes: tuple[str, ...] = ()  # URL schemes it serves (``triton://...``): no file on disk
    # ``auto`` picks the first entry (table order) that runs the file and whose ``auto_when()`` is
    # true (None: always); a backend that is best only on some machines says which here
    auto_when: Callable[[Path], bool] | None = None
    options: str = ""              # the options its class takes beyond the path, for the docs


def x86_cpu_with_openvino(path: Path) -> bool:
    """OpenVINO installed, an x86-64 CPU, no CUDA GPU, and a model without custom nodes (the
    portable flavor): where OpenVINO beats ONNX Runtime's CPU provider on our models (issue 12's
    measurements). Cheap: openvino is not imported, the file is read by the protobuf walk."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if importlib.util.find_spec("openvino") is None:
        return False
    from mrcnn_edge.core.onnx_info import read_onnx_info
    from mrcnn_edge.runtime.gpu.trt_platform import cuda_driver

    try:
        if read_onnx_info(path).custom_ops():
            return False
    except (UserError, OSError):
        return False  # not readable as ONNX: the default backend says why
    return cuda_driver().devices == 0


BACKENDS: dict[str, BackendEntry] = {
    "openvino": BackendEntry(
        "openvino", ONNX_SUFFIXES, "mrcnn_edge.runtime.backends.openvino", "OpenVinoBackend", "openvino",
        "OpenVINO on x86 CPUs: portable ONNX in fp32, bf16 (CPUs with BF16) or its INT8 Q/DQ model; "
        "the automatic choice for ONNX on x86 without a GPU where installed",
        auto_when=x86_cpu_with_openvino, options="precision=auto|fp32|bf16, device=CPU",
    ),
    "onnxruntime": BackendEntry(
        "onnxruntime", ONNX_SUFFIXES, "mrcnn_edge.runtime.backends.ort", "OrtBackend", "ort",
        "ONNX Runtime: TensorRT, CUDA or CPU execution provider, whichever is available",
        options="providers=..., device=auto|cpu|cuda, threads=N",
    ),
    "tensorrt": BackendEntry(
        "tensorrt", ENGINE_SUFFIXES, "mrcnn_edge.runtime.backends.trt", "TrtBackend", "gpu",
        "TensorRT engine with cuda-python buffers, one stream, optional CUDA graph",
    ),
    "triton": BackendEntry(
        "triton", (), "mrcnn_edge.runtime.backends.triton", "TritonBackend", "triton",
        "Triton Inference Server (triton://host:8001/model): gRPC, pre/post-processing on this machine",
        schemes=("triton",),
    ),
}


def url_scheme(path: str | Path) -> str | None:
    """``"triton"`` for ``"triton://host:8001/model"``; None for a file path (a Path never is a URL:
    ``Path("triton://h/m")`` collapses the ``//``)."""
    if isinstance(path, Path):
        return None
    head, sep, _ = str(path).partition("://")
    # a one-letter "scheme" is a Windows drive, not a URL
    return head.lower() if sep and len(head) > 1 and head.replace("+", "").isalnum() else None


def backend_for(path: str | Path, backend: str | None = None) -> BackendEntry:
    """The backend entry for ``path`` (by URL scheme, else by suffix), or the one named, checked against it."""
    scheme = url_scheme(path)
    if scheme is not None:
        return _entry_for_scheme(scheme, str(path), backend)
    path = Path(path)
    suffix = path.suffix.lower()
    if backend not in (None, "auto"):
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        entry = BACKENDS[backend]
        if suffix not in entry.suffixes:
            if entry.name == "tensorrt" and suffix == ".onnx":
                raise UserError(f"{path} is an ONNX model: build an engine first with 'mrcnn-edge build {path}'")
            raise UserError(f"the {entry.name} backend runs {'/'.join(entry.suffixes)} files, not {path.name}")
        return entry
    for entry in BACKENDS.values():
        if suffix in entry.suffixes and (entry.auto_when is None or entry.auto_when(path)):
            return entry
    known = ", ".join(s for e in BACKENDS.values() for s in e.suffixes)
    urls = ", ".join(f"{s}://..." for e in BACKENDS.values() for s in e.schemes)
    raise UserError(f"don't know how to run {path.name}: expected a model file ending in {known}"
                    + (f", or {urls}" if urls else ""))


def _entry_for_scheme(scheme: str, url: str, backend: str | None) -> BackendEntry:
    owners = [e for e in BACKENDS.values() if scheme in e.schemes]
    if not owners:
        urls = ", ".join(f"{s}://" for e in BACKENDS.values() for s in e.schemes)
        raise UserError(f"don't know how to run {url}: the URL schemes known are {urls or 'none'}")
    if backend not in (None, "auto"):
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        if BACKENDS[backend] not in owners:
            raise UserError(f"the {backend} backend runs model files, not {url}")
        return BACKENDS[backend]
    return owners[0]


def open_backend(path: str | Path, backend: str | None = None, **options: Any) -> Backend:
    """Open ``path`` (a model file or a URL such as ``triton://host:8001/model``) with its backend
    (see :data:`BACKENDS`); options go to the backend class."""
    if url_scheme(path) is not None:
        entry = backend_for(path, backend)
        cls = getattr(importlib.import_module(entry.module), entry.cls)
        return cls(str(path), **options)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path} not found")
    entry = backend_for(path, backend)
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(path, **options)
