"""The ``mrcnn-edge`` command: one table of subcommands, each in the module that owns it.

A command module stays cheap to import (no torch at module level) and defines, for a command
``name``, ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` (dashes become
underscores). Errors the user can fix are :class:`~mrcnn_edge.core.errors.UserError`: one line on
stderr and a non-zero exit; a traceback only with ``--debug``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from mrcnn_edge import __version__
from mrcnn_edge.core.errors import UserError

__all__ = ["main", "COMMANDS"]

# name -> (module, one-line help). Order is the order of ``--help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("mrcnn_edge.commands.demo", "export, validate and run the shipped demo model end to end"),
    "export": ("mrcnn_edge.export.cli", "export a checkpoint to ONNX (tensorrt or portable flavor)"),
    "quantize": ("mrcnn_edge.export.quantize_cli", "INT8 Q/DQ model from an fp32 export, calibrated on your images"),
    "validate": ("mrcnn_edge.export.cli", "compare ONNX / TensorRT outputs with the PyTorch model"),
    "build-plugin": ("mrcnn_edge.export.build.cli", "compile the MultilevelRoIAlign TensorRT plugin library"),
    "build": ("mrcnn_edge.export.build.cli", "build a TensorRT engine from an exported ONNX model"),
    "run": ("mrcnn_edge.runtime.cli", "segment a camera, video, images or a stream with a model"),
    "serve": ("mrcnn_edge.export.serve.cli", "write a Triton model repository or a DeepStream nvinfer setup"),
    "benchmark": ("mrcnn_edge.commands.demo", "time torchvision, the edge graph, ONNX Runtime and TensorRT"),
    "inspect": ("mrcnn_edge.commands.model", "print a checkpoint's architecture, classes and normalisation"),
    "train": ("mrcnn_edge.commands.model", "train a Mask R-CNN on a COCO-format dataset (CPU is fine)"),
    "evaluate": ("mrcnn_edge.commands.model", "COCO box and mask AP of a checkpoint on a dataset"),
    "synth": ("mrcnn_edge.commands.data", "write a synthetic COCO instance-segmentation dataset"),
    "synth-video": ("mrcnn_edge.commands.data", "write a synthetic video of moving shapes"),
    "doctor": ("mrcnn_edge.commands.doctor", "check this machine's install (GPU, CUDA, TensorRT, OpenCV, cameras), one line each with the fix"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``UserError`` line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser = _Parser(
        prog="mrcnn-edge",
        description="Take a trained torchvision Mask R-CNN to ONNX and TensorRT, and run it at the edge.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"mrcnn-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        attr = name.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # A missing optional part must not break the other commands.
            p = sub.add_parser(name, help=f"{help_text} [unavailable: {exc}]", parents=[common])
            p.set_defaults(_unavailable=f"'{name}' is unavailable: {exc}")
            continue
        p = sub.add_parser(
            name,
            help=help_text,
            description=(module.__dict__.get(f"DESCRIPTION_{attr.upper()}") or help_text),
            parents=[common],
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        getattr(module, f"add_{attr}_arguments")(p)
        p.set_defaults(_run=getattr(module, f"run_{attr}"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MRCNN_EDGE_DEBUG") == "1"
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "_unavailable", None):
            raise UserError(args._unavailable)
        if not getattr(args, "_run", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"mrcnn-edge: error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        return exc.exit_code
    except KeyboardInterrupt:
        print("mrcnn-edge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"mrcnn-edge: error: {type(exc).__name__}: {msg} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
