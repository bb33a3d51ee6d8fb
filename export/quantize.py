"""Post-training INT8 quantization of an exported model to explicit Q/DQ (``mrcnn-edge quantize``).

Library: ONNX Runtime's static QDQ quantization (``onnxruntime.quantization``). It is already part of
the ``[export]`` extra (no new dependency), writes standard ``QuantizeLinear``/``DequantizeLinear``
nodes that TensorRT's ONNX parser, ONNX Runtime and OpenVINO all read, and does per-channel weight
scales. NVIDIA ModelOpt (``nvidia-modelopt[onnx]``) was the other candidate: from PyPI it pulls
``onnxruntime-gpu`` (a second package owning the ``onnxruntime`` module, beside ours), cupy-cuda12x,
polygraphy, and pins an older onnx, which breaks the pinned environment of a CPU machine.

What is quantized, and how (TensorRT's explicit-quantization rules, which OpenVINO shares):

* The weighted ops, ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` (``checks.QUANTIZED_OPS``):
  Q/DQ on all their inputs, the activation and per-channel INT8 weights (stored as INT8 with a
  ``DequantizeLinear``), where TensorRT fuses them into INT8 kernels; their outputs and biases stay
  float (the next layer's Q/DQ quantizes what it reads).
* The residual input of every skip-connection ``Add`` after an INT8 layer (residual blocks, the
  FPN's top-down sums; ``checks.skip_connection_adds``): TensorRT fuses the ``Add`` into that layer
  and keeps the block in INT8 only when the residual arrives quantized. Without it (the placement
  before 0.2) each block ended in a float add and TensorRT went INT8 -> float -> INT8 per block.
* Everything else stays float: the plugin node / RoiAlign, NMS, box decoding, softmax, level
  mapping; so do the first convolution (it reads the image) and the prediction layers
  (``FLOAT_LAYERS``), which sit at the edges of the INT8 region, never between two INT8 layers
  (``checks.qdq_problems`` refuses a float island).
* Symmetric INT8 (zero point 0) for activations and weights: TensorRT's only INT8 scheme.
* Calibration: min/max of each quantized tensor over the user's images, letterboxed exactly as the
  runtime does it (``mrcnn_edge.runtime.preprocess.letterbox``). The calibrating session is ours
  (``ort_custom.make_session``) so that the ``tensorrt`` flavor's plugin node runs during it; the
  library computes the ranges and places the nodes.

The output is written only when it passed ``onnx.checker``, the I/O contract and the TensorRT op and
Q/DQ-placement check (``mrcnn_edge.export.checks``, which also holds the op types TensorRT runs in
INT8); its metadata says ``precision: int8`` and what it was calibrated on.
"""
from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mrcnn_edge.core.contract import CALIBRATION_LIMIT, INPUT_NAME, QUANTIZED_PRECISIONS, feed_mean_std
from mrcnn_edge.core.errors import UserError, first_line, require

from mrcnn_edge.export.checks import QDQ_OPS, QUANTIZED_OPS, quantized_nodes, skip_connection_adds

__all__ = ["calibration_images", "quantize_model", "is_quantized", "CALIBRATION_METHODS"]

FLOAT_LAYERS = ("cls_logits", "bbox_pred", "cls_score", "mask_fcn_logits")
"""Weights (torchvision module names, kept by the exporter) whose layers stay float: the layers that
emit logits and box deltas. Their errors go straight into scores and boxes (mask AP of the demo
model: -0.017 with them in INT8); they are a few percent of the compute."""
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")  # runtime.sources'


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_quantized(proto: Any) -> bool:
    return any(n.op_type in QDQ_OPS for n in proto.graph.node)


