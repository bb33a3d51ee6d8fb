"""``mrcnn-edge serve triton|deepstream MODEL``: write what NVIDIA's fleet engines need to run a model.

Users who outgrow one device run NVIDIA's engines (Triton Inference Server in the data centre,
DeepStream on the devices), not a server of ours. Each target of :data:`SERVE_TARGETS` is a short
module with ``add_arguments(parser)`` and ``write(model: ServedModel, args) -> list[str]`` (the
lines to print: what was written and the command to run it); the table drives the sub-commands,
their help and the docs.

Shared here: reading MODEL (an engine with its ``.json`` sidecar, or an ONNX with its metadata),
the I/O tensors of the contract with their dtypes and dims, and the plugin library an engine or a
``tensorrt``-flavor ONNX needs, checked against the TensorRT major it was built for.
Cheap to import: no torch, no TensorRT, no tritonclient.
"""
from __future__ import annotations

import argparse
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrcnn_edge.core.contract import ENGINE_SUFFIXES, INPUT_NAME, ONNX_SUFFIXES, OUTPUT_NAMES, OUTPUTS
from mrcnn_edge.core.errors import UserError

__all__ = [
    "DESCRIPTION_SERVE", "ServeTarget", "SERVE_TARGETS", "IOTensor", "ServedModel", "read_served_model",
    "contract_io", "add_serve_arguments", "run_serve",
]


@dataclass(frozen=True)
class ServeTarget:
    name: str
    module: str      # defines add_arguments(parser) and write(model, args) -> list[str]
    takes: str       # what MODEL may be, for the help
    help: str


SERVE_TARGETS: dict[str, ServeTarget] = {
    "triton": ServeTarget(
        "triton", "mrcnn_edge.export.serve.triton", "an engine, or a portable ONNX (ONNX Runtime backend, CPU servers)",
        "write a Triton Inference Server model repository (--repo DIR) and print the tritonserver command",
    ),
    "deepstream": ServeTarget(
        "deepstream", "mrcnn_edge.export.serve.deepstream", "an engine, or an ONNX that nvinfer builds itself",
        "write a DeepStream nvinfer config, labels and the instance-mask parser (--out DIR)",
    ),
}

DESCRIPTION_SERVE = (
    "Write what NVIDIA's serving engines need to run MODEL: "
    + "; ".join(f"'{t.name}': {t.help} (MODEL: {t.takes})" for t in SERVE_TARGETS.values())
    + ". Pre- and post-processing stay with the client."
)

# KServe v2 datatype of each numpy dtype name the contract uses
_KSERVE = {"float32": "FP32", "float16": "FP16", "int32": "INT32", "int64": "INT64", "uint8": "UINT8"}


