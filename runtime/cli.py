"""``mrcnn-edge run MODEL --source SRC``: segment a camera, video, images or a stream in real time.

Imported by ``mrcnn_edge.commands.cli`` to build its parser: cheap to import (no torch, no onnxruntime,
no TensorRT, no cuda-python at module level).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from mrcnn_edge.core.cliutil import non_negative_int, positive_int, probability
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import note, status

from mrcnn_edge.runtime.backends import BACKENDS, option_for_flag, url_scheme

__all__ = ["DESCRIPTION_RUN", "add_run_arguments", "run_run"]

DESCRIPTION_RUN = """\
Segment a camera, video, images or a stream with an exported model (.onnx with OpenVINO on x86
CPUs where it is installed, else ONNX Runtime; .engine with TensorRT; see --backend). Capture,
pre-processing, inference, post-processing and rendering run in a pipeline; a slow model drops
camera frames (newest frame wins) but processes every frame of a file. Prints FPS, the median
time of each stage and, per frame, the capture-to-output latency from a live source or the
service time (queueing excluded) from files.

recorder: with --output a live source is recorded at its capture times (a 10-minute recording lasts
10 minutes even when frames are dropped). What was written is kept whatever ends the run: a source
lost for good ends its own recording (the others go on; exit 3), Ctrl-C, SIGTERM and SIGHUP finish
the frames in flight and close the outputs (a second one skips the frames in flight; exit 128 +
the signal: 130, 143, 129), a full disk ends the run with one line (exit 2). --segment-minutes N
rotates video files: out.mp4 becomes out_000.mp4, out_001.mp4, ... (numbered from 000, each
finished and playable when the next begins).

models: model.onnx (OpenVINO or ONNX Runtime), model.engine (TensorRT), triton://host:8001/model
(a Triton Inference Server runs the model; capture, pre- and post-processing stay on this machine)
sources: 0 (camera index), /dev/video0, csi://0?width=1920&height=1080&fps=30&flip=0 (Jetson CSI),
rtsp://host/stream, video.mp4, image.jpg, a folder of images, 'frames/*.png'. --source is
repeatable: several sources share one model (all cameras and streams, or all files; with
--no-display, and one --output per --source or none)
outputs: out.mp4 / .mov / .m4v / .mkv (H.264), out.avi (MJPEG), out.jpg (single image source), a
folder (one image per frame)

