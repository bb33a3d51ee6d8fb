"""Comparing two runners' detections: matching, per-output statistics, verdicts, the report's tables.

Per pair of runners, each image's detections (:class:`~mrcnn_edge.runtime.postprocess.FrameRows`
in canvas pixels) are matched one to one (same class, box IoU), the differences of matched pairs
are summarised (max, mean, p99) and judged against a stated tolerance, and the tolerance is
printed beside the numbers.

A tolerance is a small dict of numbers (printed as ``key=value``):

* ``min_score``: reference detections below it are not matched (candidates of any score may match);
* ``iou``: box IoU for a match; ``matched_frac``: matched share of judged reference detections
  (1.0 also demands one-to-one: as many candidate as reference detections);
* ``box`` / ``score`` / ``mask`` (max) and ``box_p99`` / ``score_p99`` / ``mask_p99`` (p99 of the
  per-detection max absolute difference: pixels, score, mask probability);
* ``mask_iou``: mean IoU of the matched pairs' pasted masks;
* ``edge_clip_exempt``: unmatched detections explained by the clip-to-canvas difference do not count;
* ``cut_tie`` (else ``score``): unmatched detections of two full outputs (``max_detections`` rows)
  scoring within it of both lowest kept scores are a tie at the cut: reported, not counted, unless
  they are most of the reference's detections (then too little was compared, and that fails);
* ``ap_drop``: with annotations, how much lower the candidate's mask AP may be than the reference's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mrcnn_edge.runtime.postprocess import FrameRows, paste_masks

__all__ = ["Stats", "ClipDifference", "CutTie", "Comparison", "AP", "TOLERANCES", "tolerance_for", "match",
           "compare", "judge_ap", "EDGE_CLIP", "CUT_TIE", "format_pairs", "format_ap", "as_json"]

EDGE_CLIP = "edge clip (canvas vs image)"
CUT_TIE = "tie at the max_detections cut"

# One table: which tolerance judges which pair. Keys "fp32", "fp16", "int8" judge an exported model
# of that precision against the float32 edge graph (the model as exported, before any rounding).
TOLERANCES: dict[str, dict[str, float]] = {
    # edge_clip_exempt: unmatched detections at the image region's border are the documented
    # clip-to-canvas difference (edge.py); reported, not failed
    # cut_tie: no score tolerance here, and the two float32 runs agree on scores far closer than the
    # fp32 export's score bound: the same band decides which detections tie at the cut
    "torchvision->edge": {"min_score": 0.3, "iou": 0.98, "matched_frac": 0.99, "mask_iou": 0.98, "edge_clip_exempt": 1,
                          "cut_tie": 1e-4},
    # Masks: two correct float32 evaluations differ by rounding that grows with depth and activation
    # size (torch vs ONNX Runtime on ResNet-50-FPN at 800x1344: max 5e-3 in one pixel, p99 of the
    # per-mask max 1.2e-3, mean 2e-4, mask IoU mean 0.9996). Judged on the p99 of the per-mask max,
    # a loose max that still stops a wrong level or weight (which move whole masks: > 0.05), and
    # mask IoU (a pasted mask only flips where a probability sits within rounding of 0.5).
    "fp32": {"min_score": 0.0, "iou": 0.9, "box": 0.01, "score": 1e-4, "mask": 1e-2, "mask_p99": 2e-3,
             "mask_iou": 0.99, "matched_frac": 1.0},
    # fp16: a few boxes move by a pixel or two and drag their 28x28 grid along: judged on p99 and mask IoU
    "fp16": {"min_score": 0.3, "iou": 0.9, "box_p99": 0.5, "score": 2e-2, "mask_iou": 0.98, "matched_frac": 0.95},
    # int8 (Q/DQ): quantisation moves every activation; no per-element bound means anything. Judged
    # as a user sees it: confident detections found again (loose IoU), masks that still overlap,
    # and mask AP no more than ap_drop under the float graph's. First values, to be tightened with
    # measurements on calibrated models.
    "int8": {"min_score": 0.3, "iou": 0.5, "matched_frac": 0.9, "mask_iou": 0.85, "ap_drop": 0.03},
}


def tolerance_for(precision: str) -> dict[str, float]:
    """The tolerance judging a model of ``precision`` against the float32 graph."""
    from mrcnn_edge.core.errors import UserError

    if precision not in TOLERANCES or precision == "torchvision->edge":
        raise UserError(f"no tolerance for precision {precision!r}; known: fp32, fp16, int8")
    return TOLERANCES[precision]


@dataclass(frozen=True)
class Stats:
    """Max, mean and 99th percentile of per-detection absolute differences (0 when none)."""

    max: float = 0.0
    mean: float = 0.0
    p99: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stats":
        if len(values) == 0:
            return cls()
        v = np.asarray(values, np.float64)
        return cls(float(v.max()), float(v.mean()), float(np.percentile(v, 99)))


@dataclass(frozen=True)
class ClipDifference:
    """An unmatched detection explained by where boxes are clipped (canvas vs image)."""

    image: int
    side: str                    # "reference" or "candidate"
    class_id: int
    score: float
    box: list[float]             # canvas pixels, rounded
    region_hw: list[int] | None  # the letterboxed image's (resized_h, resized_w)
    row: int                     # its row in its side's output


@dataclass(frozen=True)
class CutTie:
    """An unmatched detection at the ``max_detections`` cut: both outputs are full and its score is
    within the tie band of both lowest kept scores, so which of the tied detections made the top K
    is arbitrary (equal scores, e.g. saturated at 1.0, ordered by rounding)."""

    image: int
    side: str           # "reference" or "candidate"
    class_id: int
    score: float
    box: list[float]    # canvas pixels, rounded
    cut: list[float]    # lowest kept score of the reference's and the candidate's output


@dataclass
class Comparison:
    """Statistics of a candidate runner against a reference runner, and the verdict."""

    reference_detections: int
    candidate_detections: int
    matched: int
    unmatched_reference: int
    unmatched_candidate: int
    edge_clip_reference: int
    edge_clip_candidate: int
    edge_clip: list[ClipDifference]
    cut_tie_reference: int
    cut_tie_candidate: int
    cut_ties: list[CutTie]
    max_detections: int | None
    matched_fraction: float
    judged_matched_fraction: float
    box_iou_min: float
    box_abs_diff: Stats
    score_abs_diff: Stats
    mask_prob_abs_diff: Stats
    mask_iou_mean: float
    mask_iou_min: float
    tolerance: dict[str, float]
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class AP:
    """COCO AP of one runner's detections, pasted into the frames by the runtime's own function."""

    box_AP: float
    box_AP50: float
    mask_AP: float
    mask_AP50: float


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), (np.abs(a[:, None] - b[None]).max(2) == 0).astype(float))


def match(ref: FrameRows, cand: FrameRows, iou_thr: float, min_score: float = 0.0) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by reference score: same class, box IoU >= ``iou_thr``.

    Only reference detections scoring ``>= min_score`` are matched; candidates of any score may match.
    Returns ``(ref_index, cand_index, iou)`` triples.
    """
    iou = _iou_matrix(ref.boxes, cand.boxes)
    used = np.zeros(len(cand.boxes), bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        if ref.scores[i] < min_score:
            continue
        ok = (cand.classes == ref.classes[i]) & ~used & (iou[i] >= iou_thr)
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, iou[i], -1)))
        used[j] = True
        pairs.append((int(i), j, float(iou[i, j])))
    return pairs


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def _clip_differences(k: int, r: FrameRows, c: FrameRows, twin: FrameRows, pairs: list, tol: Mapping[str, float],
                      region: list[int] | None) -> list[ClipDifference]:
    """Unmatched detections of image ``k`` that the clip explains: a reference detection the twin
    (reference clipping at the canvas) lacks too, a candidate detection the twin has."""
    in_twin = {p[0] for p in match(r, twin, tol["iou"], tol["min_score"])}
    from_twin = {p[1] for p in match(twin, c, tol["iou"], 0.0)}
    taken_r, taken_c = {p[0] for p in pairs}, {p[1] for p in pairs}
    out = []
    for side, d, taken, explained in (("reference", r, taken_r, lambda i: i not in in_twin),
                                      ("candidate", c, taken_c, lambda j: j in from_twin)):
        for i in range(len(d.scores)):
            if i not in taken and d.scores[i] >= tol["min_score"] and explained(i):
                out.append(ClipDifference(k, side, int(d.classes[i]), float(d.scores[i]),
                                          [round(float(v), 2) for v in d.boxes[i]], region, i))
    return out


