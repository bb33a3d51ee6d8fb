"""The output a name asks for: ``out.mp4`` a video, ``out.jpg`` one image, anything else a folder of
images. :func:`check_output` refuses what cannot work before a model loads; :func:`open_sink` opens it.
"""
from __future__ import annotations

from pathlib import Path

from mrcnn_edge.core.atomic import check_writable, check_writable_folder
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.io.sinks import ImageFileSink, ImageFolderSink, Sink
from mrcnn_edge.runtime.io.sources import IMAGE_EXTS, Source
from mrcnn_edge.runtime.io.video import CONTAINERS, VideoSink, require_av, segment_name

__all__ = ["open_sink", "check_output"]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CONTAINERS:
        return "video"
    if suffix in IMAGE_EXTS:
        return "image"
    if suffix and not path.is_dir():
        raise UserError(f"don't know how to write {path.name}: give a video ({', '.join(CONTAINERS)}), "
                        "an image or a folder")
    return "folder"


def check_output(output: str | Path, segment_seconds: float | None = None) -> None:
    """What :func:`open_sink` would refuse, found before the model loads (a Jetson engine takes a
    minute): an unknown suffix, a folder that cannot be written, PyAV missing for a video."""
    path = Path(output)
    kind = _kind(path)
    if segment_seconds and kind != "video":
        raise UserError(f"--segment-minutes rotates video files; {path.name} is not one ({', '.join(CONTAINERS)})")
    if kind == "folder":
        check_writable_folder(path)
        return
    check_writable(segment_name(path, 0) if segment_seconds else path)
    if kind == "video":
        require_av()


def open_sink(output: str | Path, source: Source, segment_seconds: float | None = None) -> Sink:
    """``.mp4``/``.avi``/... -> video (``segment_seconds``: rotated files); ``.jpg``/``.png``/... ->
    one image (single-image sources); anything else (a folder, existing or not) -> one image per frame."""
    path = Path(output)
    check_output(path, segment_seconds)
    kind = _kind(path)
    if kind == "video":
        return VideoSink(path, source.fps, segment_seconds)
    if kind == "image":
        if source.length != 1:
            raise UserError(f"output {path.name} is one image but the source has several frames: "
                            "give a folder or a video file (.mp4, .avi)")
        return ImageFileSink(path)
    return ImageFolderSink(path)
