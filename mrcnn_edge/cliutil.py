"""Small parsers shared by the command modules; bad input is a one-line UserError."""
from __future__ import annotations

import re

from .errors import UserError

__all__ = ["parse_hw"]

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
