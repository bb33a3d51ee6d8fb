"""A small KServe v2 inference server for the tests: the real gRPC protocol, a real model.

It serves one model folder of a Triton model repository written by ``mrcnn-edge serve triton``
(``config.pbtxt`` parsed into tritonclient's ``ModelConfig``, Triton's own schema, and
``1/model.onnx`` run by ONNX Runtime), through the servicer generated from the ``grpc_service.proto``
that ``tritonclient`` ships: ServerLive, ServerReady, ModelReady, ModelMetadata, ModelConfig and
ModelInfer, with tensors in ``raw_input_contents`` / ``raw_output_contents`` as Triton sends them.

Bound to 127.0.0.1 on a free port (or the port given, to come back after :meth:`stop`), and
bounded in time: it stops by itself after ``lifetime`` seconds.
"""
from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

import grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pbg

__all__ = ["KServeServer"]

_NP = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


def _kserve(data_type: int) -> str:
    """ModelConfig ``TYPE_FP32`` -> the protocol's ``FP32``."""
    return mc.DataType.Name(data_type)[len("TYPE_"):]


class _Servicer(pbg.GRPCInferenceServiceServicer):
    def __init__(self, config: Any, session: Any) -> None:
        self.config, self.session = config, session
        self.requests = 0
        # answer ModelInfer as Triton does while it unloads the model (shutting down, reloading)
        self.unloaded = False
        # an output whose bytes are cut in half while its announced shape stays (a broken server)
        self.truncate: str | None = None

    def _model(self, request: Any, context: Any) -> None:
        if request.name != self.config.name:  # ModelMetadataRequest and ModelConfigRequest: ``name``
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}'")

    def ServerLive(self, request, context):  # noqa: N802 - the protocol's names
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=request.name == self.config.name and request.version in ("", "1"))

    def ModelMetadata(self, request, context):  # noqa: N802
        self._model(request, context)
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=self.config.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[tensors(name=t.name, datatype=_kserve(t.data_type), shape=list(t.dims)) for t in self.config.input],
            outputs=[tensors(name=t.name, datatype=_kserve(t.data_type), shape=list(t.dims)) for t in self.config.output],
        )

    def ModelConfig(self, request, context):  # noqa: N802
        self._model(request, context)
        return pb.ModelConfigResponse(config=self.config)

    def ModelInfer(self, request, context):  # noqa: N802
        if request.model_name != self.config.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}'")
        if self.unloaded:  # Triton 2.51's words and status, seen restarting it (tests/triton_server.py)
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Request for unknown model: '{request.model_name}' has no available versions")
        self.requests += 1
        if len(request.raw_input_contents) != len(request.inputs):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected raw_input_contents for every input")
        feed = {}
        for tensor, raw in zip(request.inputs, request.raw_input_contents):
            feed[tensor.name] = np.frombuffer(raw, dtype=_NP[tensor.datatype]).reshape(list(tensor.shape))
        wanted = [o.name for o in request.outputs] or [t.name for t in self.config.output]
        results = self.session.run(wanted, feed)
        response = pb.ModelInferResponse(model_name=self.config.name, model_version="1", id=request.id)
        by_name = {t.name: t for t in self.config.output}
        for name, value in zip(wanted, results):
            value = np.ascontiguousarray(value)
            response.outputs.add(name=name, datatype=_kserve(by_name[name].data_type), shape=list(value.shape))
            raw = value.tobytes()
            response.raw_output_contents.append(raw[: len(raw) // 2] if name == self.truncate else raw)
        return response


class KServeServer:
    """Serve ``repo/<name>`` (written by ``serve triton`` for a portable ONNX) on 127.0.0.1."""

    def __init__(self, model_dir: str | Path, port: int = 0, lifetime: float = 60.0) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        self.config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.port, self.lifetime = port, lifetime
        self.servicer = _Servicer(self.config, self.session)
        self._server: Any = None
        self._timer: threading.Timer | None = None

    def start(self) -> "KServeServer":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                             options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
        pbg.add_GRPCInferenceServiceServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if not self.port:
            raise RuntimeError("could not bind a port on 127.0.0.1")
        server.start()
        self._server = server
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.port}/{self.config.name}"

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait(5)

    def __enter__(self) -> "KServeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
