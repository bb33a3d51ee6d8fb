"""Stream capture and CUDA graphs for the stand-in cuda-python (``fake_cuda.py``, which imports this
module; the types both use are in ``cuda_types.py``): what
``TrtBackend(cuda_graph=True)`` calls, each behaviour with the CUDA Runtime API line it follows.

:func:`stream_capture` takes the stand-in's runtime functions and returns the capture API plus
guarded versions of the calls that capture forbids or changes (synchronisations, the legacy
stream, pageable copies, events recorded in a capture, cudaMalloc in a global capture).
"""
from __future__ import annotations

import enum
import threading
from typing import Any, Callable

from .cuda_types import Stream, cudaError_t, cudaMemcpyKind, next_handle

__all__ = ["stream_capture"]


# -- stream capture and CUDA graphs (what TrtBackend's cuda_graph=True calls) ------------------
# A capturing stream's queue is a _Capture in place of its pending list: what fake._enqueue
# or cudaEventRecord append to it becomes a graph node instead of work to run, and the
# work enqueued before the capture still runs when the stream drains (Programming Guide:
# placing a stream into capture mode "severs a dependency relation between items added to
# the stream immediately before and after the mode transition").
class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


class _Capture:
    """A capturing stream's queue. Its length is the work from before the capture, which
    is all that draining the stream (_flush, _complete) may run: never the graph's nodes."""

    def __init__(self, before: list, mode: int) -> None:
        self.before, self.mode, self.nodes = before, mode, []
        self.thread, self.invalidated = threading.get_ident(), False

    def append(self, work: Callable[[], Any]) -> None:
        # cudaStreamBeginCapture: "all operations pushed into the stream will not be
        # executed, but will instead be captured into a graph"
        self.nodes.append(work)

    def pop(self, index: int = -1) -> Callable[[], Any]:
        return self.before.pop(index)

    def __len__(self) -> int:
        return len(self.before)


class _Handle:
    """A graph or executable graph. Like cuda-python's ``cudaGraph_t`` it has no truth
    value of its own, so a NULL one (handle 0) is truthy: test ``int(h)``."""

    def __init__(self, nodes: list | None) -> None:
        self.nodes, self.destroyed = nodes, False
        self.handle = 0 if nodes is None else next_handle()

    def __int__(self) -> int:
        return self.handle