def _cut_ties(k: int, r: FrameRows, c: FrameRows, pairs: list, tol: Mapping[str, float], max_detections: int | None,
              attributed: set[tuple[str, int]]) -> list[CutTie]:
    """Unmatched detections of image ``k`` (not already ``attributed``) that tie at the top-K cut.

    Only where both outputs are full: with a free row, an output that lacks a detection dropped it
    for another reason than the cut. The score must lie within the band of both cuts: a detection
    well above either cut was not competing for the last rows.
    """
    band = tol.get("cut_tie", tol.get("score"))
    if band is None or not max_detections or len(r.scores) != max_detections or len(c.scores) != max_detections:
        return []
    cut = [float(r.scores.min()), float(c.scores.min())]
    taken = {"reference": {p[0] for p in pairs}, "candidate": {p[1] for p in pairs}}
    out = []
    for side, d in (("reference", r), ("candidate", c)):
        for i in range(len(d.scores)):
            s = float(d.scores[i])
            if (i in taken[side] or (side, i) in attributed or s < tol["min_score"]
                    or max(abs(s - cut[0]), abs(s - cut[1])) > band):
                continue
            out.append(CutTie(k, side, int(d.classes[i]), s, [round(float(v), 2) for v in d.boxes[i]], cut))
    return out


