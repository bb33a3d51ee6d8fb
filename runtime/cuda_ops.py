"""GPU pre/post-processing: the NVRTC-compiled kernels of ``runtime/kernels`` behind small methods.

:class:`CudaOps` has the methods of ``postprocess.ReferenceOps`` (``paste_masks``,
``instance_map``, ``overlay``), host arrays in and out, plus :meth:`CudaOps.letterbox`, which
writes the model input straight into a device buffer (the TensorRT backend's ``images``), so only
the uint8 frame crosses the bus. Kernels are compiled once per GPU architecture and cached on disk
(``kernel_build``). Device buffers grow to the largest frame seen and are then reused; the mask
paste works one box at a time through a staging buffer of bounded size, so its memory follows the
boxes, not ``N x H x W``.

Threads: every public method makes the ops' device (and its primary context) current in the
calling thread first, so a pipeline's worker threads work on ``device_id``, not on device 0.
After :meth:`CudaOps.close` (idempotent) the post-processing methods run the CPU reference, so
``Detections`` outlive their ``Segmenter``.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any, Sequence

import numpy as np

from .cuda_util import check, check_versions, cuda_modules, device_compute_capability
from .kernel_build import KERNELS, compile_kernel, pick_arch
from .postprocess import MASK_THRESHOLD, ReferenceOps, expand_boxes, paint_order
from .preprocess import Letterbox

__all__ = ["CudaOps", "LetterboxParams", "SIGNATURES", "pack_arguments"]


class LetterboxParams(ctypes.Structure):
    """Mirror of ``mre::LetterboxParams`` (kernels/preprocess.cuh); 4-byte fields, no padding."""

    _fields_ = [
        ("src_h", ctypes.c_int), ("src_w", ctypes.c_int), ("src_pitch", ctypes.c_int),
        ("dst_h", ctypes.c_int), ("dst_w", ctypes.c_int), ("out_h", ctypes.c_int), ("out_w", ctypes.c_int),
        ("scale_y", ctypes.c_float), ("scale_x", ctypes.c_float),
        ("mul", ctypes.c_float * 3), ("add", ctypes.c_float * 3),
    ]

    @classmethod
    def make(cls, box: Letterbox, pitch: int, mul: np.ndarray, add: np.ndarray) -> "LetterboxParams":
        # scale = in/out in float32, exactly what mre::interp_scale and torch compute
        return cls(box.frame_h, box.frame_w, pitch, box.canvas_h, box.canvas_w, box.resized_h, box.resized_w,
                   float(np.float32(box.frame_h) / np.float32(box.resized_h)),
                   float(np.float32(box.frame_w) / np.float32(box.resized_w)),
                   (ctypes.c_float * 3)(*map(float, mul)), (ctypes.c_float * 3)(*map(float, add)))


# Parameters of each kernel entry point, in order ("ptr": device address, "int", "float", or a
# ctypes Structure passed by value). Launches are packed from this table; a test checks it
# against the parameter lists in the PTX that NVRTC compiles.
SIGNATURES: dict[str, tuple[Any, ...]] = {
    "letterbox_f32": ("ptr", LetterboxParams, "ptr"),
    "letterbox_f16": ("ptr", LetterboxParams, "ptr"),
    "paste_mask_u8": ("ptr", "ptr", "int", "int", "int", "int", "int", "int", "float", "ptr"),
    "instance_map": ("ptr", "ptr", "ptr", "int", "int", "int", "int", "float", "ptr"),
    "overlay": ("ptr", "int", "ptr", "ptr", "int", "int", "float"),
}
_SCALARS = {"ptr": ctypes.c_void_p, "int": ctypes.c_int, "float": ctypes.c_float}
# Bytes of pasted mask staged per round trip (device and pinned each); a box larger than this gets
# a buffer of its own size, freed again after the call.
PASTE_STAGING_BYTES = 8 << 20


def pack_arguments(kernel: str, args: Sequence[Any]) -> tuple[Any, list[Any]]:
    """``(void*[n], holders)`` for cuLaunchKernel's kernelParams; keep ``holders`` alive until launched."""
    signature = SIGNATURES[kernel]
    if len(args) != len(signature):
        raise TypeError(f"{kernel} takes {len(signature)} arguments, got {len(args)}")
    holders = []
    for kind, value in zip(signature, args):
        if isinstance(kind, str):
            holders.append(_SCALARS[kind](value))
        elif isinstance(value, kind):
            holders.append(value)
        else:
            raise TypeError(f"{kernel}: expected {kind.__name__}, got {type(value).__name__}")
    return (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders]), holders


