"""ONNX Runtime backend: TensorRT, CUDA or CPU execution provider, chosen by availability.

Runs the ``portable`` flavor. A ``tensorrt``-flavor model (custom ``MultilevelRoIAlign`` node,
domain ``mrcnn_edge``) is refused with one line, unless an implementation for its domain was
registered with :func:`register_custom_op_domain` (``mrcnn_edge.export.ort_custom.register`` does:
validation and the benchmark run the tensorrt flavor through it).
Outputs are bound once to preallocated host arrays (``io_binding``); they are overwritten by the
next ``infer``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mrcnn_edge.core.contract import PLUGIN_NAME
from mrcnn_edge.core.errors import UserError, first_line, require
from mrcnn_edge.core.metadata import read_onnx_metadata
from mrcnn_edge.core.paths import ort_tensorrt_cache_dir

from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["OrtBackend", "choose_providers", "register_custom_op_domain", "CustomOpDomain", "CUSTOM_OP_DOMAINS",
           "PROVIDER_PREFERENCE"]

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SessionHook = Callable[[Any], None]  # receives an onnxruntime.SessionOptions
ModelRewrite = Callable[[Path], bytes]  # model file -> the serialized model to load instead (a copy)
RunCheck = Callable[[], None]  # after each run: raises UserError for a failure the custom op kept


@dataclass(frozen=True)
class CustomOpDomain:
    """How ONNX Runtime runs the nodes of one custom domain: ``options`` registers a library on the
    session options; ``rewrite``, when given, replaces the model that is loaded by an in-memory
    variant (the file is never changed); ``check``, when given, runs after every inference."""

    options: SessionHook
    rewrite: ModelRewrite | None = None
    check: RunCheck | None = None


# custom-op domain -> how ONNX Runtime runs it
CUSTOM_OP_DOMAINS: dict[str, CustomOpDomain] = {}

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(bool)": np.bool_,
}


def register_custom_op_domain(domain: str, hook: SessionHook, rewrite: ModelRewrite | None = None,
                              check: RunCheck | None = None) -> None:
    """Let models with nodes of ``domain`` run: ``hook(session_options)`` is called before loading,
    ``rewrite(path)`` (optional) gives the model bytes to load, ``check()`` (optional) follows each run."""
    CUSTOM_OP_DOMAINS[domain] = CustomOpDomain(hook, rewrite, check)


def choose_providers(available: Sequence[str], requested: Sequence[str] | None = None,
                     device: str = "auto") -> list[str]:
    """Execution providers to try, best first: TensorRT EP, CUDA EP, CPU (``device="cpu"``: CPU only)."""
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise UserError(f"ONNX Runtime here has no {', '.join(unknown)} (available: {', '.join(available)})")
        return list(requested)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in PROVIDER_PREFERENCE[:2] if p in available]
    if device == "cuda" and not gpu:
        raise UserError(
            f"ONNX Runtime here has no GPU provider (available: {', '.join(available)}): "
            "pip install onnxruntime-gpu (on Jetson: the JetPack wheel), or use --device cpu"
        )
    return gpu + ["CPUExecutionProvider"]


def _provider_options(name: str, model: Path) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        folder = ort_tensorrt_cache_dir(model.stem)
        return {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder)}
    return {}


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise UserError(f"tensor {arg.name!r} has type {arg.type}, which the runtime does not handle")
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, np.dtype(dtype))


class OrtBackend(Backend):
    """An ONNX model in ONNX Runtime. ``providers`` overrides the choice; ``device`` is auto/cpu/cuda."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, device: str = "auto",
                 session_options_hook: SessionHook | None = None, threads: int | None = None) -> None:
        ort = require("onnxruntime", "ort", "the ONNX Runtime backend")
        self.path = Path(path)
        info, self.metadata = read_onnx_metadata(self.path)
        custom = sorted(info.custom_ops())
        unresolved = [f"{op} ({d})" for d, op in custom if d not in CUSTOM_OP_DOMAINS]
        if unresolved:
            raise self._flavor_error(", ".join(unresolved))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        domains = [CUSTOM_OP_DOMAINS[d] for d in sorted({d for d, _ in custom})]
        model: str | bytes = str(self.path)
        for dom in domains:  # the rewrite first: it may define ops that the options' library then registers
            if dom.rewrite is not None:
                model = dom.rewrite(self.path)
            dom.options(options)
        self._checks = [dom.check for dom in domains if dom.check is not None]
        if session_options_hook is not None:
            session_options_hook(options)
        chosen = choose_providers(ort.get_available_providers(), providers, device)
        self.session = self._create(ort, model, options, chosen, fallback=not providers and device == "auto")
        self.providers = list(self.session.get_providers())
        if device == "cuda" and not set(self.providers) & set(PROVIDER_PREFERENCE[:2]):
            raise UserError(f"ONNX Runtime could not start a GPU provider for {self.path.name} (got {self.providers})")
        self.inputs = {a.name: _spec(a) for a in self.session.get_inputs()}
        self.outputs = {a.name: _spec(a) for a in self.session.get_outputs()}
        self._binding = None
        self._buffers: dict[str, np.ndarray] = {}
        if all(s.static for s in self.outputs.values()):
            self._binding = self.session.io_binding()
            for name, s in self.outputs.items():
                buf = np.empty(s.shape, dtype=s.dtype)
                self._buffers[name] = buf
                self._binding.bind_output(name, "cpu", 0, s.dtype, list(s.shape), buf.ctypes.data)

    def _flavor_error(self, nodes: str) -> UserError:
        return UserError(
            f"{self.path.name} is the 'tensorrt' flavor (custom node {nodes}), which ONNX Runtime "
            f"cannot run: export it with '--flavor portable' (on a CPU the fast one: OpenVINO, the mask head on the "
            f"real detections), or build an engine with 'mrcnn-edge build {self.path}' and run that"
        )

    def _create(self, ort: Any, model: str | bytes, options: Any, providers: list[str], fallback: bool) -> Any:
        while True:
            try:
                with_options = [(p, _provider_options(p, self.path)) for p in providers]
                return ort.InferenceSession(model, sess_options=options, providers=with_options)
            except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for everything
                first = first_line(exc)
                if fallback and len(providers) > 1:
                    log.warning("%s failed (%s); trying %s", providers[0], first, providers[1])
                    providers = providers[1:]
                    continue
                if self.metadata.get("flavor") == "tensorrt":
                    raise self._flavor_error(PLUGIN_NAME) from exc
                raise UserError(f"ONNX Runtime cannot load {self.path.name}: {first}") from exc

    @property
    def description(self) -> str:
        return f"onnxruntime ({', '.join(self.providers)})"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, self.inputs)
        if not self._checks:
            return self._run(feed)
        try:
            out = self._run(feed)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for everything
            for check in self._checks:  # a custom op's own failure explains it best
                check()
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise UserError(f"ONNX Runtime failed to run {self.path.name}: "
                            f"{lines[-1] if lines else type(exc).__name__}") from exc
        for check in self._checks:
            check()
        return out

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._binding is None:
            names = list(self.outputs)
            return dict(zip(names, self.session.run(names, dict(feed))))
        for name, array in feed.items():
            self._binding.bind_cpu_input(name, np.ascontiguousarray(array))
        self.session.run_with_iobinding(self._binding)
        return dict(self._buffers)

    def close(self) -> None:
        self._binding = None
        self.session = None