@dataclass(frozen=True)
class IOTensor:
    """One tensor of the engine I/O contract: ``datatype`` a KServe v2 name (FP32, FP16, INT32),
    ``dims`` the full shape with the batch the model was built for (models have a static batch)."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    is_input: bool = False


@dataclass
class ServedModel:
    path: Path                              # absolute
    kind: str                               # "engine" or "onnx"
    meta: dict[str, Any]                    # decoded metadata (sidecar or ONNX metadata_props)
    io: list[IOTensor] = field(default_factory=list)  # images first, then OUTPUT_NAMES in order
    plugin_library: Path | None = None      # absolute; None when the model needs no plugin
    plugin_tensorrt: str | None = None      # TensorRT version the plugin library was built against

    @property
    def batch(self) -> int:
        return self.io[0].dims[0]

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    @property
    def needs_plugin(self) -> bool:
        return bool(self.meta.get("plugin")) or self.meta.get("flavor") == "tensorrt"


def contract_io(meta: dict[str, Any], dtypes: dict[str, str] | None = None,
                shapes: dict[str, tuple[int, ...]] | None = None) -> list[IOTensor]:
    """The I/O tensors of DESIGN.md's contract for a model with this metadata.

    ``dtypes``: numpy dtype names read from the model itself (an ONNX); without them the contract's
    rule (``mrcnn_edge.core.contract.OUTPUTS``): ``images`` float32 and ``masks`` float16 for an
    fp16 model (the exporter feeds float32 and casts inside), everything else as the contract says.
    ``shapes``: shapes read from the model where the contract allows more than one (an ONNX
    exported before ``num_detections`` became ``[B,1]`` declares ``[B]``).
    """
    try:
        h, w = (int(v) for v in meta["input_size"])
        b, k, m = int(meta.get("batch", 1)), int(meta["max_detections"]), int(meta["mask_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"the model's metadata lacks a valid {exc} (input_size, batch, max_detections, "
                        "mask_size): export it with 'mrcnn-edge export'") from exc
    precision = str(meta.get("precision", "fp32"))
    rule = {INPUT_NAME: "float32", **{o.name: o.dtype_for(precision) for o in OUTPUTS}}
    rule.update(dtypes or {})
    dims = {INPUT_NAME: (b, 3, h, w), **{o.name: o.shape(b, k, m) for o in OUTPUTS}}
    dims.update(shapes or {})
    out = []
    for name in (INPUT_NAME, *OUTPUT_NAMES):
        if rule[name] not in _KSERVE:
            raise UserError(f"tensor {name!r} has dtype {rule[name]}, which the contract does not allow")
        out.append(IOTensor(name, _KSERVE[rule[name]], dims[name], name == INPUT_NAME))
    return out


def _onnx_io(path: Path, meta: dict[str, Any]) -> tuple[dict[str, str] | None, dict[str, tuple[int, ...]] | None]:
    """The I/O dtypes and shapes written in the ONNX graph, checked against the contract's shapes;
    ``(None, None)`` without the ``onnx`` package (then the contract's rule applies)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return None, None
    model = onnx.load(str(path), load_external_data=False)
    expected = {t.name: t.dims for t in contract_io(meta)}
    older = {"num_detections": expected["num_detections"][:1]}  # [B]: exported before the [B,1] contract
    found: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name not in expected:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if shape != expected[vi.name] and shape != older.get(vi.name):
            raise UserError(f"{path.name}: tensor {vi.name!r} has shape {list(shape)} but its metadata says "
                            f"{list(expected[vi.name])}: re-export it with 'mrcnn-edge export'")
        found[vi.name] = str(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shapes[vi.name] = shape
    missing = [n for n in expected if n not in found]
    if missing:
        raise UserError(f"{path.name} lacks the contract tensors {', '.join(missing)}: export it with 'mrcnn-edge export'")
    return found, shapes


def _check_plugin(model: ServedModel, given: str | None) -> None:
    """Find the plugin library the model needs and check the TensorRT major it was built for."""
    from mrcnn_edge.runtime.gpu import trt_platform

    if not model.needs_plugin:
        if given:
            raise UserError(f"{model.path.name} needs no TensorRT plugin; drop --plugin-lib")
        return
    lib = trt_platform.resolve_plugin_library(model.path, model.meta, given, needed=True)
    assert lib is not None  # needed: found, or a UserError was raised
    built_for = trt_platform.plugin_library_tensorrt_version(lib)
    if built_for is None:
        raise UserError(f"cannot read which TensorRT {lib} was built for (not a mrcnn-edge plugin library, or "
                        "TensorRT's libraries are missing here): rebuild it with 'mrcnn-edge build-plugin'")
    engine_trt = model.meta.get("tensorrt_version")
    if engine_trt and trt_platform.tensorrt_major(built_for) != trt_platform.tensorrt_major(str(engine_trt)):
        raise UserError(f"plugin library {lib} was built against TensorRT {built_for} but {model.path.name} was "
                        f"built with TensorRT {engine_trt}: rebuild the plugin with 'mrcnn-edge build-plugin' "
                        "on the serving machine")
    model.plugin_library, model.plugin_tensorrt = lib, built_for


def read_served_model(path: str | os.PathLike, plugin_lib: str | None = None) -> ServedModel:
    """MODEL as the serve targets need it: metadata, contract I/O and plugin library, all checked."""
    path = Path(path).expanduser().resolve()
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        from mrcnn_edge.core.metadata import read_sidecar

        if not path.is_file():
            raise UserError(f"engine {path} not found")
        meta = read_sidecar(path)  # one line when the sidecar is missing
        model = ServedModel(path, "engine", dict(meta))
        model.io = contract_io(model.meta)
    elif suffix in ONNX_SUFFIXES:
        from mrcnn_edge.core.metadata import MODEL_KEYS, read_metadata

        meta = read_metadata(path, MODEL_KEYS)
        model = ServedModel(path, "onnx", dict(meta))
        model.io = contract_io(model.meta, *_onnx_io(path, model.meta))
    else:
        raise UserError(f"don't know how to serve {path.name}: expected an engine "
                        f"({'/'.join(ENGINE_SUFFIXES)} with its .json sidecar) or an ONNX model")
    _check_plugin(model, plugin_lib)
    return model


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="TARGET", required=True, parser_class=type(p))
    for target in SERVE_TARGETS.values():
        q = sub.add_parser(target.name, help=target.help, description=f"{target.help}. MODEL: {target.takes}.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        q.add_argument("model", help=f"the model to serve: {target.takes}")
        q.add_argument("--plugin-lib", default=None, metavar="PATH",
                       help="TensorRT plugin library (default: the one the engine's sidecar names, else "
                            "where 'mrcnn-edge build-plugin' puts it)")
        importlib.import_module(target.module).add_arguments(q)
        q.set_defaults(_serve_target=target.name)


def run_serve(args: argparse.Namespace) -> int:
    target = SERVE_TARGETS[args._serve_target]
    writer = importlib.import_module(target.module)
    model = read_served_model(args.model, args.plugin_lib)
    for line in writer.write(model, args):
        print(line)
    return 0
