"""``mrcnn-edge run MODEL --source SRC``: segment a camera, video, images or a stream in real time.

Imported by ``mrcnn_edge.commands.cli`` to build its parser: cheap to import (no torch, no onnxruntime,
no TensorRT, no cuda-python at module level).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any

from mrcnn_edge.core.cliutil import non_negative_int, positive_int, probability
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import note, status

from mrcnn_edge.runtime.backends import BACKENDS

from mrcnn_edge.core.contract import DEVICES  # noqa: E402  (not via segmenter: this module imports without OpenCV)

__all__ = ["DESCRIPTION_RUN", "add_run_arguments", "run_run"]

DESCRIPTION_RUN = """\
Segment a camera, video, images or a stream with an exported model (.onnx with ONNX Runtime,
.engine with TensorRT). Capture, pre-processing, inference, post-processing and rendering run in
a pipeline; a slow model drops camera frames (newest frame wins) but processes every frame of a
file. Prints FPS and the median latency of each stage.

models: model.onnx (ONNX Runtime), model.engine (TensorRT), triton://host:8001/model (a Triton
Inference Server runs the model; capture, pre- and post-processing stay on this machine)
sources: 0 (camera index), /dev/video0, csi://0?width=1920&height=1080&fps=30&flip=0 (Jetson CSI),
rtsp://host/stream, video.mp4, image.jpg, a folder of images, 'frames/*.png'. --source is
repeatable: several sources run at once, each in its own pipeline (with --no-display, and one
--output per --source or none)
outputs: out.mp4 / out.avi (video), out.jpg (single image source), a folder (one image per frame)

examples:
  mrcnn-edge run model.engine --source csi://0
  mrcnn-edge run model.onnx --source video.mp4 --output out.mp4 --no-display
  mrcnn-edge run triton://server:8001/mrcnn --source rtsp://cam1/s --source rtsp://cam2/s --no-display
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks (examples), still shows defaults."""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _HelpFormatter
    p.add_argument("model", help="model.onnx (ONNX Runtime), model.engine (TensorRT, with its .json sidecar) "
                                 "or triton://host:port/model (a Triton Inference Server)")
    p.add_argument("--source", required=True, action="append",
                   help="camera index, /dev/videoN, csi://N, rtsp://..., video, image, folder or glob; repeatable")
    p.add_argument("--output", "-o", action="append", default=None,
                   help="write rendered frames: video file, image file or folder (one per --source)")
    p.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--score-threshold", type=probability, default=0.5, metavar="S",
                   help="keep detections scoring at least S")
    p.add_argument("--no-display", action="store_true", help="do not open a window")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="auto: by file type (.onnx -> onnxruntime, .engine -> tensorrt)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="ONNX Runtime providers / where TensorRT pre- and post-processing run")
    p.add_argument("--providers", default=None, metavar="LIST",
                   help="ONNX Runtime execution providers, comma-separated, best first")
    p.add_argument("--plugin-lib", default=None, metavar="PATH",
                   help="TensorRT plugin library (default: the one named in the engine's sidecar)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay inference as a CUDA graph")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="OpenVINO: inference precision (bf16 where the CPU has it; an INT8 model runs as quantized)")
    p.add_argument("--reconnect", type=non_negative_int, default=5, metavar="N",
                   help="live sources: reconnect attempts before giving up")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines, only the summary")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after setup)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"mrcnn-edge: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _setup_logging() -> None:
    """Warnings of the runtime (skipped frames, reconnects) as ``mrcnn-edge: warning: ...`` lines."""
    logger = logging.getLogger("mrcnn_edge")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)



def run_run(args: argparse.Namespace) -> int:
    # sources first: without OpenCV it raises the one-line OpenCVMissing, before the modules below
    # (which import cv2 too) can fail with a bare ModuleNotFoundError
    from mrcnn_edge.runtime.io.sources import check_source, open_source
    from mrcnn_edge.runtime.pipeline import Pipeline
    from mrcnn_edge.runtime.segmenter import Segmenter
    from mrcnn_edge.runtime.io.sinks import WindowSink, open_sink, window_unavailable

    _setup_logging()
    log = logging.getLogger("mrcnn_edge.runtime")
    outputs = args.output or []
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    if len(args.source) > 1:
        return _run_many(args, outputs, providers)
    if len(outputs) > 1:
        raise UserError(f"{len(outputs)} --output for one --source: give one --output per --source")
    source_spec, output = args.source[0], (outputs[0] if outputs else None)
    # a source that cannot work (unknown path, bad csi:// options, no GStreamer) is reported before
    # the model loads: building an engine's context can take a minute on a Jetson
    check_source(source_spec)
    sinks: list[Any] = []
    ok = False
    with contextlib.ExitStack() as stack:
        segmenter = stack.enter_context(Segmenter.from_path(
            args.model, backend=args.backend, providers=providers, plugin_lib=args.plugin_lib,
            score_threshold=args.score_threshold, device=args.device, cuda_graph=args.cuda_graph,
            precision=args.precision))
        source = stack.enter_context(open_source(source_spec, reconnect_tries=args.reconnect))
        stack.callback(lambda: [sink.close(ok) for sink in reversed(sinks)])
        if not args.no_display:
            reason = window_unavailable()
            if reason is None:
                sinks.append(WindowSink())
            elif output:
                log.warning("%s; continuing without a window (pass --no-display to silence this)", reason)
            else:
                raise UserError(f"cannot show a window: {reason}; pass --no-display, and --output OUT to save results")
        if output:
            sinks.append(open_sink(output, source))
        note(f"model: {segmenter.description}")
        note(f"source: {source.description}" + "".join(f"\noutput: {s.description}" for s in sinks))
        pipeline = Pipeline(segmenter, source, sinks, max_frames=args.max_frames,
                            progress=None if args.quiet else status)
        stats = pipeline.run()
        ok = True
        if sys.stderr.isatty() and not args.quiet:
            note("")
        print(stats.summary())
    if stats.interrupted:
        return 130
    if stats.frames == 0:
        raise UserError(f"no frame of {source_spec} could be processed" + (f" ({stats.skipped} skipped)" if stats.skipped else ""))
    return 0


def _run_many(args: argparse.Namespace, outputs: list[str], providers: list[str] | None) -> int:
    """Several ``--source``: one pipeline each on its own Segmenter (``multi_source.run_sources``)."""
    from mrcnn_edge.runtime.multi_source import run_sources
    from mrcnn_edge.runtime.segmenter import Segmenter

    if not args.no_display:
        raise UserError("several --source run without a window: pass --no-display (and --output per source to save)")
    if outputs and len(outputs) != len(args.source):
        raise UserError(f"{len(args.source)} sources but {len(outputs)} outputs: give one --output per --source, or none")

    def open_segmenter() -> Segmenter:
        return Segmenter.from_path(args.model, backend=args.backend, providers=providers, plugin_lib=args.plugin_lib,
                                   score_threshold=args.score_threshold, device=args.device, cuda_graph=args.cuda_graph,
            precision=args.precision)

    runs = run_sources(open_segmenter, args.source, outputs, args.max_frames, args.reconnect)
    for run in runs:
        print(run.summary())
    if all(run.stats.interrupted for run in runs) and runs:
        return 130
    empty = [run.source for run in runs if run.stats.frames == 0]
    if empty:
        raise UserError(f"no frame of {', '.join(empty)} could be processed")
    return 0
