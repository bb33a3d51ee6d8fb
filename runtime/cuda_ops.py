"""GPU pre/post-processing: the NVRTC-compiled kernels of ``runtime/kernels`` behind small methods.

:class:`CudaOps` has the methods of ``postprocess.ReferenceOps`` (``paste_masks``,
``instance_map``, ``overlay``), host arrays in and out, plus :meth:`CudaOps.letterbox`, which
writes the model input straight into a device buffer (the TensorRT backend's ``images``), so only
the uint8 frame crosses the bus. Kernels are compiled once per GPU architecture and cached on disk
(``kernel_build``). Device buffers grow to the largest frame seen and are then reused.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any, Sequence

import numpy as np

from .cuda_util import check, cuda_modules, device_compute_capability
from .kernel_build import KERNELS, compile_kernel, pick_arch
from .postprocess import MASK_THRESHOLD, expand_boxes, paint_order
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
    "paste_masks_u8": ("ptr", "ptr", "int", "int", "int", "int", "float", "ptr"),
    "instance_map": ("ptr", "ptr", "ptr", "int", "int", "int", "int", "float", "ptr"),
    "overlay": ("ptr", "int", "ptr", "ptr", "int", "int", "float"),
}
_SCALARS = {"ptr": ctypes.c_void_p, "int": ctypes.c_int, "float": ctypes.c_float}


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
    """Pre/post-processing kernels on one GPU. ``stream``: order letterbox with the engine's stream."""

    name = "cuda"

    def __init__(self, device_id: int = 0, stream: Any = None) -> None:
        driver, cudart, _ = cuda_modules()
        self._driver, self._cudart = driver, cudart
        check(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        check(cudart.cudaFree(0), "CUDA context creation")  # makes the primary context current
        self._ctx = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        self.arch = pick_arch(*device_compute_capability(device_id))
        self._fn: dict[str, Any] = {}
        self._modules = []
        for kernel, entries in KERNELS.items():
            module = check(driver.cuModuleLoadData(compile_kernel(kernel, self.arch).image), f"load {kernel}")
            self._modules.append(module)
            for entry in entries:
                self._fn[entry] = check(driver.cuModuleGetFunction(module, entry.encode()), f"find {entry}")
        self._own_stream = stream is None
        self._pre_stream = stream if stream is not None else check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._post_stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        self._staging = (_Buffer(cudart, pinned=True), _Buffer(cudart))  # frame upload: pinned, device
        self._dev = {k: _Buffer(cudart) for k in ("frame", "masks", "boxes", "order", "ids", "out", "colours")}
        self._host = {k: _Buffer(cudart, pinned=True) for k in ("frame", "ids", "out")}

    # -- plumbing -----------------------------------------------------------------------------
    def _launch(self, name: str, grid: tuple[int, int, int], args: Sequence[Any], stream: Any) -> None:
        check(self._driver.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")  # callers may be other threads
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

    @staticmethod
    def _grid(height: int, width: int, depth: int = 1) -> tuple[int, int, int]:
        return (width + 31) // 32, (height + 7) // 8, depth

    # -- pre-processing -----------------------------------------------------------------------
    def letterbox(self, frame: np.ndarray, dst_ptr: int, canvas_hw: Sequence[int], mul: np.ndarray,
                  add: np.ndarray, fp16: bool) -> Letterbox:
        """Enqueue the model input of one BGR uint8 frame into ``[3,H,W]`` at ``dst_ptr`` (async)."""
        box = Letterbox.fit(frame.shape[:2], canvas_hw)
        pinned, device = self._staging
        check(self._cudart.cudaStreamSynchronize(self._pre_stream), "sync")  # the staging may be in flight
        pinned.ensure(frame.nbytes)
        np.copyto(pinned.view(frame.shape, np.uint8), frame)
        self._copy(device.ensure(frame.nbytes), pinned.ptr, frame.nbytes, "HostToDevice", self._pre_stream)
        params = LetterboxParams.make(box, frame.shape[1] * 3, mul, add)
        self._launch("letterbox_f16" if fp16 else "letterbox_f32", self._grid(box.canvas_h, box.canvas_w),
                     [device.ptr, params, dst_ptr], self._pre_stream)
        return box

    def zero(self, dst_ptr: int, nbytes: int) -> None:
        """Enqueue zeroing of device memory (the unused slots of a partial batch)."""
        check(self._cudart.cudaMemsetAsync(dst_ptr, 0, nbytes, self._pre_stream), "cudaMemsetAsync")

    # -- post-processing (the ReferenceOps interface) -------------------------------------------
    def _masks_and_boxes(self, masks: np.ndarray, boxes: np.ndarray) -> tuple[int, int, int]:
        masks = np.ascontiguousarray(masks, dtype=np.float32)
        m = masks.shape[-1]
        mp = self._upload("masks", masks, self._post_stream)
        bp = self._upload("boxes", expand_boxes(boxes, m), self._post_stream)
        return mp, bp, m

    def paste_masks(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                    threshold: float = MASK_THRESHOLD) -> np.ndarray:
        h, w = int(frame_hw[0]), int(frame_hw[1])
        n = len(masks)
        if n == 0:
            return np.zeros((0, h, w), dtype=bool)
        with self._lock:
            mp, bp, m = self._masks_and_boxes(masks, boxes)
            out = self._dev["out"].ensure(n * h * w)
            self._launch("paste_masks_u8", self._grid(h, w, n),
                         [mp, bp, n, m, h, w, threshold, out], self._post_stream)
            host = self._host["out"]
            host.ensure(n * h * w)
            self._copy(host.ptr, out, n * h * w, "DeviceToHost", self._post_stream)
            check(self._cudart.cudaStreamSynchronize(self._post_stream), "sync")
            return host.view((n, h, w), np.uint8).astype(bool)

    def instance_map(self, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray, frame_hw: Sequence[int],
                     threshold: float = MASK_THRESHOLD) -> np.ndarray:
        h, w = int(frame_hw[0]), int(frame_hw[1])
        n = len(masks)
        if n == 0:
            return np.zeros((h, w), dtype=np.int32)
        with self._lock:
            mp, bp, m = self._masks_and_boxes(masks, boxes)
            op = self._upload("order", paint_order(scores), self._post_stream)
            ids = self._dev["ids"].ensure(h * w * 4)
            self._launch("instance_map", self._grid(h, w),
                         [mp, bp, op, n, m, h, w, threshold, ids], self._post_stream)
            host = self._host["ids"]
            host.ensure(h * w * 4)
            self._copy(host.ptr, ids, h * w * 4, "DeviceToHost", self._post_stream)
            check(self._cudart.cudaStreamSynchronize(self._post_stream), "sync")
            return host.view((h, w), np.int32).copy()

    def overlay(self, frame: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        h, w = ids.shape
        if not (ids > 0).any():
            return frame.copy()
        with self._lock:
            fp = self._upload("frame", frame, self._post_stream)
            ip = self._upload("ids", ids.astype(np.int32), self._post_stream)
            cp = self._upload("colours", np.asarray(colours, dtype=np.uint8).reshape(-1, 3), self._post_stream)
            self._launch("overlay", self._grid(h, w),
                         [fp, w * 3, ip, cp, h, w, alpha], self._post_stream)
            host = self._host["frame"]
            host.ensure(frame.nbytes)
            self._copy(host.ptr, fp, frame.nbytes, "DeviceToHost", self._post_stream)
            check(self._cudart.cudaStreamSynchronize(self._post_stream), "sync")
            return host.view(frame.shape, np.uint8).copy()

    def close(self) -> None:
        for buf in (*self._staging, *self._dev.values(), *self._host.values()):
            buf.free()
        self._cudart.cudaStreamDestroy(self._post_stream)
        if self._own_stream:
            self._cudart.cudaStreamDestroy(self._pre_stream)
        for module in self._modules:
            self._driver.cuModuleUnload(module)
        self._modules = []
