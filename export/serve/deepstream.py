"""``mrcnn-edge serve deepstream MODEL --out DIR``: a DeepStream nvinfer setup for instance segmentation.

DIR receives (a self-contained folder to copy onto the device)::

    config_infer_mrcnn_edge.txt   nvinfer [property] group: network-type=3, output-instance-mask=1,
                                  cluster-mode=4 (NMS is in the graph), the parser, model, labels
    labels.txt                    one class name per line, id = line (0 is __background__)
    model.engine | model.onnx     the model (an ONNX is built by nvinfer itself on first start)
    mrcnn_edge_parser.cpp, Makefile, nvdsinfer_minimal.h   the instance-mask parser's source
    libmrcnn_edge_plugins.so, libmrcnn_edge_plugins_autoreg.so
                                  the TensorRT plugin and the library that registers it when loaded,
                                  when the model needs the plugin
    libnvds_mrcnn_edge_parser.so  compiled here when DeepStream's headers are found (--deepstream),
                                  else by 'make -C DIR' on the device

nvinfer dlopens ``custom-lib-path`` before it deserialises or builds the engine; the parser library
is linked against ``libmrcnn_edge_plugins_autoreg.so`` (rpath ``$ORIGIN``), so loading it registers
the plugin's creator. nvinfer dlcloses the parser when the element is destroyed; the registering
library is linked ``-z nodelete``, so the creator TensorRT keeps stays valid for the next pipeline.

Precision: a prebuilt engine runs as built, whatever its precision (fp32, fp16, int8): nvinfer's
``network-mode`` only matters when nvinfer builds the engine itself, from an ONNX. An fp32 or fp16
ONNX it builds fine; an int8 (Q/DQ) ONNX is refused: nvinfer would want a calibration file (and,
without one, falls back to fp16), so build the engine with ``mrcnn-edge build`` and serve that.

Normalisation: nvinfer computes ``net-scale-factor * (x - offsets[c])`` on 0-255 pixels, one scale
for all channels. The contract's ``(x/255 - mean)/std`` fits only when std is the same for R, G and B
(``net-scale-factor = 1/(255 std)``, ``offsets = 255 mean``), or when the graph normalises itself
(metadata ``input_normalization: "in_graph"``: 0-255 RGB input). Anything else is refused with the
export option that folds mean/std into the graph.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from mrcnn_edge.core.contract import feed_mean_std
from mrcnn_edge.core.atomic import atomic_dir
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.export.serve.cli import ServedModel

__all__ = ["add_arguments", "write", "nvinfer_config", "normalization", "CONFIG_NAME", "PARSER_FUNCTION",
           "PARSER_LIBRARY", "PARSER_SOURCES", "DEFAULT_DEEPSTREAM_INCLUDES"]

CONFIG_NAME = "config_infer_mrcnn_edge.txt"
PARSER_FUNCTION = "NvDsInferParseMrcnnEdge"
PARSER_LIBRARY = "libnvds_mrcnn_edge_parser.so"
PARSER_SOURCES = ("mrcnn_edge_parser.cpp", "nvdsinfer_minimal.h", "Makefile")
DEFAULT_DEEPSTREAM_INCLUDES = Path("/opt/nvidia/deepstream/deepstream/sources/includes")
_SOURCE_DIR = Path(__file__).resolve().parents[2] / "plugins" / "deepstream"
_NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer network-mode: 0 FP32, 1 INT8, 2 FP16


def _source_dir() -> Path:
    """The parser's sources: plugins/deepstream in a checkout, mrcnn_edge/plugins/deepstream installed."""
    try:
        import mrcnn_edge.plugins as plugins_pkg

        installed = Path(plugins_pkg.__file__).resolve().parent / "deepstream"
        if installed.is_dir():
            return installed
    except ImportError:
        pass
    return _SOURCE_DIR


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, empty, or written by this command)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="pre-cluster-threshold for every class")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="segmentation-threshold: mask probability cut")
    p.add_argument("--gpu-id", type=int, default=0, help="nvinfer gpu-id")
    p.add_argument("--deepstream", default=str(DEFAULT_DEEPSTREAM_INCLUDES), metavar="INCLUDES",
                   help="DeepStream's sources/includes: compile the parser now when they are there")


def normalization(meta: dict) -> tuple[float, tuple[float, float, float]]:
    """(net-scale-factor, offsets) that make nvinfer feed the model what it was exported for."""
    mean, std = feed_mean_std(meta.get("input_normalization"), meta["mean"], meta["std"])
    if max(std) - min(std) > 1e-6 * max(std):
        raise UserError(
            f"DeepStream normalises with one net-scale-factor for all channels, but this model's std is "
            f"{std}: export it with --normalize-in-graph (0-255 RGB input, mean/std folded into the graph) "
            "and serve that model"
        )
    return 1.0 / (255.0 * std[0]), (255.0 * mean[0], 255.0 * mean[1], 255.0 * mean[2])


