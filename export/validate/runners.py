"""Every way of running the model, in one table: torchvision eager, ``EdgeMaskRCNN`` eager and the
runtime's backends, each a :class:`mrcnn_edge.runtime.backends.Backend`.

Validation and the benchmark compare runners: ``infer(feed) -> outputs by name``, context-managed,
output buffers allocated once and overwritten by the next call. ONNX files and engines run in the
runtime's own backends (:data:`mrcnn_edge.runtime.backends.BACKENDS`); this module adds the two
that need torch and puts all of them in :data:`RUNNERS`, which ``validate`` and ``benchmark`` look
names up in. Every runner returns the engine I/O contract (:data:`mrcnn_edge.core.contract.OUTPUTS`:
``num_detections`` ``[B,1]``, ``boxes``, ``scores``, ``classes``, ``masks``; rows past
``num_detections`` zero with class -1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from mrcnn_edge.core.contract import ENGINE_SUFFIXES, INPUT_NAME, ONNX_SUFFIXES, OUTPUTS
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.backends import BACKENDS, Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

if TYPE_CHECKING:
    from mrcnn_edge.export.onnx_export import ExportOptions

__all__ = ["TorchvisionRunner", "EdgeRunner", "IMAGE_SIZES", "TorchSource", "RunnerEntry", "RUNNERS",
           "open_runner", "reference_runner"]

IMAGE_SIZES = "image_sizes"


def _output_buffers(batch: int, max_detections: int, mask_size: int) -> tuple[dict[str, TensorSpec], dict[str, np.ndarray]]:
    """Specs and buffers of the contract's outputs at these sizes (float32 masks: the torch runners
    run the float32 graph)."""
    specs = {o.name: TensorSpec(o.name, o.shape(batch, max_detections, mask_size), np.dtype(o.dtype_for("fp32")))
             for o in OUTPUTS}
    return specs, {name: np.zeros(s.shape, s.dtype) for name, s in specs.items()}


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
        self.outputs, self._out = _output_buffers(batch, int(rh.detections_per_img), m)
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
        self.outputs, self._out = _output_buffers(b, int(edge.max_detections), int(edge.mask_size))

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_feed(feed, self.inputs)
        with torch.inference_mode():
            res = self.edge(torch.from_numpy(feed[INPUT_NAME]))
        for o, value in zip(OUTPUTS, res):
            buf = self._out[o.name]
            # reshape: a graph of the older [B] num_detections fills the contract's [B,1] alike
            np.copyto(buf, (value.float() if value.is_floating_point() else value).numpy().reshape(buf.shape),
                      casting="same_kind")
        return dict(self._out)


# ---- the table -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchSource:
    """What the torch runners run: a loaded checkpoint (``model``, its ``config``), the file it came
    from, and the options of the graph it stands for (``export.onnx_export.ExportOptions``: canvas,
    batch, ``max_detections``, score threshold, RPN sizes; always float32)."""

    model: Any
    config: Any
    path: str
    options: "ExportOptions"


def _open_torchvision(source: TorchSource) -> Backend:
    opts = source.options
    return TorchvisionRunner(source.model, tuple(opts.input_size), opts.batch, path=source.path)


def _open_edge(source: TorchSource) -> Backend:
    from mrcnn_edge.export.onnx_export import build_edge

    return EdgeRunner(build_edge(source.model, source.config, source.options), path=source.path)


def _backend_opener(name: str) -> Callable[..., Backend]:
    def open_(path: str | Path, **options: Any) -> Backend:
        from mrcnn_edge.runtime.backends import open_backend

        if name == "onnxruntime":
            from mrcnn_edge.export.ort_custom import register

            register()  # tensorrt-flavor files run with the plugin's reference implementation
        try:
            return open_backend(path, name, **options)
        except TypeError as exc:  # an option the backend class does not take
            raise UserError(f"the {name} backend does not take the options {sorted(options)} ({exc})") from exc
    return open_


@dataclass(frozen=True)
class RunnerEntry:
    """One row of :data:`RUNNERS`.

    ``takes``: what it runs, ``"checkpoint"`` (a :class:`TorchSource`) or ``"model"`` (a model file
    or URL of the runtime backend of the same name); ``label``: its name in reports and in
    ``benchmark --backends`` (``onnx`` for ONNX Runtime); ``reference``: for the model files it is
    validation's reference runner for (``suffixes``), the options it opens them with; None where it
    is not one."""

    name: str
    takes: str
    open: Callable[..., Backend]
    label: str
    help: str
    suffixes: tuple[str, ...] = ()
    reference: Mapping[str, Any] | None = None


# validate runs an ONNX file in ONNX Runtime on the CPU (the reference: the tensorrt flavor's plugin
# nodes through their reference implementation) and an engine in TensorRT
_REFERENCE_OPTIONS: dict[str, Mapping[str, Any]] = {"onnxruntime": {"device": "cpu"}, "tensorrt": {}}
_LABELS = {"onnxruntime": "onnx"}

RUNNERS: dict[str, RunnerEntry] = {
    "torchvision": RunnerEntry("torchvision", "checkpoint", _open_torchvision, "torchvision",
                               "torchvision eager: the user's model as trained (after its transform)"),
    "edge": RunnerEntry("edge", "checkpoint", _open_edge, "edge", "EdgeMaskRCNN eager: the graph that is exported"),
    **{e.name: RunnerEntry(e.name, "model", _backend_opener(e.name), _LABELS.get(e.name, e.name), e.help, e.suffixes,
                           _REFERENCE_OPTIONS.get(e.name))
       for e in BACKENDS.values()},
}
"""Every runner by name: the two torch runners, then the runtime's backend table in its order."""


def open_runner(name: str, target: TorchSource | str | Path, **options: Any) -> Backend:
    """Open runner ``name`` on ``target`` (a :class:`TorchSource` for the torch runners, a model
    file or URL for the backends) with ``options`` (backends only); one-line errors."""
    entry = RUNNERS.get(name)
    if entry is None:
        raise UserError(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
    if entry.takes == "checkpoint":
        if not isinstance(target, TorchSource):
            raise TypeError(f"the {name} runner runs a loaded checkpoint (TorchSource), not {target!r}")
        if options:
            raise UserError(f"the {name} runner takes no options, got {sorted(options)}")
        return entry.open(target)
    if isinstance(target, TorchSource):
        raise TypeError(f"the {name} runner runs a model file, not a checkpoint")
    return entry.open(target, **options)


def reference_runner(model_path: str | Path) -> tuple[RunnerEntry, dict[str, Any]]:
    """The runner that validation runs an exported model in, and its options: ``.onnx`` in ONNX
    Runtime on the CPU, an engine in TensorRT."""
    suffix = Path(model_path).suffix.lower()
    for entry in RUNNERS.values():
        if entry.reference is not None and suffix in entry.suffixes:
            return entry, dict(entry.reference)
    known = ", ".join((*ONNX_SUFFIXES, *ENGINE_SUFFIXES))
    raise UserError(f"cannot validate {Path(model_path).name}: expected a model file ending in {known}")
