"""The one run assembly (runtime/run.py): N sources each into its outputs, what ends a run, exit codes.

Sources are stand-ins here (``open_source`` replaced) so that each case is exact and takes a second;
tests/runtime/io/test_recorder.py runs the same cases against ffmpeg, signals to a child process and
a full tmpfs.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.io import sources
from mrcnn_edge.runtime.io.sources import ArraySource
from mrcnn_edge.runtime.run import EXIT_SOURCE_LOST, RunOptions, StopSignals, exit_code, run_sources
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp("run") / "model.onnx", mask_size=14)


def _frames(n, every=0.005, then=None):
    for i in range(n):
        time.sleep(every)
        yield np.full((48, 64, 3), i % 250, np.uint8)
    if then is not None:
        raise then


@pytest.fixture
def stand_in_sources(monkeypatch):
    """``spec -> factory of an ArraySource``; run_sources opens them by their spec."""
    table = {}
    monkeypatch.setattr(sources, "open_source", lambda spec, **kw: table[spec]())
    return table


def _segmenter(stack, model):
    return stack.enter_context(Segmenter.from_path(model))


def test_a_lost_source_ends_alone_and_the_others_go_on(model, stand_in_sources, tmp_path):
    """Issue 18 item 1: with several --source one lost camera stopped the others and deleted the
    recordings. Now only its stream ends; every output is kept; the run exits 3."""
    lost = sources.SourceLost("lost stream rtsp://a: no frames after 5 reconnect attempts; check the network")
    # frames slower than the model: none dropped, so the counts are exact
    stand_in_sources["rtsp://a"] = lambda: ArraySource(_frames(3, every=0.05, then=lost), live=True)
    stand_in_sources["rtsp://b"] = lambda: ArraySource(_frames(40, every=0.02), live=True)
    outs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with contextlib.ExitStack() as stack:
        runs = run_sources(_segmenter(stack, model), ["rtsp://a", "rtsp://b"], outs)
    a, b = runs
    assert a.stats.lost.startswith("lost stream rtsp://a") and a.stats.frames == 3
    assert not b.stats.lost and b.stats.frames > 20  # went on long after a was lost (3 x 0.05 s)
    assert len(list((tmp_path / "a").iterdir())) == 3 and len(list((tmp_path / "b").iterdir())) == b.stats.frames
    assert a.outputs == [tmp_path / "a"] and b.outputs == [tmp_path / "b"]
    assert exit_code(runs, StopSignals()) == EXIT_SOURCE_LOST == 3


def test_an_error_in_one_source_stops_all_and_keeps_every_output(model, stand_in_sources, tmp_path):
    stand_in_sources["a"] = lambda: ArraySource(_frames(3, every=0.05, then=RuntimeError("decoder crashed")), live=True)
    stand_in_sources["b"] = lambda: ArraySource(_frames(2000, every=0.01), live=True)
    outs = [str(tmp_path / "a"), str(tmp_path / "b")]
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack, pytest.raises(RuntimeError, match="decoder crashed"):
        run_sources(_segmenter(stack, model), ["a", "b"], outs)
    assert time.monotonic() - t0 < 10  # b (20 s of frames) was stopped
    # an error stops at once (frames in flight are not finished), what was written stays
    assert len(list((tmp_path / "a").iterdir())) >= 1 and len(list((tmp_path / "b").iterdir())) > 0


@pytest.mark.parametrize("signals,code", [(("SIGTERM",), 143), (("SIGHUP",), 129), (("SIGINT", "SIGINT"), 130)])
def test_signals_stop_like_ctrl_c_and_keep_the_output(model, stand_in_sources, tmp_path, signals, code):
    """Issue 18 item 2: SIGTERM killed the run at once (no output, a .part left) and a second
    Ctrl-C deleted the output. Now any of them stops the run; a second one skips the frames in
    flight, never the closing of the output; the exit code is 128 + the first signal."""
    sent = []

    def frames():
        for i in range(500):
            time.sleep(0.005)
            if i == 20 and not sent:
                for name in signals:  # delivered to this (the main) thread, as a service manager does
                    sent.append(name)
                    os.kill(os.getpid(), getattr(signal, name))
            yield np.full((48, 64, 3), i % 250, np.uint8)

    stand_in_sources["cam"] = lambda: ArraySource(frames(), live=True)
    with contextlib.ExitStack() as stack:
        segmenter = _segmenter(stack, model)
        with StopSignals() as stopper:
            runs = run_sources(segmenter, ["cam"], [str(tmp_path / "rec")], RunOptions(), stopper)
    (run,) = runs
    assert run.stats.interrupted and 0 < run.stats.frames < 100
    assert len(list((tmp_path / "rec").iterdir())) == run.stats.frames
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]  # nothing left beside it
    assert exit_code(runs, stopper) == code
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_a_source_that_gave_nothing_is_the_error_line(model, stand_in_sources):
    stand_in_sources["empty"] = lambda: ArraySource([None, None])
    with contextlib.ExitStack() as stack:
        runs = run_sources(_segmenter(stack, model), ["empty"])
    with pytest.raises(UserError, match=r"no frame of empty could be processed \(2 skipped\)"):
        exit_code(runs, StopSignals())


def test_several_sources_refuse_a_window(model):
    with contextlib.ExitStack() as stack, pytest.raises(UserError, match="several --source run without a window"):
        run_sources(_segmenter(stack, model), ["a", "b"], options=RunOptions(window=True))


def test_a_lost_rotated_recording_names_its_first_and_last_file(model, stand_in_sources, tmp_path, caplog):
    """A service recording in rotated files for a day has 144 of them: the warning names the first
    and the last, and how many, instead of every name."""
    pytest.importorskip("av", reason="needs PyAV (the [video] extra)")
    lost = sources.SourceLost("lost camera 0: no frames after 5 reconnect attempts; check the camera")
    stand_in_sources["0"] = lambda: ArraySource(_frames(12, every=0.05, then=lost), live=True)
    with contextlib.ExitStack() as stack:
        runs = run_sources(_segmenter(stack, model), ["0"], [str(tmp_path / "rec.mp4")],
                           RunOptions(segment_seconds=0.1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) >= 4 and [p.name for p in runs[0].outputs] == names
    assert exit_code(runs, StopSignals()) == EXIT_SOURCE_LOST
    assert f"0 was lost; what it recorded is kept in {names[0]} ... {names[-1]} ({len(names)} files) (exit 3)" in caplog.text
