"""The one comparator loop: images through runners, each image's detections rebuilt from the engine I/O.

``mrcnn-edge validate`` and ``mrcnn-edge benchmark`` both run it. A step takes a batch of BGR
frames through one runner in the runtime's three stages, named as the pipeline names them:

* ``pre``: the runtime's reference letterbox into the runner's input (its dtype; 0-255 RGB for a
  model that normalises in its graph; a partial batch padded with blank canvases; the image
  regions for a runner that takes ``image_sizes``, torchvision's);
* ``infer``: ``runner.infer`` and nothing else;
* ``post``: per image, :meth:`FrameRows.from_outputs` (canvas pixels, every row the graph returned:
  what validation compares) and/or the runtime's canvas-to-frame step ``rows_to_frame`` (frame
  pixels, what COCO evaluation scores and the runtime shows), optionally the masks pasted at frame
  size (what ``Detections.masks`` costs).

Each step reports its stage times (the benchmark's numbers); :func:`run_passes` loops the steps of
several runners over the same images, batch by batch, for validation and AP.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mrcnn_edge.core.contract import INPUT_NAME, feed_mean_std
from mrcnn_edge.runtime.backends import Backend
from mrcnn_edge.runtime.postprocess import FrameRows, paste_masks, rows_to_frame
from mrcnn_edge.runtime.preprocess import Letterbox, letterbox

from mrcnn_edge.export.validate.runners import IMAGE_SIZES

__all__ = ["STAGES", "Step", "Pass", "Collected", "feed_for", "step", "run_passes"]

STAGES = ("pre", "infer", "post")


@dataclass
class Step:
    """One batch through one runner: where each frame sits in the canvas, its detections, the stage times.

    ``canvas``: per frame, the graph's rows in canvas pixels (copies); ``frame``: per frame, the
    rows in frame pixels (``rows_to_frame`` at score threshold 0: every detection the graph
    returned); ``masks``: per frame, the pasted ``[N,H,W]`` bool masks of ``frame``; each empty
    where not asked for. ``ms``: milliseconds per stage of :data:`STAGES`."""

    letterboxes: list[Letterbox]
    canvas: list[FrameRows] = field(default_factory=list)
    frame: list[FrameRows] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    ms: dict[str, float] = field(default_factory=dict)


def feed_for(runner: Backend, frames: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float],
             image_sizes: str = "image") -> tuple[dict[str, np.ndarray], list[Letterbox]]:
    """The runner's feed for up to B ``frames`` (BGR uint8) and where each one sits in the canvas.

    ``mean``/``std``: the checkpoint's (RGB, 0..1 units); the runner's metadata says whether its
    graph normalises itself. ``image_sizes`` (runners that take that input): ``"image"`` gives each
    image's region (torchvision clips boxes to it), ``"canvas"`` the whole canvas (clipping where
    the exported graph clips); padding slots always get the canvas."""
    spec = runner.inputs[INPUT_NAME]
    batch, (h, w) = int(spec.shape[0]), (int(spec.shape[2]), int(spec.shape[3]))
    if not 0 < len(frames) <= batch:
        raise ValueError(f"{len(frames)} frames for a runner of batch {batch}")
    mean, std = feed_mean_std(runner.metadata.get("input_normalization"), mean, std)
    x = np.zeros((batch, 3, h, w), spec.dtype)  # a partial batch is padded with blank canvases
    boxes = []
    for b, frame in enumerate(frames):
        x[b], box = letterbox(frame, (h, w), mean, std, dtype=spec.dtype)
        boxes.append(box)
    feed = {INPUT_NAME: x}
    if IMAGE_SIZES in runner.inputs:
        sizes = np.array([[h, w]] * batch, np.int64)
        if image_sizes == "image":
            sizes[:len(boxes)] = [[box.resized_h, box.resized_w] for box in boxes]
        feed[IMAGE_SIZES] = sizes
    return feed, boxes


def step(runner: Backend, frames: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float], *,
         image_sizes: str = "image", canvas: bool = True, frame: bool = False, paste: bool = False,
         feed: tuple[dict[str, np.ndarray], list[Letterbox]] | None = None) -> Step:
    """``frames`` through ``runner``, timed stage by stage; ``canvas``/``frame``/``paste`` say which
    detections to keep (see :class:`Step`). ``feed``: one :func:`feed_for` made already (its
    time then is not in ``pre``)."""
    t0 = time.perf_counter()
    x, boxes = feed if feed is not None else feed_for(runner, frames, mean, std, image_sizes)
    t1 = time.perf_counter()
    out = runner.infer(x)
    t2 = time.perf_counter()
    res = Step(boxes)
    for b, box in enumerate(boxes):
        if canvas:
            res.canvas.append(FrameRows.from_outputs(out, b))
        if frame or paste:
            rows = rows_to_frame(out, b, box, 0.0)
            if frame:
                res.frame.append(rows)
            if paste:
                res.masks.append(paste_masks(rows.masks, rows.paste_boxes, (box.frame_h, box.frame_w)))
    t3 = time.perf_counter()
    res.ms = {"pre": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3}
    return res


@dataclass(frozen=True)
class Pass:
    """One runner's pass over the images in :func:`run_passes`: ``name`` keys its results;
    ``image_sizes`` as in :func:`feed_for`; ``frame``: also keep the detections in frame pixels."""

    name: str
    runner: Backend
    image_sizes: str = "image"
    frame: bool = False


@dataclass
class Collected:
    """A pass's detections, one entry per image in order (see :class:`Step`)."""

    canvas: list[FrameRows] = field(default_factory=list)
    frame: list[FrameRows] = field(default_factory=list)


def run_passes(passes: Sequence[Pass], frames: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float],
               on_batch: Callable[[int], Any] | None = None) -> tuple[dict[str, Collected], list[Letterbox]]:
    """Every pass over the same ``frames``, batch by batch (all runners of one batch size): per
    pass its :class:`Collected` detections, and where each frame sat in the canvas.

    A pass whose runner and feed equal an earlier pass's in the same batch reuses its detections
    (runners are deterministic): torchvision clipping at the canvas costs nothing where every
    image fills the canvas. ``on_batch(images done)`` after each batch (a progress bar)."""
    sizes = {int(p.runner.inputs[INPUT_NAME].shape[0]) for p in passes}
    if len(sizes) != 1:
        raise ValueError(f"passes of different batch sizes {sorted(sizes)}")
    batch = sizes.pop()
    results = {p.name: Collected() for p in passes}
    letterboxes: list[Letterbox] = []
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        done: list[tuple[Pass, Mapping[str, np.ndarray], Step]] = []
        for p in passes:
            feed = feed_for(p.runner, chunk, mean, std, p.image_sizes)
            # an earlier step stands in only if it kept what this pass keeps (frame rows)
            same = next((s for q, f, s in done if q.runner is p.runner and _same_feed(f, feed[0])
                         and (bool(s.frame) or not p.frame)), None)
            got = same if same is not None else step(p.runner, chunk, mean, std, frame=p.frame, feed=feed)
            done.append((p, feed[0], got))
            results[p.name].canvas += got.canvas
            if p.frame:
                results[p.name].frame += got.frame
        letterboxes += done[0][2].letterboxes
        if on_batch is not None:
            on_batch(start + len(chunk))
    return results, letterboxes


def _same_feed(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
