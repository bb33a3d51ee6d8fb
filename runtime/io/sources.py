"""Frame sources: cameras, CSI sensors, streams, video files, images, folders and globs.

:func:`open_source` reads a source string (the CLI's ``--source``) through the :data:`SOURCE_KINDS`
table. Live sources (cameras, ``csi://``, ``rtsp://`` ...) reconnect when they stop delivering,
waiting ``backoff * 2**attempt`` seconds (capped) between tries, and give up after
``reconnect_tries`` by raising :class:`SourceLost` (a one-line error; the pipeline ends that source's
stream there and keeps what was recorded). Files never reconnect; an unreadable frame or image in
the middle is returned as a :class:`Frame` with ``image=None`` and a ``problem`` (the pipeline
warns and skips it).

A :class:`Frame` carries ``time``, its place on the source's timeline in seconds: sources may set it
(a capture clock); the pipeline stamps the ones left at None (live: when the read returned; files:
``index / fps``). Video outputs write frames at these times, so a live recording lasts as long as
the time it covers even when frames are dropped.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from mrcnn_edge.core.errors import UserError

__all__ = [
    "Frame", "Source", "SourceLost", "CaptureSource", "ImageSource", "ArraySource", "open_source", "check_source",
    "csi_pipeline", "parse_csi", "SOURCE_KINDS", "IMAGE_EXTS", "VIDEO_EXTS", "STREAM_SCHEMES",
    "OpenCVMissing", "OPENCV_MISSING", "PIP_OPENCV_DISTS",
]

from mrcnn_edge.runtime.io.opencv import OPENCV_MISSING, OpenCVMissing, cv2  # noqa: F401  (re-exported)

# pip distributions that install a ``cv2`` package; none of them is built with GStreamer
PIP_OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                    "opencv-contrib-python-headless")

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".h264", ".h265")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")


@dataclass
class Frame:
    index: int                   # position in the source, from 0
    image: np.ndarray | None     # as read (BGR uint8 usually); None when unreadable
    name: str                    # image stem or frame_000123 (image sinks use it)
    problem: str = ""            # why image is None
    time: float | None = None    # seconds on the source's timeline (see the module docstring)


class SourceLost(UserError):
    """A live source stopped delivering for good (its reconnect attempts ran out)."""


class Source:
    """Base: ``read()`` the next :class:`Frame` or None at the end; iterable; a context manager."""

    live: bool = False
    description: str = ""
    length: int | None = None    # frames, when known
    fps: float | None = None

    def read(self) -> Frame | None:
        raise NotImplementedError

    def interrupt(self) -> None:
        """Stop waiting (reconnect back-off) as soon as possible; safe from another thread."""

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CaptureSource(Source):
    """A ``cv2.VideoCapture``-like object from ``opener()`` (isOpened/read/get/release)."""

    MAX_SKIPPED_IN_A_ROW = 5

    def __init__(self, opener: Callable[[], Any], description: str, live: bool, reconnect_tries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 8.0) -> None:
        self.live, self.description = live, description
        self._opener, self._tries, self._backoff, self._max_backoff = opener, int(reconnect_tries), backoff, max_backoff
        self._stop = threading.Event()
        self._index = self._bad_in_a_row = 0
        self._cap = opener()
        if self._cap is None or not self._cap.isOpened():
            hint = ("is it connected, and not used by another program?" if live and "stream" not in description
                    else "check the URL and the network" if live else "is it a video OpenCV can decode?")
            raise UserError(f"cannot open {description}: {hint}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if 0 < fps < 1000 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = count if not live and count > 0 else None

    def _frame(self, image: np.ndarray) -> Frame:
        frame = Frame(self._index, image, f"frame_{self._index:06d}")
        self._index += 1
        return frame

    def read(self) -> Frame | None:
        if self._stop.is_set():
            return None
        ok, image = self._cap.read()
        if ok and image is not None and image.size:
            self._bad_in_a_row = 0
            return self._frame(image)
        if self.live:
            return self._reconnect()
        # a failed read before the known end of a file is a corrupt frame: report it and go on,
        # unless it keeps happening (a truncated file whose header promised more frames)
        self._bad_in_a_row += 1
        if self.length is None or self._index >= self.length or self._bad_in_a_row > self.MAX_SKIPPED_IN_A_ROW:
            return None
        bad = Frame(self._index, None, f"frame_{self._index:06d}", "unreadable frame (corrupt or truncated)")
        self._index += 1
        return bad

    def _reconnect(self) -> Frame | None:
        for attempt in range(1, self._tries + 1):
            delay = min(self._backoff * 2 ** (attempt - 1), self._max_backoff)
            log.warning("%s stopped delivering frames; reconnecting in %.1f s (attempt %d of %d)",
                        self.description, delay, attempt, self._tries)
            if self._stop.wait(delay):
                return None
            try:
                self._cap.release()
            except Exception:  # noqa: BLE001 - a dead capture may fail to release; reopen anyway
                pass
            self._cap = self._opener()
            if self._cap is not None and self._cap.isOpened():
                ok, image = self._cap.read()
                if ok and image is not None and image.size:
                    log.warning("%s: reconnected", self.description)
                    return self._frame(image)
        raise SourceLost(f"lost {self.description}: no frames after {self._tries} reconnect attempts; "
                         "check the camera, cable or network")

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageSource(Source):
    """Image files, in the given order; an unreadable one becomes a ``Frame`` with ``image=None``."""

    def __init__(self, paths: Sequence[Path], description: str) -> None:
        self._paths, self.description, self.length, self._i = list(paths), description, len(paths), 0

    def read(self) -> Frame | None:
        if self._i >= len(self._paths):
            return None
        path, index = self._paths[self._i], self._i
        self._i += 1
        # UNCHANGED keeps gray, alpha and 16 bits: Segmenter converts them (frames.as_bgr8)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            return Frame(index, None, path.stem, f"cannot read image {path.name}")
        return Frame(index, image, path.stem)


class ArraySource(Source):
    """Frames from any iterable of arrays (the Python API, tests)."""

    def __init__(self, frames: Iterable[Any], live: bool = False, description: str = "frames") -> None:
        self._it, self.live, self.description, self._i = iter(frames), live, description, 0
        self.length = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]

    def read(self) -> Frame | None:
        try:
            image = next(self._it)
        except StopIteration:
            return None
        self._i += 1
        if image is None:
            return Frame(self._i - 1, None, f"frame_{self._i - 1:06d}", "no frame")
        return Frame(self._i - 1, image, f"frame_{self._i - 1:06d}")


# -- CSI (Jetson nvarguscamerasrc) ---------------------------------------------------------------
_CSI_LIMITS = {"sensor_id": (0, 15), "width": (16, 8192), "height": (16, 8192), "fps": (1, 240),
               "flip": (0, 7), "out_width": (16, 8192), "out_height": (16, 8192)}


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0,
                 out_width: int | None = None, out_height: int | None = None) -> str:
    """GStreamer pipeline for a Jetson CSI camera, built from checked integers only."""
    values = {"sensor_id": sensor_id, "width": width, "height": height, "fps": fps, "flip": flip,
              "out_width": width if out_width is None else out_width,
              "out_height": height if out_height is None else out_height}
    for key, value in values.items():
        lo, hi = _CSI_LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise UserError(f"csi camera: {key} must be an integer in {lo}..{hi}, got {value!r}")
    v = {k: int(x) for k, x in values.items()}
    return (
        f"nvarguscamerasrc sensor-id={v['sensor_id']} ! "
        f"video/x-raw(memory:NVMM), width=(int){v['width']}, height=(int){v['height']}, "
        f"framerate=(fraction){v['fps']}/1, format=(string)NV12 ! "
        f"nvvidconv flip-method={v['flip']} ! "
        f"video/x-raw, width=(int){v['out_width']}, height=(int){v['out_height']}, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def parse_csi(spec: str) -> dict[str, int]:
    """``csi://0?width=1920&height=1080&fps=30&flip=2`` -> keyword arguments of :func:`csi_pipeline`."""
    parts = urlsplit(spec)
    sensor = parts.netloc or parts.path.lstrip("/")
    if not sensor.isdigit():
        raise UserError(f"csi source must look like csi://0 (sensor id), got {spec!r}")
    args = {"sensor_id": int(sensor)}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.replace("-", "_")
        if key not in _CSI_LIMITS or key == "sensor_id":
            raise UserError(f"csi source: unknown option {key!r}; use width, height, fps, flip, out_width, out_height")
        if not re.fullmatch(r"\d{1,5}", value):
            raise UserError(f"csi source: {key} must be a whole number, got {value!r}")
        args[key] = int(value)
    csi_pipeline(**args)  # validates
    return args


