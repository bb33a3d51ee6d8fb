"""Backends: one interface for every way of running the model, and the one table that lists them.

Every backend (Polygraphy's runner shape) is a context manager with

- ``inputs`` / ``outputs``: ``{name: TensorSpec}``, read from the artefact;
- ``metadata``: the artefact's decoded metadata (ONNX ``metadata_props`` or the engine sidecar);
- ``infer(feed: {name: array}) -> {name: array}``: outputs by name, never by order. The returned
  arrays are the backend's own buffers, allocated once and overwritten by the next call: copy
  what you keep;
- ``requests``: how many ``infer`` calls may run at once from different threads (1 for all but
  OpenVINO with ``requests`` > 1, whose calls then return copies);
- ``float_precision``: what the float operations compute in (``fp32`` but for OpenVINO in bf16).

A backend whose tensors live in GPU memory (TensorRT) also offers :class:`DeviceBackend`, returned
by :meth:`Backend.on_device`: the GPU pre/post-processing writes the model input and reads the
masks where the engine has them, and runs the model with ``execute()`` (no host copy of inputs).

:data:`BACKENDS` drives dispatch (``open_backend``), the CLI's ``--backend`` choices and the
options each backend accepts (:class:`BackendOption`: name, type, choices, default, help;
checked by :func:`check_options` for every caller), and the docs (:func:`backend_docs`).
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from mrcnn_edge.core.contract import DEVICES, ENGINE_SUFFIXES, ONNX_SUFFIXES
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["Backend", "DeviceBackend", "BackendOption", "BackendEntry", "BACKENDS", "backend_for", "open_backend",
           "check_options", "option_for_flag", "backend_docs", "check_feed", "url_scheme"]


class Backend(abc.ABC):
    """Runs one model; see the module docstring for the contract."""

    name: str = ""
    requests: int = 1  # infer() calls that may run at once, from different threads
    float_precision: str = "fp32"  # what the float operations compute in (the floors count them at it)
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

    def on_device(self) -> "DeviceBackend | None":
        """This backend as a :class:`DeviceBackend` when its tensors are GPU buffers, else None
        (host arrays in and out: the pre/post-processing then stays on the CPU)."""
        return None

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class DeviceBackend(Protocol):
    """What a backend whose inputs and outputs are GPU buffers offers the GPU pre/post-processing
    (``Segmenter`` with ``cuda_ops.CudaOps``): the buffers' device addresses, the stream its work is
    ordered on, and a run on the inputs already there."""

    device_id: int  # the GPU the buffers and the stream belong to

    @property
    def stream(self) -> Any:
        """The cuda-python stream the backend's work is ordered on (the letterbox joins it)."""

    def device_pointer(self, name: str) -> int:
        """Device address of tensor ``name``'s buffer (KeyError for an unknown tensor)."""

    def execute(self) -> dict[str, np.ndarray]:
        """Run on the inputs already in the device buffers, after what is enqueued on ``stream``;
        outputs by name in host memory (overwritten by the next run)."""


def check_feed(feed: Mapping[str, np.ndarray], inputs: Mapping[str, TensorSpec]) -> None:
    """Programming errors in a feed (wrong names, shapes or dtypes) fail loudly, before the backend."""
    if set(feed) != set(inputs):
        raise ValueError(f"feed has {sorted(feed)}, the model takes {sorted(inputs)}")
    for name, spec in inputs.items():
        a = feed[name]
        if a.dtype != spec.dtype or (spec.static and tuple(a.shape) != spec.shape):
            raise ValueError(f"input {name!r}: got {a.dtype} {tuple(a.shape)}, expected {spec.dtype} {spec.shape}")


_KINDS = ("str", "int", "float", "bool", "list", "path", "callable")


