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
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mrcnn_edge.core.contract import feed_mean_std
from mrcnn_edge.core.contract import DEVICES
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.backends import (BACKENDS, Backend, BackendEntry, DeviceBackend, backend_for, open_backend,
                                         url_scheme)
from mrcnn_edge.runtime.detections import Detections
from mrcnn_edge.runtime.frames import as_bgr8
from mrcnn_edge.runtime.postprocess import MASK_THRESHOLD, ReferenceOps, rows_to_frame
from mrcnn_edge.runtime.preprocess import Letterbox, letterbox_into, normalization
from mrcnn_edge.runtime.spec import INPUT_NAME, ModelSpec, model_spec

__all__ = ["Segmenter", "Work", "DEFAULT_SCORE_THRESHOLD", "CLOSE_WAIT_S", "BATCHES_IN_FLIGHT"]

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.5
# Batches between upload (infer) and draw in a pipeline: one in inference, two queued for
# post-processing, one being drawn. The GPU path keeps batch x this many frames on the device, so
# that no frame is uploaded twice (a draw() finds its frame and masks still there).
BATCHES_IN_FLIGHT = 4
THROUGHPUT_REQUESTS = 2  # inferences in flight for frames that queue up (from_path(throughput=True))
# How long close() waits for stage calls still running in other threads before it gives up and
# leaves their device memory allocated (freeing it under a running kernel would crash the process).
CLOSE_WAIT_S = 60.0