def _has_gstreamer() -> bool:
    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


def _installed_pip_opencv() -> list[str]:
    """The pip OpenCV distributions installed where this interpreter looks (they shadow JetPack's cv2)."""
    from importlib import metadata

    found = []
    for name in PIP_OPENCV_DISTS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def _no_gstreamer_message() -> str:
    """One line: why csi:// cannot work with this OpenCV and the exact commands that fix it."""
    where = f"OpenCV {cv2.__version__} from {Path(cv2.__file__).parent}"
    pip_dists = _installed_pip_opencv()
    if pip_dists:
        return (f"csi:// cameras need an OpenCV built with GStreamer, and {where} (pip's "
                f"{', '.join(pip_dists)}) has none: run 'pip uninstall -y {' '.join(pip_dists)}' so that "
                "JetPack's OpenCV is used (sudo apt install nvidia-opencv; the venv must be made with "
                "--system-site-packages)")
    return (f"csi:// cameras need an OpenCV built with GStreamer, and {where} has none: on a Jetson "
            "install JetPack's (sudo apt install nvidia-opencv), elsewhere build OpenCV with -DWITH_GSTREAMER=ON")


# -- the table --------------------------------------------------------------------------------
def _camera(spec: str, capture: Callable[..., Any], tries: int) -> Source:
    if spec.startswith("/dev/"):
        if not os.path.exists(spec):
            raise UserError(f"camera {spec} not found (is it plugged in? see 'ls /dev/video*')")
        return CaptureSource(lambda: capture(spec, cv2.CAP_V4L2), f"camera {spec}", True, tries)
    index = int(spec)
    return CaptureSource(lambda: capture(index), f"camera {index}", True, tries)