def compare(ref: Sequence[FrameRows], cand: Sequence[FrameRows], tol: Mapping[str, float], canvas_hw: tuple[int, int],
            regions: Sequence[tuple[int, int]] | None = None, clip_twin: Sequence[FrameRows] | None = None,
            max_detections: int | None = None) -> Comparison:
    """Statistics of ``cand`` against ``ref`` over images, and whether they are within ``tol``.

    ``clip_twin``: per image, the reference computed clipping boxes at the canvas instead of the
    image (torchvision given the canvas size). An unmatched reference detection that the twin
    lacks too, and an unmatched candidate detection that the twin has, differ only because of
    where boxes are clipped (edge.py's clip-to-canvas difference, whose boxes reach into the
    padding and change NMS around them): they are listed apart as ``EDGE_CLIP`` and, where
    ``tol["edge_clip_exempt"]`` is set, do not count against the matched fraction.
    ``max_detections``: the K both runners keep (the model's metadata). Where both outputs of an
    image are full, an unmatched detection scoring within ``tol["cut_tie"]`` (else ``tol["score"]``)
    of both lowest kept scores is listed apart as ``CUT_TIE`` and does not count: among equal scores
    which one makes the top K is arbitrary. Any other unmatched detection still counts.
    ``regions``: per image, ``(resized_h, resized_w)`` of the letterboxed image, for the report.
    Mask IoU pastes both masks into the canvas with the runtime's paste.
    """
    n_ref = n_cand = n_matched = n_cand_matched = 0
    box_d: list[float] = []
    score_d: list[float] = []
    mask_d: list[float] = []
    ious: list[float] = []
    mask_ious: list[float] = []
    clipped: list[ClipDifference] = []
    ties: list[CutTie] = []
    for k, (r, c) in enumerate(zip(ref, cand)):
        pairs = match(r, c, tol["iou"], tol["min_score"])
        n_ref += int((r.scores >= tol["min_score"]).sum())
        n_cand += int((c.scores >= tol["min_score"]).sum())
        n_matched += len(pairs)
        n_cand_matched += sum(1 for _, j, _ in pairs if c.scores[j] >= tol["min_score"])
        if clip_twin is not None:
            region = list(regions[k]) if regions is not None else None
            clipped += _clip_differences(k, r, c, clip_twin[k], pairs, tol, region)
        # a detection the clip explains is not also a tie (each unmatched detection counted once)
        seen = {(d.side, d.row) for d in clipped if d.image == k}
        ties += _cut_ties(k, r, c, pairs, tol, max_detections, seen)
        if not pairs:
            continue
        ri = np.array([p[0] for p in pairs])
        ci = np.array([p[1] for p in pairs])
        ious += [p[2] for p in pairs]
        box_d += np.abs(r.boxes[ri] - c.boxes[ci]).max(1).tolist()
        score_d += np.abs(r.scores[ri] - c.scores[ci]).tolist()
        mask_d += np.abs(r.masks[ri] - c.masks[ci]).reshape(len(ri), -1).max(1).tolist()
        pr = paste_masks(r.masks[ri], r.paste_boxes[ri], canvas_hw)
        pc = paste_masks(c.masks[ci], c.paste_boxes[ci], canvas_hw)
        mask_ious += [_mask_iou(a, b) for a, b in zip(pr, pc)]
    clip_ref = sum(1 for d in clipped if d.side == "reference")
    exempt = bool(tol.get("edge_clip_exempt"))
    tie_ref = sum(1 for t in ties if t.side == "reference")
    judged = n_ref - (clip_ref if exempt else 0) - tie_ref
    res = Comparison(
        reference_detections=n_ref, candidate_detections=n_cand, matched=n_matched,
        unmatched_reference=n_ref - n_matched, unmatched_candidate=n_cand - n_cand_matched,
        edge_clip_reference=clip_ref, edge_clip_candidate=len(clipped) - clip_ref, edge_clip=clipped,
        cut_tie_reference=tie_ref, cut_tie_candidate=len(ties) - tie_ref, cut_ties=ties, max_detections=max_detections,
        matched_fraction=n_matched / n_ref if n_ref else 1.0,
        judged_matched_fraction=min(1.0, n_matched / judged) if judged > 0 else 1.0,
        box_iou_min=min(ious) if ious else 1.0, box_abs_diff=Stats.of(box_d), score_abs_diff=Stats.of(score_d),
        mask_prob_abs_diff=Stats.of(mask_d), mask_iou_mean=float(np.mean(mask_ious)) if mask_ious else 1.0,
        mask_iou_min=float(np.min(mask_ious)) if mask_ious else 1.0, tolerance=dict(tol))
    res.failures = _failures(res, tol, exempt, n_cand_matched)
    return res


