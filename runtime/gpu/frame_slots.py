"""Frame-sized memory of the GPU path, lent out and taken back by reference: the frame slots and the
drawn frames of ``CudaOps``.

A *frame slot* holds one uploaded frame (its pinned staging, the device copy on a discrete GPU) and
the engine's masks for it, from the upload until the frame is drawn. A slot is reused only when

- no ``DeviceFrame`` of its upload is alive any more (a :class:`Lease` held by every copy of it:
  ``Work.device``, ``Detections.device``): while one is, ``draw()`` still finds the frame and masks
  there; past :attr:`SlotRing.max_slots` slots the least recently used such slot is taken anyway
  (its ``draw()`` then uploads again: slower, never wrong);
- no array over its staging is alive: a frame *captured into* the slot (``CudaOps.frame_buffer``,
  zero copy on an integrated GPU) is somebody's frame until they drop it, so such a slot is never
  reused under them.

Liveness is read from weak references: to the lease object, and to the ctypes array that every
numpy view of a lent buffer keeps as its base (a view of a view still holds it), so nothing has to
be handed back explicitly. The ring grows on demand (a one-shot user needs one slot; a pipeline
with B frames per batch and d batches between upload and draw needs B x d); ``max_slots`` is what
the ``Segmenter`` sizes from its batch and pipeline depth.

:class:`HostFramePool` lends the drawn frames the same way: pinned (mapped on an integrated GPU,
where the render kernel writes it in place) buffers handed to the caller as numpy arrays without a
copy, each reused only after every view of it is gone.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable

import numpy as np

from mrcnn_edge.runtime.gpu.cuda_util import DeviceBuffer

__all__ = ["Lease", "FrameSlot", "SlotRing", "HostFramePool", "lend", "release"]


class Lease:
    """Held by every ``DeviceFrame`` of one upload: the slot keeps that frame while one lives."""

    __slots__ = ("__weakref__",)


def lend(buffer: DeviceBuffer, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    """A uint8 numpy array of ``shape`` over pinned ``buffer`` and the ctypes object that is its
    base: the buffer is lent out while that object is alive (numpy views keep it as their base)."""
    count = int(np.prod(shape))
    raw = (ctypes.c_uint8 * count).from_address(buffer.ptr)
    return np.frombuffer(raw, dtype=np.uint8, count=count).reshape(shape), raw


class FrameSlot:
    """One frame on the GPU: its pinned staging, its device copy and the engine's masks for it.

    ``zero_copy`` (integrated GPUs: Jetson): the staging is mapped pinned memory that the kernels
    read through its device address, so the frame is never copied to the device; else the staging
    is copied into :attr:`frame`.
    """

    def __init__(self, cudart: Any, event: Any, zero_copy: bool, headroom: float) -> None:
        self.pinned = DeviceBuffer(cudart, pinned=True, headroom=headroom, mapped=zero_copy)
        self.frame = DeviceBuffer(cudart, headroom=headroom)
        self.masks = DeviceBuffer(cudart)
        self.zero_copy = zero_copy
        self.event = event            # recorded after the last work that reads or writes this slot
        self.generation = 0
        self.shape: tuple[int, ...] | None = None    # the frame uploaded (H, W, 3)
        self.mask_shape: tuple[int, int] | None = None  # (rows, M) of the masks kept, None: none
        self.mask_half = False        # the kept masks are the engine's fp16 (half bits), not float32
        self.used = 0                 # ring clock at the last upload: the least recently used goes first
        self._lease: Callable[[], Any] = lambda: None
        self._capture: Callable[[], Any] = lambda: None

    @property
    def frame_ptr(self) -> int:
        """Device address of the uploaded frame."""
        return self.pinned.device_ptr if self.zero_copy else self.frame.ptr

    @property
    def leased(self) -> bool:
        return self._lease() is not None

    @property
    def captured(self) -> bool:
        """An array over the staging (a frame captured into it) is alive somewhere."""
        return self._capture() is not None

    def lease(self) -> Lease:
        token = Lease()
        self._lease = weakref.ref(token)
        return token

    def lend_staging(self, shape: tuple[int, ...]) -> np.ndarray:
        """The staging as a writable ``shape`` uint8 array (the caller captures a frame into it)."""
        array, raw = lend(self.pinned, shape)
        self._capture = weakref.ref(raw)
        return array

    def holds(self, frame: np.ndarray) -> bool:
        """``frame`` is the array lent over this slot's staging (captured here)."""
        return self.captured and frame.ctypes.data == self.pinned.ptr

    def staging(self) -> np.ndarray:
        """The staged frame as uint8 ``shape`` (host-accessible pinned memory)."""
        assert self.shape is not None
        return self.pinned.view(self.shape, np.uint8)

    def buffers(self) -> tuple[DeviceBuffer, ...]:
        return self.pinned, self.frame, self.masks

    def free(self) -> None:
        """Free the slot's memory; a staging still lent out is freed when its array goes."""
        self.frame.free()
        self.masks.free()
        release(self.pinned, self._capture)


