"""A stand-in cuda-python (``cuda.bindings`` driver + runtime, real NVRTC) that runs the runtime's
kernels on the CPU, for tests on machines without a GPU.

(Over 600 lines on purpose: it is the one model of the CUDA runtime and driver API calls the runtime
makes, each behaviour next to the documentation line it follows; stream capture and graphs are in
``fake_cuda_capture.py``, the shared types in ``cuda_types.py``.)

"Device memory" is real host memory, so a device pointer is a real address and the kernels' host
build (``runtime/gpu/kernels/host_build.cpp``, compiled with g++: the ``.cu`` kernels themselves with
the CUDA built-ins emulated) reads and writes it directly. Work enqueued on a stream runs when the
stream is synchronised, as on a GPU, so a missing synchronisation reads stale memory here too.

Every behaviour the runtime relies on follows the CUDA Runtime / Driver API documentation, quoted
next to it. Where the real API's behaviour is undefined (a copy in the wrong direction, a kernel
reading freed memory) this stand-in refuses with an error instead: stricter, never laxer.
It counts bytes copied each way and kernel launches (:attr:`FakeCuda.stats`).

Use: ``fake = FakeCuda.install(monkeypatch, tmp_path)``: ``cuda_util.cuda_modules()`` then returns
``(fake.driver, fake.runtime, nvrtc)`` with the real NVRTC (it needs no GPU).
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from .cuda_types import (Allocation, Context, CUresult, Event, Function, Module, Stream, cudaDeviceAttr, cudaError_t,
                         cudaMemcpyKind)
from .fake_cuda_capture import stream_capture

KERNEL_DIR = Path(__file__).resolve().parents[2] / "runtime" / "gpu" / "kernels"


def kernel_signatures(kernel_dir: Path = KERNEL_DIR) -> dict[str, list[str]]:
    """Kernel name -> parameter kinds ("ptr", "int", "float" or the struct's C type), from the .cu sources."""
    out = {}
    for path in sorted(kernel_dir.glob("*.cu")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for name, params in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', text):
            kinds = []
            for decl in params.split(","):
                decl = " ".join(decl.split())
                ctype = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
                kinds.append("ptr" if "*" in decl else ctype)
            out[name] = kinds
    return out


def build_host_library(out_dir: Path) -> ctypes.CDLL:
    """Compile the kernels' host build (g++) into ``out_dir``; one build per directory."""
    lib = out_dir / "libmre_host.so"
    if not lib.exists():
        gxx = shutil.which("g++")
        if gxx is None:
            raise FileNotFoundError("g++ is needed to build the host version of the kernels")
        cmd = [gxx, "-O2", "-std=c++17", "-ffp-contract=off", "-Wall", "-Werror", "-shared", "-fPIC",
               str(KERNEL_DIR / "host_build.cpp"), "-o", str(lib)]
        subprocess.run(cmd, check=True, capture_output=True)
    host = ctypes.CDLL(str(lib))
    host.host_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_void_p]
    host.host_launch.restype = ctypes.c_int
    return host


class FakeCuda:
    """The state of the fake GPU(s) plus the ``runtime`` and ``driver`` namespaces cuda-python has."""

    def __init__(self, host_library: ctypes.CDLL, devices: tuple[tuple[int, int], ...] = ((8, 7),),
                 driver_version: int = 13000, integrated: bool = False) -> None:
        self.host = host_library
        self.devices = devices
        self.integrated = bool(integrated)  # every device shares the host's memory (a Jetson)
        self.driver_version = driver_version
        self.signatures = kernel_signatures()
        self.primary = [Context(d) for d in range(len(devices))]
        self.allocations: dict[int, Allocation] = {}
        self.streams: list[Stream] = []
        self.modules: list[Module] = []
        self.stats = {"htod_bytes": 0, "dtoh_bytes": 0, "dtod_bytes": 0, "launches": Counter(),
                      "launch_args": [], "peak_device_bytes": 0, "htod_copies": [], "dtoh_copies": [],
                      "stream_syncs": Counter(), "event_polls": 0}
        # every call that returned an error, as (function, error): the real API returns these
        # codes too, and code that ignores them (a second cudaStreamDestroy) shows up here
        self.errors: list[tuple[str, Any]] = []
        self._local = threading.local()
        self._lock = threading.RLock()
        # the stand-in's "GPU": one thread at a time runs enqueued work, whichever host thread
        # drains a stream (a sync, an event poll, a stream waiting on an event). Programming Guide,
        # "Streams": "A stream is a sequence of commands (possibly issued by different host threads)
        # that execute in order"; without this, two host threads draining one stream ran its items
        # side by side and out of order (an event reported complete while the work before it still
        # ran in the other thread)
        self._run = threading.RLock()
        self.runtime = self._recorded(self._runtime_namespace())
        self.driver = self._recorded(self._driver_namespace())

    @classmethod
    def install(cls, monkeypatch: Any, build_dir: Path, **kwargs: Any) -> "FakeCuda":
        """Make ``cuda_util.cuda_modules()`` return this stand-in (driver, runtime) and the real NVRTC."""
        import pytest

        from mrcnn_edge.runtime.gpu import cuda_util

        nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="the stand-in compiles with the real NVRTC")
        try:
            nvrtc.nvrtcVersion()
        except Exception as exc:  # noqa: BLE001 - the library itself is missing
            pytest.skip(f"NVRTC is not available here: {exc}")
        try:
            host = build_host_library(build_dir)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"cannot build the kernels' host version: {exc}")
        fake = cls(host, **kwargs)
        monkeypatch.setattr(cuda_util, "_MODULES", (fake.driver, fake.runtime, nvrtc))
        return fake

    def struct_size(self, ctype: str) -> int:
        """Size of a by-value struct parameter, from the host build's layout probes."""
        probes = {"mre::LetterboxParams": self.host.host_sizeof_letterbox_params,
                  "mre::InstanceParams": self.host.host_sizeof_instance_params}
        if ctype not in probes:
            raise NotImplementedError(f"the stand-in does not know the layout of {ctype}; add a probe")
        return int(probes[ctype]())

    # -- context and memory bookkeeping -------------------------------------------------------
    @property
    def current(self) -> Context | None:
        return getattr(self._local, "ctx", None)

    def _runtime_context(self) -> Context:
        # Runtime API, "Interactions with the CUDA Driver API": "If a context is created and made
        # current via the driver API, subsequent runtime calls will pick up this context instead of
        # creating a new one." Without one, the runtime initialises device 0's primary context
        # ("Device 0 is used by default" when cudaSetDevice was never called in the thread).
        if self.current is None:
            self._local.ctx = self.primary[0]
        return self.current

    def find(self, address: int, size: int = 1) -> Allocation | None:
        """The live allocation holding ``[address, address+size)``, or None."""
        with self._lock:
            for base, alloc in self.allocations.items():
                if base <= address and address + size <= base + alloc.size:
                    return alloc
        return None

    def is_device(self, address: int) -> bool:
        alloc = self.find(address)
        return alloc is not None and alloc.device >= 0

    def live_device_bytes(self, device: int | None = None) -> int:
        return sum(a.size for a in self.allocations.values() if a.device >= 0 and device in (None, a.device))

    def live_pinned_bytes(self) -> int:
        return sum(a.size for a in self.allocations.values() if a.device < 0)

    def _allocate(self, nbytes: int, device: int, mapped: bool = False) -> int:
        # Programming Guide, "Device Memory Accesses": "Any address of a variable residing in global
        # memory or returned by one of the memory allocation routines from the driver or runtime
        # API is always aligned to at least 256 bytes." (TensorRT's setTensorAddress needs it)
        buf = (ctypes.c_uint8 * (max(int(nbytes), 1) + 255))()
        ptr = (ctypes.addressof(buf) + 255) // 256 * 256
        with self._lock:
            self.allocations[ptr] = Allocation(buf, int(nbytes), device, mapped)
            self.stats["peak_device_bytes"] = max(self.stats["peak_device_bytes"], self.live_device_bytes())
        return ptr

    def _recorded(self, namespace: SimpleNamespace) -> SimpleNamespace:
        """Wrap each API function so that an error it returns is also appended to ``errors``."""
        def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                result = fn(*args)
                err = result[0] if isinstance(result, tuple) else result
                # cudaErrorNotReady from cudaEventQuery is a status ("work is incomplete"), not a failure
                if int(err) != 0 and not (name == "cudaEventQuery" and int(err) == cudaError_t.cudaErrorNotReady):
                    self.errors.append((name, err))
                return result
            return call
        for name, value in vars(namespace).items():
            if callable(value) and not isinstance(value, type):
                setattr(namespace, name, wrap(name, value))
        return namespace

    # -- streams ------------------------------------------------------------------------------
    def _stream(self, stream: Any) -> Stream | None | cudaError_t:
        """A live Stream, None for the default stream, or the error for a destroyed/foreign handle."""
        if stream is None or (not isinstance(stream, Stream) and int(stream) == 0):
            return None
        if not isinstance(stream, Stream):
            # cuda-python takes a handle or its integer value ("pstream = int(cudaStream_t(stream))"
            # in the generated bindings): TensorRT and its users pass int(stream)
            with self._lock:
                stream = next((s for s in self.streams if s.handle == int(stream)), None)
            if stream is None:
                return cudaError_t.cudaErrorInvalidResourceHandle
        if stream.destroyed:
            # cudaStreamDestroy: "Destroys and cleans up the asynchronous stream specified by
            # stream."; a destroyed handle is invalid: cudaErrorInvalidResourceHandle.
            return cudaError_t.cudaErrorInvalidResourceHandle
        return stream

    def _enqueue(self, stream: Stream | None, work: Callable[[], Any]) -> Any:
        if stream is None:
            # "The legacy default stream is an implicit stream which synchronizes with all other
            # blocking streams in the same CUcontext": run everything before it, then it.
            with self._run:
                self._flush_all()
                return work()
        stream.pending.append(work)
        return 0

    def _flush(self, stream: Stream) -> int:
        err = 0
        with self._run:
            while stream.pending:
                result = stream.pending.pop(0)()
                err = err or int(result or 0)
        return err

    def _flush_all(self) -> int:
        err = 0
        with self._run:
            for s in list(self.streams):
                err = err or self._flush(s)
        return err

    # -- runtime API --------------------------------------------------------------------------
    def _runtime_namespace(self) -> SimpleNamespace:
        fake = self
        ok = cudaError_t.cudaSuccess

        def cudaGetDeviceCount():
            return ok, len(fake.devices)

        def cudaDriverGetVersion():
            return ok, fake.driver_version

        def cudaSetDevice(device):
            # "Sets device as the current device for the calling host thread. [...] Any device
            # memory subsequently allocated from this host thread using cudaMalloc() [...] will be
            # physically resident on device. [...] Any streams or events created from this host
            # thread will be associated with device."
            if not 0 <= int(device) < len(fake.devices):
                return (cudaError_t.cudaErrorInvalidDevice,)
            fake._local.ctx = fake.primary[int(device)]
            return (ok,)

        def cudaGetDevice():
            return ok, fake._runtime_context().device

        def cudaDeviceGetAttribute(attr, device):
            if not 0 <= int(device) < len(fake.devices):
                return cudaError_t.cudaErrorInvalidDevice, None
            major, minor = fake.devices[int(device)]
            # cudaDevAttrIntegrated: "1 if the device is integrated with the memory subsystem, 0
            # otherwise"; cudaDevAttrCanMapHostMemory: "1 if the device can map host memory into the
            # CUDA address space, 0 otherwise" (every GPU CUDA 13 supports)
            return ok, {cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor: major,
                        cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor: minor,
                        cudaDeviceAttr.cudaDevAttrIntegrated: int(fake.integrated),
                        cudaDeviceAttr.cudaDevAttrCanMapHostMemory: 1}[cudaDeviceAttr(int(attr))]

        def cudaMalloc(nbytes):
            return ok, fake._allocate(nbytes, fake._runtime_context().device)

        def cudaMallocHost(nbytes):
            fake._runtime_context()
            return ok, fake._allocate(nbytes, -1)

        def cudaHostAlloc(nbytes, flags):
            fake._runtime_context()
            # flags: cudaHostAllocDefault 0, Portable 1, Mapped 2, WriteCombined 4; "All of these
            # flags are orthogonal to one another"; anything else: cudaErrorInvalidValue
            if int(flags) & ~0x7:
                return cudaError_t.cudaErrorInvalidValue, None
            return ok, fake._allocate(nbytes, -1, mapped=bool(int(flags) & 2))

        def cudaHostGetDevicePointer(host, flags):
            # "flags provides for future releases. For now, it must be set to 0."
            if int(flags) != 0:
                return cudaError_t.cudaErrorInvalidValue, None
            # "Passes back the device pointer corresponding to the mapped, pinned host buffer
            # allocated by cudaHostAlloc()": memory not allocated mapped has none
            alloc = fake.find(int(host))
            if alloc is None or alloc.device >= 0 or not alloc.mapped:
                return cudaError_t.cudaErrorInvalidValue, None
            # "If all devices visible to the application have a non-zero value for the device
            # attribute [cudaDevAttrCanUseHostPointerForRegisteredMem], the device pointer returned
            # by cudaHostGetDevicePointer() will match the original pointer pHost."
            return ok, int(host)

        def _free(ptr, pinned):
            ptr = int(ptr)
            # cudaFree: "If devPtr is 0, no operation is performed."
            if ptr == 0:
                fake._runtime_context()
                return (ok,)
            fake._flush_all()  # freeing waits for the work that may still use the memory
            with fake._lock:
                alloc = fake.allocations.get(ptr)
                # "[devPtr] must have been returned by a previous call to [cudaMalloc ...].
                # Otherwise, or if cudaFree(devPtr) has already been called before, an error is
                # returned." (cudaErrorInvalidValue); cudaFreeHost likewise for cudaMallocHost.
                if alloc is None or (alloc.device < 0) != pinned:
                    return (cudaError_t.cudaErrorInvalidValue,)
                del fake.allocations[ptr]
            return (ok,)

        def cudaFree(ptr):
            return _free(ptr, False)

        def cudaFreeHost(ptr):
            return _free(ptr, True)

        def cudaStreamCreate():
            # the stream belongs to the calling thread's current device (cudaSetDevice, above)
            s = Stream(fake._runtime_context().device)
            with fake._lock:
                fake.streams.append(s)
            return ok, s

        def cudaStreamGetDevice(stream):
            # "Returns in *device the device of the stream" (CUDA 12.8+); the legacy stream belongs
            # to the calling thread's current device
            s = fake._stream(stream)
            if isinstance(s, cudaError_t):
                return s, None
            return ok, (fake._runtime_context().device if s is None else s.device)

        def cudaStreamDestroy(stream):
            s = fake._stream(stream)
            if s is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            if isinstance(s, cudaError_t):
                return (s,)
            # "In case the device is still doing work in the stream stream when cudaStreamDestroy()
            # is called, the function will return immediately and the resources associated with
            # stream will be released automatically once the device has completed all work"
            fake._flush(s)
            s.destroyed = True
            with fake._lock:
                fake.streams.remove(s)
            return (ok,)

        def cudaStreamSynchronize(stream):
            s = fake._stream(stream)
            if isinstance(s, cudaError_t):
                return (s,)
            with fake._lock:  # blocking calls, per stream: the runtime's own streams poll events instead
                fake.stats["stream_syncs"][0 if s is None else s.handle] += 1
            err = fake._flush_all() if s is None else fake._flush(s)
            return (cudaError_t(err) if err else ok,)

        def cudaDeviceSynchronize():
            err = fake._flush_all()
            return (cudaError_t(err) if err else ok,)

        def _copy_check(dst, src, count, kind):
            """The error of a copy, or None. Directions are checked against the fake's allocations."""
            kind = cudaMemcpyKind(int(kind))
            # "kind specifies the direction of the copy, and must be one of cudaMemcpyHostToHost,
            # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, or
            # cudaMemcpyDefault." "Calling cudaMemcpyAsync() with dst and src pointers that do not
            # match the direction of the copy results in an undefined behavior": refused here.
            dev_dst = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
            dev_src = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
            if kind == cudaMemcpyKind.cudaMemcpyDefault:
                return None
            for ptr, on_device in ((dst, dev_dst), (src, dev_src)):
                alloc = fake.find(ptr, count)
                if on_device and (alloc is None or alloc.device < 0):
                    return cudaError_t.cudaErrorInvalidValue if fake.find(ptr) else cudaError_t.cudaErrorInvalidDevicePointer
                if not on_device and alloc is not None and alloc.device >= 0:
                    return cudaError_t.cudaErrorInvalidMemcpyDirection
            return None

        def _count(kind, count):
            key = {1: "htod_bytes", 2: "dtoh_bytes", 3: "dtod_bytes"}.get(int(kind))
            if key:
                with fake._lock:
                    fake.stats[key] += int(count)
                    if key != "dtod_bytes":  # each copy's size: the budget test names the big ones
                        fake.stats[key.replace("bytes", "copies")].append(int(count))

        def cudaMemcpyAsync(dst, src, count, kind, stream):
            dst, src, count = int(dst), int(src), int(count)
            err = _copy_check(dst, src, count, kind)
            if err is not None:
                return (err,)
            s = fake._stream(stream)
            if isinstance(s, cudaError_t):
                return (s,)
            _count(kind, count)
            pinned_src = fake.find(src, count) is not None
            pinned_dst = fake.find(dst, count) is not None
            if int(kind) == cudaMemcpyKind.cudaMemcpyHostToDevice and not pinned_src:
                # API sync behaviour: "For transfers from pageable host memory to device memory,
                # a stream sync is performed before the copy is initiated. The function will return
                # once the pageable buffer has been copied to the staging memory": the data is
                # taken now.
                staged = ctypes.string_at(src, count)
                fake._enqueue(s, lambda: ctypes.memmove(dst, staged, count) and 0)
                return (ok,)
            if int(kind) == cudaMemcpyKind.cudaMemcpyDeviceToHost and not pinned_dst:
                # "For transfers from device memory to pageable host memory, the function will
                # return only once the copy has completed."
                if s is not None:
                    fake._flush(s)
                fake._enqueue(None, lambda: ctypes.memmove(dst, src, count) and 0)
                return (ok,)
            fake._enqueue(s, lambda: ctypes.memmove(dst, src, count) and 0)
            return (ok,)

        def cudaMemcpy(dst, src, count, kind):
            # synchronous: the legacy default stream
            return cudaMemcpyAsync(dst, src, count, kind, 0)

        def cudaMemsetAsync(ptr, value, count, stream):
            ptr, count = int(ptr), int(count)
            alloc = fake.find(ptr, count)
            if alloc is None or alloc.device < 0:
                return (cudaError_t.cudaErrorInvalidValue,)
            s = fake._stream(stream)
            if isinstance(s, cudaError_t):
                return (s,)
            fake._enqueue(s, lambda: ctypes.memset(ptr, int(value), count) and 0)
            return (ok,)

        def cudaEventCreateWithFlags(flags):
            # "Creates an event object for the current device with the specified flags."
            return ok, Event(fake._runtime_context().device)

        def _event(event):
            if not isinstance(event, Event) or event.destroyed:
                return None
            return event

        def cudaEventRecord(event, stream):
            e, s = _event(event), fake._stream(stream)
            if e is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            if isinstance(s, cudaError_t):
                return (s,)
            # "event and stream must be on the same CUDA context"
            if s is not None and s.device != e.device:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            # "Captures in event the contents of stream at the time of this call. [...] can be
            # called multiple times on the same event and will overwrite the previously captured state"
            e.stream, e.done = s, False

            def marker() -> int:
                # an earlier record's point, reached after the event was recorded again, no
                # longer says anything: only the last captured state completes the event
                if e.marker is marker:
                    e.done = True
                return 0
            e.marker = marker
            if s is None:
                fake._enqueue(None, marker)
            else:
                s.pending.append(marker)
            return (ok,)

        def _complete(e):
            """Run the captured work (everything before the marker on its stream) now."""
            s = e.stream
            with fake._run:
                while not e.done and s is not None and s.pending:
                    s.pending.pop(0)()

        def cudaEventQuery(event):
            e = _event(event)
            if e is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            with fake._lock:
                fake.stats["event_polls"] += 1
            if e.done:
                return (ok,)
            # "Returns cudaSuccess if all captured work has been completed, or cudaErrorNotReady if
            # any captured work is incomplete": the stand-in's GPU makes progress between two polls,
            # so a caller that does not poll again never sees the work done
            _complete(e)
            return (cudaError_t.cudaErrorNotReady,)

        def cudaStreamWaitEvent(stream, event, flags):
            e, s = _event(event), fake._stream(stream)
            if e is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            if isinstance(s, cudaError_t):
                return (s,)
            # "Makes all future work submitted to stream wait for all work captured in event":
            # running the captured work now orders it before anything enqueued on stream later
            _complete(e)
            return (ok,)

        def cudaEventDestroy(event):
            e = _event(event)
            if e is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            # "An event may be destroyed before it is complete [...] the call does not block"
            e.destroyed = True
            return (ok,)

        def cudaGetErrorString(err):
            return ok, cudaError_t(int(err)).name.encode()

        api = {
            "cudaGetDeviceCount": cudaGetDeviceCount,
            "cudaDriverGetVersion": cudaDriverGetVersion,
            "cudaSetDevice": cudaSetDevice,
            "cudaGetDevice": cudaGetDevice,
            "cudaDeviceGetAttribute": cudaDeviceGetAttribute,
            "cudaMalloc": cudaMalloc,
            "cudaMallocHost": cudaMallocHost,
            "cudaHostAlloc": cudaHostAlloc,
            "cudaHostGetDevicePointer": cudaHostGetDevicePointer,
            "cudaFree": cudaFree,
            "cudaFreeHost": cudaFreeHost,
            "cudaStreamCreate": cudaStreamCreate,
            "cudaStreamGetDevice": cudaStreamGetDevice,
            "cudaStreamDestroy": cudaStreamDestroy,
            "cudaStreamSynchronize": cudaStreamSynchronize,
            "cudaDeviceSynchronize": cudaDeviceSynchronize,
            "cudaMemcpyAsync": cudaMemcpyAsync,
            "cudaMemcpy": cudaMemcpy,
            "cudaMemsetAsync": cudaMemsetAsync,
            "cudaEventCreateWithFlags": cudaEventCreateWithFlags,
            "cudaEventRecord": cudaEventRecord,
            "cudaEventQuery": cudaEventQuery,
            "cudaStreamWaitEvent": cudaStreamWaitEvent,
            "cudaEventDestroy": cudaEventDestroy,
            "cudaGetErrorString": cudaGetErrorString,
        }
        api.update(stream_capture(fake, api))
        return SimpleNamespace(cudaError_t=cudaError_t, cudaMemcpyKind=cudaMemcpyKind, cudaDeviceAttr=cudaDeviceAttr,
                               cudaHostAllocDefault=0, cudaHostAllocMapped=2, cudaEventDisableTiming=2, **api)

    # -- driver API ---------------------------------------------------------------------------
    def _driver_namespace(self) -> SimpleNamespace:
        fake = self
        ok = CUresult.CUDA_SUCCESS

        def cuCtxGetCurrent():
            # "Returns in *pctx the CUDA context bound to the calling CPU thread. If no context is
            # bound to the calling CPU thread then *pctx is set to NULL"
            return ok, fake.current

        def cuCtxSetCurrent(ctx):
            # "Binds the specified CUDA context to the calling CPU thread."
            if ctx is not None and ctx not in fake.primary:
                return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
            fake._local.ctx = ctx
            return (ok,)

        def cuModuleLoadData(image):
            # "Takes a pointer image and loads the corresponding module module into the current
            # context." No current context: CUDA_ERROR_INVALID_CONTEXT.
            if fake.current is None:
                return CUresult.CUDA_ERROR_INVALID_CONTEXT, None
            data = bytes(image)
            if data[:4] == b"\x7fELF":  # CUBIN: entry names are in the string table
                entries = {n for n in fake.signatures if b"\0" + n.encode() + b"\0" in data}
            elif data.endswith(b"\0") and b".entry" in data:  # PTX, NUL-terminated text
                entries = set(re.findall(r"\.entry\s+(\w+)", data.decode(errors="replace")))
            else:
                return CUresult.CUDA_ERROR_INVALID_IMAGE, None
            module = Module(fake.current, frozenset(entries))
            fake.modules.append(module)
            return ok, module

        def cuModuleGetFunction(module, name):
            if not isinstance(module, Module) or module.unloaded:
                return CUresult.CUDA_ERROR_INVALID_HANDLE, None
            name = name.decode() if isinstance(name, bytes) else str(name)
            # "CUDA_ERROR_NOT_FOUND: [...] a function with name name [does not exist]"
            if name not in module.entries:
                return CUresult.CUDA_ERROR_NOT_FOUND, None
            return ok, Function(module, name)

        def cuModuleUnload(module):
            # "Unloads a module hmod from the current context." Twice: an invalid handle.
            if not isinstance(module, Module) or module.unloaded:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            fake._flush_all()
            module.unloaded = True
            return (ok,)

        def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            ctx = fake.current
            if ctx is None:
                return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
            if not isinstance(f, Function) or f.module.unloaded:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            if f.module.context is not ctx:  # a function belongs to the context its module was loaded in
                return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
            s = fake._stream(stream)
            if isinstance(s, cudaError_t):
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            # Programming Guide, "Stream and Event Behavior": "A kernel launch will fail if it is
            # issued to a stream that is not associated to the current device"
            if s is not None and s.device != ctx.device:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            if min(gx, gy, gz, bx, by, bz) < 1 or bx * by * bz > 1024:
                return (CUresult.CUDA_ERROR_INVALID_VALUE,)
            # not an API rule but the kernels' own: the tiled ones size their shared lists for
            # 32 x 8 blocks (mre::TILE_W x TILE_H); other blocks would overrun them on a GPU
            if f.name.startswith(("instance_map", "render_instances")) and (bx, by, bz) != (32, 8, 1):
                return (CUresult.CUDA_ERROR_INVALID_VALUE,)
            address = int(params)
            pointers = (ctypes.c_void_p * len(fake.signatures[f.name])).from_address(address)
            decoded = []
            for i, kind in enumerate(fake.signatures[f.name]):
                if kind == "ptr":
                    value = ctypes.c_void_p.from_address(pointers[i]).value or 0
                    alloc = fake.find(value)
                    # a kernel dereferencing an address that is not device memory of this device
                    # faults ("an illegal memory access was encountered", reported at the next
                    # synchronisation on a GPU); the stand-in refuses the launch instead. Mapped
                    # pinned memory is in "the CUDA address space" (cudaHostAllocMapped) of every device.
                    if alloc is None or (alloc.device != ctx.device and not alloc.mapped):
                        return (CUresult.CUDA_ERROR_ILLEGAL_ADDRESS,)
                elif kind == "int":
                    value = ctypes.c_int.from_address(pointers[i]).value
                elif kind == "float":
                    value = ctypes.c_float.from_address(pointers[i]).value
                else:
                    value = kind
                decoded.append(value)
            with fake._lock:
                fake.stats["launches"][f.name] += 1
                fake.stats["launch_args"].append((f.name, (gx, gy, gz), tuple(decoded)))
            # cuLaunchKernel: the parameter values are read at launch ("kernelParams [...] each of
            # kernelParams[0] through kernelParams[N-1] must point to a region of memory from which
            # the actual kernel parameter will be copied"): copy them now, run at the sync.
            copies = []
            for i, kind in enumerate(fake.signatures[f.name]):
                size = 8 if kind == "ptr" else 4 if kind in ("int", "float") else fake.struct_size(kind)
                copies.append(ctypes.create_string_buffer(ctypes.string_at(pointers[i], size), size))
            packed = (ctypes.c_void_p * len(copies))(*[ctypes.addressof(c) for c in copies])

            def run(keep=(copies, packed)) -> int:
                rc = fake.host.host_launch(f.name.encode(), gx, gy, gz, bx, by, bz, ctypes.addressof(keep[1]))
                return 0 if rc == 0 else int(cudaError_t.cudaErrorIllegalAddress)

            fake._enqueue(s, run)
            return (ok,)

        def cuGetErrorString(err):
            return ok, CUresult(int(err)).name.encode()

        return SimpleNamespace(
            CUresult=CUresult, cuCtxGetCurrent=cuCtxGetCurrent, cuCtxSetCurrent=cuCtxSetCurrent,
            cuModuleLoadData=cuModuleLoadData, cuModuleGetFunction=cuModuleGetFunction,
            cuModuleUnload=cuModuleUnload, cuLaunchKernel=cuLaunchKernel, cuGetErrorString=cuGetErrorString,
        )
