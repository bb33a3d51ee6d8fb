"""The video output (runtime/io/video.py): frames written at their times, rotated files, every write
checked, what was written kept. What was written is read back by ffprobe (a reader other than ours)."""
from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.io.sinks import OutputError
from mrcnn_edge.runtime.io.sources import Frame
from mrcnn_edge.runtime.testing import moving_squares

from media_tools import hidden_leftovers, needs_ffmpeg, probe

pytest.importorskip("av", reason="needs PyAV (the [video] extra)")
from mrcnn_edge.runtime.io.video import VideoSink  # noqa: E402  (after the skip: it needs PyAV)

pytestmark = needs_ffmpeg
FRAMES = list(moving_squares(60, hw=(48, 64)))


def _write(sink: VideoSink, times: list[float]) -> None:
    for i, t in enumerate(times):
        img = FRAMES[i % len(FRAMES)]
        sink.write(img, Frame(i, img, f"f{i}", time=t))


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_frames_are_written_at_their_times_and_nothing_shows_before_close(tmp_path, suffix):
    """Issue 18 item 4: OpenCV's writer put every frame 1/fps after the previous one, so a live
    recording that dropped frames played too fast. Five frames over 2 s (gaps where the pipeline
    dropped) must play 2 s, not 0.5 s."""
    out = tmp_path / f"rec{suffix}"
    sink = VideoSink(out, fps=10)
    _write(sink, [100.0, 100.1, 100.5, 100.6, 102.0])
    assert not out.exists()  # under a hidden name until closed
    sink.close()
    got = probe(out)
    assert got.rc == 0 and got.frames == 5
    assert got.duration == pytest.approx(2.1, abs=0.15)  # last frame at 2.0 s, shown for 1/10 s
    assert sink.outputs() == [out] and hidden_leftovers(tmp_path) == []


def test_file_frames_keep_their_source_timeline(tmp_path):
    """Frames without a capture time (a file source stamps index / fps) keep the source's rate."""
    out = tmp_path / "f.mp4"
    sink = VideoSink(out, fps=20)
    for i in range(10):
        sink.write(FRAMES[i], Frame(i, FRAMES[i], f"f{i}"))
    sink.close()
    got = probe(out)
    assert got.frames == 10 and got.duration == pytest.approx(0.5, abs=0.06)


def test_segments_rotate_by_time_each_complete(tmp_path):
    out = tmp_path / "rec.mp4"
    sink = VideoSink(out, fps=10, segment_seconds=2.0)
    _write(sink, [5.0 + i / 10 for i in range(50)])  # 5 s at 10 fps
    done_before_close = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    sink.close()
    names = ["rec_000.mp4", "rec_001.mp4", "rec_002.mp4"]
    assert done_before_close == names[:2]  # a file is in place as soon as the next one starts
    assert sorted(p.name for p in tmp_path.iterdir()) == names and not out.exists()
    probes = [probe(tmp_path / n) for n in names]
    assert [p.frames for p in probes] == [20, 20, 10]
    assert [round(p.duration, 1) for p in probes] == [2.0, 2.0, 1.0]  # each starts at its own 0


def test_rotated_files_laid_end_to_end_last_the_time_they_cover(tmp_path):
    """Frames 0.3 s apart (a slow model) in 1 s files: each file shows its last picture again up to
    where the next file starts, so the files together last as long as the recording's time."""
    out = tmp_path / "rec.mp4"
    sink = VideoSink(out, fps=10, segment_seconds=1.0)
    times = [i * 0.3 for i in range(11)]  # 0 .. 3.0 s
    _write(sink, times)
    sink.close()
    probes = [probe(p) for p in sorted(tmp_path.iterdir())]
    assert len(probes) == 3
    assert [round(p.duration, 1) for p in probes[:-1]] == [1.2, 1.2]  # 0-1.2 s, 1.2-2.4 s
    assert sum(p.duration for p in probes) == pytest.approx(times[-1] - times[0] + 0.1, abs=0.01)