def _csi(spec: str, capture: Callable[..., Any], tries: int) -> Source:
    pipeline = csi_pipeline(**parse_csi(spec))
    if capture is cv2.VideoCapture and not _has_gstreamer():
        raise UserError(_no_gstreamer_message())
    return CaptureSource(lambda: capture(pipeline, cv2.CAP_GSTREAMER), f"CSI camera {spec}", True, tries)


def _stream(spec: str, capture: Callable[..., Any], tries: int) -> Source:
    params: list[int] = []
    for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
        if hasattr(cv2, name):
            params += [getattr(cv2, name), 10000]
    shown = re.sub(r"//[^/@]*@", "//***@", spec)  # no credentials in messages
    return CaptureSource(lambda: capture(spec, cv2.CAP_FFMPEG, params), f"stream {shown}", True, tries)


def _video(spec: str, capture: Callable[..., Any], tries: int) -> Source:
    return CaptureSource(lambda: capture(spec), f"video {spec}", False)


def _images(spec: str, capture: Callable[..., Any], tries: int) -> Source:
    path = Path(spec)
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=_natural)
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
        return ImageSource(files, f"{len(files)} images in {path}")
    if path.is_file():
        return ImageSource([path], f"image {path}")
    files = sorted((Path(p) for p in glob.glob(spec, recursive=True) if Path(p).suffix.lower() in IMAGE_EXTS),
                   key=_natural)
    if not files:
        raise UserError(f"no images match {spec!r}")
    return ImageSource(files, f"{len(files)} images matching {spec}")


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]


def _kind(spec: str) -> str:
    if re.fullmatch(r"\d+", spec) or re.fullmatch(r"/dev/video\d+", spec):
        return "camera"
    scheme = urlsplit(spec).scheme.lower()
    if scheme == "csi":
        return "csi"
    if scheme in STREAM_SCHEMES:
        return "stream"
    path = Path(spec)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_EXTS) or glob.has_magic(spec):
        return "images"
    if path.is_file():
        return "video"
    raise UserError(
        f"source {spec!r} not found: give a camera index, /dev/videoN, csi://N, rtsp://..., "
        "a video or image file, a folder of images or a glob"
    )


# kind -> opener(spec, capture factory, reconnect tries)
SOURCE_KINDS: dict[str, Callable[[str, Callable[..., Any], int], Source]] = {
    "camera": _camera, "csi": _csi, "stream": _stream, "video": _video, "images": _images,
}


def check_source(spec: str | int) -> str:
    """The kind of ``spec`` (a key of :data:`SOURCE_KINDS`), after every check that needs no device.

    Raises :class:`UserError` for what is wrong before anything is opened: an empty or unknown
    source, bad ``csi://`` options, a ``csi://`` camera with an OpenCV that has no GStreamer. The
    CLI calls it before loading a model, which can take a minute for an engine.
    """
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty --source")
    kind = _kind(spec)
    if kind == "csi":
        parse_csi(spec)
        if not _has_gstreamer():
            raise UserError(_no_gstreamer_message())
    return kind


def open_source(spec: str | int, reconnect_tries: int = 5, capture: Callable[..., Any] = cv2.VideoCapture) -> Source:
    """Open ``spec`` (see the module docstring); ``capture`` replaces ``cv2.VideoCapture`` (tests)."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty --source")
    return SOURCE_KINDS[_kind(spec)](spec, capture, int(reconnect_tries))
