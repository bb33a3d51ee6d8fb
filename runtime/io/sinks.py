"""Where rendered frames go: a window, a video file, an image folder or one image file.

File outputs are written under a hidden temporary name and renamed into place by ``close()``
(``mrcnn_edge.core.atomic.PendingOutput``). ``close()`` keeps whatever was written, however the
run ended (an error, a lost camera, a signal): a recording is the user's data. Only an output that
received no frame is removed. Every write is checked: a failure (a full disk) raises
:class:`~mrcnn_edge.runtime.io.video.OutputError`, one line, and the frames before it stay.
Videos: :mod:`mrcnn_edge.runtime.io.video` (PyAV, real timestamps, rotation); the choice of
output by its name: :mod:`mrcnn_edge.runtime.io.outputs`.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

from mrcnn_edge.core.atomic import PendingOutput
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.io.opencv import cv2
from mrcnn_edge.runtime.io.sources import Frame

__all__ = ["Sink", "WindowSink", "ImageFolderSink", "ImageFileSink", "OutputError", "window_unavailable",
           "describe_os_error"]

log = logging.getLogger(__name__)


class OutputError(UserError):
    """An output could not be written (a full disk, a removed folder): the run ends, what was written is kept."""


def describe_os_error(exc: BaseException) -> str:
    """A full disk said plainly; other OS errors by their own words."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return getattr(exc, "strerror", None) or str(exc)


class Sink:
    """``write(image, frame) -> bool`` (False: the user asked to stop); ``close()`` keeps what was written."""

    description = ""

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def outputs(self) -> list[Path]:
        """The files or folders it put in place (after ``close``)."""
        return []


def window_unavailable() -> str | None:
    """Why ``cv2.imshow`` cannot work here, or None when it can."""
    if re.search(r"GUI:\s*NONE", cv2.getBuildInformation()):
        return "this OpenCV has no GUI support (opencv-python-headless); pip install opencv-python"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set: a headless machine or an SSH session without -X)"
    return None


class WindowSink(Sink):
    """An OpenCV window; q or Esc (or closing the window) stops the run."""

    def __init__(self, title: str = "mrcnn-edge") -> None:
        reason = window_unavailable()
        if reason:
            raise UserError(f"cannot open a window: {reason}; pass --no-display (and --output OUT to save)")
        self.title = self.description = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise UserError(f"cannot open a window: {str(exc).strip().splitlines()[-1]}; pass --no-display") from exc

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        return key not in (ord("q"), 27) and visible

    def close(self) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)


def _write_image(path: Path, image: np.ndarray, shown: str) -> None:
    """Encode in memory and write with checked calls: ``cv2.imwrite`` can report success over a
    file the disk had no room for. A partial file is removed."""
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise OutputError(f"cannot encode {shown} as {path.suffix}")
    try:
        with open(path, "wb") as f:
            f.write(data.tobytes())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise OutputError(f"cannot write {shown}: {describe_os_error(exc)}; the images written before are kept") from exc


class _PendingImageSink(Sink):
    """An image output that appears only once it holds a frame (``PendingOutput``: committed on
    close, discarded when nothing was written)."""

    path: Path
    frames: int
    _pending: PendingOutput

    def close(self) -> None:
        if self.frames:
            self._pending.commit()
        else:
            self._pending.discard()

    def outputs(self) -> list[Path]:
        return [self.path] if self._pending.done and self.frames else []


class ImageFolderSink(_PendingImageSink):
    def __init__(self, path: str | Path, ext: str = ".jpg") -> None:
        self.path, self.ext = Path(path), ext
        self.description = f"images in {self.path}/"
        self._pending = PendingOutput(self.path, folder=True)
        self._names: set[str] = set()
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        name = frame.name if frame.name not in self._names else f"{frame.name}_{frame.index:06d}"
        self._names.add(name)
        _write_image(self._pending.tmp / f"{name}{self.ext}", image, f"{name}{self.ext} into {self.path}")
        self.frames += 1
        return True


class ImageFileSink(_PendingImageSink):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"image {self.path}"
        self._pending = PendingOutput(self.path)
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        if self.frames:
            raise UserError(f"output {self.path.name} is one image but the source gave several frames")
        _write_image(self._pending.tmp, image, f"image {self.path}")
        self.frames += 1
        return True

