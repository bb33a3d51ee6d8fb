"""validate's comparison at the ``max_detections`` cut: among detections whose scores tie at the
cut (e.g. saturated at 1.0), which ones make the top K is arbitrary. Such a swap is reported
apart as ``CUT_TIE``, not failed; a swap with a real score gap, or away from the cut, still fails."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.export.validate.compare import CUT_TIE, TOLERANCES, compare, format_pairs
from mrcnn_edge.runtime.postprocess import FrameRows

CANVAS = (64, 96)
K = 4
# Four well separated boxes (the kept rows) and a fifth: the candidate that lost the cut.
BOXES = [[2, 2, 12, 12], [20, 2, 30, 12], [40, 2, 50, 12], [60, 2, 70, 12], [2, 30, 12, 40]]


def _dets(rows: list[int], scores: list[float]) -> FrameRows:
    """Detections made of ``BOXES[rows]`` (class 1 each) with ``scores`` (descending), canvas pixels."""
    n = len(rows)
    boxes = np.asarray([BOXES[i] for i in rows], np.float32)
    return FrameRows(np.arange(n), boxes, boxes, np.asarray(scores, np.float32), np.ones(n, np.int32),
                     np.full((n, 4, 4), 0.9, np.float32))


def _swap_at_cut(last_ref: float, last_cand: float) -> tuple[FrameRows, FrameRows]:
    """Reference keeps boxes 0-3, the candidate keeps 0-2 and box 4 in the last row."""
    return _dets([0, 1, 2, 3], [1.0, 1.0, 1.0, last_ref]), _dets([0, 1, 2, 4], [1.0, 1.0, 1.0, last_cand])


def test_swap_at_the_cut_with_equal_scores_is_a_reported_tie_not_a_failure():
    ref, cand = _swap_at_cut(1.0, 1.0)
    res = compare([ref], [cand], TOLERANCES["fp32"], CANVAS, max_detections=K)
    assert (res.matched, res.unmatched_reference, res.unmatched_candidate) == (3, 1, 1)
    assert (res.cut_tie_reference, res.cut_tie_candidate) == (1, 1)
    assert res.ok, res.failures
    assert res.judged_matched_fraction == 1.0 and res.matched_fraction == pytest.approx(0.75)
    assert sorted((t.side, t.box[1]) for t in res.cut_ties) == [("candidate", 30.0), ("reference", 2.0)]
    text = "\n".join(format_pairs({"edge -> onnx": res}))
    assert f"2 unmatched detections are a {CUT_TIE}" in text and "(0/0; 1/1)" in text


def test_tie_within_the_fp16_score_tolerance_is_a_tie():
    ref, cand = _swap_at_cut(0.90, 0.89)  # 0.01 apart, fp16's score tolerance is 0.02
    res = compare([ref], [cand], TOLERANCES["fp16"], CANVAS, max_detections=K)
    assert (res.cut_tie_reference, res.cut_tie_candidate) == (1, 1) and res.ok, res.failures


@pytest.mark.parametrize("gap", [3e-4, 1e-2])
def test_swap_at_the_cut_with_a_score_gap_beyond_the_tolerance_fails(gap):
    ref, cand = _swap_at_cut(0.6, 0.6 - gap)  # fp32 score tolerance 1e-4
    res = compare([ref], [cand], TOLERANCES["fp32"], CANVAS, max_detections=K)
    assert res.cut_ties == [] and not res.ok
    assert "matched 0.750 < 1.0" in res.failures[0]


def test_swap_away_from_the_cut_fails():
    # row 1 differs: its scores are equal on both sides but far above the last kept score
    ref = _dets([0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6])
    cand = _dets([0, 4, 2, 3], [0.9, 0.8, 0.7, 0.6])
    res = compare([ref], [cand], TOLERANCES["fp32"], CANVAS, max_detections=K)
    assert res.cut_ties == [] and not res.ok and res.unmatched_reference == 1


@pytest.mark.parametrize("k", [None, K + 1])
def test_no_tie_without_full_outputs(k):
    """Unknown K, or outputs with a free row: nothing was cut, so the same swap is a real difference."""
    ref, cand = _swap_at_cut(1.0, 1.0)
    res = compare([ref], [cand], TOLERANCES["fp32"], CANVAS, max_detections=k)
    assert res.cut_ties == [] and not res.ok


def test_a_missing_detection_is_no_tie_when_the_other_output_has_room():
    """The reference is full, the candidate has a free row and lacks the reference's last row: not a tie."""
    ref = _dets([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])
    cand = _dets([0, 1, 2], [1.0, 1.0, 1.0])
    res = compare([ref], [cand], TOLERANCES["fp32"], CANVAS, max_detections=K)
    assert res.cut_ties == [] and not res.ok


def test_ties_that_are_most_of_the_detections_fail_as_nothing_compared():
    """Every score saturated near 1.0 (a random-weight ResNet-50 in fp16 did this): all K rows of
    both outputs lie within the score tolerance of the cut and none matches. Ties may excuse a swap
    at the cut; they may not turn a comparison of nothing into a pass."""
    ref = _dets([0, 1, 2, 3], [1.0, 0.999, 0.998, 0.995])
    cand = _dets([0, 1, 2, 3], [1.0, 0.999, 0.998, 0.995])
    cand.boxes[:] += np.float32([0, 4, 0, 4])  # every box 4 px lower: IoU 0.43, no match
    res = compare([ref], [cand], TOLERANCES["fp16"], CANVAS, max_detections=K)
    assert (res.matched, res.cut_tie_reference, res.cut_tie_candidate) == (0, 4, 4)
    assert res.judged_matched_fraction == 1.0  # what the ties alone would have said
    assert not res.ok and any("too little compared" in f for f in res.failures), res.failures
