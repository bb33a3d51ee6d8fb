"""Small parsers shared by the command modules; bad input is a one-line UserError."""
from __future__ import annotations

import argparse
import math
import re

from mrcnn_edge.core.contract import CANVAS_MULTIPLE
from mrcnn_edge.core.errors import UserError

__all__ = ["parse_hw", "parse_canvas", "positive_int", "non_negative_int", "positive_float", "probability"]

_HW = re.compile(r"^\s*(\d+)\s*[xX×,]\s*(\d+)\s*$")


def parse_hw(text: str, multiple_of: int | None = None, minimum: int = 1) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height, width); a single number ``"512"`` means square.

    Raises :class:`UserError` when the text is not ``HxW``, a side is below ``minimum``, or a side
    is not a multiple of ``multiple_of``.
    """
    s = str(text).strip()
    m = _HW.match(s)
    if m:
        h, w = int(m.group(1)), int(m.group(2))
    elif s.isdigit():
        h = w = int(s)
    else:
        raise UserError(f"size '{text}' is not HxW (height x width, e.g. 480x640)")
    if h < minimum or w < minimum:
        raise UserError(f"size {h}x{w} is too small: each side must be at least {minimum}")
    if multiple_of and (h % multiple_of or w % multiple_of):
        raise UserError(
            f"size {h}x{w}: height and width must be multiples of {multiple_of}, "
            f"e.g. {-(-h // multiple_of) * multiple_of}x{-(-w // multiple_of) * multiple_of}"
        )
    return h, w


def parse_canvas(text: str) -> tuple[int, int]:
    """A model canvas ``HxW`` given on the command line: the contract's canvas rule (sides multiples
    of ``CANVAS_MULTIPLE``), said before anything slow starts."""
    return parse_hw(text, multiple_of=CANVAS_MULTIPLE, minimum=CANVAS_MULTIPLE)


# argparse ``type=`` functions: the one way to check a number on the command line. argparse turns
# their ArgumentTypeError into "argument --x: ..." and the CLI prints it as one line.


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts: images, frames, runs, iterations)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up runs, 'every N' where 0 means never)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (fps, learning rate, GiB)."""
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (score and mask thresholds)."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value
