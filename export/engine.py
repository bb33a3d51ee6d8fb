"""Build a TensorRT engine from an exported ONNX model (``mrcnn-edge build``).

One code path for TensorRT 10.3+ and 11.x: the network is strongly typed (TensorRT 11 knows no
other kind and dropped the FP16/INT8 builder flags), so the precision is the ONNX model's own.
The plugin library is loaded before parsing so that the parser finds ``MultilevelRoIAlign``.

Order of checks, cheapest first, so that a wrong path never waits for TensorRT: the ONNX file and
its metadata, the plugin nodes' attributes, the plugin library, then TensorRT, then the GPU.
The engine and its sidecar (``model.engine.json``: the ONNX metadata plus ``tensorrt_version``,
``onnx_sha256``, ``plugin_library``) are written under temporary names and renamed into place only
when complete. Nothing here imports tensorrt, onnx or torch at module level.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_output, check_writable
from ..errors import UserError, require
from ..metadata import MODEL_KEYS, decode, sidecar_path, write_sidecar

__all__ = [
    "PLUGIN_OP",
    "TENSORRT_MISSING",
    "import_tensorrt",
    "read_onnx_metadata",
    "check_plugin_nodes",
    "cuda_device_count",
    "default_timing_cache",
    "build_engine",
]

PLUGIN_OP = "MultilevelRoIAlign"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mrcnn_edge"
TENSORRT_MISSING = (
    "TensorRT is not installed: on a Jetson it comes with JetPack (sudo apt install python3-libnvinfer); "
    "on a desktop pip install tensorrt"
)

# Attributes of a MultilevelRoIAlign node: name -> (ONNX attribute types accepted, check, meaning).
_INT, _FLOAT, _FLOATS, _STRING = 2, 1, 6, 3  # onnx.AttributeProto.AttributeType values
_PLUGIN_ATTRS: dict[str, tuple[tuple[int, ...], Callable[[Any], bool], str]] = {
    "output_height": ((_INT,), lambda v: 1 <= v <= 1024, "an integer in [1, 1024]"),
    "output_width": ((_INT,), lambda v: 1 <= v <= 1024, "an integer in [1, 1024]"),
    "sampling_ratio": ((_INT,), lambda v: v <= 64, "an integer <= 64 (<= 0: adaptive)"),
    "aligned": ((_INT,), lambda v: v in (0, 1), "0 or 1"),
    "spatial_scales": (
        (_FLOATS,),
        lambda v: 1 <= len(v) <= 8 and all(math.isfinite(s) and 0 < s <= 1 for s in v),
        "1 to 8 floats in (0, 1]",
    ),
    "canonical_scale": ((_FLOAT, _INT), lambda v: math.isfinite(v) and v > 0, "a positive number"),
    "canonical_level": ((_INT,), lambda v: 0 <= v <= 64, "an integer in [0, 64]"),
    "plugin_version": ((_STRING,), lambda v: v == PLUGIN_VERSION, f"'{PLUGIN_VERSION}'"),
    "plugin_namespace": ((_STRING,), lambda v: v == PLUGIN_NAMESPACE, f"'{PLUGIN_NAMESPACE}'"),
}


def import_tensorrt():
    """``import tensorrt`` or a one-line UserError saying how to get it."""
    try:
        import tensorrt as trt  # noqa: PLC0415 - heavy, optional
    except ImportError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        broken = why and "No module named" not in why
        raise UserError(TENSORRT_MISSING + (f" (import failed: {why})" if broken else "")) from exc
    return trt


def _trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


# ---- the ONNX side ------------------------------------------------------------------------------


def read_onnx_metadata(path: str | os.PathLike):
    """(model without external data, decoded ``metadata_props``); one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} not found" if not path.exists() else f"{path} is not a file")
    onnx = require("onnx", "export", "reading ONNX models")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise UserError(f"cannot read {path} as an ONNX model: {type(exc).__name__}: {exc}") from exc
    if not model.graph.node:
        raise UserError(f"{path} is not an ONNX model with a graph (no nodes)")
    meta = decode({p.key: p.value for p in model.metadata_props})
    missing = [k for k in MODEL_KEYS if k not in meta]
    if missing:
        raise UserError(
            f"{path.name} lacks the mrcnn-edge metadata {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}: export it with 'mrcnn-edge export'"
        )
    return model, meta


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            if attr.type == 5:  # GRAPH
                yield from _all_nodes(attr.g)
            elif attr.type == 10:  # GRAPHS
                for g in attr.graphs:
                    yield from _all_nodes(g)