def _failures(res: Comparison, tol: Mapping[str, float], exempt: bool, n_cand_matched: int) -> list[str]:
    fails = []
    if res.judged_matched_fraction < tol["matched_frac"]:
        apart = [f"{res.edge_clip_reference} {EDGE_CLIP}"] if exempt and res.edge_clip_reference else []
        apart += [f"{res.cut_tie_reference} {CUT_TIE}"] if res.cut_tie_reference else []
        what = f" (without {', '.join(apart)})" if apart else ""
        fails.append(f"matched {res.judged_matched_fraction:.3f}{what} < {tol['matched_frac']}")
    if "mask_iou" in tol and res.mask_iou_mean < tol["mask_iou"]:
        fails.append(f"mean mask IoU {res.mask_iou_mean:.4f} < {tol['mask_iou']}")
    for key, stat in (("box", res.box_abs_diff), ("score", res.score_abs_diff), ("mask", res.mask_prob_abs_diff)):
        if key in tol and stat.max > tol[key]:
            fails.append(f"{key} max diff {stat.max:.3g} > {tol[key]}")
        if f"{key}_p99" in tol and stat.p99 > tol[f"{key}_p99"]:
            fails.append(f"{key} p99 diff {stat.p99:.3g} > {tol[key + '_p99']}")
    # ties excuse a swap at the cut, not a comparison that compared nothing: when most detections
    # are left out as ties (scores that do not separate at this precision, e.g. all saturated near
    # 1.0), too little was compared to pass
    considered = res.reference_detections - (res.edge_clip_reference if exempt else 0)
    if considered > 0 and 2 * res.cut_tie_reference > considered:
        fails.append(f"{res.cut_tie_reference} of {considered} reference detections are a {CUT_TIE} "
                     f"({res.matched} matched): too little compared to judge; these images' scores do not "
                     "separate within the score tolerance")
    # one to one: a tie swaps one detection for another at the cut, so the tied ones are left out of
    # both counts (a swap leaves them equal; an extra tied detection on one side is still a tie)
    if tol.get("matched_frac", 0) >= 1.0 and (res.candidate_detections - res.cut_tie_candidate
                                             != res.reference_detections - res.cut_tie_reference
                                             or n_cand_matched != res.matched):
        fails.append(f"{res.candidate_detections} candidate vs {res.reference_detections} reference detections")
    return fails