def test_a_restarted_recording_numbers_on_and_replaces_nothing(tmp_path):
    """A service restarted after a lost camera records again into the same name: its files follow
    the ones there (out_003 after out_002), none is replaced."""
    out = tmp_path / "rec.mp4"
    (tmp_path / "rec_002.mp4").write_bytes(b"an earlier recording")
    (tmp_path / "rec_x.mp4").write_bytes(b"not one of ours")
    sink = VideoSink(out, fps=10, segment_seconds=1.0)
    _write(sink, [i / 10 for i in range(15)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec_002.mp4", "rec_003.mp4", "rec_004.mp4", "rec_x.mp4"]
    assert (tmp_path / "rec_002.mp4").read_bytes() == b"an earlier recording"
    assert [probe(tmp_path / n).frames for n in ("rec_003.mp4", "rec_004.mp4")] == [10, 5]


def test_a_failed_write_keeps_what_was_written(tmp_path, monkeypatch):
    """A full disk injected where packets reach the file: the write raises one line, and closing
    still puts the file in place with the frames written before it playable."""
    out = tmp_path / "rec.mp4"
    sink = VideoSink(out, fps=10)
    mux, calls = sink._mux, []

    def full_after_a_while(seg, packets):
        calls.append(1)
        if len(calls) > 25:
            raise OSError(errno.ENOSPC, "No space left on device")
        mux(seg, packets)

    monkeypatch.setattr(sink, "_mux", full_after_a_while)
    with pytest.raises(OutputError, match="cannot write rec.mp4: the disk is full; what was recorded before is kept"):
        _write(sink, [i / 10 for i in range(40)])
    sink.close()
    got = probe(out)
    assert out.is_file() and hidden_leftovers(tmp_path) == []
    assert got.frames >= 10  # whole fragments (a keyframe a second: 10 frames each) before the failure


def test_a_rotation_onto_a_full_disk_is_one_line_and_keeps_the_files_before(tmp_path, monkeypatch):
    from mrcnn_edge.runtime.io import video

    real, made = video.PendingOutput, []

    def pending(path, *args, **kwargs):  # the second file cannot even be created
        if made:
            raise OSError(errno.ENOSPC, "No space left on device")
        made.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video, "PendingOutput", pending)
    sink = video.VideoSink(tmp_path / "rec.mp4", fps=10, segment_seconds=1.0)
    with pytest.raises(OutputError, match="cannot write rec_001.mp4: the disk is full"):
        _write(sink, [i / 10 for i in range(15)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec_000.mp4"] and probe(tmp_path / "rec_000.mp4").frames == 10


def test_no_frame_leaves_no_file(tmp_path):
    sink = VideoSink(tmp_path / "rec.mp4")
    sink.close()
    assert list(tmp_path.iterdir()) == [] and sink.outputs() == []


def test_frames_of_another_size_are_resized_to_the_first(tmp_path):
    out = tmp_path / "rec.avi"
    sink = VideoSink(out, fps=10)
    big = np.zeros((96, 128, 3), np.uint8)
    sink.write(FRAMES[0], Frame(0, FRAMES[0], "a", time=0.0))
    sink.write(big, Frame(1, big, "b", time=0.1))
    sink.close()
    assert probe(out).frames == 2


def test_the_base_install_imports_without_pyav_and_a_video_output_says_what_to_install(tmp_path):
    """PyAV is an extra: without it the runtime and its sinks still import, image outputs work, and a
    video output is one line naming the extra, before any model loads."""
    code = (
        "import sys; sys.modules['av'] = None\n"  # what an absent module looks like to import
        "from mrcnn_edge.core.errors import UserError\n"
        "from mrcnn_edge.runtime.io.outputs import check_output\n"
        f"check_output({str(tmp_path / 'frames')!r})\n"
        "try:\n"
        f"    check_output({str(tmp_path / 'o.mp4')!r})\n"
        "except UserError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "writing video needs PyAV: pip install 'mrcnn-edge[video]' (or write a folder of images)"


def test_an_unknown_video_suffix_is_refused():
    with pytest.raises(UserError, match="cannot write video x.wmv"):
        VideoSink("x.wmv")


def test_run_segment_minutes_rotates_the_recording(tmp_path, capsys):
    """``run --segment-minutes``: the file timeline (30 frames at 10 fps, 3 s) in 0.6 s files."""
    from mrcnn_edge.commands.cli import main
    from mrcnn_edge.runtime.testing import make_contract_model, write_video

    model = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    video = write_video(tmp_path / "in.avi", moving_squares(30, hw=(48, 64)), fps=10)
    out = tmp_path / "out" / "rec.mp4"
    assert main(["run", str(model), "--source", str(video), "-o", str(out), "--no-display", "-q",
                 "--segment-minutes", "0.01"]) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == [f"rec_{i:03d}.mp4" for i in range(5)]
    probes = [probe(out.parent / n) for n in names]
    assert [p.frames for p in probes] == [6] * 5 and all(p.duration == pytest.approx(0.6, abs=0.05) for p in probes)
    assert main(["run", str(model), "--source", str(video), "-o", str(tmp_path / "frames"), "--no-display",
                 "--segment-minutes", "1"]) == 2
    assert "--segment-minutes rotates video files" in capsys.readouterr().err
    assert not (tmp_path / "frames").exists()