@dataclass
class Work:
    """One model batch on its way through the stages (``len(frames) <= spec.batch``)."""

    frames: list[np.ndarray]                       # H×W×3 uint8 BGR: converted once, by prepare()
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
    ``batches_in_flight``: batches a caller has between ``infer`` and ``draw`` at once (a
    pipeline's depth; :data:`BATCHES_IN_FLIGHT` by default): the GPU path keeps that many batches
    of frames on the device.

    A frame is converted to ``H×W×3`` uint8 BGR once, where it enters (``prepare``, so ``__call__``
    and ``batch`` too); ``Detections`` keep that frame, and ``draw()`` without an argument draws on it.
    """

    def __init__(self, backend: Backend, score_threshold: float | None = None, device: str = "auto",
                 mask_threshold: float = MASK_THRESHOLD, batches_in_flight: int = BATCHES_IN_FLIGHT) -> None:
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
        # the backend's GPU buffers when the pre/post-processing runs next to them (CudaOps), else None
        self._device_io: DeviceBackend | None = None
        self.ops: Any = self._choose_ops(device, max(int(batches_in_flight), 1))
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

    def _choose_ops(self, device: str, batches_in_flight: int) -> Any:
        # A backend that takes and returns host arrays (ONNX Runtime, OpenVINO, Triton) keeps its
        # pre/post-processing on the CPU whatever its providers; device="cuda" there means GPU
        # providers (OrtBackend checks). Only a backend whose tensors are GPU buffers says so.
        io = self.backend.on_device()
        if device == "cpu" or io is None:
            return ReferenceOps()
        try:
            from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

            # the backend's GPU and stream: the letterbox is ordered before its run
            ops = CudaOps(device_id=io.device_id, stream=io.stream, slots=self.spec.batch * batches_in_flight)
        except (UserError, RuntimeError, OSError) as exc:
            if device == "cuda":
                raise UserError(f"CUDA pre/post-processing is unavailable: {exc}") from exc
            log.warning("CUDA pre/post-processing unavailable (%s); using the CPU reference", exc)
            return ReferenceOps()
        self._device_io = io
        return ops

    def frame_buffer(self, shape: Sequence[int]) -> np.ndarray | None:
        """A ``shape`` (H, W, 3) uint8 array to capture the next frame into, or None.

        Optional, for sources that can read into a given array (OpenCV's ``VideoCapture.read(image)``):
        on an integrated GPU (Jetson) it is the mapped memory the kernels read, so the frame then
        reaches the GPU without any copy. None where that saves nothing (CPU pre/post-processing, a
        discrete GPU) or no slot is free: read into an array of your own then. The array is the
        caller's frame as long as they keep it (it is not reused under them)."""
        if self._device_io is None:
            return None
        return self.ops.frame_buffer(shape)

    @classmethod
    def from_path(cls, path: str | Path, backend: str | None = None, providers: Sequence[str] | None = None,
                  plugin_lib: str | Path | None = None, score_threshold: float | None = None,
                  device: str = "auto", cuda_graph: bool = False, precision: str = "auto",
                  throughput: bool = False, **options: Any) -> "Segmenter":
        """Open ``model.onnx`` (ONNX Runtime or OpenVINO), ``model.engine`` (TensorRT) or
        ``triton://host:port/model`` (a Triton Inference Server: inference there, pre/post-processing
        here) and check it against the contract.

        ``providers``, ``plugin_lib``, ``cuda_graph``, ``precision`` and ``options`` are backend
        options (``backends.BACKENDS`` lists who takes which): those left at their defaults are not
        passed; any other is checked against the chosen backend's row. ``device`` is also passed to
        a backend that takes it (ONNX Runtime's providers). With ``backend`` "auto" the first backend
        that runs the file and takes every option given is chosen.

        ``throughput``: frames will queue up for the model (a file source), so frames per second
        count more than each frame's latency: a chosen backend that can run several inferences at
        once (a ``requests`` option: OpenVINO) gets :data:`THROUGHPUT_REQUESTS` of them on a CPU
        with 2 or more cores, unless ``requests`` is given. Cameras leave it False (latency first).
        """
        given = {"providers": providers, "plugin_lib": plugin_lib, "cuda_graph": cuda_graph, "precision": precision,
                 **options}
        given = {k: v for k, v in given.items() if not _is_default(k, v)}
        entry = _choose_backend(path, backend, given, device)
        if throughput and "requests" not in given and entry.option("requests") is not None \
                and (os.cpu_count() or 1) >= 2:
            given["requests"] = THROUGHPUT_REQUESTS
        device_option = next((o.name for o in entry.options if o.flag == "--device"), None)
        if device_option is not None and device != "auto":
            given[device_option] = device
        be = open_backend(path, entry.name, **given)
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
            work = Work([as_bgr8(f) for f in frames])  # the one conversion of each frame
            if self._device_io is None:
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
        io = self._device_io
        if io is not None:  # GPU pre-processing straight into the engine's input buffer
            base = io.device_pointer(INPUT_NAME)
            h, w = self.spec.input_hw
            item = 3 * h * w * self.spec.input_dtype.itemsize
            fp16 = self.spec.input_dtype == np.float16
            # the frame goes up once, into a device slot that draw() renders from later
            work.device = [self.ops.upload(f) for f in work.frames]
            work.letterboxes = [self.ops.letterbox_from(d, base + i * item, (h, w), self._mul, self._add, fp16)
                                for i, d in enumerate(work.device)]
            if len(work.frames) < self.spec.batch:
                self.ops.zero(base + len(work.frames) * item, (self.spec.batch - len(work.frames)) * item)
            outputs = io.execute()  # (its time includes the letterbox)
            self._keep_device_masks(io, work)
            return outputs
        if work.tensor is None:
            raise ValueError("infer() needs a Work from prepare() that was not run yet")
        outputs = self.backend.infer({INPUT_NAME: work.tensor})
        self._give_back(work.tensor)
        work.tensor = None
        return outputs

    def _keep_device_masks(self, io: DeviceBackend, work: Work) -> None:
        """Copy the engine's masks into the frames' slots on the device, before the next run
        overwrites them (float32 or float16 masks, kept as the engine wrote them)."""
        masks = self.backend.outputs.get("masks")
        ptr = io.device_pointer("masks") if masks is not None else 0
        if not ptr or np.dtype(masks.dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
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
                    device=device, frame=frame,
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
        if self._device_io is not None:
            self.ops.close()
        self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_default(name: str, value: Any) -> bool:
    """An option left as the caller's signature has it: None, False, or the table's default."""
    if value is None or value is False:
        return True
    defaults = {o.default for e in BACKENDS.values() for o in e.options if o.name == name and o.kind == "str"}
    return isinstance(value, str) and value in defaults


def _choose_backend(path: str | Path, backend: str | None, given: dict[str, Any], device: str) -> BackendEntry:
    """The backend for ``path``: the one named, else the automatic choice, unless that one does not
    take an option given (or cannot put the model on a GPU with ``device="cuda"``) while another
    backend that runs the file does (``--providers`` on an x86 CPU chooses ONNX Runtime over OpenVINO)."""
    entry = backend_for(path, backend)
    if backend not in (None, "auto"):
        return entry

    def fits(e: BackendEntry) -> bool:
        return all(e.option(k) is not None for k in given) and device in e.devices

    if fits(entry):
        return entry
    scheme = url_scheme(path)
    suffix = Path(path).suffix.lower() if scheme is None else None
    others = [e for e in BACKENDS.values() if (scheme in e.schemes if scheme else suffix in e.suffixes)]
    return next((e for e in others if fits(e)), entry)
