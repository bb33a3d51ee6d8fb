"""``Segmenter``: frames in, ``Detections`` out, with any backend and CPU or GPU pre/post-processing.

A call runs three stages, also exposed separately for the real-time pipeline (each may run in its
own thread): :meth:`Segmenter.prepare` (check/convert frames, letterbox on the CPU),
:meth:`Segmenter.infer` (letterbox on the GPU when it runs there, then the backend) and
:meth:`Segmenter.finish` (boxes back to frame pixels, score threshold, ``Detections``).

Closing waits for stage calls still running in other threads (a pipeline worker that outlived its
join) before it frees device memory, and refuses new ones; ``Detections`` made before the close
stay usable (their mask operations fall back to the CPU reference).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mrcnn_edge.core.contract import feed_mean_std
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.backends import Backend, backend_for, open_backend, url_scheme
from mrcnn_edge.runtime.detections import Detections
from mrcnn_edge.runtime.frames import as_bgr8
from mrcnn_edge.runtime.postprocess import MASK_THRESHOLD, ReferenceOps, rows_to_frame
from mrcnn_edge.runtime.preprocess import Letterbox, letterbox_into, normalization
from mrcnn_edge.runtime.spec import INPUT_NAME, ModelSpec, model_spec

__all__ = ["Segmenter", "Work", "DEFAULT_SCORE_THRESHOLD", "DEVICES", "CLOSE_WAIT_S"]

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.5
from mrcnn_edge.core.contract import DEVICES  # noqa: E402  (re-exported)
# How long close() waits for stage calls still running in other threads before it gives up and
# leaves their device memory allocated (freeing it under a running kernel would crash the process).
CLOSE_WAIT_S = 60.0


@dataclass
class Work:
    """One model batch on its way through the stages (``len(frames) <= spec.batch``)."""

    frames: list[np.ndarray]                       # H×W×3 uint8 BGR, as converted by as_bgr8
    letterboxes: list[Letterbox] = field(default_factory=list)
    tensor: np.ndarray | None = None               # [B,3,H,W] model input (CPU pre-processing)
    outputs: dict[str, np.ndarray] | None = None   # copies of the model outputs
    device: list[Any] = field(default_factory=list)  # GPU: cuda_ops.DeviceFrame per frame (frame + masks there)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class Segmenter:
    """Instance segmentation with an exported Mask R-CNN (``.onnx`` or ``.engine``).

    ``score_threshold`` (default 0.5) drops weaker detections; the model's own floor (metadata
    ``score_threshold``, 0.05 by default) has already been applied in the graph.
    ``device`` ("auto", "cpu", "cuda"): with TensorRT, where pre/post-processing runs: the NVRTC
    kernels ("cuda"; "auto" falls back to the CPU with a warning when they cannot load) or the
    numpy reference ("cpu"). With ONNX Runtime, which execution providers run the model ("cuda":
    GPU providers required, "cpu": CPU only); its pre/post-processing is always the reference.
    """

    def __init__(self, backend: Backend, score_threshold: float | None = None, device: str = "auto",
                 mask_threshold: float = MASK_THRESHOLD) -> None:
        if device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        self.backend = backend
        self.spec: ModelSpec = model_spec(backend.path, backend.metadata, backend.inputs, backend.outputs)
        self.score_threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise UserError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        self.mask_threshold = float(mask_threshold)
        # an in-graph model is fed 0..255 RGB (x*1 + 0; padding stays 0, black, as DeepStream pads)
        self._mul, self._add = normalization(*feed_mean_std(self.spec.input_normalization, self.spec.mean,
                                                            self.spec.std))
        self.ops: Any = self._choose_ops(device)
        # model-input buffers recycled between batches: a fresh 3 MB array per frame costs more
        # in page faults than the letterbox itself
        self._pool: list[np.ndarray] = []
        self._pool_lock = threading.Lock()
        self._busy = 0                         # stage calls running now, in any thread
        self._closed = False
        self._idle = threading.Condition()
        self._local = threading.local()        # per thread: stage calls nested in this one

    @contextlib.contextmanager
    def _stage(self) -> Iterator[None]:
        """Count a running stage call so that close() does not free what it uses."""
        depth = getattr(self._local, "depth", 0)
        with self._idle:
            if self._closed and depth == 0:  # a call already running (__call__, batch) may finish
                raise RuntimeError("this Segmenter is closed")
            self._busy += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def _choose_ops(self, device: str) -> Any:
        # ONNX Runtime takes and returns host arrays: its pre/post-processing stays on the CPU
        # whatever its providers; device="cuda" there means GPU providers (OrtBackend checks)
        if device == "cpu" or not hasattr(self.backend, "device_pointer"):
            return ReferenceOps()
        try:
            from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

            # the backend's GPU: its stream and buffers live there (device 0 unless it says otherwise)
            device_id = int(getattr(self.backend, "device_id", 0) or 0)
            return CudaOps(device_id=device_id, stream=self.backend.stream)  # type: ignore[attr-defined]
        except (UserError, RuntimeError, OSError) as exc:
            if device == "cuda":
                raise UserError(f"CUDA pre/post-processing is unavailable: {exc}") from exc
            log.warning("CUDA pre/post-processing unavailable (%s); using the CPU reference", exc)
            return ReferenceOps()

    @classmethod
    def from_path(cls, path: str | Path, backend: str | None = None, providers: Sequence[str] | None = None,
                  plugin_lib: str | Path | None = None, score_threshold: float | None = None,
                  device: str = "auto", cuda_graph: bool = False, precision: str = "auto") -> "Segmenter":
        """Open ``model.onnx`` (ONNX Runtime), ``model.engine`` (TensorRT) or ``triton://host:port/model``
        (a Triton Inference Server: inference there, pre/post-processing here) and check it against the contract."""
        entry = backend_for(path, backend)
        if (providers or device == "cuda") and backend in (None, "auto") and entry.name != "onnxruntime" and url_scheme(path) is None:
            # execution providers are ONNX Runtime's: they choose it where it runs the file too
            with contextlib.suppress(UserError):
                entry = backend_for(path, "onnxruntime")
        if entry.name == "onnxruntime":
            if plugin_lib or cuda_graph:
                raise UserError("--plugin-lib and --cuda-graph apply to TensorRT engines, not ONNX Runtime")
            options: dict[str, Any] = {"providers": providers, "device": device}
        else:
            if providers:
                what = "a Triton server" if entry.name == "triton" else f"the {entry.name} backend"
                raise UserError(f"--providers is for ONNX Runtime, not {what}")
            options = {"plugin_lib": plugin_lib, "cuda_graph": cuda_graph}
            if entry.name not in ("tensorrt", "triton"):  # backends without plugins or CUDA graphs
                if plugin_lib or cuda_graph:
                    raise UserError(f"--plugin-lib and --cuda-graph apply to TensorRT engines, not the {entry.name} backend")
                options = {"precision": precision} if entry.name == "openvino" else {}
        if precision != "auto" and entry.name != "openvino":
            raise UserError(f"a precision is chosen at export for the {entry.name} backend; --precision is OpenVINO's")
        be = open_backend(path, entry.name, **options)
        try:
            return cls(be, score_threshold=score_threshold, device=device)
        except BaseException:
            be.close()
            raise

    @property
    def description(self) -> str:
        h, w = self.spec.input_hw
        return (f"{self.spec.path.name}: {self.backend.description}, input {self.spec.batch}x3x{h}x{w} "
                f"{self.spec.input_dtype}, pre/post on {self.ops.name}")

    # -- stages ---------------------------------------------------------------------------------
    def prepare(self, frames: Sequence[Any]) -> Work:
        """Check and convert up to ``spec.batch`` frames; letterbox them when pre-processing is on the CPU."""
        t0 = time.perf_counter()
        if not 0 < len(frames) <= self.spec.batch:
            raise ValueError(f"prepare() takes 1..{self.spec.batch} frames, got {len(frames)}")
        with self._stage():
            work = Work([as_bgr8(f) for f in frames])
            if self.ops.name == "cpu":
                work.tensor = self._take_buffer()
                work.letterboxes = [letterbox_into(f, work.tensor[i], self._mul, self._add)
                                    for i, f in enumerate(work.frames)]
                work.tensor[len(frames):] = 0  # padding slots of a partial batch
        work.timings["pre"] = time.perf_counter() - t0
        return work

    def infer(self, work: Work) -> Work:
        """Run the model on a prepared batch; keeps a copy of the outputs in ``work.outputs``."""
        t0 = time.perf_counter()
        with self._stage():
            outputs = self._run_model(work)
            work.outputs = {k: np.array(v, copy=True) for k, v in outputs.items()}
        work.timings["infer"] = time.perf_counter() - t0
        return work

    def _run_model(self, work: Work) -> dict[str, np.ndarray]:
        if self.ops.name != "cpu":  # GPU pre-processing straight into the engine's input buffer
            base = self.backend.device_pointer(INPUT_NAME)  # type: ignore[attr-defined]
            h, w = self.spec.input_hw
            item = 3 * h * w * self.spec.input_dtype.itemsize
            fp16 = self.spec.input_dtype == np.float16
            # the frame goes up once, into a device slot that draw() renders from later
            work.device = [self.ops.upload(f) for f in work.frames]
            work.letterboxes = [self.ops.letterbox_from(d, base + i * item, (h, w), self._mul, self._add, fp16)
                                for i, d in enumerate(work.device)]
            if len(work.frames) < self.spec.batch:
                self.ops.zero(base + len(work.frames) * item, (self.spec.batch - len(work.frames)) * item)
            outputs = self.backend.execute()  # type: ignore[attr-defined]  (time includes the letterbox)
            self._keep_device_masks(work)
            return outputs
        if work.tensor is None:
            raise ValueError("infer() needs a Work from prepare() that was not run yet")
        outputs = self.backend.infer({INPUT_NAME: work.tensor})
        self._give_back(work.tensor)
        work.tensor = None
        return outputs

    def _keep_device_masks(self, work: Work) -> None:
        """Copy the engine's masks into the frames' slots on the device, before the next run
        overwrites them (float32 or float16 masks, kept as the engine wrote them, from a backend
        that exposes its output buffers only)."""
        masks = self.backend.outputs.get("masks")
        try:
            ptr = self.backend.device_pointer("masks")  # type: ignore[attr-defined]
        except (KeyError, AssertionError, AttributeError):
            ptr = None
        if masks is None or not ptr or np.dtype(masks.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            work.device = []  # draw() uploads the masks it has on the host instead
            return
        shape = tuple(masks.shape)  # [B,K,M,M]
        self.ops.keep_masks(work.device, int(ptr), int(shape[1]), int(shape[-1]), np.dtype(masks.dtype).itemsize)

    def _take_buffer(self) -> np.ndarray:
        with self._pool_lock:
            if self._pool:
                return self._pool.pop()
        h, w = self.spec.input_hw
        return np.zeros((self.spec.batch, 3, h, w), dtype=self.spec.input_dtype)

    def _give_back(self, buffer: np.ndarray) -> None:
        with self._pool_lock:
            if len(self._pool) < 4:  # the pipeline has at most a few batches in flight
                self._pool.append(buffer)

    def finish(self, work: Work) -> list[Detections]:
        """Model outputs -> one ``Detections`` per frame (rows past ``num_detections``, padding
        class -1 and scores under the threshold dropped; boxes scaled back to frame pixels)."""
        t0 = time.perf_counter()
        out = work.outputs
        if out is None:
            raise ValueError("finish() needs a Work that went through infer()")
        with self._stage():
            results = []
            for b, (frame, box) in enumerate(zip(work.frames, work.letterboxes)):
                rows = rows_to_frame(out, b, box, self.score_threshold)
                device = None
                if b < len(work.device):  # the engine rows these detections are, for draw() on the device
                    device = dataclasses.replace(work.device[b], rows=rows.rows.astype(np.int32))
                results.append(Detections(
                    rows.boxes, rows.scores, rows.classes, [self.spec.class_name(int(c)) for c in rows.classes],
                    rows.masks, frame.shape[:2], self.ops, self.mask_threshold, paste_boxes=rows.paste_boxes,
                    device=device,
                ))
        work.timings["post"] = time.perf_counter() - t0
        return results

    # -- one-call API ---------------------------------------------------------------------------
    def __call__(self, frame: Any) -> Detections:
        """Segment one ``H×W×3`` uint8 BGR frame (other layouts: see ``frames.as_bgr8``)."""
        with self._stage():
            return self.finish(self.infer(self.prepare([frame])))[0]

    def batch(self, frames: Iterable[Any]) -> list[Detections]:
        """Segment many frames, ``spec.batch`` at a time (a last partial batch is zero-padded)."""
        frames = list(frames)
        results: list[Detections] = []
        if not frames:
            return results
        with self._stage():
            for i in range(0, len(frames), self.spec.batch):
                results += self.finish(self.infer(self.prepare(frames[i:i + self.spec.batch])))
        return results

    def warmup(self, runs: int = 1) -> None:
        """Run the model on blank frames (first runs allocate and tune)."""
        h, w = self.spec.input_hw
        for _ in range(runs):
            self.batch([np.zeros((h, w, 3), np.uint8)] * self.spec.batch)

    def close(self, wait: float | None = None) -> None:
        """Release the backend and the GPU pre/post-processing, once.

        Waits up to ``wait`` seconds (default :data:`CLOSE_WAIT_S`) for stage calls running in
        other threads; if one is still running then, its memory is left allocated (with an error
        logged) rather than freed under it.
        """
        with self._idle:
            if self._closed:
                return
            self._closed = True
            if not self._idle.wait_for(lambda: self._busy == 0, CLOSE_WAIT_S if wait is None else wait):
                log.error("a Segmenter stage is still running after %.0f s; leaving its GPU memory allocated",
                          CLOSE_WAIT_S if wait is None else wait)
                return
        if hasattr(self.ops, "close"):
            self.ops.close()
        self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
