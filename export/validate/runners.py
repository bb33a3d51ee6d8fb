"""The torch side as runners: torchvision eager and ``EdgeMaskRCNN`` behind the runtime's ``Backend``.

Validation and the benchmark compare runners (Polygraphy's shape, STYLE.md #5): every way of
running the model is a :class:`mrcnn_edge.runtime.backends.Backend` (``infer(feed) -> outputs by
name``, context-managed, output buffers allocated once and overwritten by the next call). ONNX
files run in the runtime's ``OrtBackend``, engines in its ``TrtBackend``; this module adds the two
that need torch. Both return the engine I/O contract (``num_detections``, ``boxes``, ``scores``,
``classes``, ``masks``; rows past ``num_detections`` zero with class -1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.contract import INPUT_NAME, OUTPUT_NAMES
from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["TorchvisionRunner", "EdgeRunner", "IMAGE_SIZES"]

IMAGE_SIZES = "image_sizes"


def _output_specs(batch: int, k: int, m: int, mask_dtype: Any = np.float32) -> dict[str, TensorSpec]:
    shapes = {"num_detections": ((batch,), np.int32), "boxes": ((batch, k, 4), np.float32),
              "scores": ((batch, k), np.float32), "classes": ((batch, k), np.int32),
              "masks": ((batch, k, m, m), mask_dtype)}
    return {name: TensorSpec(name, shapes[name][0], np.dtype(shapes[name][1])) for name in OUTPUT_NAMES}


def _buffers(specs: Mapping[str, TensorSpec]) -> dict[str, np.ndarray]:
    return {name: np.zeros(s.shape, s.dtype) for name, s in specs.items()}


class TorchvisionRunner(Backend):
    """The user's model as trained: torchvision's own backbone, RPN and ROI heads, in eager mode.

    Inputs: ``images`` (float32 ``[B,3,H,W]``: the letterboxed, normalised canvas, the same
    tensor the exported graph gets) and ``image_sizes`` (int64 ``[B,2]``: height, width of each
    image region in the canvas). torchvision resizes and normalises inside its ``transform``;
    this runner starts after it, so every runner sees identical pixels, and ``image_sizes`` is
    what torchvision clips boxes to (the exported graph clips to the canvas instead: give the
    canvas size here to compute torchvision clipping where the graph clips).
    Outputs: the engine I/O contract with ``K = detections_per_img``. Images run one at a time,
    as a user's model does on a stream. The backbone features of the last batch are kept: the same
    images again (with other ``image_sizes``) skip the backbone.
    """

    name = "torchvision"

    def __init__(self, model: Any, canvas_hw: tuple[int, int], batch: int = 1, path: str | Path = "torchvision") -> None:
        import torch  # noqa: F401 - fail here, not in infer, without torch

        self.model = model.eval()
        self.path = Path(path)
        h, w = int(canvas_hw[0]), int(canvas_hw[1])
        rh = model.roi_heads
        self.metadata = {"input_size": [h, w], "batch": int(batch), "max_detections": int(rh.detections_per_img)}
        self.inputs = {INPUT_NAME: TensorSpec(INPUT_NAME, (batch, 3, h, w), np.dtype(np.float32)),
                       IMAGE_SIZES: TensorSpec(IMAGE_SIZES, (batch, 2), np.dtype(np.int64))}
        out = rh.mask_roi_pool.output_size
        m = 2 * int(out[0] if isinstance(out, (tuple, list)) else out)  # the mask head upsamples its pool x2
        self.outputs = _output_specs(batch, int(rh.detections_per_img), m)
        self._out = _buffers(self.outputs)
        self._cache: tuple[np.ndarray, list[Any]] | None = None

    def _features(self, images: np.ndarray) -> list[Any]:
        import torch

        if self._cache is not None and np.array_equal(self._cache[0], images):
            return self._cache[1]
        feats = [self.model.backbone(torch.from_numpy(np.ascontiguousarray(x))[None]) for x in images]
        self._cache = (images.copy(), feats)
        return feats

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from torchvision.models.detection.image_list import ImageList

        check_feed(feed, self.inputs)
        images, sizes = feed[INPUT_NAME], feed[IMAGE_SIZES]
        out = self._out
        for name, buf in out.items():
            buf.fill(-1 if name == "classes" else 0)
        k = self.outputs["boxes"].shape[1]
        with torch.inference_mode():
            for b, feats in enumerate(self._features(images)):
                t = torch.from_numpy(np.ascontiguousarray(images[b]))[None]
                il = ImageList(t, [(int(sizes[b, 0]), int(sizes[b, 1]))])
                proposals, _ = self.model.rpn(il, feats)
                det = self.model.roi_heads(feats, proposals, il.image_sizes)[0][0]
                n = min(len(det["scores"]), k)
                out["num_detections"][b] = n
                out["boxes"][b, :n] = det["boxes"][:n].numpy()
                out["scores"][b, :n] = det["scores"][:n].numpy()
                out["classes"][b, :n] = det["labels"][:n].numpy()
                out["masks"][b, :n] = det["masks"][:n, 0].numpy()
        return dict(out)

    def close(self) -> None:
        self._cache = None


class EdgeRunner(Backend):
    """``EdgeMaskRCNN`` eager: the graph that is exported, before export.

    Input ``images`` (float32 ``[B,3,H,W]``, the letterboxed normalised canvas); outputs the engine
    I/O contract (masks as float32 whatever the graph's precision).
    """

    name = "edge"

    def __init__(self, edge: Any, path: str | Path = "edge", metadata: Mapping[str, Any] | None = None) -> None:
        self.edge = edge.eval()
        self.path = Path(path)
        b, h, w = int(edge.B), int(edge.H), int(edge.W)
        self.metadata = dict(metadata or {"input_size": [h, w], "batch": b, "max_detections": int(edge.max_detections)})
        self.inputs = {INPUT_NAME: TensorSpec(INPUT_NAME, (b, 3, h, w), np.dtype(np.float32))}
        self.outputs = _output_specs(b, int(edge.max_detections), int(edge.mask_size))
        self._out = _buffers(self.outputs)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_feed(feed, self.inputs)
        with torch.inference_mode():
            res = self.edge(torch.from_numpy(feed[INPUT_NAME]))
        for name, value in zip(OUTPUT_NAMES, res):
            np.copyto(self._out[name], value.float().numpy() if value.is_floating_point() else value.numpy(),
                      casting="same_kind")
        return dict(self._out)