def calibration_images(spec: str | os.PathLike, limit: int | None = CALIBRATION_LIMIT) -> list[Path]:
    """Image files of a folder, a dataset folder (its ``images/``) or a glob, sorted; the first ``limit``.

    Refuses (one line) a missing path, a folder without images, and a file that is not an image."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path / "images" if (path / "images").is_dir() else path
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)
        if not files:
            others = sum(1 for p in folder.iterdir() if p.is_file())
            what = f"{others} files but none is an image" if others else "it is empty"
            raise UserError(f"calibration folder {folder} holds no images ({what}): give a folder of "
                            f"{', '.join(_IMAGE_EXTS[:3])}... images like the ones the model will see")
    elif glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in _IMAGE_EXTS)
        if not files:
            raise UserError(f"no images match {text}")
    elif path.is_file():
        if path.suffix.lower() not in _IMAGE_EXTS:
            raise UserError(f"calibration input {path} is not an image or a folder of images")
        files = [path]
    else:
        raise UserError(f"calibration images {path} not found")
    return files[:limit] if limit else files


def float_layers(proto: Any) -> list[str]:
    """Names of the ``QUANTIZED_OPS`` nodes left in float: the prediction layers (``FLOAT_LAYERS``)
    and the first convolution, which reads the image itself."""
    from mrcnn_edge.core.contract import INPUT_NAME as image

    keep = []
    for n in proto.graph.node:
        if n.op_type not in QUANTIZED_OPS:
            continue
        weight = n.input[1] if len(n.input) > 1 else ""
        if image in n.input or any(f".{w}." in f".{weight}" for w in FLOAT_LAYERS):
            keep.append(n.name)
    return keep


def _load_frames(files: list[Path]) -> list[np.ndarray]:
    """BGR uint8 frames (OpenCV's convention, as the runtime reads them); one line on an unreadable file."""
    cv2 = require("cv2", "opencv", "reading calibration images")
    frames = []
    for f in files:
        frame = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if frame is None:
            raise UserError(f"calibration image {f} cannot be read as an image (corrupt, or not an image)")
        frames.append(frame)
    return frames


class _Reader:
    """Calibration batches ``images [B,3,H,W]`` float32, letterboxed as the runtime does.

    Implements ``onnxruntime.quantization.CalibrationDataReader`` (``get_next`` returns a feed or None)."""

    def __init__(self, frames: list[np.ndarray], meta: dict[str, Any], progress: Any) -> None:
        from mrcnn_edge.runtime.preprocess import letterbox

        H, W = (int(v) for v in meta["input_size"])
        B = int(meta.get("batch", 1))
        mean, std = feed_mean_std(meta.get("input_normalization"), meta["mean"], meta["std"])
        images = [letterbox(f, (H, W), mean, std)[0] for f in frames]
        images += images[: (-len(images)) % B]  # a full last batch: repeat the first images
        self.batches = [np.stack(images[i:i + B]) for i in range(0, len(images), B)]
        self.progress = progress
        self._it: Iterator[np.ndarray] = iter(self.batches)
        self._done = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self._done += 1
        self.progress.update(self._done)
        return {INPUT_NAME: batch}

    def __len__(self) -> int:
        return len(self.batches)


class _Once:
    """A calibration reader of one feed."""

    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self.feed: dict[str, np.ndarray] | None = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self.feed = self.feed, None
        return feed


CALIBRATION_METHODS = ("minmax", "percentile")
"""``minmax``: the range seen; ``percentile``: 99.999th percentile of |x| (clips rare outliers)."""


def _calibrate(model_path: Path, reader: _Reader, workdir: Path, method: str, residuals: list[str]) -> Any:
    """``TensorsData`` (ranges) of the inputs and outputs of every ``QUANTIZED_OPS`` node and of the
    ``residuals`` (skip-connection inputs)."""
    import onnx
    from onnxruntime.quantization.calibrate import MinMaxCalibrater, PercentileCalibrater

    from mrcnn_edge.export.ort_custom import make_session

    base = {"minmax": MinMaxCalibrater, "percentile": PercentileCalibrater}[method]

    class _Calibrater(base):  # type: ignore[misc, valid-type]
        # The library's session knows no custom ops: ours runs the plugin node (tensorrt flavor).
        def create_inference_session(self) -> None:
            self.infer_session = make_session(onnx.load(str(self.augmented_model_path)))

        # the residual inputs of skip-connection Adds are measured too (the library's choice is by
        # op type, and Add would take every box-arithmetic Add with it)
        def select_tensors_to_calibrate(self, model: Any) -> tuple[set, dict]:
            tensors, value_infos = super().select_tensors_to_calibrate(model)
            return tensors | {r for r in residuals if r in value_infos}, value_infos

        # One batch per library call: ranges and histograms accumulate across calls, and a tensor
        # whose shape depends on the image (mask head on the detections) never meets another
        # shape in one call (the histogram collector stacks what one call saw). Less memory too.
        def collect_data(self, data_reader: Any) -> None:
            while (feed := data_reader.get_next()) is not None:
                super().collect_data(_Once(feed))

    kw = {"symmetric": True}
    if method == "percentile":
        kw.update(num_bins=2048, percentile=99.999)
    calibrator = _Calibrater(str(model_path), list(QUANTIZED_OPS), str(workdir / "augmented.onnx"), **kw)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrator prints its settings
        calibrator.collect_data(reader)
        return calibrator.compute_data()


def _float_edges_back(proto: Any) -> int:
    """Give float consumers of a quantized activation their float tensor back; returns how many.

    ONNX Runtime's quantizer rewires *every* consumer of a tensor it quantizes for a Conv to the
    ``DequantizeLinear`` output (a dedicated pair exists only among quantized consumers), so the
    RoiAlign/plugin reading an FPN map, or a box decoder, would read the INT8-rounded value, and
    TensorRT would see a DQ it cannot fuse. Those consumers read the original tensor again (what
    they read before quantization); Q/DQ pairs left without a consumer are dropped. Skip-connection
    ``Add`` inputs get their own pair afterwards (:func:`_residual_qdq`)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    original: dict[str, str] = {}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear":
            q = producers.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                original[n.output[0]] = q.input[0]
    moved = 0
    for n in proto.graph.node:
        if n.op_type in QUANTIZED_OPS or n.op_type in QDQ_OPS:
            continue
        for i, name in enumerate(n.input):
            if name in original:
                n.input[i] = original[name]
                moved += 1
    while True:  # drop DQ then Q nodes whose outputs nobody reads
        used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
        dead = [n for n in proto.graph.node if n.op_type in QDQ_OPS and not any(o in used for o in n.output)]
        if not dead:
            return moved
        for n in dead:
            proto.graph.node.remove(n)


def _residual_qdq(proto: Any, ranges: Any, keep_float: list[str]) -> int:
    """A Q/DQ pair on the residual input of every skip-connection ``Add`` after an INT8 layer;
    returns how many. The scale is the tensor's own calibrated range, symmetric (TensorRT's
    ``scale = amax / 127``), or the scale of a ``QuantizeLinear`` already on that tensor (a block's
    input also read by the next block's first convolution: one tensor, one scale)."""
    from onnx import TensorProto, helper, numpy_helper

    skips = skip_connection_adds(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    existing = {n.input[0]: n for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    placed = 0
    for name, (branch, residual) in skips.items():
        layer = producers.get(branch)
        if layer is None or layer.name in keep_float or layer.op_type not in QUANTIZED_OPS:
            continue
        q = existing.get(residual)
        if q is not None:
            scale, zero = q.input[1], q.input[2]
        else:
            if residual not in ranges:
                raise UserError(f"no calibrated range for the residual input {residual} of {name}")
            low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges[residual].range_value)
            amax = max(abs(low), abs(high)) or 1.0  # an all-zero tensor: any scale represents it
            scale, zero = f"{residual}_residual_scale", f"{residual}_residual_zero_point"
            proto.graph.initializer.extend([numpy_helper.from_array(np.array(amax / 127, np.float32), scale),
                                            numpy_helper.from_array(np.array(0, np.int8), zero)])
        add = next(n for n in proto.graph.node if n.name == name)
        quantized, dequantized = f"{residual}_residual_QuantizeLinear_Output", f"{residual}_residual_DequantizeLinear_Output"
        nodes = [helper.make_node("QuantizeLinear", [residual, scale, zero], [quantized], name=f"{name}_residual_Q"),
                 helper.make_node("DequantizeLinear", [quantized, scale, zero], [dequantized], name=f"{name}_residual_DQ")]
        at = list(proto.graph.node).index(add)
        for k, node in enumerate(nodes):  # right before the Add: its residual was made earlier
            proto.graph.node.insert(at + k, node)
        add.input[list(add.input).index(residual)] = dequantized
        proto.graph.value_info.extend([helper.make_tensor_value_info(quantized, TensorProto.INT8, None),
                                       helper.make_tensor_value_info(dequantized, TensorProto.FLOAT, None)])
        placed += 1
    return placed


def _type_plugin_outputs(proto: Any) -> None:
    """State the float32 type of each plugin node's output (the exporter cannot infer it): the
    library's quantizer needs the type of every tensor next to a node it quantizes."""
    from onnx import TensorProto, helper

    from mrcnn_edge.core.contract import PLUGIN_NAME

    untyped = [vi for vi in proto.graph.value_info if not vi.type.tensor_type.elem_type]
    for vi in untyped:  # entries the exporter wrote without a type: shape inference refuses them
        proto.graph.value_info.remove(vi)
    known = {vi.name for vi in proto.graph.value_info}
    for n in proto.graph.node:
        if n.op_type == PLUGIN_NAME and n.output[0] not in known:
            proto.graph.value_info.append(helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None))


def _place_qdq(model_path: Path, out: Path, ranges: Path, method: str, keep_float: list[str]) -> None:
    """The library's QDQ quantizer, with the ranges already calibrated, set up for TensorRT."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()  # the library warns on the root logger about its own pre-processing
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(model_path), str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=keep_float, per_channel=True,
            reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method],
            calibration_cache_path=str(ranges),
            extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True,  # TensorRT: zero point 0
                # TensorRT fuses Q/DQ on a layer's inputs; outputs and biases stay float
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS), "QuantizeBias": False,
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                # a pair per quantized consumer (TensorRT fuses a pair into one layer)
                "DedicatedQDQPair": True,
            },
        )
    finally:
        root.setLevel(level)


def _read_model(model_path: Path) -> tuple[Any, dict[str, Any]]:
    import onnx

    from mrcnn_edge.core.contract import MODEL_KEYS
    from mrcnn_edge.core.metadata import read_metadata

    meta = read_metadata(model_path, MODEL_KEYS, hint="quantize a model made by 'mrcnn-edge export'")
    try:
        proto = onnx.load(str(model_path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, OSError
        raise UserError(f"cannot read {model_path} as an ONNX model") from exc
    precision = str(meta.get("precision", "fp32"))
    if precision in QUANTIZED_PRECISIONS or is_quantized(proto):
        raise UserError(f"{model_path.name} is already quantized ({precision}): quantize the fp32 export it came from")
    sources = sorted(set(QUANTIZED_PRECISIONS.values()))
    if precision not in sources:
        raise UserError(f"{model_path.name} is a {precision} model, which cannot be quantized: INT8 is made from an "
                        f"{'/'.join(sources)} export (mrcnn-edge export --precision {sources[0]})")
    return proto, meta


def quantize_model(model: str | os.PathLike, calibration: str | os.PathLike, out: str | os.PathLike,
                   limit: int | None = CALIBRATION_LIMIT, method: str = "percentile",
                   log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Write the INT8 Q/DQ model of ``model`` (an fp32 export, either flavor) to ``out``; return a report.

    The report has ``path``, ``metadata``, ``quantized_nodes`` (op type -> count), ``images``."""
    import onnx
    from onnxruntime.quantization.calibrate import save_tensors_data

    from mrcnn_edge.core.atomic import atomic_output, check_writable
    from mrcnn_edge.core.metadata import set_onnx_metadata
    from mrcnn_edge.core.progress import Progress

    from mrcnn_edge.export.checks import check_model, register_schema

    if method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    model_path, out = Path(model), Path(out)
    if out.resolve() == model_path.resolve():
        raise UserError("the INT8 model would overwrite its source: choose another -o")
    check_writable(out)
    register_schema()  # the plugin node's schema, for shape inference inside the library
    proto, meta = _read_model(model_path)
    files = calibration_images(calibration, limit)
    frames = _load_frames(files)
    H, W = (int(v) for v in meta["input_size"])
    log(f"[quantize] calibrating {model_path.name} on {len(frames)} images from {Path(calibration).name} "
        f"(letterboxed to {H}x{W})")
    progress = Progress("[quantize] calibration", -(-len(frames) // int(meta.get("batch", 1))), "batches")
    reader = _Reader(frames, meta, progress)
    with tempfile.TemporaryDirectory(prefix="mrcnn-edge-quantize.") as tmp:
        workdir = Path(tmp)
        source = workdir / "fp32.onnx"  # a typed copy (fp32: checked above); the user's file is not touched
        _type_plugin_outputs(proto)
        keep_float = float_layers(proto)
        residuals = [r for b, r in skip_connection_adds(proto).values()
                     if b not in {o for n in proto.graph.node if n.name in keep_float for o in n.output}]
        onnx.save(proto, str(source))
        try:
            try:
                ranges = _calibrate(source, reader, workdir, method, residuals)
            finally:
                progress.close()
            save_tensors_data(ranges, workdir / "ranges.json")
            log(f"[quantize] placing Q/DQ on {', '.join(QUANTIZED_OPS)} and residual inputs (per-channel INT8 "
                "weights, symmetric)")
            _place_qdq(source, workdir / "int8.onnx", workdir / "ranges.json", method, keep_float)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the library's and ONNX Runtime's own types; --debug shows it
            first = first_line(exc)
            raise UserError(f"quantizing {model_path.name} failed: {first}") from exc
        quantized = onnx.load(str(workdir / "int8.onnx"))
    _float_edges_back(quantized)
    residual_pairs = _residual_qdq(quantized, ranges, keep_float)
    _type_plugin_outputs(quantized)
    calibrated = {"images": len(frames), "folder": Path(calibration).name, "canvas": [H, W], "method": method}
    # a float model's bf16 record says nothing about the INT8 one: 'validate --annotations' measures its own
    new_meta = {**{k: v for k, v in meta.items() if k != "validated_precisions"}, "precision": "int8",
                "calibration": calibrated}
    set_onnx_metadata(quantized, new_meta)
    check_model(quantized, new_meta)  # onnx.checker, I/O contract, TensorRT ops and Q/DQ placement
    with atomic_output(out) as tmp_out:
        onnx.save(quantized, str(tmp_out))
    counts = quantized_nodes(quantized)
    log(f"[quantize] wrote {out} ({out.stat().st_size / 1e6:.1f} MB): INT8 "
        + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f", {residual_pairs} residual Add inputs")
    return {"path": str(out), "metadata": new_meta, "quantized_nodes": counts, "residual_adds": residual_pairs,
            "images": len(frames)}