many cameras: one model, one inference per batch of one frame from each source: the newest frame
of each camera (a camera that stalls is left out of the batch after one frame interval; one lost
for good ends its own recording), every frame of each file, frames of any size. Export with
--batch N for N sources; more sources than the batch are served in turn. Prints each source's FPS,
drops and latency, then the frames per inference and the memory. For many streams per device use
DeepStream (serve deepstream: hardware decode and batching in GStreamer); for many devices sharing
GPUs, a Triton server (serve triton, then run triton://... on each device).

examples:
  mrcnn-edge run model.engine --source csi://0
  mrcnn-edge run model_b4.engine --source rtsp://cam1/s --source rtsp://cam2/s --source rtsp://cam3/s
      --source rtsp://cam4/s -o cam1.mp4 -o cam2.mp4 -o cam3.mp4 -o cam4.mp4 --no-display
  mrcnn-edge run model.onnx --source video.mp4 --output out.mp4 --no-display
  mrcnn-edge run triton://server:8001/mrcnn --source rtsp://cam1/s --source rtsp://cam2/s --no-display
  mrcnn-edge run model.engine --source rtsp://cam/s -o rec.mp4 --no-display --segment-minutes 10
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
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto", help=_auto_help())
    device = option_for_flag("--device")
    p.add_argument("--device", choices=device.choices, default=device.default, help=device.help)
    # backend options: choices, defaults and help from the backend table
    p.add_argument("--providers", default=None, metavar="LIST", help=option_for_flag("--providers").help)
    p.add_argument("--plugin-lib", default=None, metavar="PATH", help=option_for_flag("--plugin-lib").help)
    p.add_argument("--cuda-graph", action="store_true", help=option_for_flag("--cuda-graph").help)
    precision = option_for_flag("--precision")
    p.add_argument("--precision", choices=precision.choices, default=precision.default, help=precision.help)
    p.add_argument("--requests", type=positive_int, default=None, metavar="N",
                   help=option_for_flag("--requests").help + " (default: that choice)")
    p.add_argument("--reconnect", type=non_negative_int, default=5, metavar="N",
                   help="live sources and Triton servers: reconnect attempts before giving up (0.5, 1, 2, 4, 8 s "
                        "apart); then that source's recording ends, kept")
    p.add_argument("--segment-minutes", type=_positive_minutes, default=None, metavar="N",
                   help="rotate video outputs every N minutes of the timeline (fractions allowed): "
                        "out.mp4 -> out_000.mp4, out_001.mp4, ...")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines, only the summary")


def frames_queue_up(kinds: list[str]) -> bool:
    """Files only (videos, images, folders, globs; ``kinds`` as :func:`check_run` returns them): every
    frame is processed, so frames per second count (``Segmenter.from_path(throughput=True)``: two
    inferences in flight, one worker each, in the pipeline and in the batcher). A camera wants each
    frame's latency: one at a time."""
    from mrcnn_edge.runtime.batcher import LIVE_KINDS

    return bool(kinds) and not set(kinds) & set(LIVE_KINDS)


def _auto_help() -> str:
    """What --backend auto picks, read from the backend table (its order and ``auto_when`` rules)."""
    rules = []
    for entry in BACKENDS.values():
        what = "/".join(entry.suffixes) or "/".join(f"{s}://" for s in entry.schemes)
        when = ""
        if entry.auto_when is not None and entry.auto_when.__doc__:
            when = " when " + " ".join(entry.auto_when.__doc__.split(":")[0].split())
        rules.append(f"{what} -> {entry.name}{when}")
    return "auto: the first that applies: " + "; ".join(rules)


def _positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


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
    # without OpenCV this first import raises the one-line OpenCVMissing (runtime/io/opencv.py)
    from mrcnn_edge.runtime.io.sinks import window_unavailable
    from mrcnn_edge.runtime.batcher import LIVE_KINDS, resident_mib, serving_plan
    from mrcnn_edge.runtime.run import RunOptions, StopSignals, check_run, exit_code, run_sources
    from mrcnn_edge.runtime.segmenter import Segmenter

    _setup_logging()
    log = logging.getLogger("mrcnn_edge.runtime")
    outputs = args.output or []
    sources = args.source
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    if len(sources) == 1 and len(outputs) > 1:
        raise UserError(f"{len(outputs)} --output for one --source: give one --output per --source")
    window = not args.no_display
    if window and len(sources) > 1:
        raise UserError("several --source run without a window: pass --no-display (and --output per source to save)")
    if window:
        reason = window_unavailable()
        if reason is not None and outputs:
            log.warning("%s; continuing without a window (pass --no-display to silence this)", reason)
            window = False
        elif reason is not None:
            raise UserError(f"cannot show a window: {reason}; pass --no-display, and --output OUT to save results")
    segment_seconds = 60.0 * args.segment_minutes if args.segment_minutes else None
    # sources and outputs that cannot work (unknown path, bad csi:// options, an unwritable -o) are
    # reported before the model loads: building an engine's context can take a minute on a Jetson
    kinds = check_run(sources, outputs, segment_seconds)
    if args.requests and args.requests > 1 and set(kinds) & set(LIVE_KINDS):
        raise UserError(f"--requests {args.requests}: cameras and streams run one inference at a time (a frame is "
                        "taken when the model is free, the newest: latency first); --requests is for files")
    options = RunOptions(max_frames=args.max_frames, reconnect_tries=args.reconnect, segment_seconds=segment_seconds,
                         window=window, progress=None if args.quiet or len(sources) > 1 else status, announce=note)
    with contextlib.ExitStack() as stack:
        # a Triton server that goes away is retried like a lost camera, within the same --reconnect
        server = {"reconnect_tries": args.reconnect} if url_scheme(args.model) == "triton" else {}
        before = resident_mib()
        # one model for every source (runtime/batcher.py batches one frame of each)
        segmenter = stack.enter_context(Segmenter.from_path(
            args.model, backend=args.backend, providers=providers, plugin_lib=args.plugin_lib,
            score_threshold=args.score_threshold, device=args.device, cuda_graph=args.cuda_graph,
            precision=args.precision, requests=args.requests, throughput=frames_queue_up(kinds), **server))
        after = resident_mib()
        note(f"model: {segmenter.description}")
        if len(sources) > 1:
            note(serving_plan(len(sources), segmenter.spec.batch))
        # signals are ours from here (the outputs open inside) until the models are closed and the
        # summary printed: a late second Ctrl-C cannot raise into a close
        with StopSignals() as stopper:
            try:
                runs = run_sources(segmenter, sources, outputs, options, stopper,
                                   model_mib=after - before if before is not None and after is not None else None)
            finally:
                stack.close()
            if sys.stderr.isatty() and not args.quiet and len(sources) == 1:
                note("")
            for run in runs:
                print(run.summary() if len(runs) > 1 else run.stats.summary(), flush=True)
            if runs and runs[0].batch is not None:
                print(f"model: {runs[0].batch.summary()}", flush=True)
    return exit_code(runs, stopper)
