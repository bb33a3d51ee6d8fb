"""Image outputs, the choice of output by name, the checks made before a model loads, the window,
and the temporary-name writer under them (``mrcnn_edge.core.atomic``)."""
from __future__ import annotations

import errno

import cv2
import numpy as np
import pytest

from mrcnn_edge.core.atomic import PendingOutput, atomic_output
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.io import sinks
from mrcnn_edge.runtime.io.outputs import check_output, open_sink
from mrcnn_edge.runtime.io.sinks import ImageFileSink, ImageFolderSink, OutputError, WindowSink, window_unavailable
from mrcnn_edge.runtime.io.sources import ArraySource, Frame

from media_tools import hidden_leftovers


def _img(v=1):
    return np.full((4, 4, 3), v, np.uint8)


def test_image_folder_sink_and_single_image(tmp_path):
    folder = ImageFolderSink(tmp_path / "frames")
    folder.write(_img(), Frame(0, _img(), "a"))
    folder.write(_img(), Frame(1, _img(), "a"))  # same name from two folders: kept apart
    assert not (tmp_path / "frames").exists()  # under a hidden name until closed
    folder.close()
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["a.jpg", "a_000001.jpg"]
    assert folder.outputs() == [tmp_path / "frames"]
    single = ImageFileSink(tmp_path / "one.png")
    single.write(_img(9), Frame(0, _img(9), "x"))
    single.close()
    assert cv2.imread(str(tmp_path / "one.png"))[0, 0].tolist() == [9, 9, 9]
    assert hidden_leftovers(tmp_path) == []


def test_an_output_that_got_no_frame_leaves_nothing(tmp_path):
    for sink in (ImageFolderSink(tmp_path / "frames"), ImageFileSink(tmp_path / "one.png")):
        sink.close()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_image_write_is_one_line_and_keeps_the_images_before(tmp_path, monkeypatch):
    """Issue 18 item 3: a full disk made the image folder exit 2 and delete the frames already
    written. Now the failing write raises one line, its partial file goes, the others stay."""
    real_open, written = open, []

    def disk_fills_up(path, mode="r", *args, **kwargs):
        if "w" in mode and len(written) >= 2:
            partial = real_open(path, mode, *args, **kwargs)
            partial.close()  # created, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(sinks, "open", disk_fills_up, raising=False)
    folder = ImageFolderSink(tmp_path / "frames")
    folder.write(_img(), Frame(0, _img(), "a"))
    folder.write(_img(), Frame(1, _img(), "b"))
    with pytest.raises(OutputError, match=r"cannot write c.jpg into .*frames: the disk is full; the images written before are kept"):
        folder.write(_img(), Frame(2, _img(), "c"))
    folder.close()
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["a.jpg", "b.jpg"]


def test_open_sink_chooses_by_output_name(tmp_path):
    many = ArraySource([_img(), _img()])
    one = ArraySource([_img()])
    assert type(open_sink(tmp_path / "o.mp4", many)).__name__ == "VideoSink"
    assert isinstance(open_sink(tmp_path / "o.png", one), ImageFileSink)
    assert isinstance(open_sink(tmp_path / "dir", many), ImageFolderSink)
    with pytest.raises(UserError, match="is one image but the source has several frames"):
        open_sink(tmp_path / "o.jpg", many)
    with pytest.raises(UserError, match="don't know how to write"):
        open_sink(tmp_path / "o.xyz", many)


@pytest.mark.parametrize("name,segment,words", [
    ("blocker/o.mp4", None, "is a file, not a folder"),
    ("blocker/frames", None, "is a file, not a folder"),
    ("blocker", None, "exists and is not a folder"),
    ("o.xyz", None, "don't know how to write"),
    ("frames", 60.0, "--segment-minutes rotates video files"),
])
def test_outputs_that_cannot_work_are_refused_before_anything_is_written(tmp_path, name, segment, words):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(UserError, match=words):
        check_output(tmp_path / name, segment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_pending_output_commits_replaces_and_discards(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    pending = PendingOutput(target)
    pending.tmp.write_text("new")
    assert target.read_text() == "old"
    assert pending.commit() == target and target.read_text() == "new"
    pending.discard()  # after a commit: nothing to do, the output stays
    assert target.read_text() == "new"
    gone = PendingOutput(tmp_path / "gone.bin")
    gone.tmp.write_text("x")
    gone.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_output_still_removes_a_failed_artefact(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "model.onnx") as tmp:
            tmp.write_text("half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_window_needs_a_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    reason = window_unavailable()
    assert reason and ("no GUI support" in reason or "no display" in reason)
    with pytest.raises(UserError, match="--no-display"):
        WindowSink()