class SlotRing:
    """The frame slots of one ``CudaOps``, created on demand up to :attr:`max_slots` (see the module
    docstring for when a slot is reused). ``new_event`` makes the event of a new slot."""

    def __init__(self, cudart: Any, new_event: Callable[[], Any], zero_copy: bool, max_slots: int,
                 headroom: float) -> None:
        self._cudart, self._new_event = cudart, new_event
        self.zero_copy, self.max_slots, self.headroom = zero_copy, max(int(max_slots), 1), headroom
        self.slots: list[FrameSlot] = []
        self._clock = 0

    def __getitem__(self, index: int) -> FrameSlot:
        return self.slots[index]

    def __len__(self) -> int:
        return len(self.slots)

    def take(self, capture: bool = False) -> int | None:
        """Index of the slot for the next upload: a free one, a new one, else (``capture`` False)
        the least recently used one whose frame nobody holds. ``capture``: a slot to lend out for
        capturing into, which only a free or new slot can be (None when there is none)."""
        free = [i for i, s in enumerate(self.slots) if not s.leased and not s.captured]
        if free:
            index = min(free, key=lambda i: self.slots[i].used)
        elif len(self.slots) < self.max_slots:
            self.slots.append(FrameSlot(self._cudart, self._new_event(), self.zero_copy, self.headroom))
            index = len(self.slots) - 1
        elif capture:
            return None
        else:
            # still leased for a draw() that may never come: take the oldest (its draw() uploads
            # again); a captured frame is never overwritten: past every slot, one more is made
            reusable = [i for i, s in enumerate(self.slots) if not s.captured]
            if reusable:
                index = min(reusable, key=lambda i: self.slots[i].used)
            else:
                self.slots.append(FrameSlot(self._cudart, self._new_event(), self.zero_copy, self.headroom))
                index = len(self.slots) - 1
        self._clock += 1
        self.slots[index].used = self._clock
        return index

    def find_captured(self, frame: np.ndarray) -> int | None:
        """Index of the slot ``frame`` was captured into, or None."""
        return next((i for i, s in enumerate(self.slots) if s.holds(frame)), None)

    def events(self) -> list[Any]:
        return [s.event for s in self.slots]


class HostFramePool:
    """Pinned buffers for drawn frames, lent out as numpy arrays (no copy) and reused once every view
    of one is gone. ``mapped``: kernels write them through their device address (integrated GPU).
    At most ``max_buffers``: past that, :meth:`take` returns None and the caller copies out."""

    def __init__(self, cudart: Any, mapped: bool, max_buffers: int, headroom: float) -> None:
        self._cudart, self._mapped, self._headroom = cudart, mapped, headroom
        self.max_buffers = max(int(max_buffers), 1)
        self.buffers: list[tuple[DeviceBuffer, Callable[[], Any]]] = []

    def take(self, nbytes: int) -> DeviceBuffer | None:
        """A buffer of at least ``nbytes`` that nobody holds, or None at the limit."""
        for i, (buf, lent) in enumerate(self.buffers):
            if lent() is None:
                buf.ensure(nbytes)
                self.buffers[i] = (buf, lambda: None)
                return buf
        if len(self.buffers) >= self.max_buffers:
            return None
        buf = DeviceBuffer(self._cudart, pinned=True, headroom=self._headroom, mapped=self._mapped)
        buf.ensure(nbytes)
        self.buffers.append((buf, lambda: None))
        return buf

    def lend(self, buf: DeviceBuffer, shape: tuple[int, ...]) -> np.ndarray:
        """``buf`` (from :meth:`take`) as a uint8 array of ``shape``, lent until every view is gone."""
        array, raw = lend(buf, shape)
        self.buffers = [(b, weakref.ref(raw) if b is buf else lent) for b, lent in self.buffers]
        return array

    def free(self) -> None:
        """Free every buffer; one still lent out is freed when its last view goes (see :func:`release`)."""
        for buf, lent in self.buffers:
            release(buf, lent)
        self.buffers = []


def release(buf: DeviceBuffer, lent: Callable[[], Any]) -> None:
    """Free ``buf`` now, or, while an array over it is alive (``lent()``: the ctypes base of the
    views handed out), when that array goes: ``Detections`` and drawn frames outlive their
    ``Segmenter``, and freeing pinned memory under a live array would leave it dangling."""
    holder = lent()
    if holder is None:
        buf.free()
    else:
        weakref.finalize(holder, buf.free)
