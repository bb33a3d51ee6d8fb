"""The stand-in cuda-python's enums and handle types, shared by ``fake_cuda`` (the runtime and
driver namespaces) and ``fake_cuda_capture`` (stream capture and graphs), so that neither of those
imports the other's internals. Names and values are cuda-python's (``cuda.bindings.runtime`` /
``driver``), which ``cuda_util`` reads (``cudaError_t.cudaErrorNotReady`` ...).
"""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

__all__ = ["cudaError_t", "CUresult", "cudaMemcpyKind", "cudaDeviceAttr", "next_handle", "Context", "Stream",
           "Event", "Module", "Function", "Allocation"]


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name (cuda_util reads it)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureImplicit = 906
    cudaErrorCapturedEvent = 907
    cudaErrorStreamCaptureWrongThread = 908


class CUresult(enum.IntEnum):  # noqa: N801
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_IMAGE = 200
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_NOT_FOUND = 500
    CUDA_ERROR_ILLEGAL_ADDRESS = 700


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaDeviceAttr(enum.IntEnum):  # noqa: N801
    cudaDevAttrIntegrated = 18
    cudaDevAttrCanMapHostMemory = 19
    cudaDevAttrComputeCapabilityMajor = 75
    cudaDevAttrComputeCapabilityMinor = 76


# -- handles ---------------------------------------------------------------------------------------
_ids = itertools.count(1)


def next_handle() -> int:
    """A fresh non-zero handle value (0 is NULL: the default stream, a NULL graph)."""
    return next(_ids)


@dataclass(eq=False)
class Context:
    device: int
    handle: int = field(default_factory=next_handle)

    def __int__(self) -> int:
        return self.handle


@dataclass(eq=False)
class Stream:
    device: int
    pending: list = field(default_factory=list)
    destroyed: bool = False
    handle: int = field(default_factory=next_handle)

    def __int__(self) -> int:  # TensorRT takes int(stream)
        return self.handle


@dataclass(eq=False)
class Event:
    device: int
    stream: "Stream | None" = None   # where it was last recorded
    marker: Any = None               # the pending item that completes it
    done: bool = True                # "Before the first call to cudaEventRecord(), an event
    destroyed: bool = False          #  represents an empty set of work"
    handle: int = field(default_factory=next_handle)

    def __int__(self) -> int:
        return self.handle


@dataclass(eq=False)
class Module:
    context: Context
    entries: frozenset
    unloaded: bool = False


@dataclass(eq=False)
class Function:
    module: Module
    name: str


@dataclass
class Allocation:
    buffer: Any          # the ctypes array that owns the memory
    size: int
    device: int          # -1: pinned host memory
    mapped: bool = False  # pinned with cudaHostAllocMapped: kernels may use its device pointer