class _Buffer:
    """Device (or pinned host) memory that grows on demand and is otherwise reused."""

    def __init__(self, cudart: Any, pinned: bool = False) -> None:
        self._cudart, self._pinned, self.ptr, self.size = cudart, pinned, 0, 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.size:
            self.free()
            alloc = self._cudart.cudaMallocHost if self._pinned else self._cudart.cudaMalloc
            self.ptr = int(check(alloc(max(nbytes, 256)), "cuda allocation"))
            self.size = max(nbytes, 256)
        return self.ptr

    def view(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        count = int(np.prod(shape))
        raw = (ctypes.c_uint8 * (count * np.dtype(dtype).itemsize)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            (self._cudart.cudaFreeHost if self._pinned else self._cudart.cudaFree)(self.ptr)
            self.ptr, self.size = 0, 0


class CudaOps:
    """Pre/post-processing kernels on one GPU. ``stream``: order letterbox with the engine's stream
    (it must belong to ``device_id``)."""

    name = "cuda"

    def __init__(self, device_id: int = 0, stream: Any = None) -> None:
        driver, cudart, _ = cuda_modules()
        self._driver, self._cudart = driver, cudart
        self.device_id = int(device_id)
        self._closed = True  # until everything below exists: close() then frees only what was made
        self._modules: list[Any] = []
        self._own_stream = stream is None
        self._pre_stream: Any = stream
        self._post_stream: Any = None
        self._staging: tuple[_Buffer, ...] = ()
        self._dev: dict[str, _Buffer] = {}
        self._host: dict[str, _Buffer] = {}
        self._lock = threading.Lock()
        self._reference = ReferenceOps()
        check_versions()
        check(cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")
        check(cudart.cudaFree(0), "CUDA context creation")  # makes the primary context current
        self._ctx = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        self.arch = pick_arch(*device_compute_capability(self.device_id))
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
        except BaseException:
            self.close()
            raise
        self._staging = (_Buffer(cudart, pinned=True), _Buffer(cudart))  # frame upload: pinned, device
        self._dev = {k: _Buffer(cudart) for k in ("frame", "masks", "boxes", "order", "ids", "paste", "colours")}
        self._host = {k: _Buffer(cudart, pinned=True) for k in ("frame", "ids", "paste")}

    @property
    def closed(self) -> bool:
        return self._closed

    # -- plumbing -----------------------------------------------------------------------------
    def _bind(self) -> None:
        """Make this GPU current in the calling thread (a pipeline calls from several threads).

        cudaSetDevice is per host thread: without it a worker thread's allocations and streams
        would land on device 0, and a launch on this device's stream would fail.
        """
        check(self._cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")
        check(self._driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def _launch(self, name: str, grid: tuple[int, int, int], args: Sequence[Any], stream: Any) -> None:
        pointers, holders = pack_arguments(name, args)
        check(self._driver.cuLaunchKernel(self._fn[name], grid[0], grid[1], grid[2], 32, 8, 1, 0, stream,
                                          ctypes.addressof(pointers), 0), f"launch {name}")
        del holders  # the driver copied the values at launch

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream: Any) -> None:
        k = getattr(self._cudart.cudaMemcpyKind, f"cudaMemcpy{kind}")
        check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, k, stream), f"cudaMemcpyAsync {kind}")

    def _upload(self, key: str, array: np.ndarray, stream: Any) -> int:
        array = np.ascontiguousarray(array)
        ptr = self._dev[key].ensure(array.nbytes)
        self._copy(ptr, array.ctypes.data, array.nbytes, "HostToDevice", stream)
        return ptr

    def _sync(self, stream: Any) -> None:
        check(self._cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    @staticmethod
    def _grid(height: int, width: int, depth: int = 1) -> tuple[int, int, int]:
        return (width + 31) // 32, (height + 7) // 8, depth

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the CUDA pre/post-processing was closed (its Segmenter is closed)")
        self._bind()

    # -- pre-processing -----------------------------------------------------------------------
    def letterbox(self, frame: np.ndarray, dst_ptr: int, canvas_hw: Sequence[int], mul: np.ndarray,
                  add: np.ndarray, fp16: bool) -> Letterbox:
        """Enqueue the model input of one BGR uint8 frame into ``[3,H,W]`` at ``dst_ptr`` (async)."""
        box = Letterbox.fit(frame.shape[:2], canvas_hw)
        with self._lock:
            self._open()
            pinned, device = self._staging
            self._sync(self._pre_stream)  # the staging may still be in flight
            pinned.ensure(frame.nbytes)
            np.copyto(pinned.view(frame.shape, np.uint8), frame)
            self._copy(device.ensure(frame.nbytes), pinned.ptr, frame.nbytes, "HostToDevice", self._pre_stream)
            params = LetterboxParams.make(box, frame.shape[1] * 3, mul, add)
            self._launch("letterbox_f16" if fp16 else "letterbox_f32", self._grid(box.canvas_h, box.canvas_w),
                         [device.ptr, params, dst_ptr], self._pre_stream)
        return box

    def zero(self, dst_ptr: int, nbytes: int) -> None:
        """Enqueue zeroing of device memory (the unused slots of a partial batch)."""
        with self._lock:
            self._open()
            check(self._cudart.cudaMemsetAsync(dst_ptr, 0, nbytes, self._pre_stream), "cudaMemsetAsync")

    # -- post-processing (the ReferenceOps interface) -------------------------------------------
    def _masks_and_boxes(self, masks: np.ndarray, pboxes: np.ndarray) -> tuple[int, int, int]:
        masks = np.ascontiguousarray(masks, dtype=np.float32)
        mp = self._upload("masks", masks, self._post_stream)
        bp = self._upload("boxes", np.ascontiguousarray(pboxes, dtype=np.int32), self._post_stream)
        return mp, bp, masks.shape[-1]

    def paste_masks(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                    threshold: float = MASK_THRESHOLD) -> np.ndarray:
        """bool ``[N,h,w]``, as ``ReferenceOps.paste_masks``; the GPU computes each box's region only."""
        h, w = int(frame_hw[0]), int(frame_hw[1])
        n = len(masks)
        # zero pages are mapped lazily: only the box regions written below cost memory
        out = np.zeros((n, h, w), dtype=bool)
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
                return self._reference.paste_masks(masks, boxes, frame_hw, threshold)
            self._bind()
            mp, bp, m = self._masks_and_boxes(masks, pboxes)
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
                    while end < len(regions) and used + regions[end][3] * regions[end][4] <= budget:
                        used += regions[end][3] * regions[end][4]
                        end += 1
                    offset = 0
                    for i, x0, y0, rows, cols in regions[start:end]:
                        self._launch("paste_mask_u8", self._grid(rows, cols),
                                     [mp, bp, i, m, x0, y0, rows, cols, threshold, dev.ptr + offset],
                                     self._post_stream)
                        offset += rows * cols
                    self._copy(host.ptr, dev.ptr, used, "DeviceToHost", self._post_stream)
                    self._sync(self._post_stream)
                    staged = host.view((used,), np.uint8)
                    offset = 0
                    for i, x0, y0, rows, cols in regions[start:end]:
                        out[i, y0:y0 + rows, x0:x0 + cols] = staged[offset:offset + rows * cols].reshape(rows, cols)
                        offset += rows * cols
                    start = end
            finally:
                if dev.size > PASTE_STAGING_BYTES:  # one huge box: do not keep its buffers
                    self._sync(self._post_stream)
                    dev.free()
                    host.free()
        return out

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
            mp, bp, m = self._masks_and_boxes(masks, expand_boxes(boxes, np.asarray(masks).shape[-1]))
            op = self._upload("order", paint_order(scores), self._post_stream)
            ids = self._dev["ids"].ensure(h * w * 4)
            self._launch("instance_map", self._grid(h, w),
                         [mp, bp, op, n, m, h, w, threshold, ids], self._post_stream)
            host = self._host["ids"]
            host.ensure(h * w * 4)
            self._copy(host.ptr, ids, h * w * 4, "DeviceToHost", self._post_stream)
            self._sync(self._post_stream)
            return host.view((h, w), np.int32).copy()

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
            self._launch("overlay", self._grid(h, w),
                         [fp, w * 3, ip, cp, h, w, alpha], self._post_stream)
            host = self._host["frame"]
            host.ensure(frame.nbytes)
            self._copy(host.ptr, fp, frame.nbytes, "DeviceToHost", self._post_stream)
            self._sync(self._post_stream)
            return host.view(frame.shape, np.uint8).copy()

    def close(self) -> None:
        """Free buffers, streams and modules once; later calls do nothing. Waits for a method
        running in another thread (the lock) and for the work still queued on the streams."""
        with self._lock:
            if not self._modules and self._post_stream is None and not self._dev:
                self._closed = True
                return
            self._closed = True
            try:
                self._bind()
                for stream in (self._pre_stream, self._post_stream):
                    if stream is not None:
                        self._cudart.cudaStreamSynchronize(stream)
            except RuntimeError:
                pass  # a broken context: still release what can be released
            for buf in (*self._staging, *self._dev.values(), *self._host.values()):
                buf.free()
            self._staging, self._dev, self._host = (), {}, {}
            if self._post_stream is not None:
                self._cudart.cudaStreamDestroy(self._post_stream)
                self._post_stream = None
            if self._own_stream and self._pre_stream is not None:
                self._cudart.cudaStreamDestroy(self._pre_stream)
            self._pre_stream = None
            for module in self._modules:
                self._driver.cuModuleUnload(module)
            self._modules = []
