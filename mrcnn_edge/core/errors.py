"""Errors meant for the user: the CLI prints their message as one line and exits non-zero."""
from __future__ import annotations

__all__ = ["UserError", "require", "first_line"]


class UserError(Exception):
    """Something the user can fix: a wrong path, a bad option, a missing extra.

    The message is one line that says what is wrong and what to do.
    """

    exit_code = 2


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional dependency or raise a one-line error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        what = f" (needed for {purpose})" if purpose else ""
        raise UserError(
            f"{module} is not installed{what}: pip install 'mrcnn-edge[{extra}]'"
        ) from exc


def first_line(exc: BaseException, text: str | None = None) -> str:
    """The first line of ``text`` (default: the exception's message), or the exception's type name
    when that is empty: a library's multi-line error, said in one line."""
    return ((str(exc) if text is None else text).strip().splitlines() or [type(exc).__name__])[0]
