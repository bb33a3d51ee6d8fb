"""GPU pre/post-processing: the NVRTC-compiled kernels of ``runtime/gpu/kernels`` behind small methods.

(Over 400 lines on purpose: this is all of the runtime's GPU-only code, one class over one set of
device buffers and two streams, kept in one place so that it stays thin and is read as a whole; the
argument structs and signatures are in ``kernel_args.py``, the lending of frame-sized memory in
``frame_slots.py``.)

:class:`CudaOps` has the methods of ``postprocess.ReferenceOps`` (``paste_masks``,
``instance_map``, ``overlay``, ``render``), host arrays in and out, plus the device-resident path
the ``Segmenter`` uses:

- :meth:`CudaOps.frame_buffer` (integrated GPUs) lends a source the mapped staging of a free frame
  slot to capture the next frame into: that frame is then on the device without any copy;
- :meth:`CudaOps.upload` puts a frame in a frame slot (captured there already, or copied into the
  slot's pinned staging and, on a discrete GPU, up to the device) and returns a
  :class:`DeviceFrame`; :meth:`CudaOps.letterbox_from` writes the model input from it straight
  into the engine's input buffer;
- :meth:`CudaOps.keep_masks` copies the engine's ``masks`` output for those frames into their
  slots on the device (before the next inference overwrites it);
- :meth:`CudaOps.render` draws the detections from the slot (masks pasted, thresholded, culled
  per tile, blended) into a pinned buffer that it lends to the caller as the drawn frame: written
  in place by the kernel on an integrated GPU, downloaded once on a discrete one; no CPU copy.

Per drawn frame the bus then carries the frame up, the drawn frame down and the compact outputs
(boxes, scores, classes, ``M x M`` masks); on an integrated GPU no frame-sized copy is made at all,
on the bus or by the CPU, when the source captured into the slot. ``tests/runtime/gpu/test_budget.py``
holds it to that. ``render`` reads the frame's pixels as they are when it is called: an edit made
after ``upload`` (an overlay drawn before ``draw()``) is seen by comparing the frame with the staged
copy (or is the staging itself, when captured there), and the edited frame is staged again.

Nothing here blocks inside a cuda-python call: waits record an event and poll it
(``cuda_util.wait_event``). Threads: every public method makes the ops' device current in the
calling thread first. After :meth:`CudaOps.close` (idempotent) the post-processing methods run
the CPU reference, so ``Detections`` outlive their ``Segmenter``.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.gpu.cuda_util import (DeviceBuffer, check, check_versions, cuda_modules, device_compute_capability, integrated_gpu,
                        wait_event, wait_stream)
from mrcnn_edge.runtime.gpu.frame_slots import FrameSlot, HostFramePool, Lease, SlotRing
from mrcnn_edge.runtime.gpu.kernel_args import TILE, InstanceParams, LetterboxParams, grid, pack_arguments
from mrcnn_edge.runtime.gpu.kernel_build import KERNELS, compile_kernel, pick_arch
from mrcnn_edge.runtime.postprocess import MASK_THRESHOLD, ReferenceOps, expand_boxes, paint_order
from mrcnn_edge.runtime.preprocess import Letterbox

__all__ = ["CudaOps", "DeviceFrame", "FRAME_SLOTS", "check_frame"]

# Frame slots a CudaOps may keep when its owner does not say (Segmenter sizes them from its batch
# and pipeline depth); they are made on demand, so an unused one costs nothing.
FRAME_SLOTS = 4


# Bytes of pasted mask staged per round trip (device and pinned each); a box larger than this gets
# a buffer of its own size, freed again after the call.
PASTE_STAGING_BYTES = 8 << 20
# Frame-sized buffers grow to this multiple of the largest frame seen (a regrowth syncs the device).
HEADROOM = 1.25


def check_frame(frame: Any, what: str) -> np.ndarray:
    """``frame`` if it is a C-contiguous ``H×W×3`` uint8 array, else a one-line ``UserError``: the
    kernels index it as packed BGR bytes, so a gray ``H×W`` (or ``H×W×1``) frame would be read out
    of bounds. ``frames.as_bgr8`` converts other layouts (``Segmenter`` does, once per frame)."""
    if (not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3
            or not frame.flags.c_contiguous or frame.size == 0):
        desc = (f"shape {tuple(frame.shape)}, dtype {frame.dtype}{'' if frame.flags.c_contiguous else ', not contiguous'}"
                if isinstance(frame, np.ndarray) else type(frame).__name__)
        raise UserError(f"{what} takes a C-contiguous H×W×3 uint8 BGR frame, got {desc}: "
                        "convert it with mrcnn_edge.runtime.frames.as_bgr8")
    return frame


_LIBC: Any = None


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` (C-contiguous, same size) hold the same bytes: memcmp, which reads both once
    and allocates nothing (``np.array_equal`` would allocate a frame of booleans)."""
    global _LIBC
    if a.nbytes != b.nbytes:
        return False
    if a.ctypes.data == b.ctypes.data:
        return True
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None)
            _LIBC.memcmp.restype = ctypes.c_int
            _LIBC.memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return _LIBC.memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    except (OSError, AttributeError):  # no C library to ask: numpy, slower
        return bool(np.array_equal(a.reshape(-1), b.reshape(-1)))