def check_plugin_nodes(model) -> tuple[int, list[str]]:
    """(number of MultilevelRoIAlign nodes, problems found in them), without TensorRT.

    The same rules as the plugin's creator, said before the build rather than by TensorRT's parser
    (which drops attributes it does not know and reports only "could not create the plugin").
    """
    count = 0
    problems: list[str] = []
    for node in _all_nodes(model.graph):
        if node.op_type != PLUGIN_OP:
            continue
        count += 1
        name = node.name or f"#{count}"
        scales_count = 4
        for attr in node.attribute:
            spec = _PLUGIN_ATTRS.get(attr.name)
            if spec is None:
                problems.append(f"{PLUGIN_OP} node {name}: unknown attribute '{attr.name}' "
                                f"(known: {', '.join(_PLUGIN_ATTRS)})")
                continue
            types, ok, what = spec
            if attr.type not in types:
                problems.append(f"{PLUGIN_OP} node {name}: attribute '{attr.name}' must be {what}")
                continue
            value: Any = {
                _INT: lambda a: a.i, _FLOAT: lambda a: a.f, _FLOATS: lambda a: list(a.floats),
                _STRING: lambda a: a.s.decode(errors="replace"),
            }[attr.type](attr)
            if not ok(value):
                problems.append(f"{PLUGIN_OP} node {name}: attribute '{attr.name}' must be {what}, got {value!r}")
            if attr.name == "spatial_scales":
                scales_count = len(value)
        features = len(node.input) - 1
        if features != scales_count:
            problems.append(f"{PLUGIN_OP} node {name}: {features} feature maps but spatial_scales has "
                            f"{scales_count} entries")
    return count, problems


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the GPU and TensorRT side ------------------------------------------------------------------


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why none) from the driver API, without any CUDA Python package."""
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    rc = lib.cuInit(0)
    if rc != 0:
        return 0, "the NVIDIA driver found no CUDA device" if rc == 100 else f"cuInit failed with CUDA error {rc}"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return 0, "the NVIDIA driver found no CUDA device"
    return count.value, ""


def default_timing_cache() -> Path:
    """``$MRCNN_EDGE_CACHE/tensorrt/timing.cache`` (``~/.cache/mrcnn-edge`` by default)."""
    from mrcnn_edge.paths import timing_cache_path

    return timing_cache_path()


def _resolve_plugin_library(plugin_lib: str | os.PathLike | None, needed: bool) -> Path | None:
    from .plugin_build import default_plugin_path

    if plugin_lib:
        path = Path(plugin_lib).expanduser()
        if not path.is_file():
            raise UserError(f"plugin library {path} not found (from --plugin-lib)")
        return path.resolve()
    if not needed:
        return None  # a portable model: no plugin, even if one is installed
    default = default_plugin_path()
    if default.is_file():
        return default.resolve()
    raise UserError(
        f"this model has {PLUGIN_OP} nodes and needs the plugin library, not found at {default}: "
        "build it with 'mrcnn-edge build-plugin' or pass --plugin-lib LIB"
    )


def _make_logger(trt, verbose: bool):
    class _Logger(trt.ILogger):
        """Prints TensorRT's warnings and errors and keeps the errors for the final message."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.threshold = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)

        def log(self, severity, msg) -> None:  # noqa: A003 - TensorRT's name
            try:  # called from C++: nothing may raise out of here
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg).strip())
                if int(severity) <= self.threshold:
                    print(f"[TensorRT] {str(severity).rsplit('.', 1)[-1]}: {msg}", file=sys.stderr)
            except BaseException:  # noqa: BLE001
                pass

    return _Logger()