@dataclass(frozen=True)
class BackendOption:
    """One keyword a backend class takes beyond the model path.

    ``kind``: ``str``, ``int``, ``float``, ``bool``, ``list`` (of strings; a comma-separated string
    is split), ``path`` or ``callable`` (API only). ``choices``: the allowed values (str options).
    ``minimum``: the least allowed value (int and float options). ``flag``: the ``mrcnn-edge run``
    option that sets it (``--plugin-lib``), None when only the API and ``benchmark --row`` set it.
    ``default``: what the class does without it (a test holds the classes' signatures to it).
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    flag: str | None = None

    def parse(self, value: Any, backend: str) -> Any:
        """``value`` checked and converted (strings as ``benchmark --row`` and the CLI give them);
        one-line ``UserError`` naming the backend and the option otherwise."""
        def bad(expected: str) -> UserError:
            return UserError(f"{self.flag or self.name} {value!r} for the {backend} backend: expected {expected}")

        if value is None:
            return None
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise bad("true or false")
        if self.kind in ("int", "float"):
            if isinstance(value, bool):
                raise bad(f"a{'' if self.kind == 'float' else ' whole'} number")
            try:
                number = int(str(value).strip()) if self.kind == "int" else float(value)
            except (TypeError, ValueError):
                raise bad(f"a{'' if self.kind == 'float' else ' whole'} number") from None
            if self.kind == "float" and number != number:
                raise bad("a number")
            if self.minimum is not None and number < self.minimum:
                raise bad(f"at least {self.minimum:g}")
            return number
        if self.kind == "list":
            items = value.split(",") if isinstance(value, str) else value
            try:
                items = [str(v).strip() for v in items]
            except TypeError:
                raise bad("a list of names") from None
            return [v for v in items if v]
        if self.kind == "path":
            if not isinstance(value, (str, Path)) or not str(value).strip():
                raise bad("a file path")
            return value
        if self.kind == "callable":
            if not callable(value):
                raise bad("a function")
            return value
        if not isinstance(value, str):
            raise bad("a string")
        if self.choices and value not in self.choices:
            raise bad(f"one of {', '.join(self.choices)}")
        return value

    def describe(self) -> str:
        """``name=default`` and its choices or type, for the docs."""
        values = " / ".join(self.choices) if self.choices else self.kind
        return f"{self.name} ({values}, default {self.default!r})"


@dataclass(frozen=True)
class BackendEntry:
    name: str
    title: str                  # how messages name it: "ONNX Runtime", "TensorRT engines"
    suffixes: tuple[str, ...]   # artefacts it runs
    module: str                 # defines `cls`; imported on use
    cls: str
    extra: str                  # pip extra that brings its dependencies
    help: str
    schemes: tuple[str, ...] = ()  # URL schemes it serves (``triton://...``): no file on disk
    # ``auto`` picks the first entry (table order) that runs the file and whose ``auto_when()`` is
    # true (None: always); a backend that is best only on some machines says which here
    auto_when: Callable[[Path], bool] | None = None
    options: tuple[BackendOption, ...] = ()  # the keywords its class takes beyond the path
    # the Segmenter's ``device`` values it honours ("cuda": its model runs on a GPU there); the
    # option flagged --device, if it has one, receives the value
    devices: tuple[str, ...] = ("auto", "cpu")

    def option(self, name: str) -> BackendOption | None:
        return next((o for o in self.options if o.name == name), None)


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


_DEVICE_HELP = "ONNX Runtime providers / where TensorRT pre- and post-processing run"

BACKENDS: dict[str, BackendEntry] = {
    "openvino": BackendEntry(
        "openvino", "OpenVINO", ONNX_SUFFIXES, "mrcnn_edge.runtime.backends.openvino", "OpenVinoBackend", "openvino",
        "OpenVINO on x86 CPUs: portable ONNX in fp32, bf16 (CPUs with BF16) or its INT8 Q/DQ model; "
        "the automatic choice for ONNX on x86 without a GPU where installed",
        auto_when=x86_cpu_with_openvino,
        options=(
            BackendOption("precision", "str", "auto", "OpenVINO: inference precision. auto: bf16 where the CPU "
                          "computes BF16 and the model's metadata says bf16 was validated (mask AP within 0.01 of "
                          "the model's float parts in fp32, recorded by 'mrcnn-edge validate --annotations'), else "
                          "fp32 (int8 for an INT8 model); fp32: exact fp32 (refused for INT8 models); bf16; int8: an "
                          "INT8 model as quantized, its float parts in fp32 (INT8 models only)",
                          choices=("auto", "fp32", "bf16", "int8"), flag="--precision"),
            BackendOption("device", "str", "CPU", "OpenVINO device name (CPU)"),
            BackendOption("requests", "int", 1, "OpenVINO: inference requests in flight. 1: each frame on every "
                          "core (lowest latency); N: N frames at once, a share of the cores each (more frames per "
                          "second where frames queue up). run: 2 for files (one or several) on a CPU with 2 or more cores, "
                          "else 1; cameras and streams: 1 (more is refused)",
                          minimum=1, flag="--requests"),
        ),
    ),
    "onnxruntime": BackendEntry(
        "onnxruntime", "ONNX Runtime", ONNX_SUFFIXES, "mrcnn_edge.runtime.backends.ort", "OrtBackend", "ort",
        "ONNX Runtime: TensorRT, CUDA or CPU execution provider, whichever is available",
        options=(
            BackendOption("providers", "list", None, "ONNX Runtime execution providers, comma-separated, best first",
                          flag="--providers"),
            BackendOption("device", "str", "auto", _DEVICE_HELP, choices=DEVICES, flag="--device"),
            BackendOption("threads", "int", None, "ONNX Runtime intra-op threads (default: its own choice)", minimum=1),
            BackendOption("session_options_hook", "callable", None, "called with the SessionOptions before the "
                          "session is made (registers custom-op libraries)"),
        ),
        devices=DEVICES,
    ),
    "tensorrt": BackendEntry(
        "tensorrt", "TensorRT engines", ENGINE_SUFFIXES, "mrcnn_edge.runtime.backends.trt", "TrtBackend", "gpu",
        "TensorRT engine with cuda-python buffers, one stream, optional CUDA graph",
        options=(
            BackendOption("plugin_lib", "path", None, "TensorRT plugin library (default: the one named in the "
                          "engine's sidecar)", flag="--plugin-lib"),
            BackendOption("cuda_graph", "bool", False, "TensorRT: replay inference as a CUDA graph", flag="--cuda-graph"),
            BackendOption("device_id", "int", 0, "the GPU to run on", minimum=0),
        ),
        devices=DEVICES,
    ),
    "triton": BackendEntry(
        "triton", "a Triton Inference Server", (), "mrcnn_edge.runtime.backends.triton", "TritonBackend", "triton",
        "Triton Inference Server (triton://host:8001/model): gRPC, pre/post-processing on this machine",
        schemes=("triton",),
        options=(
            BackendOption("timeout", "float", 30.0, "seconds a request may take", minimum=0.001),
            BackendOption("reconnect_tries", "int", 5, "reconnect attempts when the server goes away", minimum=0),
            BackendOption("backoff", "float", 0.5, "first wait between attempts, seconds (doubles)", minimum=0),
            BackendOption("max_backoff", "float", 8.0, "longest wait between attempts, seconds", minimum=0),
        ),
    ),
}


def check_options(entry: BackendEntry, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``entry``'s declared options and converted; a one-line
    ``UserError`` for an option it does not take (naming who does) or a bad value."""
    out: dict[str, Any] = {}
    refused: dict[str, list[str]] = {}  # title of the backends that take it -> names
    for name, value in options.items():
        opt = entry.option(name)
        if opt is None:
            owners = [e for e in BACKENDS.values() if e.option(name) is not None]
            if not owners:
                takes = ", ".join(o.name for o in entry.options) or "none"
                raise UserError(f"the {entry.name} backend has no option {name!r} (it takes: {takes})")
            flag = next((o.flag for e in owners if (o := e.option(name)) and o.flag), None) or name
            refused.setdefault(" or ".join(e.title for e in owners), []).append(flag)
            continue
        out[name] = opt.parse(value, entry.name)
    if refused:
        titles, flags = next(iter(refused.items()))
        verb = "applies" if len(flags) == 1 else "apply"
        raise UserError(f"{' and '.join(flags)} {verb} to {titles}, not {entry.title}")
    return out


def option_for_flag(flag: str) -> BackendOption:
    """The backend option a ``mrcnn-edge run`` flag sets (its choices, default and help feed the CLI)."""
    for entry in BACKENDS.values():
        for o in entry.options:
            if o.flag == flag:
                return o
    raise KeyError(flag)


def backend_docs() -> str:
    """The backend table as Markdown (runtime/README.md carries it; a test keeps the two equal)."""
    lines = ["| backend | runs | options (`run` flag) | extra |", "|---|---|---|---|"]
    for e in BACKENDS.values():
        runs = ", ".join([f"`{s}`" for s in e.suffixes] + [f"`{s}://`" for s in e.schemes])
        opts = "; ".join(o.describe() + (f" `{o.flag}`" if o.flag else "") for o in e.options) or "-"
        lines.append(f"| `{e.name}` | {runs} | {opts} | `[{e.extra}]` |")
    return "\n".join(lines) + "\n"


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
    (see :data:`BACKENDS`); ``options`` are checked against the backend's row, then go to its class."""
    if url_scheme(path) is None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"model {path} not found")
    entry = backend_for(path, backend)
    checked = check_options(entry, options)
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(str(path) if url_scheme(path) is not None else path, **checked)
