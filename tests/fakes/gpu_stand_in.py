"""One stand-in GPU machine for tests: the stand-in cuda-python (``fake_cuda``) with the stand-in
TensorRT (``fake_tensorrt``) running on it, in one process, so that the runtime's real
``TrtBackend`` and ``CudaOps`` run unchanged. This module joins the two; neither imports the other.

Use::

    gpu = StandInGPU.install(monkeypatch, build_dir)          # integrated=True for a Jetson
    engine = gpu.engine_for(make_contract_model(tmp / "m.onnx"))
    with Segmenter.from_path(engine, device="cuda") as seg: ...
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fake_cuda import FakeCuda
from .fake_tensorrt import FakeProcess, write_engine

__all__ = ["StandInGPU", "TENSORRT_VERSION"]

TENSORRT_VERSION = "10.3.0.26"


@dataclass
class StandInGPU:
    cuda: FakeCuda          # the stand-in cuda-python: stats, allocations, errors
    process: FakeProcess    # TensorRT's process state: plugin registry, dlopen, logger
    trt: Any                # the ``tensorrt`` module installed in sys.modules
    _monkeypatch: Any

    @classmethod
    def install(cls, monkeypatch: Any, build_dir: Path, tensorrt_version: str = TENSORRT_VERSION,
                **cuda_options: Any) -> "StandInGPU":
        """Install both stand-ins (``cuda_options`` go to :class:`FakeCuda`: ``integrated``, ``devices``)."""
        from mrcnn_edge.runtime.gpu import trt_platform

        cuda = FakeCuda.install(monkeypatch, build_dir, **cuda_options)
        process = FakeProcess(cuda=cuda.runtime)
        monkeypatch.setattr(trt_platform, "_dlopen", process.dlopen)
        gpu = cls(cuda, process, None, monkeypatch)
        gpu.tensorrt(tensorrt_version)
        return gpu

    def tensorrt(self, version: str | None = None, **options: Any) -> Any:
        """(Re)install the ``tensorrt`` module of this process (``options``: the stand-in's module
        options, e.g. ``context_fails=True``); returns it."""
        self.trt = self.process.tensorrt(version or (self.trt.__version__ if self.trt else TENSORRT_VERSION),
                                         **options)
        self._monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        return self.trt

    def engine_for(self, onnx_model: Path, engine: Path | None = None, plugin_library: str | None = None,
                   metadata: dict[str, Any] | None = None, **engine_options: Any) -> Path:
        """An engine file running ``onnx_model`` and its sidecar, as ``mrcnn-edge build`` writes them
        (the ONNX metadata plus ``tensorrt_version``, ``onnx_sha256``, ``plugin_library``)."""
        from mrcnn_edge.core.metadata import read_onnx_metadata, write_sidecar

        engine = Path(engine) if engine is not None else Path(onnx_model).with_suffix(".engine")
        write_engine(engine, onnx_model, built_for=self.trt.__version__, **engine_options)
        meta = dict(read_onnx_metadata(onnx_model)[1])
        meta.update({"tensorrt_version": self.trt.__version__, "onnx_sha256": "0" * 64,
                     "plugin_library": plugin_library})
        meta.update(metadata or {})
        write_sidecar(engine, meta)
        return engine
