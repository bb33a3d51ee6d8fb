"""Write outputs under a temporary name and rename them into place only when complete.

Two ways to use it:

- :func:`atomic_output` / :func:`atomic_dir`: a ``with`` block that makes one artefact (an ONNX
  model, an engine, a report). The artefact is renamed into place when the block succeeds and
  removed when it fails: a half-made model is worse than none.
- :class:`PendingOutput`: the writer decides. A recording (``mrcnn-edge run -o``) commits what it
  wrote even when the run ends on an error, a lost camera or a signal: frames already written are
  the user's data, never discarded (docs/DESIGN.md, "Command line": ``run -o`` is a recorder).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mrcnn_edge.core.errors import UserError

__all__ = ["atomic_output", "atomic_dir", "check_writable", "check_writable_folder", "unwritable", "PendingOutput"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early with one line when ``path``'s folder cannot take a new file."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder")
    _writable_folder(parent)
    return path


def check_writable_folder(path: str | os.PathLike) -> Path:
    """Fail early with one line when the folder ``path`` cannot be made (or replaced) here."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} exists and is not a folder")
    parent = path.parent if str(path.parent) else Path(".")
    blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"cannot write {path}: {blocker} is a file, not a folder")
    _writable_folder(parent)
    return path


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why an existing ``folder`` cannot take new entries (``read-only file system``, ``permission
    denied``), or None when it can."""
    if os.access(folder, os.W_OK):
        return None
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):  # no statvfs (Windows): the access check's answer
        pass
    return "permission denied"


def _writable_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) if needed; one line when it cannot take new entries."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder {folder}: {exc.strerror}") from exc
    why = unwritable(folder)
    if why is not None:
        raise UserError(f"cannot write to {folder}: {why}")


class PendingOutput:
    """A file (or, with ``folder=True``, a folder) made under a hidden temporary name beside ``path``.

    ``tmp`` is where the writer writes; :meth:`commit` renames it to ``path`` (an existing ``path``
    is replaced only then), :meth:`discard` removes it. Either one ends it; later calls do nothing.
    ``suffix`` keeps an extension on a temporary file's name (writers that choose a format by it).
    """

    def __init__(self, path: str | os.PathLike, folder: bool = False, suffix: str | None = None) -> None:
        self.path, self.folder = Path(path), folder
        if folder:
            check_writable_folder(self.path)
            parent = self.path.parent if str(self.path.parent) else Path(".")
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".part", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_umask())
        else:
            check_writable(self.path)
            ext = self.path.suffix if suffix is None else suffix
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=f".part{ext}", dir=self.path.parent)
            os.close(fd)
            self.tmp = Path(tmp)
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the user's usual mode
        self.done = False

    def commit(self) -> Path:
        """Rename the temporary file or folder to ``path``; returns ``path``."""
        if self.done:
            return self.path
        if self.folder and self.path.exists():
            parent = self.path.parent if str(self.path.parent) else Path(".")
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=parent))
            os.replace(self.path, old / "x")
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        self.done = True
        return self.path

    def discard(self) -> None:
        """Remove what was written; ``path`` stays as it was."""
        if self.done:
            return
        self.done = True
        if self.folder:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                self.tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` when the block succeeds.

    On any exception the temporary file is removed and ``path`` is left as it was.
    ``suffix`` keeps an extension on the temporary name (some writers dispatch on it).
    """
    pending = PendingOutput(path, suffix=suffix)
    try:
        yield pending.tmp
        pending.commit()
    except BaseException:
        pending.discard()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder: built under a temporary name, then renamed.

    An existing folder at ``path`` is replaced only once the new one is complete.
    """
    pending = PendingOutput(path, folder=True)
    try:
        yield pending.tmp
        pending.commit()
    except BaseException:
        pending.discard()
        raise
