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

from mrcnn_edge.core.errors import UserError

from .backends import BACKENDS

__all__ = ["DESCRIPTION_RUN", "add_run_arguments", "run_run"]

DESCRIPTION_RUN = """\
Segment a camera, video, images or a stream with an exported model (.onnx with ONNX Runtime,
.engine with TensorRT). Capture, pre-processing, inference, post-processing and rendering run in
a pipeline; a slow model drops camera frames (newest frame wins) but processes every frame of a
file. Prints FPS and the median latency of each stage.

sources: 0 (camera index), /dev/video0, csi://0?width=1920&height=1080&fps=30&flip=0 (Jetson CSI),
rtsp://host/stream, video.mp4, image.jpg, a folder of images, 'frames/*.png'
outputs: out.mp4 / out.avi (video), out.jpg (single image source), a folder (one image per frame)

examples:
  mrcnn-edge run model.engine --source csi://0
  mrcnn-edge run model.onnx --source video.mp4 --output out.mp4 --no-display
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks (examples), still shows defaults."""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _HelpFormatter
    p.add_argument("model", help="model.onnx (ONNX Runtime) or model.engine (TensorRT, with its .json sidecar)")
    p.add_argument("--source", required=True, help="camera index, /dev/videoN, csi://N, rtsp://..., video, image, folder or glob")
    p.add_argument("--output", "-o", help="write rendered frames: video file, image file or folder")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                   help="keep detections scoring at least S")
    p.add_argument("--no-display", action="store_true", help="do not open a window")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="auto: by file type (.onnx -> onnxruntime, .engine -> tensorrt)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="ONNX Runtime providers / where TensorRT pre- and post-processing run")
    p.add_argument("--providers", default=None, metavar="LIST",
                   help="ONNX Runtime execution providers, comma-separated, best first")
    p.add_argument("--plugin-lib", default=None, metavar="PATH",
                   help="TensorRT plugin library (default: the one named in the engine's sidecar)")
    p.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay inference as a CUDA graph")
    p.add_argument("--reconnect", type=int, default=5, metavar="N",
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


def _progress(line: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def run_run(args: argparse.Namespace) -> int:
    # sources first: without OpenCV it raises the one-line OpenCVMissing, before the modules below
    # (which import cv2 too) can fail with a bare ModuleNotFoundError
    from .sources import check_source, open_source
    from .pipeline import Pipeline
    from .segmenter import Segmenter
    from .sinks import WindowSink, open_sink, window_unavailable

    _setup_logging()
    log = logging.getLogger("mrcnn_edge.runtime")
    if args.max_frames is not None and args.max_frames <= 0:
        raise UserError("--max-frames must be a positive number")
    if args.reconnect < 0:
        raise UserError("--reconnect must be 0 or more")
    # a source that cannot work (unknown path, bad csi:// options, no GStreamer) is reported before
    # the model loads: building an engine's context can take a minute on a Jetson
    check_source(args.source)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    sinks: list[Any] = []
    ok = False
    with contextlib.ExitStack() as stack:
        segmenter = stack.enter_context(Segmenter.from_path(
            args.model, backend=args.backend, providers=providers, plugin_lib=args.plugin_lib,
            score_threshold=args.score_threshold, device=args.device, cuda_graph=args.cuda_graph))
        source = stack.enter_context(open_source(args.source, reconnect_tries=args.reconnect))
        stack.callback(lambda: [sink.close(ok) for sink in reversed(sinks)])
        if not args.no_display:
            reason = window_unavailable()
            if reason is None:
                sinks.append(WindowSink())
            elif args.output:
                log.warning("%s; continuing without a window (pass --no-display to silence this)", reason)
            else:
                raise UserError(f"cannot show a window: {reason}; pass --no-display, and --output OUT to save results")
        if args.output:
            sinks.append(open_sink(args.output, source))
        print(f"model: {segmenter.description}", file=sys.stderr)
        print(f"source: {source.description}" + "".join(f"\noutput: {s.description}" for s in sinks), file=sys.stderr)
        pipeline = Pipeline(segmenter, source, sinks, max_frames=args.max_frames,
                            progress=None if args.quiet else _progress)
        stats = pipeline.run()
        ok = True
        if sys.stderr.isatty() and not args.quiet:
            print(file=sys.stderr)
        print(stats.summary())
    if stats.interrupted:
        return 130
    if stats.frames == 0:
        raise UserError(f"no frame of {args.source} could be processed" + (f" ({stats.skipped} skipped)" if stats.skipped else ""))
    return 0
