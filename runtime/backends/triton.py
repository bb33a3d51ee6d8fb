"""Triton Inference Server backend: the model runs on a server, letterbox and post-processing here.

``triton://host[:port]/model[/version]`` (gRPC, port 8001 by default) names a model in a Triton
model repository, such as one written by ``mrcnn-edge serve triton``. The client speaks the KServe
v2 inference protocol through NVIDIA's ``tritonclient`` (extra ``[triton]``):

- the tensors come from ``ModelMetadata`` (names, KServe datatypes, shapes; ``-1`` for a dimension
  that is not fixed);
- the mrcnn-edge metadata (input size, mean/std, class names, ...) comes from ``ModelConfig``: the
  repository writer puts each key in the config's ``parameters`` map as
  ``"mrcnn_edge.<key>" -> {string_value: <JSON>}`` (:data:`PARAMETER_PREFIX`), so nothing but the
  server is needed to run the model.

A server that goes away mid-stream is retried with back-off, ``backoff * 2**attempt`` seconds
capped at ``max_backoff``, like a lost camera; after ``reconnect_tries`` (``run --reconnect``) the
run stops with one line. Going away covers the connection (gRPC ``UNAVAILABLE``, a deadline passed)
and the model: a Triton server that shuts down unloads its models first and, until its endpoints
close, answers ``NOT_FOUND`` "Request for unknown model: 'edge' has no available versions" (seen
from Triton 2.51 restarting); a model being reloaded answers the same.

Pre-/post-processing always run on this machine (the numpy/OpenCV reference): the server receives
``images [B,3,H,W]`` and returns the five contract outputs, each checked against the shape the
server's ModelMetadata declared (a server that answers an empty or short tensor gets one line). A
repository written with ``serve triton --pre-post server`` does its pre/post on the server and takes
images, not ``images`` tensors: this backend refuses it and says how to call it.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import numpy as np

from mrcnn_edge.core.errors import UserError, first_line, require

from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

__all__ = [
    "TritonBackend", "TritonURL", "parse_triton_url", "PARAMETER_PREFIX", "PRE_POST_KEY", "DEFAULT_GRPC_PORT",
    "KSERVE_DTYPES", "encode_parameters", "decode_parameters",
]

log = logging.getLogger(__name__)

DEFAULT_GRPC_PORT = 8001  # tritonserver's --grpc-port default
PARAMETER_PREFIX = "mrcnn_edge."
"""Prefix of the ModelConfig ``parameters`` keys that carry the mrcnn-edge metadata."""
PRE_POST_KEY = "pre_post"
"""Metadata key (``mrcnn_edge.pre_post`` in the config) of a repository model that does its own pre-
and post-processing: ``"server"``."""

# KServe v2 tensor datatypes (the protocol's names; ModelConfig writes them as TYPE_<name>)
KSERVE_DTYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32), "FP16": np.dtype(np.float16), "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64), "UINT8": np.dtype(np.uint8), "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8), "BOOL": np.dtype(np.bool_),
}
# gRPC status codes after which the same request may succeed once the server is back: the
# connection is gone (UNAVAILABLE, DEADLINE_EXCEEDED) or the model is (NOT_FOUND: Triton unloads
# its models while it shuts down and loads them as it starts)
_CONNECTION_LOST = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
_MODEL_GONE = ("StatusCode.NOT_FOUND",)
_RETRYABLE = _CONNECTION_LOST + _MODEL_GONE


def encode_parameters(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata -> ModelConfig ``parameters`` (key -> JSON string)."""
    return {PARAMETER_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode_parameters(params: Mapping[str, str]) -> dict[str, Any]:
    """ModelConfig ``parameters`` (key -> string value) -> metadata; other keys are ignored."""
    out: dict[str, Any] = {}
    for key, raw in params.items():
        if key.startswith(PARAMETER_PREFIX):
            try:
                out[key[len(PARAMETER_PREFIX):]] = json.loads(raw)
            except ValueError:
                out[key[len(PARAMETER_PREFIX):]] = raw
    return out


class TritonURL:
    """A parsed ``triton://host:port/model[/version]``."""

    def __init__(self, host: str, port: int, model: str, version: str = "") -> None:
        self.host, self.port, self.model, self.version = host, port, model, version

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it (IPv6 hosts in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"triton://{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_triton_url(url: str) -> TritonURL:
    """``triton://host[:port]/model[/version]`` -> :class:`TritonURL`; one-line ``UserError`` when malformed."""
    parts = urlsplit(str(url))
    usage = "expected triton://host:8001/model (or triton://host:8001/model/version)"
    if parts.scheme.lower() != "triton" or not parts.hostname:
        raise UserError(f"{url} is not a Triton model URL: {usage}")
    try:
        port = parts.port or DEFAULT_GRPC_PORT
    except ValueError as exc:
        raise UserError(f"{url}: bad port ({exc}); {usage}") from exc
    segments = [s for s in parts.path.split("/") if s]
    if not 1 <= len(segments) <= 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise UserError(f"{url} names no model: {usage}")
    if parts.query or parts.fragment:
        raise UserError(f"{url}: a Triton URL takes no ?query or #fragment; {usage}")
    return TritonURL(parts.hostname, port, segments[0], segments[1] if len(segments) == 2 else "")


def _status(exc: Exception) -> str:
    return str(getattr(exc, "status", lambda: "")() or "")


def _first_line(exc: Exception) -> str:
    msg = getattr(exc, "message", None)
    return first_line(exc, (msg() if callable(msg) else None) or str(exc))


class TritonBackend(Backend):
    """A model served by Triton (see the module docstring).

    Args:
        url: ``triton://host:port/model[/version]``.
        timeout: seconds one RPC may take before it counts as lost.
        reconnect_tries: retries of a request whose server went away (0: fail at once).
        backoff, max_backoff: seconds before the first retry, and the cap of the doubling.
        plugin_lib, cuda_graph: TensorRT options, refused here (the server loads its plugins).
    """

    name = "triton"

    def __init__(self, url: str, timeout: float = 30.0, reconnect_tries: int = 5, backoff: float = 0.5,
                 max_backoff: float = 8.0, plugin_lib: str | Path | None = None, cuda_graph: bool = False) -> None:
        if plugin_lib or cuda_graph:
            raise UserError("--plugin-lib and --cuda-graph apply to local TensorRT engines; a Triton server "
                            "loads its plugins itself (see the tritonserver command 'mrcnn-edge serve triton' printed)")
        self.url = parse_triton_url(url)
        self.path = Path(self.url.model)  # what messages and ModelSpec name the model by
        self.timeout, self.reconnect_tries = float(timeout), int(reconnect_tries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._stop = threading.Event()
        grpc_client = require("tritonclient.grpc", "triton", "the Triton backend")
        self._grpc = grpc_client
        self._error = require("tritonclient.utils", "triton", "the Triton backend").InferenceServerException
        # tritonclient's own defaults (2 GiB messages: a batch of masks is large) plus a reconnect
        # back-off no longer than ours, so a server that came back is seen by the next retry
        channel_args = [
            ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.initial_reconnect_backoff_ms", max(100, int(self.backoff * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(100, int(self.backoff * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.max_backoff * 1000))),
        ]
        try:
            self.client = grpc_client.InferenceServerClient(url=self.url.address, channel_args=channel_args)
        except Exception as exc:  # noqa: BLE001 - a malformed address raises from grpc
            raise UserError(f"cannot connect to the Triton server at {self.url.address}: {_first_line(exc)}") from exc
        try:
            self._describe()
        except BaseException:
            self.close()
            raise

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, client_timeout=self.timeout, **kwargs)
        except self._error as exc:
            if _status(exc) in _CONNECTION_LOST:
                raise UserError(f"the Triton server at {self.url.address} does not answer ({what}: "
                                f"{_first_line(exc)}); is tritonserver running there with --grpc-port "
                                f"{self.url.port}?") from exc
            raise UserError(f"Triton server {self.url.address}: {what} failed: {_first_line(exc)}") from exc

    def _describe(self) -> None:
        model, version = self.url.model, self.url.version
        if not self._call("ServerLive", self.client.is_server_live):
            raise UserError(f"the Triton server at {self.url.address} is not live")
        if not self._call("ModelReady", self.client.is_model_ready, model, version):
            raise UserError(f"the Triton server at {self.url.address} has no ready model {model!r}"
                            + (f" version {version}" if version else "") + ": check its model repository and log")
        meta = self._call("ModelMetadata", self.client.get_model_metadata, model, version)
        config = self._call("ModelConfig", self.client.get_model_config, model, version).config
        self.metadata = decode_parameters({k: v.string_value for k, v in config.parameters.items()})
        if not self.metadata:
            raise UserError(f"{self.url}: its config.pbtxt carries no mrcnn-edge metadata (parameters "
                            f"'{PARAMETER_PREFIX}*'): write the repository with 'mrcnn-edge serve triton'")
        if self.metadata.get(PRE_POST_KEY) == "server":
            raise UserError(f"{self.url} does its pre- and post-processing on the server (serve triton --pre-post "
                            "server): send it encoded images over HTTP or gRPC (input 'image'), not 'mrcnn-edge run'; "
                            "serve the model without --pre-post for run triton://")
        self.inputs = {t.name: self._spec(t) for t in meta.inputs}
        self.outputs = {t.name: self._spec(t) for t in meta.outputs}
        self._requested = [self._grpc.InferRequestedOutput(n) for n in self.outputs]

    def _spec(self, tensor: Any) -> TensorSpec:
        dtype = KSERVE_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise UserError(f"{self.url}: tensor {tensor.name!r} has datatype {tensor.datatype}, "
                            "which the runtime does not handle")
        return TensorSpec(tensor.name, tuple(int(d) if d >= 0 else None for d in tensor.shape), dtype)

    @property
    def description(self) -> str:
        return f"triton ({self.url})"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ``ModelInfer`` with every input; the server's outputs by name (fresh arrays)."""
        check_feed(feed, self.inputs)
        inputs = []
        for name, array in feed.items():
            spec = self.inputs[name]
            kserve = next(k for k, v in KSERVE_DTYPES.items() if v == spec.dtype)
            item = self._grpc.InferInput(name, list(array.shape), kserve)
            item.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(item)
        result = self._infer_retrying(inputs)
        return {name: self._output(result, name, spec) for name, spec in self.outputs.items()}

    def _infer_retrying(self, inputs: list[Any]) -> Any:
        """``ModelInfer``, retried while the server or the model is away (see the module docstring)."""
        attempt = 0
        while True:
            try:
                return self.client.infer(self.url.model, inputs, model_version=self.url.version,
                                         outputs=self._requested, client_timeout=self.timeout)
            except self._error as exc:
                status = _status(exc)
                if status not in _RETRYABLE:
                    raise UserError(f"Triton server {self.url.address}: inference failed: {_first_line(exc)}") from exc
                if attempt >= self.reconnect_tries or self._stop.is_set():
                    what = (f"the Triton server at {self.url.address} stopped answering" if status in _CONNECTION_LOST
                            else f"model {self.url.model!r} is unavailable on the Triton server at {self.url.address}")
                    raise UserError(f"{what} ({_first_line(exc)}; gave up after {attempt} retries)") from exc
                wait = min(self.max_backoff, self.backoff * 2 ** attempt)
                attempt += 1
                log.warning("Triton server %s unavailable (%s: %s); retry %d/%d in %.1f s", self.url.address,
                            status, _first_line(exc), attempt, self.reconnect_tries, wait)
                if self._stop.wait(wait):
                    raise UserError(f"stopped while waiting for the Triton server at {self.url.address}") from exc

    def _output(self, result: Any, name: str, spec: TensorSpec) -> np.ndarray:
        """Output ``name`` as the server's ModelMetadata declared it, or one line saying what came instead
        (tritonclient's ``as_numpy`` raises numpy's ValueError when the bytes do not fill the shape)."""
        try:
            array = result.as_numpy(name)
        except ValueError as exc:
            raise UserError(f"{self.url}: the server's output {name!r} does not hold the shape it announces "
                            f"({exc}); check the model on the server") from exc
        if array is None:
            raise UserError(f"{self.url}: the server returned no output {name!r}")
        expected = spec.shape
        if len(array.shape) != len(expected) or any(e is not None and a != e for a, e in zip(array.shape, expected)):
            shown = ["-1" if d is None else str(d) for d in expected]
            raise UserError(f"{self.url}: the server returned output {name!r} with shape {list(array.shape)}, "
                            f"not [{', '.join(shown)}] as its metadata declares; check the model on the server")
        return array.astype(spec.dtype, copy=False)

    def interrupt(self) -> None:
        """Stop waiting for a server that went away, as soon as possible (any thread)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel must not fail the run
                pass
