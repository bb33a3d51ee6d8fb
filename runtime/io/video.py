"""The video output of ``mrcnn-edge run -o out.mp4``: a recorder that keeps what it wrote.

The writer is PyAV (FFmpeg's libraries), not OpenCV's ``VideoWriter``, because a recorder needs
three things the latter does not give:

- every write checked: ``VideoWriter.write`` returns nothing, so a full disk went unnoticed and the
  run reported success over an empty file; PyAV raises (``OSError`` with the errno) on the write
  that fails, and the run ends there with one line;
- real presentation times: ``VideoWriter`` writes every frame one ``1/fps`` after the previous
  one, so a live recording that drops frames plays too fast; here each frame carries its capture
  time (``Frame.time``) as its timestamp (on a ``1/fps`` grid, gaps allowed), so a 10-minute
  recording lasts 10 minutes;
- a file that is playable at every moment: ``.mp4``/``.mov``/``.m4v`` are written as fragmented
  MP4 (a fragment at each keyframe, a keyframe at least every second of the timeline), so the
  frames written before a full disk, a power cut or a kill stay decodable (a plain MP4 keeps its
  index at the end, written last); ``.mkv`` is Matroska, readable when cut short by design;
  ``.avi`` is MJPEG (each frame a picture, missing frames as empty chunks).

H.264 (libx264, ``veryfast``, ``zerolatency``: no frame is held back for look-ahead) for MP4/MOV/MKV,
MPEG-4 Part 2 where the FFmpeg has no H.264 encoder. PyAV is an optional dependency (the
``[video]`` extra, part of ``[opencv]``): the base install imports without it and a video output
without it is a one-line error naming the extra.

``segment_seconds`` rotates files as recorders do: ``out_000.mp4``, ``out_001.mp4``, ... each one
finished (trailer written, renamed into place) when the next starts, each starting at its own 0.
The numbers go on after the highest one already in the folder, so a restarted recorder (a service
after a lost camera) never replaces an earlier file.
Every file is written under a hidden temporary name and renamed into place when it is closed
(``mrcnn_edge.core.atomic.PendingOutput``); whatever ends the run, the frames written are kept.
"""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn_edge.core.atomic import PendingOutput
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.io.opencv import cv2
from mrcnn_edge.runtime.io.sinks import OutputError, Sink, describe_os_error
from mrcnn_edge.runtime.io.sources import Frame

__all__ = ["VideoSink", "CONTAINERS", "segment_name", "require_av"]

log = logging.getLogger(__name__)

AV_MISSING = "writing video needs PyAV: pip install 'mrcnn-edge[video]' (or write a folder of images)"

# suffix -> (FFmpeg muxer, encoders best first, muxer options)
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
CONTAINERS: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    ".mp4": ("mp4", ("libx264", "mpeg4"), _FRAGMENTED),
    ".m4v": ("mp4", ("libx264", "mpeg4"), _FRAGMENTED),
    ".mov": ("mov", ("libx264", "mpeg4"), _FRAGMENTED),
    ".mkv": ("matroska", ("libx264", "mpeg4"), {}),
    ".avi": ("avi", ("mjpeg",), {}),
}
KEYFRAME_EVERY_S = 1.0   # at most this much of the timeline in a fragment that a cut-off file can lose
DEFAULT_FPS = 30.0       # the timestamp grid when the source does not say its rate


def require_av() -> Any:
    """PyAV, or the one-line error that names the extra to install."""
    try:
        return importlib.import_module("av")
    except ImportError as exc:
        raise UserError(AV_MISSING) from exc


def segment_name(path: Path, index: int) -> Path:
    """``out.mp4`` -> ``out_000.mp4`` (the ``index``-th file of a rotated recording)."""
    return path.with_name(f"{path.stem}_{index:03d}{path.suffix}")


def next_segment_index(path: Path) -> int:
    """One past the highest ``out_NNN.mp4`` already beside ``path`` (0 when there is none)."""
    pattern = re.compile(rf"{re.escape(path.stem)}_(\d{{3,}}){re.escape(path.suffix)}")
    folder = path.parent if str(path.parent) else Path(".")
    found = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ()) if (m := pattern.fullmatch(p.name))]
    return max(found) + 1 if found else 0


@dataclass
class _Segment:
    """One open file of the recording."""

    pending: PendingOutput
    container: Any
    stream: Any
    t0: float                 # timeline seconds of its first frame
    last_pts: int = -1
    last_key_pts: int | None = None
    last_frame: Any = None    # the last picture written (PyAV's copy), shown again up to the next file
    frames: int = 0