def stream_capture(fake: Any, api: dict[str, Callable[..., Any]]) -> dict[str, Any]:
    """The capture API of the stand-in ``fake`` (a ``FakeCuda``) over its runtime functions ``api``."""
    ok = cudaError_t.cudaSuccess

    fake.stats.update({"graph_launches": 0, "live_graphs": set(), "live_graph_execs": set()})
    captured_events: set = set()   # events last recorded in a capturing stream
    last_error = {"seen": 0}        # cudaGetLastError's mark in fake.errors

    def _capture_of(s: Any) -> "_Capture | None":
        return s.pending if isinstance(s, Stream) and isinstance(s.pending, _Capture) else None

    def _active(device: int | None = None) -> list:
        return [s for s in fake.streams if _capture_of(s) is not None and device in (None, s.device)]

    def _refuse_legacy(s: Any) -> Any:
        """The error for using the legacy stream while a stream of its device captures, or None."""
        active = _active(fake._runtime_context().device) if s is None else []
        if not active:
            return None
        # Programming Guide, "Prohibited and Unhandled Operations": "When any stream in the
        # same context is being captured, and it was not created with cudaStreamNonBlocking,
        # any attempted use of the legacy stream is invalid." (cudaErrorStreamCaptureImplicit:
        # "a disallowed implicit dependency on a current capture sequence from cudaStreamLegacy").
        # As a general rule "CUDA prefers to return an error rather than ignore the
        # dependency"; the stand-in also invalidates the captures (stricter, never laxer).
        for c in active:
            c.pending.invalidated = True
        return cudaError_t.cudaErrorStreamCaptureImplicit

    def _refuse_sync(s: Any) -> Any:
        """The error for synchronising a capturing stream, or None."""
        capture = _capture_of(s)
        if capture is None:
            return None
        # "It is invalid to synchronize or query the execution status of a stream which is
        # being captured" (cudaErrorStreamCaptureUnsupported: "The operation is not permitted
        # when the stream is capturing"); the capture is then invalidated: cudaStreamIsCapturing
        # "The stream was capturing but an error has invalidated the capture sequence"
        capture.invalidated = True
        return cudaError_t.cudaErrorStreamCaptureUnsupported

    def _guard_stream_sync(sync: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(stream):
            s = fake._stream(stream)
            err = None if isinstance(s, cudaError_t) else (_refuse_legacy(s) or _refuse_sync(s))
            return (err,) if err is not None else sync(stream)
        return guarded

    def _guard_device_sync(sync: Callable[..., Any]) -> Callable[..., Any]:
        def guarded():
            active = _active(fake._runtime_context().device)
            if active:
                # "It is also invalid to query the execution status of or synchronize a
                # broader handle which encompasses an active stream capture, such as a device"
                for s in active:
                    s.pending.invalidated = True
                return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
            return sync()
        return guarded

    def _guard_copy(copy: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(dst, src, count, kind, stream):
            s = fake._stream(stream)
            if not isinstance(s, cudaError_t):
                err = _refuse_legacy(s)
                host = {cudaMemcpyKind.cudaMemcpyHostToDevice: src,
                        cudaMemcpyKind.cudaMemcpyDeviceToHost: dst}.get(int(kind))
                if err is None and host is not None and fake.find(int(host), int(count)) is None:
                    # pageable host memory: "a stream sync is performed before the copy is
                    # initiated" (to the device) / "the function will return only once the
                    # copy has completed" (to the host): a synchronisation of the stream
                    err = _refuse_sync(s)
                if err is not None:
                    return (err,)
            return copy(dst, src, count, kind, stream)
        return guarded

    def _guard_memset(memset: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(ptr, value, count, stream):
            s = fake._stream(stream)
            err = None if isinstance(s, cudaError_t) else _refuse_legacy(s)
            return (err,) if err is not None else memset(ptr, value, count, stream)
        return guarded

    def _guard_record(record: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(event, stream):
            s = fake._stream(stream)
            err = None if isinstance(s, cudaError_t) else _refuse_legacy(s)
            if err is not None:
                return (err,)
            result = record(event, stream)
            if int(result[0]) == 0:
                (captured_events.add if _capture_of(s) is not None else captured_events.discard)(event)
            return result
        return guarded

    def _guard_query(query: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(event):
            if event in captured_events:
                # cudaThreadExchangeStreamCaptureMode: "attempting cudaEventQuery on an event
                # that was last recorded inside a capture sequence" is prohibited in every
                # mode (cudaErrorCapturedEvent: "The operation is not permitted on an event
                # which was last recorded in a capturing stream")
                return (cudaError_t.cudaErrorCapturedEvent,)
            return query(event)
        return guarded

    def _guard_malloc(malloc: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(nbytes):
            me, modes = threading.get_ident(), cudaStreamCaptureMode
            unsafe = [s for s in _active() if s.pending.mode == modes.cudaStreamCaptureModeGlobal
                      or (s.pending.thread == me and s.pending.mode != modes.cudaStreamCaptureModeRelaxed)]
            if unsafe:
                # cudaThreadExchangeStreamCaptureMode: "some actions, such as a call to
                # cudaMalloc, may be unsafe"; in cudaStreamCaptureModeGlobal "if the local
                # thread has an ongoing capture sequence that was not initiated with
                # cudaStreamCaptureModeRelaxed [...], or if any other thread has a concurrent
                # capture sequence initiated with cudaStreamCaptureModeGlobal, this thread is
                # prohibited from potentially unsafe API calls."
                for s in unsafe:
                    s.pending.invalidated = True
                return cudaError_t.cudaErrorStreamCaptureUnsupported, None
            return malloc(nbytes)
        return guarded

    # the calls made without capture in mind, now checking it
    cudaStreamSynchronize = _guard_stream_sync(api["cudaStreamSynchronize"])
    cudaDeviceSynchronize = _guard_device_sync(api["cudaDeviceSynchronize"])
    cudaMemcpyAsync = _guard_copy(api["cudaMemcpyAsync"])
    cudaMemsetAsync = _guard_memset(api["cudaMemsetAsync"])
    cudaEventRecord = _guard_record(api["cudaEventRecord"])
    cudaEventQuery = _guard_query(api["cudaEventQuery"])
    cudaMalloc = _guard_malloc(api["cudaMalloc"])

    def cudaMemcpy(dst, src, count, kind):
        # synchronous: the legacy default stream (checked like any use of it)
        return cudaMemcpyAsync(dst, src, count, kind, 0)

    def cudaStreamBeginCapture(stream, mode):
        s = fake._stream(stream)
        if isinstance(s, cudaError_t):
            return (s,)
        # "Capture may not be initiated if stream is cudaStreamLegacy. [...] it may only be
        # initiated if the stream is not already in capture mode." (returns: cudaSuccess,
        # cudaErrorInvalidValue)
        if s is None or _capture_of(s) is not None or int(mode) not in set(cudaStreamCaptureMode):
            return (cudaError_t.cudaErrorInvalidValue,)
        s.pending = _Capture(s.pending, int(mode))
        return (ok,)

    def cudaStreamIsCapturing(stream):
        s = fake._stream(stream)
        if isinstance(s, cudaError_t):
            return s, None
        if s is None:
            # "if this is called on cudaStreamLegacy [...] while a blocking stream on the same
            # device is capturing, it will return cudaErrorStreamCaptureImplicit [...]. The
            # blocking stream capture is not invalidated."
            if _active(fake._runtime_context().device):
                return cudaError_t.cudaErrorStreamCaptureImplicit, None
            return ok, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        capture = _capture_of(s)
        if capture is None:
            return ok, cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
        return ok, (cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated if capture.invalidated
                    else cudaStreamCaptureStatus.cudaStreamCaptureStatusActive)

    def cudaStreamEndCapture(stream):
        s = fake._stream(stream)
        if isinstance(s, cudaError_t):
            return s, _Handle(None)
        capture = _capture_of(s)
        # "Capture must have been initiated on stream via a call to cudaStreamBeginCapture."
        if capture is None:
            return cudaError_t.cudaErrorInvalidValue, _Handle(None)
        # "If the mode argument to cudaStreamBeginCapture was not cudaStreamCaptureModeRelaxed,
        # this call must be from the same thread as cudaStreamBeginCapture."
        if capture.mode != cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed \
                and capture.thread != threading.get_ident():
            return cudaError_t.cudaErrorStreamCaptureWrongThread, _Handle(None)
        s.pending = capture.before
        # "If capture was invalidated, due to a violation of the rules of stream capture, then
        # a NULL graph will be returned." (cudaErrorStreamCaptureInvalidated: "The current
        # capture sequence on the stream has been invalidated due to a previous error.")
        if capture.invalidated:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, _Handle(None)
        graph = _Handle(list(capture.nodes))
        fake.stats["live_graphs"].add(graph.handle)
        return ok, graph

    def _live(h: Any, kind: str) -> bool:
        return isinstance(h, _Handle) and h.handle in fake.stats[kind]

    def cudaGraphInstantiate(graph, flags):
        # "Instantiates graph as an executable graph." A NULL, destroyed or foreign graph is
        # not a graph: cudaErrorInvalidValue. Flags: AutoFreeOnLaunch 1, Upload 2,
        # DeviceLaunch 4, UseNodePriority 8.
        if not _live(graph, "live_graphs") or int(flags) & ~0xF:
            return cudaError_t.cudaErrorInvalidValue, _Handle(None)
        # the executable graph is a snapshot: it outlives cudaGraphDestroy(graph)
        graph_exec = _Handle(list(graph.nodes))
        fake.stats["live_graph_execs"].add(graph_exec.handle)
        return ok, graph_exec

    def cudaGraphLaunch(graph_exec, stream):
        if not _live(graph_exec, "live_graph_execs"):
            return (cudaError_t.cudaErrorInvalidValue,)
        s = fake._stream(stream)
        if isinstance(s, cudaError_t):
            return (s,)
        err = _refuse_legacy(s)
        if err is not None:
            return (err,)
        # "Executes graphExec in stream. [...] Each launch is ordered behind both any previous
        # work in stream and any previous launches of graphExec": its nodes join the stream
        with fake._lock:
            fake.stats["graph_launches"] += 1
        for node in graph_exec.nodes:
            fake._enqueue(s, node)
        return (ok,)

    def _destroy(h: Any, kind: str):
        # cudaGraphDestroy / cudaGraphExecDestroy return cudaSuccess or cudaErrorInvalidValue:
        # a NULL handle or one destroyed before is not a graph
        if not _live(h, kind):
            return (cudaError_t.cudaErrorInvalidValue,)
        fake.stats[kind].discard(h.handle)
        h.destroyed = True
        return (ok,)

    def cudaGraphDestroy(graph):
        # "Destroys the graph specified by graph, as well as all of its nodes."
        return _destroy(graph, "live_graphs")

    def cudaGraphExecDestroy(graph_exec):
        # "Destroys the executable graph specified by graphExec."
        return _destroy(graph_exec, "live_graph_execs")

    def cudaGetLastError():
        # "Returns the last error that has been produced by any of the runtime calls in the same
        # instance of the CUDA Runtime library in the host thread and resets it to cudaSuccess."
        # The stand-in reads fake.errors, so it does not tell host threads apart.
        with fake._lock:
            recent = [err for name, err in fake.errors[last_error["seen"]:]
                      if name.startswith("cuda") and name != "cudaGetLastError"]
            last_error["seen"] = len(fake.errors)
        return (recent[-1] if recent else ok,)

    def cudaLaunchHostFunc(stream, fn, user_data):
        # "Enqueues a host function to run in a stream. The function will be called after
        # currently enqueued work and will block work added after it." cuda-python wants a
        # cudaHostFn_t; the stand-in takes a Python callable (TensorRT stand-ins enqueue their
        # engine this way). "The host function must not make any CUDA API calls."
        s = fake._stream(stream)
        if isinstance(s, cudaError_t):
            return (s,)
        if not callable(fn):
            return (cudaError_t.cudaErrorInvalidValue,)
        err = _refuse_legacy(s)
        if err is not None:
            return (err,)
        fake._enqueue(s, lambda: fn(user_data) and 0)
        return (ok,)

    return {
        "cudaStreamSynchronize": cudaStreamSynchronize,
        "cudaDeviceSynchronize": cudaDeviceSynchronize,
        "cudaMemcpyAsync": cudaMemcpyAsync,
        "cudaMemcpy": cudaMemcpy,
        "cudaMemsetAsync": cudaMemsetAsync,
        "cudaEventRecord": cudaEventRecord,
        "cudaEventQuery": cudaEventQuery,
        "cudaMalloc": cudaMalloc,
        "cudaStreamCaptureMode": cudaStreamCaptureMode,
        "cudaStreamCaptureStatus": cudaStreamCaptureStatus,
        "cudaStreamBeginCapture": cudaStreamBeginCapture,
        "cudaStreamIsCapturing": cudaStreamIsCapturing,
        "cudaStreamEndCapture": cudaStreamEndCapture,
        "cudaGraphInstantiate": cudaGraphInstantiate,
        "cudaGraphLaunch": cudaGraphLaunch,
        "cudaGraphDestroy": cudaGraphDestroy,
        "cudaGraphExecDestroy": cudaGraphExecDestroy,
        "cudaGetLastError": cudaGetLastError,
        "cudaLaunchHostFunc": cudaLaunchHostFunc,
    }