@dataclass(frozen=True, eq=False)
class DeviceFrame:
    """A frame in a device slot of ``ops`` (valid while the slot holds ``generation``).

    ``rows``: int32 ``[N]``, the engine output rows of the detections that use it (set by
    ``Segmenter.finish``; their masks are those rows of the slot's copy of ``masks``). While any
    copy of it is alive, the slot is not given to another frame unless the ring is full.
    """

    ops: "CudaOps"
    slot: int
    generation: int
    rows: np.ndarray | None = None
    lease: Lease | None = None  # keeps the slot this frame's (frame_slots); copies share it


class CudaOps:
    """Pre/post-processing kernels on one GPU. ``stream``: order letterbox with the engine's stream
    (it must belong to ``device_id``)."""

    name = "cuda"
    fused_render = True  # render(): paste, cull, threshold and blend in one kernel, no id map on the bus

    def __init__(self, device_id: int = 0, stream: Any = None, slots: int = FRAME_SLOTS,
                 zero_copy: bool | None = None) -> None:
        """``slots``: the most frame slots kept (frames uploaded and not yet drawn: a pipeline's
        batch size times the batches between upload and draw); also the most drawn frames lent out."""
        driver, cudart, _ = cuda_modules()
        self._driver, self._cudart = driver, cudart
        self.device_id = int(device_id)
        self._closed = True  # until everything below exists: close() then frees only what was made
        self._modules: list[Any] = []
        self._own_stream = stream is None
        self._pre_stream: Any = stream
        self._post_stream: Any = None
        self._events: list[Any] = []   # the ops' own event; each slot has its own (SlotRing)
        self._ring: SlotRing | None = None
        self._drawn: HostFramePool | None = None
        self._dev: dict[str, DeviceBuffer] = {}
        self._host: dict[str, DeviceBuffer] = {}
        self._lock = threading.Lock()
        self._reference = ReferenceOps()
        check_versions()
        check(cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")
        check(cudart.cudaFree(0), "CUDA context creation")  # makes the primary context current
        self._ctx = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        self.arch = pick_arch(*device_compute_capability(self.device_id))
        # zero copy where the GPU shares the host's memory (None: decide from the device)
        self.zero_copy = integrated_gpu(self.device_id) if zero_copy is None else bool(zero_copy)
        self._closed = False
        try:
            self._fn: dict[str, Any] = {}
            for kernel, entries in KERNELS.items():
                module = check(driver.cuModuleLoadData(compile_kernel(kernel, self.arch).image), f"load {kernel}")
                self._modules.append(module)
                for entry in entries:
                    self._fn[entry] = check(driver.cuModuleGetFunction(module, entry.encode()), f"find {entry}")
            if self._own_stream:
                self._pre_stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._post_stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self._new_event()
        except BaseException:
            self.close()
            raise
        self._ring = SlotRing(cudart, self._new_event, self.zero_copy, slots, HEADROOM)
        # drawn frames lent to the caller: mapped on an integrated GPU (the kernel writes them where
        # the host reads them); a few more than the slots, for the sinks still writing older ones
        self._drawn = HostFramePool(cudart, self.zero_copy, 2 * max(int(slots), 1), HEADROOM)
        self._dev = {k: DeviceBuffer(cudart, headroom=HEADROOM if k in ("frame", "ids", "render") else 1.0)
                     for k in ("frame", "masks", "boxes", "order", "ids", "paste", "colours", "render")}
        self._host = {k: DeviceBuffer(cudart, pinned=True, headroom=HEADROOM)
                      for k in ("frame", "ids", "paste", "render")}

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def slots(self) -> list[FrameSlot]:
        """The frame slots made so far (for tests and benchmarks)."""
        return list(self._ring.slots) if self._ring is not None else []

    def _new_event(self) -> Any:
        # "Events created with this flag [cudaEventDisableTiming] specified and the
        # cudaEventBlockingSync flag not specified will provide the best performance when used
        # with cudaStreamWaitEvent() and cudaEventQuery()"
        event = check(self._cudart.cudaEventCreateWithFlags(self._cudart.cudaEventDisableTiming),
                      "cudaEventCreateWithFlags")
        self._events.append(event)  # [0] is the ops' own, the others the slots': destroyed at close
        return event

    # -- plumbing -----------------------------------------------------------------------------
    def _bind(self) -> None:
        """Make this GPU current in the calling thread (a pipeline calls from several threads).

        cudaSetDevice is per host thread: without it a worker thread's allocations and streams
        would land on device 0, and a launch on this device's stream would fail. It also makes the
        device's primary context current ("the context will be current on device immediately",
        CUDA 12+ cudaSetDevice), the one the modules were loaded in (``_ctx``): no cuCtxSetCurrent
        on top (one cuda-python call per method and frame fewer).
        """
        check(self._cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")

    def _launch(self, name: str, grid: tuple[int, int, int], args: Sequence[Any], stream: Any) -> None:
        pointers, holders = pack_arguments(name, args)
        check(self._driver.cuLaunchKernel(self._fn[name], grid[0], grid[1], grid[2], TILE[0], TILE[1], 1, 0, stream,
                                          ctypes.addressof(pointers), 0), f"launch {name}")
        del holders  # the driver copied the values at launch

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream: Any) -> None:
        k = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, stream), f"cudaMemcpyAsync {kind}")

    def _upload(self, key: str, array: np.ndarray, stream: Any) -> int:
        """Copy a small host array up. Pageable source: cudaMemcpyAsync stages it before returning
        ("the function will return once the pageable buffer has been copied to the staging memory")."""
        array = np.ascontiguousarray(array)
        ptr = self._dev[key].ensure(array.nbytes)
        self._copy(ptr, array.ctypes.data, array.nbytes, "HostToDevice", stream)
        return ptr

    def _finish(self, stream: Any, what: str) -> None:
        """Wait for everything enqueued on ``stream`` so far (event + poll, never a blocking call)."""
        wait_stream(self._cudart, self._events[0], stream, what)  # the ops' own event; each slot has its own

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the CUDA pre/post-processing was closed (its Segmenter is closed)")
        self._bind()

    # -- pre-processing -----------------------------------------------------------------------
    def frame_buffer(self, shape: Sequence[int]) -> np.ndarray | None:
        """A writable ``shape`` (H, W, 3) uint8 array in the mapped staging of a free frame slot, for
        a source to capture the next frame into (OpenCV's ``VideoCapture.read(image)`` fills the
        array it is given when the size matches); :meth:`upload` of that array then copies nothing.
        Only on an integrated GPU (elsewhere the staging is not what the kernels read): else None,
        as when every slot is taken (the source then reads into its own array)."""
        shape = tuple(int(v) for v in shape)
        if not self.zero_copy or len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            return None
        with self._lock:
            if self._closed or self._ring is None:
                return None
            self._bind()
            index = self._ring.take(capture=True)
            if index is None:
                return None
            slot = self._ring[index]
            # the slot's last copies and kernels may still read its staging: wait before lending it
            wait_event(self._cudart, slot.event, "wait for a frame slot")
            slot.generation += 1  # whatever it held is gone: older DeviceFrames fall back
            slot.shape, slot.mask_shape = None, None
            slot.pinned.ensure(int(np.prod(shape)))
            return slot.lend_staging(shape)

    def upload(self, frame: np.ndarray) -> DeviceFrame:
        """Enqueue a BGR uint8 ``H×W×3`` frame into a frame slot (async): nothing to copy for a frame
        captured into :meth:`frame_buffer`; else one CPU copy into the slot's pinned staging and, on
        a discrete GPU, one copy up."""
        check_frame(frame, "CudaOps.upload")
        with self._lock:
            self._open()
            assert self._ring is not None
            index = self._ring.find_captured(frame)
            captured = index is not None
            if index is None:
                index = self._ring.take()
                assert index is not None
            slot = self._ring[index]
            if not captured:
                # the slot's last copies and kernels may still be in flight (they read its memory)
                wait_event(self._cudart, slot.event, "wait for a frame slot")
                slot.pinned.ensure(frame.nbytes)
            slot.generation += 1
            slot.shape, slot.mask_shape = tuple(frame.shape), None
            if not captured:
                np.copyto(slot.staging(), frame)
            if not slot.zero_copy:  # zero copy: the kernels read the mapped staging itself
                self._copy(slot.frame.ensure(frame.nbytes), slot.pinned.ptr, frame.nbytes, "HostToDevice",
                           self._pre_stream)
                check(self._cudart.cudaEventRecord(slot.event, self._pre_stream), "cudaEventRecord")
            return DeviceFrame(self, index, slot.generation, lease=slot.lease())

    def letterbox_from(self, dframe: DeviceFrame, dst_ptr: int, canvas_hw: Sequence[int], mul: np.ndarray,
                       add: np.ndarray, fp16: bool) -> Letterbox:
        """Enqueue the model input ``[3,H,W]`` at ``dst_ptr`` from an uploaded frame (async)."""
        with self._lock:
            self._open()
            assert self._ring is not None
            slot = self._ring[dframe.slot]
            if slot.generation != dframe.generation or slot.shape is None:
                raise RuntimeError("letterbox_from() got a frame whose device slot was reused")
            box = Letterbox.fit(slot.shape[:2], canvas_hw)
            params = LetterboxParams.make(box, slot.shape[1] * 3, mul, add)
            self._launch("letterbox_f16" if fp16 else "letterbox_f32", grid(box.canvas_h, box.canvas_w),
                         [slot.frame_ptr, params, dst_ptr], self._pre_stream)
            # the next upload into this slot waits for this read of its frame
            check(self._cudart.cudaEventRecord(slot.event, self._pre_stream), "cudaEventRecord")
            return box

    def letterbox(self, frame: np.ndarray, dst_ptr: int, canvas_hw: Sequence[int], mul: np.ndarray,
                  add: np.ndarray, fp16: bool) -> Letterbox:
        """Enqueue the model input of one BGR uint8 frame into ``[3,H,W]`` at ``dst_ptr`` (async)."""
        return self.letterbox_from(self.upload(frame), dst_ptr, canvas_hw, mul, add, fp16)

    def zero(self, dst_ptr: int, nbytes: int) -> None:
        """Enqueue zeroing of device memory (the unused slots of a partial batch)."""
        with self._lock:
            self._open()
            check(self._cudart.cudaMemsetAsync(dst_ptr, 0, nbytes, self._pre_stream), "cudaMemsetAsync")

    def keep_masks(self, frames: Sequence[DeviceFrame], masks_ptr: int, rows: int, mask_size: int,
                   itemsize: int = 4) -> None:
        """Copy the engine's ``masks`` output ``[B,rows,M,M]`` (float32, or float16 with
        ``itemsize`` 2: kept as the half bits the engine wrote and read so by the ``_f16`` kernels)
        at ``masks_ptr`` into the frames' slots, on the device (async, on the engine's stream:
        ordered before its next run)."""
        if itemsize not in (2, 4):
            raise ValueError(f"masks must be float32 or float16, got {itemsize}-byte elements")
        item = rows * mask_size * mask_size * itemsize
        with self._lock:
            self._open()
            assert self._ring is not None
            for b, dframe in enumerate(frames):
                slot = self._ring[dframe.slot]
                if slot.generation != dframe.generation:
                    continue
                self._copy(slot.masks.ensure(item), masks_ptr + b * item, item, "DeviceToDevice", self._pre_stream)
                slot.mask_shape, slot.mask_half = (rows, mask_size), itemsize == 2
                check(self._cudart.cudaEventRecord(slot.event, self._pre_stream), "cudaEventRecord")

    def _resident(self, dframe: DeviceFrame | None, m: int) -> FrameSlot | None:
        """The slot still holding ``dframe`` with its masks (``M`` = ``m``), else None."""
        if dframe is None or dframe.ops is not self or self._ring is None:
            return None
        slot = self._ring[dframe.slot]
        if slot.generation != dframe.generation or slot.mask_shape is None or slot.mask_shape[1] != m:
            return None
        return slot

    def _pixels(self, slot: FrameSlot, image: np.ndarray) -> int | None:
        """Device address of ``image``'s pixels as they are now, from ``slot`` (None: not the same
        frame; upload it). The frame captured into the slot is its staging, edits included; any
        other array is compared with the staged copy, and an edited one (an overlay drawn on it
        after ``upload``) is staged again (and copied up, on a discrete GPU) once the slot's earlier
        work is done, so that a second draw of it finds it there."""
        if slot.shape != tuple(image.shape):
            return None
        if slot.holds(image) or _same_bytes(image, slot.staging()):
            return slot.frame_ptr
        wait_event(self._cudart, slot.event, "wait for a frame slot")
        np.copyto(slot.staging(), image)
        if not slot.zero_copy:
            self._copy(slot.frame.ptr, slot.pinned.ptr, image.nbytes, "HostToDevice", self._post_stream)
        return slot.frame_ptr

    # -- post-processing (the ReferenceOps interface) -------------------------------------------
    def paste_regions(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                      threshold: float = MASK_THRESHOLD) -> list[tuple[int, int, np.ndarray] | None]:
        """Per detection ``(y0, x0, bool [rows, cols])``: its pasted mask over its box clipped to the
        frame (None when the box misses it), as ``ReferenceOps.paste_regions``. Memory follows the boxes."""
        h, w = int(frame_hw[0]), int(frame_hw[1])
        n = len(masks)
        out: list[tuple[int, int, np.ndarray] | None] = [None] * n
        if n == 0:
            return out
        pboxes = expand_boxes(boxes, np.asarray(masks).shape[-1])
        # (detection, x0, y0, rows, cols) of each paste box clipped to the frame; misses skipped
        regions = []
        for i, (bx0, by0, bx1, by1) in enumerate(pboxes.tolist()):
            x0, y0, x1, y1 = max(bx0, 0), max(by0, 0), min(bx1 + 1, w), min(by1 + 1, h)
            if x1 > x0 and y1 > y0:
                regions.append((i, x0, y0, y1 - y0, x1 - x0))
        if not regions:
            return out
        with self._lock:
            if self._closed:
                return self._reference.paste_regions(masks, boxes, frame_hw, threshold)
            self._bind()
            masks = np.ascontiguousarray(masks, dtype=np.float32)
            mp = self._upload("masks", masks, self._post_stream)
            bp = self._upload("boxes", pboxes, self._post_stream)
            m = masks.shape[-1]
            areas = [r * c for _, _, _, r, c in regions]
            # all boxes in one round when they fit the staging size; one box never splits
            budget = max(min(PASTE_STAGING_BYTES, sum(areas)), max(areas))
            dev, host = self._dev["paste"], self._host["paste"]
            try:
                dev.ensure(budget)
                host.ensure(budget)
                start = 0
                while start < len(regions):  # rounds of boxes that fit the staging buffer together
                    end, used = start, 0
                    while end < len(regions) and used + areas[end] <= budget:
                        used += areas[end]
                        end += 1
                    offset = 0
                    for i, x0, y0, rows, cols in regions[start:end]:
                        self._launch("paste_mask_u8", grid(rows, cols),
                                     [mp, bp, i, m, x0, y0, rows, cols, threshold, dev.ptr + offset],
                                     self._post_stream)
                        offset += rows * cols
                    self._copy(host.ptr, dev.ptr, used, "DeviceToHost", self._post_stream)
                    self._finish(self._post_stream, "paste masks")
                    staged = host.view((used,), np.uint8)
                    offset = 0
                    for i, x0, y0, rows, cols in regions[start:end]:
                        out[i] = (y0, x0, staged[offset:offset + rows * cols].reshape(rows, cols).astype(bool))
                        offset += rows * cols
                    start = end
            finally:
                if dev.size > PASTE_STAGING_BYTES:  # one huge box: do not keep its buffers
                    self._finish(self._post_stream, "paste masks")
                    dev.free()
                    host.free()
        return out

    def paste_masks(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                    threshold: float = MASK_THRESHOLD) -> np.ndarray:
        """bool ``[N,h,w]``, as ``ReferenceOps.paste_masks``; the GPU computes each box's region only."""
        # zero pages are mapped lazily: only the box regions written below cost memory
        out = np.zeros((len(masks), int(frame_hw[0]), int(frame_hw[1])), dtype=bool)
        for i, region in enumerate(self.paste_regions(masks, boxes, frame_hw, threshold)):
            if region is not None:
                y0, x0, crop = region
                out[i, y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        return out

    def _instances(self, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                   dframe: DeviceFrame | None) -> tuple[int, int, int, Any]:
        """Enqueue what the tiled kernels read: ``(masks, boxes, order, slot)`` device pointers.

        Masks come from the frame's slot when it still holds them (``dframe.rows``: the engine
        rows these detections are), else they are uploaded. Boxes are indexed like the masks.
        """
        m = np.asarray(masks).shape[-1]
        pboxes = expand_boxes(boxes, m)
        order = paint_order(scores)
        slot = self._resident(dframe, m) if dframe is not None else None
        rows = getattr(dframe, "rows", None) if slot is not None else None
        if slot is not None and rows is not None and len(rows) == len(pboxes):
            # boxes and order in engine rows: the masks are used where the engine left them
            all_rows = slot.mask_shape[0]
            full = np.zeros((all_rows, 4), np.int32)
            full[rows] = pboxes
            check(self._cudart.cudaStreamWaitEvent(self._post_stream, slot.event, 0), "cudaStreamWaitEvent")
            return (slot.masks.ptr, self._upload("boxes", full, self._post_stream),
                    self._upload("order", np.asarray(rows, np.int32)[order], self._post_stream), slot)
        mp = self._upload("masks", np.ascontiguousarray(masks, dtype=np.float32), self._post_stream)
        return mp, self._upload("boxes", pboxes, self._post_stream), self._upload("order", order, self._post_stream), None

    def instance_map(self, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray, frame_hw: Sequence[int],
                     threshold: float = MASK_THRESHOLD) -> np.ndarray:
        h, w = int(frame_hw[0]), int(frame_hw[1])
        n = len(masks)
        if n == 0:
            return np.zeros((h, w), dtype=np.int32)
        with self._lock:
            if self._closed:
                return self._reference.instance_map(masks, boxes, scores, frame_hw, threshold)
            self._bind()
            mp, bp, op, _ = self._instances(masks, boxes, scores, None)
            ids = self._dev["ids"].ensure(h * w * 4)
            params = InstanceParams(n, np.asarray(masks).shape[-1], h, w, 0, 0, threshold, 0.0)
            self._launch("instance_map", grid(h, w), [mp, bp, op, params, ids], self._post_stream)
            host = self._host["ids"]
            host.ensure(h * w * 4)
            self._copy(host.ptr, ids, h * w * 4, "DeviceToHost", self._post_stream)
            self._finish(self._post_stream, "instance map")
            return host.view((h, w), np.int32).copy()

    def render(self, frame: np.ndarray, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               colours: np.ndarray, alpha: float = 0.5, threshold: float = MASK_THRESHOLD,
               device: DeviceFrame | None = None) -> np.ndarray:
        """New BGR uint8 frame with the masks blended in (= ``overlay(frame, instance_map(...))``).

        With ``device`` still resident, the masks are read where the engine left them and the frame
        where it was uploaded (when its pixels are still those: see :meth:`_pixels`). The drawn
        frame is pinned memory lent to the caller (no copy; reused once every view of it is gone).
        """
        check_frame(frame, "CudaOps.render")
        h, w = frame.shape[:2]
        n = len(masks)
        if n == 0:
            return frame.copy()
        with self._lock:
            if self._closed:
                return self._reference.render(frame, masks, boxes, scores, colours, alpha, threshold)
            self._bind()
            mp, bp, op, slot = self._instances(masks, boxes, scores, device)
            colours = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
            kernel = "render_instances"
            src = self._pixels(slot, frame) if slot is not None else None
            if slot is not None:  # colours indexed like the engine rows, as boxes and masks
                full = np.zeros((slot.mask_shape[0], 3), np.uint8)
                full[device.rows] = colours  # type: ignore[union-attr]
                colours = full
                if slot.mask_half:  # the engine's fp16 masks, read as they are
                    kernel = "render_instances_f16"
            if src is None:
                src = self._upload("frame", frame, self._post_stream)
            cp = self._upload("colours", colours, self._post_stream)
            assert self._drawn is not None
            lent = self._drawn.take(frame.nbytes)
            host = lent if lent is not None else self._host["render"]  # all lent out: copy out of a scratch one
            host.ensure(frame.nbytes)
            # zero copy: the kernel writes the mapped buffer the host reads; else it comes down once
            dst = host.device_ptr if self.zero_copy and lent is not None else self._dev["render"].ensure(frame.nbytes)
            params = InstanceParams(n, np.asarray(masks).shape[-1], h, w, w * 3, w * 3, threshold, alpha)
            self._launch(kernel, grid(h, w), [src, mp, bp, op, cp, params, dst], self._post_stream)
            if dst != host.device_ptr:
                self._copy(host.ptr, dst, frame.nbytes, "DeviceToHost", self._post_stream)
            if slot is not None:  # the slot's frame and masks are read until here
                check(self._cudart.cudaEventRecord(slot.event, self._post_stream), "cudaEventRecord")
            self._finish(self._post_stream, "render")
            if lent is None:
                return host.view(frame.shape, np.uint8).copy()
            return self._drawn.lend(lent, tuple(frame.shape))

    def overlay(self, frame: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        h, w = ids.shape
        if not (ids > 0).any():
            return frame.copy()
        with self._lock:
            if self._closed:
                return self._reference.overlay(frame, ids, colours, alpha)
            self._bind()
            fp = self._upload("frame", frame, self._post_stream)
            ip = self._upload("ids", ids.astype(np.int32), self._post_stream)
            cp = self._upload("colours", np.asarray(colours, dtype=np.uint8).reshape(-1, 3), self._post_stream)
            self._launch("overlay", grid(h, w), [fp, w * 3, ip, cp, h, w, alpha], self._post_stream)
            host = self._host["frame"]
            host.ensure(frame.nbytes)
            self._copy(host.ptr, fp, frame.nbytes, "DeviceToHost", self._post_stream)
            self._finish(self._post_stream, "overlay")
            return host.view(frame.shape, np.uint8).copy()

    def close(self) -> None:
        """Free buffers, events, streams and modules once; later calls do nothing. Waits for a
        method running in another thread (the lock) and for the work still queued on the streams."""
        with self._lock:
            if not self._modules and self._post_stream is None and not self._dev and not self._events:
                self._closed = True
                return
            self._closed = True
            try:
                self._bind()
                for stream in (self._pre_stream, self._post_stream):
                    if stream is not None and self._events:
                        self._finish(stream, "close")
            except RuntimeError:
                pass  # a broken context: still release what can be released
            for slot in self._ring.slots if self._ring is not None else []:
                slot.free()  # a captured frame still held keeps its staging until it goes
            if self._drawn is not None:
                self._drawn.free()  # likewise a drawn frame still held
            for buf in (*self._dev.values(), *self._host.values()):
                buf.free()
            self._ring, self._drawn, self._dev, self._host = None, None, {}, {}
            for event in self._events:
                self._cudart.cudaEventDestroy(event)
            self._events = []
            if self._post_stream is not None:
                self._cudart.cudaStreamDestroy(self._post_stream)
                self._post_stream = None
            if self._own_stream and self._pre_stream is not None:
                self._cudart.cudaStreamDestroy(self._pre_stream)
            self._pre_stream = None
            for module in self._modules:
                self._driver.cuModuleUnload(module)
            self._modules = []