class VideoSink(Sink):
    """Write frames to a video at their ``Frame.time`` (see the module docstring).

    ``fps``: the source's rate, the grid timestamps are rounded to (30 when unknown). A frame
    whose size differs from the first one's is resized to it.
    """

    def __init__(self, path: str | Path, fps: float | None = None, segment_seconds: float | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in CONTAINERS:
            raise UserError(f"cannot write video {self.path.name}: use {', '.join(CONTAINERS)}")
        self._av = require_av()
        self.format, self._codecs, self._options = CONTAINERS[suffix]
        rate = float(fps) if fps and 0 < fps < 1000 else DEFAULT_FPS
        self.rate = Fraction(rate).limit_denominator(1001)
        self.segment_seconds = float(segment_seconds) if segment_seconds else None
        self._first_index = next_segment_index(self.path) if self.segment_seconds else 0
        self.description = f"video {self.path}" + (
            f" in {self.segment_seconds / 60:g}-minute files {segment_name(self.path, self._first_index).name}, ..."
            if self.segment_seconds else "")
        self.frames = 0                 # written, all files
        self.files: list[Path] = []     # closed and in place
        self._seg: _Segment | None = None
        self._size: tuple[int, int] | None = None
        self._failed = False
        self._opened = 0                # files begun (one may have been discarded: no frame)

    # -- writing --------------------------------------------------------------------------------
    def write(self, image: np.ndarray, frame: Frame) -> bool:
        if self._failed:
            raise OutputError(f"{self.path.name} could not be written before")
        t = frame.time if frame.time is not None else frame.index / float(self.rate)
        if self._size is None:
            self._size = (image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        seg = self._seg
        # compared on the timestamp grid: 2.4 - 1.8 is 0.5999... in floats, and 6 ticks at 10 fps
        if seg is not None and self.segment_seconds and \
                round((t - seg.t0) * self.rate) >= round(self.segment_seconds * self.rate):
            self._close_segment(until=t)
            seg = None
        if seg is None:
            seg = self._seg = self._open_segment(t)
        # the capture time on the 1/rate grid; never two frames at one time (the muxer refuses),
        # a late one goes one tick later and the next ones catch up with their own times
        pts = max(int(round((t - seg.t0) * self.rate)), seg.last_pts + 1)
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        vf.pts = pts
        if seg.last_key_pts is None or (pts - seg.last_key_pts) >= KEYFRAME_EVERY_S * self.rate:
            vf.pict_type = self._av.video.frame.PictureType.I  # a new fragment starts here
            seg.last_key_pts = pts
        try:
            self._mux(seg, seg.stream.encode(vf))
        except (OSError, self._av.FFmpegError) as exc:
            self._failed = True
            raise OutputError(f"cannot write {self._name(seg)}: {describe_os_error(exc)}; what was recorded "
                              f"before is kept in it (up to the last {KEYFRAME_EVERY_S:g} s may be missing)") from exc
        seg.last_pts, seg.last_frame = pts, vf
        seg.frames += 1
        self.frames += 1
        return True

    def _mux(self, seg: _Segment, packets: Any) -> None:
        """The one place encoded packets reach the file (a test injects a full disk here)."""
        for packet in packets:
            seg.container.mux(packet)

    @staticmethod
    def _name(seg: _Segment) -> str:
        return seg.pending.path.name

    def _open_segment(self, t0: float) -> _Segment:
        path = segment_name(self.path, self._first_index + self._opened) if self.segment_seconds else self.path
        self._opened += 1
        try:  # a rotation can come with the disk already full: one line, like a failed write
            pending = PendingOutput(path)
        except OSError as exc:
            self._failed = True
            raise OutputError(f"cannot write {path.name}: {describe_os_error(exc)}") from exc
        try:
            container = self._av.open(str(pending.tmp), "w", format=self.format, options=dict(self._options))
            stream = self._add_stream(container)
        except (OSError, self._av.FFmpegError) as exc:
            pending.discard()
            self._failed = True
            raise OutputError(f"cannot write {path.name}: {describe_os_error(exc)}") from exc
        except BaseException:
            pending.discard()
            raise
        return _Segment(pending, container, stream, t0)

    def _add_stream(self, container: Any) -> Any:
        for codec in self._codecs:
            try:
                stream = container.add_stream(codec, rate=self.rate)
                break
            except (self._av.FFmpegError, ValueError):  # not in this FFmpeg build: the next one
                continue
        else:
            raise UserError(f"this FFmpeg has none of the encoders {', '.join(self._codecs)} for {self.path.name}; "
                            "try an .avi output")
        assert self._size is not None
        stream.width, stream.height = self._size
        stream.time_base = 1 / self.rate
        ctx = stream.codec_context
        ctx.gop_size = 10 ** 6  # keyframes come by time (write), not by frame count
        if codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
            ctx.qmin, ctx.qmax = 2, 5  # near OpenCV's MJPG quality; the default rate control blurs
        elif codec == "mpeg4":
            stream.pix_fmt = "yuv420p"
            ctx.qmin, ctx.qmax = 2, 5
        else:
            stream.pix_fmt = "yuv420p"
            ctx.options = {"preset": "veryfast", "tune": "zerolatency"}
        return stream

    # -- closing --------------------------------------------------------------------------------
    def _close_segment(self, until: float | None = None) -> None:
        """Flush the encoder, write the trailer and put the file in place; after a failed write
        (a full disk) the trailer may not fit: the fragments already written are kept as they are.

        ``until``: the timeline time the next file starts at. The last picture is shown again
        just before it, so that the files laid end to end last as long as the time they cover
        (otherwise each would end one frame after its last capture, short of the gap to the next)."""
        seg, self._seg = self._seg, None
        if seg is None:
            return
        try:
            if not self._failed and until is not None and seg.last_frame is not None:
                end = int(round((until - seg.t0) * self.rate)) - 1
                if end > seg.last_pts:
                    seg.last_frame.pts = end
                    seg.last_frame.pict_type = self._av.video.frame.PictureType.NONE
                    self._mux(seg, seg.stream.encode(seg.last_frame))
            if not self._failed:
                self._mux(seg, seg.stream.encode(None))
        except (OSError, self._av.FFmpegError) as exc:
            self._failed = True
            log.warning("could not finish %s (%s); the frames written before are kept",
                        seg.pending.path.name, describe_os_error(exc))
        finally:
            try:
                seg.container.close()
            except (OSError, self._av.FFmpegError) as exc:
                log.warning("could not finish %s (%s); the frames written before are kept",
                            seg.pending.path.name, describe_os_error(exc))
            if seg.frames:
                self.files.append(seg.pending.commit())
            else:
                seg.pending.discard()

    def close(self) -> None:
        """Finish the open file (whatever ended the run: what was written is kept); idempotent."""
        self._close_segment()

    def outputs(self) -> list[Path]:
        return list(self.files)
