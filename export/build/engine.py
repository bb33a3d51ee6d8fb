"""Build a TensorRT engine from an exported ONNX model (``mrcnn-edge build``).

One code path for TensorRT 10.3+ and 11.x: the network is strongly typed (TensorRT 11 knows no
other kind and dropped the FP16/INT8 builder flags), so the precision is the ONNX model's own.
The plugin library is loaded before parsing so that the parser finds ``MultilevelRoIAlign``.

Order of checks, cheapest first, so that a wrong path never waits for TensorRT: the ONNX file and
its metadata, the plugin nodes' attributes, the plugin library, then TensorRT, then the GPU.
The engine and its sidecar (``model.engine.json``: the ONNX metadata plus ``tensorrt_version``,
``onnx_sha256``, ``plugin_library``) are written under temporary names and renamed into place only
when complete. Neither onnx nor torch is needed at all: the ONNX file is read with the runtime's
protobuf walk (``mrcnn_edge/core/onnx_info.py``), and TensorRT, the CUDA driver and the plugin library are
reached through ``runtime/gpu/trt_platform.py``, as the runtime does; TensorRT is imported on use.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from mrcnn_edge.core.contract import (
    PLUGIN_ATTRIBUTES, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION, check_plugin_attributes,
)
from mrcnn_edge.core.paths import timing_cache_path
from mrcnn_edge.runtime.gpu import trt_platform
from mrcnn_edge.core.onnx_info import (
    ATTR_FLOAT, ATTR_FLOATS, ATTR_INT, ATTR_STRING, OnnxInfo,
)

from mrcnn_edge.core.atomic import atomic_output, check_writable
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import MODEL_KEYS, read_onnx_metadata, require_keys, sidecar_path, write_sidecar

__all__ = [
    "PLUGIN_OP",
    "check_plugin_nodes",
    "default_timing_cache",
    "build_engine",
    "check_quantization",
]

PLUGIN_OP = PLUGIN_NAME
# ONNX attribute types a MultilevelRoIAlign attribute may arrive as (a float attribute written as an
# integer is accepted: onnx.helper stores 224 as INT), plus the two identity attributes of the node.
_ACCEPTED_TYPES = {"int": (ATTR_INT,), "float": (ATTR_FLOAT, ATTR_INT), "floats": (ATTR_FLOATS,)}
_IDENTITY = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


# ---- the ONNX side, without onnx ------------------------------------------------------------------


def _read_model(path: Path) -> tuple[OnnxInfo, dict[str, Any]]:
    """(the torch- and onnx-free reader's view of a model to build, its metadata): a graph and every
    key of the contract's metadata required (the sidecar carries them all); one-line errors."""
    info, meta = read_onnx_metadata(path)
    if not info.nodes:
        raise UserError(f"{path} is not an ONNX model with a graph (no nodes)")
    require_keys(meta, path, MODEL_KEYS)
    return info, meta


def check_plugin_nodes(info: OnnxInfo) -> tuple[int, list[str]]:
    """(number of MultilevelRoIAlign nodes, problems found in them), without TensorRT.

    The rules of ``mrcnn_edge.core.contract.PLUGIN_ATTRIBUTES`` (the plugin creator's), said before the
    build rather than by TensorRT's parser (which reports only "could not create the plugin").
    """
    problems: list[str] = []
    known = {a.name: a for a in PLUGIN_ATTRIBUTES}
    for index, node in enumerate(info.plugin_nodes, 1):
        name = node.name or f"#{index}"
        values: dict[str, Any] = {}
        for attr, (kind, value) in node.attributes.items():
            if attr in _IDENTITY:
                if kind != ATTR_STRING or value != _IDENTITY[attr]:
                    problems.append(f"{PLUGIN_OP} node {name}: attribute '{attr}' must be '{_IDENTITY[attr]}', "
                                    f"got {value!r}")
                continue
            spec = known.get(attr)
            if spec is None:
                problems.append(f"{PLUGIN_OP} node {name}: unknown attribute '{attr}' "
                                f"(known: {', '.join([*known, *_IDENTITY])})")
            elif kind not in _ACCEPTED_TYPES[spec.onnx_type]:
                problems.append(f"{PLUGIN_OP} node {name}: attribute '{attr}' must be {spec.requirement}")
            else:
                values[attr] = value
        try:
            checked = check_plugin_attributes(values)
        except ValueError as exc:
            problems.append(f"{PLUGIN_OP} node {name}: {exc}")
            continue
        features = node.inputs - 1
        if features != len(checked["spatial_scales"]):
            problems.append(f"{PLUGIN_OP} node {name}: {features} feature maps but spatial_scales has "
                            f"{len(checked['spatial_scales'])} entries")
    return len(info.plugin_nodes), problems


def check_quantization(info: OnnxInfo, meta: dict[str, Any]) -> str | None:
    """The build's note on INT8, or None for a float model; UserError when metadata and graph disagree.

    An INT8 model is explicitly quantized (Q/DQ nodes from ``mrcnn-edge quantize``). TensorRT's
    "Explicit Quantization" docs: "Use explicit quantization with Strong Typing. Precision-control
    build flags are not required and should not be specified." So the build below is the float
    one (strongly typed network, no INT8 flag, no calibrator), on TensorRT 10 and 11 alike."""
    qdq = any(op in ("QuantizeLinear", "DequantizeLinear") and domain in ("", "ai.onnx") for domain, op in info.nodes)
    if meta.get("precision") == "int8" and not qdq:
        raise UserError("the metadata says precision int8 but the graph has no QuantizeLinear/DequantizeLinear "
                        "nodes: make the INT8 model with 'mrcnn-edge quantize'")
    if not qdq:
        return None
    return "INT8 from the model's Q/DQ nodes (explicit quantization, strongly typed network)"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- the GPU and TensorRT side ------------------------------------------------------------------


def default_timing_cache() -> Path:
    """``$MRCNN_EDGE_CACHE/tensorrt/timing.cache`` (``~/.cache/mrcnn-edge`` by default)."""
    return timing_cache_path()


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


def _network_flags(trt) -> int:
    """Strongly typed: a flag on TensorRT 10, the only mode (flag deprecated) on 11+."""
    if trt_platform.tensorrt_major(trt.__version__) >= 11:
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


def _build_error(logger) -> str:
    """The line that says why a build failed: the plugin's own error when it logged one (it names
    itself), else TensorRT's first error (the later ones are consequences, the last one generic)."""
    plugin_msgs = [m for m in logger.errors if PLUGIN_OP in m]
    if plugin_msgs:
        return plugin_msgs[0]
    return logger.errors[0] if logger.errors else "see the messages above"


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    plugin_lib: str | os.PathLike | None = None,
    workspace_gib: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    verbose: bool = False,
    log: Callable[[str], None] = print,  # stdout while tests/export/build/test_build_cli.py reads progress there
) -> dict[str, Any]:
    """Build ``engine_path`` (+ sidecar) from ``onnx_path``; return the sidecar metadata.

    Args:
        plugin_lib: the plugin library; default ``mrcnn_edge.export.build.plugin_library.default_plugin_path()``
            when it exists (required when the model has MultilevelRoIAlign nodes).
        workspace_gib: limit of TensorRT's workspace memory pool; None: TensorRT's default.
        timing_cache: file to load tactic timings from and save them to; None: none.
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path)
    info, meta = _read_model(onnx_path)
    if workspace_gib is not None and not (math.isfinite(workspace_gib) and workspace_gib > 0):
        raise UserError(f"--workspace must be a positive number of GiB, got {workspace_gib}")
    if engine_path.resolve() == onnx_path.resolve():
        raise UserError("the engine would overwrite the ONNX model: choose another -o")
    if engine_path.is_dir():
        raise UserError(f"output {engine_path} is a folder; give a file name")
    n_plugin, problems = check_plugin_nodes(info)
    if problems:
        raise UserError(f"{onnx_path.name}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    library = trt_platform.resolve_plugin_library(onnx_path, meta, plugin_lib, needed=n_plugin > 0 or bool(meta.get("plugin")))
    int8_note = check_quantization(info, meta)

    # looked up on the module so that one stand-in (tests) serves build and runtime alike
    trt = trt_platform.import_tensorrt()
    devices, why = trt_platform.cuda_device_count()
    if devices < 1:
        raise UserError(f"building a TensorRT engine needs an NVIDIA GPU: {why}")
    check_writable(engine_path)  # before minutes of building; creates the folder if needed
    check_writable(sidecar_path(engine_path))

    t0 = time.perf_counter()
    logger = trt_platform.make_logger(trt, verbose)
    # The builder first: the first logger handed to TensorRT is the one the plugin registry (and the
    # plugin) report to, so a failed load says why.
    builder = trt.Builder(logger)
    if builder is None:
        raise UserError(f"TensorRT could not start a builder: {'; '.join(logger.errors[-1:]) or 'no GPU?'}")
    if library is not None:
        log(trt_platform.load_plugin_library(trt, library, errors=lambda: list(logger.errors)))
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
    if int8_note:
        log(int8_note)
    monitor = _make_progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    log(f"building {engine_path.name} from {onnx_path.name} with TensorRT {trt.__version__} "
        f"(precision {meta.get('precision', '?')}, from the ONNX; a few minutes on a Jetson) ...")
    serialized = builder.build_serialized_network(network, config)
    if monitor is not None and monitor.interrupted:
        raise KeyboardInterrupt
    if serialized is None:
        raise UserError(f"TensorRT could not build the engine: {_build_error(logger)}")

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

