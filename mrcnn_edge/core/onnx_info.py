"""Read what an ONNX file holds without onnx or onnxruntime: metadata, node domains, plugin nodes.

A minimal protobuf wire-format walk over ``ModelProto`` (onnx.proto field numbers): it reads
``metadata_props`` (14), ``opset_import`` (8), the graph's node ``(domain, op_type)`` pairs
(7 -> 1 -> 7/4), the name, input count and attributes of ``MultilevelRoIAlign`` nodes (3, 1, 5),
and model-local function names (25), and skips everything else (initializers are skipped by
length, so a 200 MB model costs one mmap). ``Segmenter`` uses it to refuse a ``tensorrt``-flavor
model before ONNX Runtime fails on it with a long message; ``mrcnn-edge build`` uses it to read
the metadata and check the plugin nodes on a device that has TensorRT but neither onnx nor torch.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mrcnn_edge.core.contract import PLUGIN_NAME
from mrcnn_edge.core.errors import UserError

__all__ = ["OnnxInfo", "PluginNode", "read_onnx_info", "STANDARD_DOMAINS", "ATTR_FLOAT", "ATTR_INT",
           "ATTR_STRING", "ATTR_FLOATS", "ATTR_INTS"]

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})


# onnx.AttributeProto.AttributeType values
ATTR_FLOAT, ATTR_INT, ATTR_STRING, ATTR_FLOATS, ATTR_INTS = 1, 2, 3, 6, 7


@dataclass
class PluginNode:
    """A ``MultilevelRoIAlign`` node: its name, number of inputs (rois + feature maps) and attributes.

    ``attributes``: name -> (ATTR_* type, value): int, float, str, list[float] or list[int].
    """

    name: str
    inputs: int
    attributes: dict[str, tuple[int, Any]] = field(default_factory=dict)


@dataclass
class OnnxInfo:
    metadata: dict[str, str] = field(default_factory=dict)      # raw metadata_props strings
    opsets: dict[str, int] = field(default_factory=dict)        # domain -> version
    nodes: set[tuple[str, str]] = field(default_factory=set)    # (domain, op_type) of graph nodes
    functions: set[tuple[str, str]] = field(default_factory=set)  # (domain, name) of local functions
    plugin_nodes: list[PluginNode] = field(default_factory=list)  # top-level MultilevelRoIAlign nodes

    def custom_ops(self) -> set[tuple[str, str]]:
        """Nodes that are neither standard ops nor model-local functions (need a custom-op library)."""
        return {n for n in self.nodes if n[0] not in STANDARD_DOMAINS and n not in self.functions}


class _Corrupt(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): int for varints/fixed, memoryview for length-delimited."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise _Corrupt("truncated field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Corrupt(f"unsupported wire type {wire}")
        if pos > end:
            raise _Corrupt("truncated field")
        yield number, wire, value


def _strings(buf: memoryview, wanted: dict[int, str]) -> dict[str, str]:
    out = {name: "" for name in wanted.values()}
    for number, wire, value in _fields(buf):
        if number in wanted and wire == 2:
            out[wanted[number]] = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
    return out


def _attribute(buf: memoryview) -> tuple[str, int, Any]:
    """(name, type, value) of an AttributeProto: name 1, f 2, i 3, s 4, floats 7, ints 8, type 20."""
    name, kind, scalar = "", 0, None
    floats: list[float] = []
    ints: list[int] = []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            name = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        elif number == 20 and wire == 0:
            kind = int(value)  # type: ignore[arg-type]
        elif number == 2 and wire == 5:
            scalar = struct.unpack("<f", int(value).to_bytes(4, "little"))[0]  # type: ignore[arg-type]
        elif number == 3 and wire == 0:
            v = int(value)  # type: ignore[arg-type]
            scalar = v - (1 << 64) if v >= 1 << 63 else v  # int64 as two's complement
        elif number == 4 and wire == 2:
            scalar = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        elif number == 7 and wire == 5:
            floats.append(struct.unpack("<f", int(value).to_bytes(4, "little"))[0])  # type: ignore[arg-type]
        elif number == 7 and wire == 2:  # packed
            floats.extend(struct.unpack(f"<{len(value) // 4}f", bytes(value)[: len(value) // 4 * 4]))  # type: ignore[arg-type]
        elif number == 8 and wire == 0:
            v = int(value)  # type: ignore[arg-type]
            ints.append(v - (1 << 64) if v >= 1 << 63 else v)
        elif number == 8 and wire == 2:  # packed
            pos, raw = 0, value
            while pos < len(raw):  # type: ignore[arg-type]
                v, pos = _varint(raw, pos)  # type: ignore[arg-type]
                ints.append(v - (1 << 64) if v >= 1 << 63 else v)
    value: Any = {ATTR_FLOATS: floats, ATTR_INTS: ints}.get(kind, scalar)
    return name, kind, value


def _plugin_node(buf: memoryview) -> PluginNode:
    node = PluginNode(name="", inputs=0)
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            node.inputs += 1
        elif number == 3 and wire == 2:
            node.name = bytes(value).decode("utf-8", errors="replace")  # type: ignore[arg-type]
        elif number == 5 and wire == 2:
            name, kind, val = _attribute(value)  # type: ignore[arg-type]
            node.attributes[name] = (kind, val)
    return node


def _parse(buf: memoryview) -> OnnxInfo:
    info = OnnxInfo()
    seen_graph = False
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == 14:
            kv = _strings(value, {1: "key", 2: "value"})  # type: ignore[arg-type]
            info.metadata[kv["key"]] = kv["value"]
        elif number == 8:
            domain, version = "", 0
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if n == 1 and w == 2:
                    domain = bytes(v).decode()  # type: ignore[arg-type]
                elif n == 2 and w == 0:
                    version = int(v)  # type: ignore[arg-type]
            info.opsets[domain] = version
        elif number == 7:
            seen_graph = True
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if n == 1 and w == 2:
                    node = _strings(v, {4: "op_type", 7: "domain"})  # type: ignore[arg-type]
                    info.nodes.add((node["domain"], node["op_type"]))
                    if node["op_type"] == PLUGIN_NAME:
                        info.plugin_nodes.append(_plugin_node(v))  # type: ignore[arg-type]
        elif number == 25:
            fn = _strings(value, {1: "name", 10: "domain"})  # type: ignore[arg-type]
            info.functions.add((fn["domain"], fn["name"]))
    if not seen_graph:
        raise _Corrupt("no graph")
    return info


def read_onnx_info(path: str | os.PathLike) -> OnnxInfo:
    """Metadata and op domains of an ONNX file; one-line ``UserError`` when it is not one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise UserError(f"cannot read {path} as an ONNX model: the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    return _parse(view)
                finally:
                    view.release()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (_Corrupt, UnicodeDecodeError, IndexError, struct.error) as exc:
        raise UserError(f"cannot read {path} as an ONNX model ({exc})") from exc
