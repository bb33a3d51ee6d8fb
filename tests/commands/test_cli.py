"""The command line as a whole: usage errors are one line like every other error."""
from __future__ import annotations

import pytest

from mrcnn_edge.commands.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synth", "--out", "x", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["synth"], "the following arguments are required: --out"),
        (["synth", "--out", "x", "--images", "two"], "argument --images: 'two' is not an integer"),
        (["synth-video", "--out", "x.mp4", "--fps", "nan"], "argument --fps: 'nan' is not a finite number"),
        (["benchmark", "--warmup", "-1"], "argument --warmup: must be 0 or more, got -1"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        (["export", "m.pth", "-o", "m.onnx", "--mask-head", "detections"], "use it with --flavor portable"),
        (["export", "m.pth", "-o", "m.onnx", "--flavor", "plain"], "argument --flavor: invalid choice: 'plain'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrcnn-edge: error: "), err
    assert message in lines[0]
    assert "usage:" not in err and out == ""
    assert list(tmp_path.iterdir()) == []
