"""The contract's rules that several parts apply: the canvas rule and the in-graph feed rule."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.core.cliutil import parse_canvas
from mrcnn_edge.core.contract import canvas_problem, feed_mean_std
from mrcnn_edge.core.errors import UserError


@pytest.mark.parametrize("h, w, ok", [(32, 32, True), (512, 640, True), (64, 96, True), (500, 512, False),
                                      (512, 500, False), (0, 64, False), (-32, 64, False), (16, 32, False)])
def test_one_canvas_rule_for_the_command_line_and_the_exporter(h, w, ok):
    from mrcnn_edge.export.onnx_export import ExportOptions

    assert (canvas_problem(h, w) is None) == ok
    if ok:
        assert parse_canvas(f"{h}x{w}") == (h, w)
        ExportOptions(input_size=(h, w)).validate()
        return
    with pytest.raises(UserError, match="multiple"):
        ExportOptions(input_size=(h, w)).validate()
    if h > 0 and w > 0:  # "-32x64" is not HxW text at all
        with pytest.raises(UserError, match="multiple|at least"):
            parse_canvas(f"{h}x{w}")


def test_in_graph_models_are_fed_the_pixels_unchanged():
    """An in_graph model takes 0-255 RGB: the feed's x*mul + add must be x exactly, in float32."""
    from mrcnn_edge.runtime.preprocess import normalization

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mul, add = normalization(*feed_mean_std("in_graph", mean, std))
    assert mul.tolist() == [1.0, 1.0, 1.0] and add.tolist() == [0.0, 0.0, 0.0]
    pixels = np.arange(256, dtype=np.float32)
    assert np.array_equal(pixels * mul[0] + add[0], pixels)
    for external in ("external", None):  # the model's own normalisation
        assert feed_mean_std(external, mean, std) == (mean, std)
