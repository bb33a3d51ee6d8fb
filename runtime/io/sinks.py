"""Where rendered frames go: a window, a video file, an image folder or one image file.

File outputs are atomic (``mrcnn_edge.core.atomic``): they are written under a temporary name and
renamed into place by ``close(ok=True)``; ``close(ok=False)`` (an error) leaves nothing behind.
A video keeps the size of its first frame (later frames of another size are resized).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn_edge.core.atomic import atomic_dir, atomic_output
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.io.opencv import cv2
from mrcnn_edge.runtime.io.sources import IMAGE_EXTS, VIDEO_EXTS, Frame, Source

__all__ = ["Sink", "WindowSink", "VideoSink", "ImageFolderSink", "ImageFileSink", "open_sink", "window_unavailable"]

log = logging.getLogger(__name__)


class Sink:
    """``write(image, frame) -> bool`` (False: the user asked to stop); ``close(ok)``."""

    description = ""

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        pass


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

    def close(self, ok: bool = True) -> None:
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)


class _Atomic(Sink):
    """Keeps an ``atomic_output``/``atomic_dir`` open for the sink's lifetime."""

    def _open(self, cm: Any) -> Path:
        self._cm = cm
        return cm.__enter__()

    def _finish(self, ok: bool) -> None:
        cm, self._cm = getattr(self, "_cm", None), None
        if cm is None:
            return
        if ok:
            cm.__exit__(None, None, None)
        else:
            err = RuntimeError("aborted")
            cm.__exit__(RuntimeError, err, None)


class VideoSink(_Atomic):
    FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise UserError(f"cannot write video {self.path.name}: use .mp4, .avi, .mkv, .mov or .m4v")
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.description = f"video {self.path}"
        self._tmp = self._open(atomic_output(self.path))
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise UserError(f"OpenCV cannot write {self.path.name} (no encoder for it here); try an .avi output")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1
        return True

    def close(self, ok: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if ok and not self.frames:
            log.warning("no frames were written; %s not created", self.path)
            ok = False
        self._finish(ok)


class ImageFolderSink(_Atomic):
    def __init__(self, path: str | Path, ext: str = ".jpg") -> None:
        self.path, self.ext = Path(path), ext
        self.description = f"images in {self.path}/"
        self._tmp = self._open(atomic_dir(self.path))
        self._names: set[str] = set()
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        name = frame.name if frame.name not in self._names else f"{frame.name}_{frame.index:06d}"
        self._names.add(name)
        if not cv2.imwrite(str(self._tmp / f"{name}{self.ext}"), image):
            raise UserError(f"cannot write {name}{self.ext} into {self.path}")
        self.frames += 1
        return True

    def close(self, ok: bool = True) -> None:
        self._finish(ok)


class ImageFileSink(_Atomic):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"image {self.path}"
        self._tmp = self._open(atomic_output(self.path))
        self.frames = 0

    def write(self, image: np.ndarray, frame: Frame) -> bool:
        if self.frames:
            raise UserError(f"output {self.path.name} is one image but the source gave several frames")
        if not cv2.imwrite(str(self._tmp), image):
            raise UserError(f"cannot write image {self.path}")
        self.frames += 1
        return True

    def close(self, ok: bool = True) -> None:
        self._finish(ok and self.frames > 0)


def open_sink(output: str | Path, source: Source) -> Sink:
    """``.mp4``/``.avi``/... -> video; ``.jpg``/``.png``/... -> one image (single-image sources);
    anything else (a folder, existing or not) -> one image per frame."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTS:
        return VideoSink(path, source.fps)
    if suffix in IMAGE_EXTS:
        if source.length != 1:
            raise UserError(f"output {path.name} is one image but the source has several frames: "
                            "give a folder or a video file (.mp4, .avi)")
        return ImageFileSink(path)
    if suffix and not path.is_dir():
        raise UserError(f"don't know how to write {path.name}: give a video (.mp4, .avi), an image or a folder")
    return ImageFolderSink(path)