def _make_progress_monitor(trt, log: Callable[[str], None]):
    """An IProgressMonitor printing the top-level build phases; None where TensorRT has none."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}
            self.top: set[str] = set()
            self.interrupted = False

        # Callbacks run inside build_serialized_network: nothing may raise through TensorRT,
        # so a Ctrl-C here cancels the build (return False) and is re-raised afterwards.
        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            try:
                self.started[phase_name] = time.perf_counter()
                if parent_phase is None:
                    self.top.add(phase_name)
                    log(f"  {phase_name} ...")
            except BaseException:  # noqa: BLE001
                self.interrupted = True

        def step_complete(self, phase_name, step) -> bool:
            try:
                return not self.interrupted
            except BaseException:  # noqa: BLE001 - a Ctrl-C landing here
                self.interrupted = True
                return False

        def phase_finish(self, phase_name) -> None:
            try:
                if phase_name in self.top:
                    log(f"  {phase_name} done in {time.perf_counter() - self.started.get(phase_name, 0):.1f} s")
            except BaseException:  # noqa: BLE001
                self.interrupted = True

    return _Progress()


def _load_plugin(trt, library: Path, log: Callable[[str], None]) -> None:
    from .plugin_build import plugin_library_tensorrt_version

    built_for = plugin_library_tensorrt_version(library)
    installed = str(trt.__version__)
    if built_for is None:
        raise UserError(f"{library} is not a mrcnn-edge plugin library or cannot be loaded: "
                        "rebuild it with 'mrcnn-edge build-plugin'")
    if _trt_major(built_for) != _trt_major(installed):
        raise UserError(f"plugin library {library} was built against TensorRT {built_for} but TensorRT "
                        f"{installed} is installed: rebuild it with 'mrcnn-edge build-plugin'")
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(library))
    if handle is None:
        raise UserError(f"TensorRT could not load the plugin library {library}")
    if registry.get_creator(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise UserError(f"{library} registers no {PLUGIN_OP} v{PLUGIN_VERSION} ({PLUGIN_NAMESPACE}) creator")
    log(f"plugin {PLUGIN_OP} v{PLUGIN_VERSION} from {library} (built against TensorRT {built_for})")


def _network_flags(trt) -> int:
    """Strongly typed: a flag on TensorRT 10, the only mode (flag deprecated) on 11+."""
    if _trt_major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parse_error(parser, logger) -> str:
    details = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        try:
            node = err.node_name() or err.node_operator()
            details.append(f"{err.desc()}{f' (node {node})' if node else ''}")
        except AttributeError:
            details.append(str(err))
    plugin_msgs = [m for m in logger.errors if PLUGIN_OP in m]
    return "; ".join((plugin_msgs + details)[:2]) or "no details"


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    plugin_lib: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build ``engine_path`` (+ sidecar) from ``onnx_path``; return the sidecar metadata.

    Args:
        plugin_lib: the plugin library; default ``mrcnn_edge.export.plugin_build.default_plugin_path()``
            when it exists (required when the model has MultilevelRoIAlign nodes).
        workspace_gib: limit of TensorRT's workspace memory pool; None: TensorRT's default.
        timing_cache: file to load tactic timings from and save them to; None: none.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    model, meta = read_onnx_metadata(onnx_path)
    if workspace_gib is not None and not (math.isfinite(workspace_gib) and workspace_gib > 0):
        raise UserError(f"--workspace must be a positive number of GiB, got {workspace_gib}")
    if engine_path.resolve() == onnx_path.resolve():
        raise UserError("the engine would overwrite the ONNX model: choose another -o")
    if engine_path.is_dir():
        raise UserError(f"output {engine_path} is a folder; give a file name")
    n_plugin, problems = check_plugin_nodes(model)
    if problems:
        raise UserError(f"{onnx_path.name}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    library = _resolve_plugin_library(plugin_lib, needed=n_plugin > 0 or bool(meta.get("plugin")))
    del model

    trt = import_tensorrt()
    devices, why = cuda_device_count()
    if devices < 1:
        raise UserError(f"building a TensorRT engine needs an NVIDIA GPU: {why}")
    check_writable(engine_path)  # before minutes of building; creates the folder if needed
    check_writable(sidecar_path(engine_path))

    t0 = time.perf_counter()
    logger = _make_logger(trt, verbose)
    if library is not None:
        _load_plugin(trt, library, log)
    builder = trt.Builder(logger)
    if builder is None:
        raise UserError(f"TensorRT could not start a builder: {'; '.join(logger.errors[-1:]) or 'no GPU?'}")
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise UserError(f"TensorRT could not parse {onnx_path.name}: {_parse_error(parser, logger)}")
    dynamic = [network.get_input(i).name for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        raise UserError(f"inputs {', '.join(dynamic)} have dynamic shapes: export with a fixed batch and canvas")

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    cache_file = Path(timing_cache).expanduser() if timing_cache else None
    if cache_file is not None:
        try:
            blob = cache_file.read_bytes() if cache_file.is_file() else b""
        except OSError as exc:
            log(f"cannot read timing cache {cache_file} ({exc.strerror}): starting a new one")
            blob = b""
        cache = config.create_timing_cache(blob)
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            log(f"timing cache {cache_file} is from another GPU or TensorRT version: starting a new one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        elif blob:
            log(f"reusing timing cache {cache_file}")
    monitor = _make_progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    log(f"building {engine_path.name} from {onnx_path.name} with TensorRT {trt.__version__} "
        f"(precision {meta.get('precision', '?')}, from the ONNX; a few minutes on a Jetson) ...")
    serialized = builder.build_serialized_network(network, config)
    if monitor is not None and monitor.interrupted:
        raise KeyboardInterrupt
    if serialized is None:
        raise UserError(f"TensorRT could not build the engine: {logger.errors[-1] if logger.errors else 'see the messages above'}")

    sidecar = dict(meta)
    sidecar["tensorrt_version"] = str(trt.__version__)
    sidecar["onnx_sha256"] = _sha256(onnx_path)
    sidecar["plugin_library"] = str(library) if library is not None else None
    # Both are written under temporary names; the sidecar is renamed into place at the end of the
    # engine's block and the engine right after it. A failure before that leaves neither file.
    with atomic_output(engine_path) as tmp:
        with tmp.open("wb") as f:
            f.write(serialized)
        write_sidecar(engine_path, sidecar)
    if cache_file is not None:
        with atomic_output(cache_file) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"wrote {engine_path} ({engine_path.stat().st_size / 1e6:.1f} MB) and {sidecar_path(engine_path).name} "
        f"in {time.perf_counter() - t0:.0f} s")
    return sidecar