def judge_ap(comparison: Comparison, reference: AP, candidate: AP) -> None:
    """Add the AP verdict of ``tolerance["ap_drop"]`` (int8) to ``comparison``'s failures."""
    drop = comparison.tolerance.get("ap_drop")
    if drop is not None and reference.mask_AP - candidate.mask_AP > drop:
        comparison.failures.append(f"mask AP {candidate.mask_AP:.4f} is {reference.mask_AP - candidate.mask_AP:.4f} "
                                   f"under the reference's {reference.mask_AP:.4f} (> {drop})")


def format_pairs(comparisons: Mapping[str, Comparison]) -> list[str]:
    """Markdown lines: one row of statistics per pair, then the clip differences and tolerances."""
    lines = ["| pair | ref dets | matched | unmatched ref/cand (of which edge clip; cut tie) | "
             "box diff max / mean / p99 (px) | "
             "score diff max | mask prob diff max | mask IoU mean / min | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in comparisons.items():
        b = c.box_abs_diff
        lines.append(
            f"| {name} | {c.reference_detections} | {c.matched} ({100 * c.matched_fraction:.1f}%) | "
            f"{c.unmatched_reference}/{c.unmatched_candidate} ({c.edge_clip_reference}/{c.edge_clip_candidate}; "
            f"{c.cut_tie_reference}/{c.cut_tie_candidate}) | "
            f"{b.max:.4f} / {b.mean:.4f} / {b.p99:.4f} | {c.score_abs_diff.max:.2e} | {c.mask_prob_abs_diff.max:.2e} | "
            f"{c.mask_iou_mean:.4f} / {c.mask_iou_min:.4f} | {'ok' if c.ok else 'FAIL: ' + '; '.join(c.failures)} |")
    for name, c in comparisons.items():
        if c.edge_clip:
            counted = "not counted as failures" if c.tolerance.get("edge_clip_exempt") else "counted"
            lines += ["", f"{name}: {len(c.edge_clip)} unmatched detections are {EDGE_CLIP}: torchvision clipping "
                      f"at the canvas, as the graph does, gives the same difference ({counted}):"]
            lines += [f"- image {d.image} {d.side}: class {d.class_id}, score {d.score:.3f}, box {d.box}, "
                      f"image region {d.region_hw}" for d in c.edge_clip[:20]]
            if len(c.edge_clip) > 20:
                lines.append(f"- ... {len(c.edge_clip) - 20} more in the JSON report")
        if c.cut_ties:
            lines += ["", f"{name}: {len(c.cut_ties)} unmatched detections are a {CUT_TIE} ({c.max_detections} rows, "
                      "both outputs full): their scores equal the lowest kept ones within "
                      f"{c.tolerance.get('cut_tie', c.tolerance.get('score'))}, so which of them is kept is arbitrary "
                      "(not counted as failures):"]
            lines += [f"- image {t.image} {t.side}: class {t.class_id}, score {t.score:.6f}, box {t.box}, "
                      f"lowest kept score ref/cand {t.cut[0]:.6f}/{t.cut[1]:.6f}" for t in c.cut_ties[:20]]
            if len(c.cut_ties) > 20:
                lines.append(f"- ... {len(c.cut_ties) - 20} more in the JSON report")
    lines += ["", "Tolerances: " + "; ".join(
        f"{n}: " + ", ".join(f"{k}={v}" for k, v in c.tolerance.items()) for n, c in comparisons.items())]
    return lines


def format_ap(ap: Mapping[str, AP]) -> list[str]:
    lines = ["| backend | box AP | box AP50 | mask AP | mask AP50 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {a.box_AP:.4f} | {a.box_AP50:.4f} | {a.mask_AP:.4f} | {a.mask_AP50:.4f} |"
              for name, a in ap.items()]
    return lines


def as_json(obj: Any) -> Any:
    """Dataclasses (and ``ok`` properties) as plain JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(getattr(type(obj), "ok", None), property):
            out["ok"] = obj.ok
        return out
    if isinstance(obj, dict):
        return {str(k): as_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