def nvinfer_config(model: ServedModel, model_file: str, parser_library: Path, score_threshold: float = 0.5,
                   mask_threshold: float = 0.5, gpu_id: int = 0) -> str:
    """The nvinfer configuration text (key file format, ``[property]`` and ``[class-attrs-all]``)."""
    scale, offsets = normalization(model.meta)
    h, w = (int(v) for v in model.meta["input_size"])
    names = list(model.meta["class_names"])
    precision = model.precision
    if precision not in _NETWORK_MODE:
        raise UserError(f"precision {precision!r}: DeepStream configs are written for {', '.join(_NETWORK_MODE)}")
    if precision == "int8" and model.kind != "engine":
        raise UserError(f"{model.path.name} is an int8 (Q/DQ) ONNX: nvinfer would build it with a calibration file "
                        "or else as fp16; build the engine with 'mrcnn-edge build' on the device and serve the engine")
    outputs = [t.name for t in model.io if not t.is_input]
    k = next(t.dims[1] for t in model.io if t.name == "scores")
    lines = [
        "# written by mrcnn-edge serve deepstream; nvinfer (Gst-nvinfer) configuration",
        "[property]",
        f"gpu-id={gpu_id}",
        f"net-scale-factor={scale:.10g}",
        "offsets=" + ";".join(f"{o:.6g}" for o in offsets),
        "model-color-format=0",  # RGB, as the contract's channel_order
        f"infer-dims=3;{h};{w}",
        f"batch-size={model.batch}",  # the engine's static batch
        f"network-mode={_NETWORK_MODE[precision]}",
        ("model-engine-file=" if model.kind == "engine" else "onnx-file=") + model_file,
        "labelfile-path=labels.txt",
        f"num-detected-classes={len(names)}",
        "gie-unique-id=1",
        "interval=0",
        "network-type=3",  # instance segmentation
        "output-instance-mask=1",
        "cluster-mode=4",  # no clustering: NMS already ran in the graph
        "maintain-aspect-ratio=1",  # the contract's letterbox: aspect kept, image top-left
        "symmetric-padding=0",
        "output-blob-names=" + ";".join(outputs),
        f"parse-bbox-instance-mask-func-name={PARSER_FUNCTION}",
        f"custom-lib-path={parser_library}",
        f"segmentation-threshold={mask_threshold:g}",
        "",
        "[class-attrs-all]",
        f"pre-cluster-threshold={score_threshold:g}",
        f"topk={k}",
    ]
    return "\n".join(lines) + "\n"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        raise UserError(f"--out {out} exists and holds files not written by 'mrcnn-edge serve deepstream': "
                        "give a new or empty folder")


def _compile(folder: Path, includes: Path, plugin: Path | None) -> str:
    """Compile the parser in ``folder`` against DeepStream's headers; return a line saying what happened.
    ``plugin``: the self-registering library the parser links, when the model needs the plugin."""
    if not (includes / "nvdsinfer_custom_impl.h").is_file():
        return (f"DeepStream headers not found at {includes}: on the DeepStream machine run 'make -C DIR "
                "CUDA_VER=<its CUDA version, e.g. 12.6>" + (f" PLUGIN={plugin.name}'" if plugin else "'"))
    if shutil.which("g++") is None:
        raise UserError("g++ is needed to compile the DeepStream parser (sudo apt install g++)")
    cmd = ["make", "-C", str(folder), f"DS_INCLUDES={includes}"] + ([f"PLUGIN={folder / plugin.name}"] if plugin else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"compiling the DeepStream parser failed: {last}")
    return f"compiled {PARSER_LIBRARY} against {includes}"


def _copy_plugin(library: Path, folder: Path) -> Path:
    """Copy the plugin library and the self-registering library beside it into ``folder``, under the
    names the pair needs (the second loads the first by name); return the second's copy."""
    from mrcnn_edge.core.paths import PLUGIN_AUTOREG_LIBRARY_NAME, PLUGIN_LIBRARY_NAME

    autoreg = library.with_name(PLUGIN_AUTOREG_LIBRARY_NAME)
    if not autoreg.is_file():
        raise UserError(f"{PLUGIN_AUTOREG_LIBRARY_NAME} not found next to {library}: DeepStream loads the plugin "
                        "through it; rebuild the plugin with 'mrcnn-edge build-plugin', which writes both")
    shutil.copy2(library, folder / PLUGIN_LIBRARY_NAME)
    shutil.copy2(autoreg, folder / PLUGIN_AUTOREG_LIBRARY_NAME)
    return folder / PLUGIN_AUTOREG_LIBRARY_NAME


def write(model: ServedModel, args: argparse.Namespace) -> list[str]:
    """Write the DeepStream folder for ``model``; return the lines to print."""
    if not 0.0 <= args.score_threshold <= 1.0 or not 0.0 <= args.mask_threshold <= 1.0:
        raise UserError("--score-threshold and --mask-threshold must be in [0, 1]")
    out = Path(args.out).expanduser().resolve()
    _check_out(out)
    model_file = "model.engine" if model.kind == "engine" else "model.onnx"
    text = nvinfer_config(model, model_file, out / PARSER_LIBRARY, args.score_threshold, args.mask_threshold,
                          args.gpu_id)
    sources = _source_dir()
    with atomic_dir(out) as tmp:
        shutil.copy2(model.path, tmp / model_file)
        for name in PARSER_SOURCES:
            shutil.copy2(sources / name, tmp / name)
        autoreg = _copy_plugin(model.plugin_library, tmp) if model.plugin_library is not None else None
        (tmp / "labels.txt").write_text("\n".join(str(n) for n in model.meta["class_names"]) + "\n")
        (tmp / CONFIG_NAME).write_text(text)
        built = _compile(tmp, Path(args.deepstream), autoreg)
    return [
        f"wrote {out / CONFIG_NAME} ({model.kind}, batch {model.batch}, {len(model.meta['class_names'])} classes)",
        built,
        f"use it as the config-file-path of an nvinfer element, e.g.: gst-launch-1.0 ... ! nvstreammux batch-size="
        f"{model.batch} width=1920 height=1080 ! nvinfer config-file-path={out / CONFIG_NAME} ! "
        "nvdsosd display-mask=1 process-mode=0 ! ...",
    ]
