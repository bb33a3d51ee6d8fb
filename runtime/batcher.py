"""Many sources, one model: :class:`Batcher` puts one frame of each source into one model batch.

One :class:`~mrcnn_edge.runtime.segmenter.Segmenter` (one engine, one execution context, one set of
activation buffers) serves every source. Threads: a capture per source, one assembling and preparing
batches, one inference (from files, one per concurrent request of the backend, ``--requests``:
they hand their batches on in order, as the single-source pipeline's do), one post-processing and
drawing; the sinks are written on the calling thread. Each frame's detections go to its own source's sinks and statistics. Assembly (docs/DESIGN.md):

- cameras (live sources): a one-frame slot each, the newest frame replaces one not taken yet (a drop,
  counted for that camera). A batch is taken when the model is free: the frame of every camera
  that has one; a camera without one is waited for up to ``deadline`` (default one frame interval
  of the fastest camera, within 5..100 ms), then the batch goes without it (its slot zero padding)
  and it is not waited for again until it delivers: a stalled camera costs the others one deadline,
  not its stall. A camera lost for good (``SourceLost``) ends its own stream; the others go on.
- files: every frame of every file, in order: each batch takes the next frame of each file.
- more sources than the model's batch ``B``: served in turn, least recently served first (fill
  ``B``); a camera's frames wait in its slot meanwhile, newest wins. Batch 1: one frame at a time.

Frames of any size share a batch: each is letterboxed into the canvas, on the CPU into its slice of
the model input, on the GPU by the CUDA letterbox straight into its slot of the engine's input
(each frame goes up once; ``Segmenter._run_model``). Files and cameras together are refused
(:func:`check_kinds`): a file waits for every frame while a camera drops them.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.detections import Detections
from mrcnn_edge.runtime.io.sinks import Sink
from mrcnn_edge.runtime.io.sources import Frame, Source, SourceLost
from mrcnn_edge.runtime.pipeline import InOrder, join_stages, prepare_or_split, start_stage
from mrcnn_edge.runtime.segmenter import Segmenter, Work
from mrcnn_edge.runtime.stats import RunStats

__all__ = ["Batcher", "BatchStats", "check_kinds", "serving_plan", "LIVE_KINDS", "resident_mib"]

log = logging.getLogger(__name__)

LIVE_KINDS = ("camera", "csi", "stream")  # kinds of io.sources.SOURCE_KINDS that drop frames
_END = object()


def check_kinds(specs: Sequence[str], kinds: Sequence[str]) -> None:
    """Refuse files and cameras in one run (one line): they are batched by different rules."""
    live = [s for s, k in zip(specs, kinds) if k in LIVE_KINDS]
    files = [s for s, k in zip(specs, kinds) if k not in LIVE_KINDS]
    if live and files:
        raise UserError(f"sources of different kinds: {live[0]} is live (its newest frame is taken) and {files[0]} "
                        "is a file (every frame is taken); run the cameras and the files as two commands")


def serving_plan(sources: int, batch: int) -> str:
    """One line: how ``sources`` share a model of batch ``batch`` (the fill it gives at most)."""
    if sources <= batch:
        return f"{sources} sources share one model: one frame of each per inference (model batch {batch})"
    return (f"{sources} sources, model batch {batch}: served in turn, {batch} frame{'s' * (batch > 1)} per "
            f"inference, each source in {batch} of every {sources} (export with --batch {sources} for all at once)")


def resident_mib(peak: bool = False) -> float | None:
    """This process's resident memory in MiB, now (VmRSS) or its peak so far (VmHWM); None without /proc."""
    key = "VmHWM:" if peak else "VmRSS:"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return None


@dataclass
class BatchStats:
    """The one model's share of a run: how full its batches were and the memory it took."""

    batch: int                        # the model's batch B
    sources: int
    inferences: int = 0
    frames: int = 0                   # frames that went through the model
    model_mib: float | None = None    # resident memory the model took when it opened (the caller measures)
    peak_mib: float | None = None     # the process's peak resident memory, at the end of the run
    elapsed: float = 0.0              # first capture to the last frame written, seconds

    @property
    def fill(self) -> float:
        """Mean frames per inference (at most ``batch``)."""
        return self.frames / self.inferences if self.inferences else 0.0

    def summary(self) -> str:
        memory = [f"{what} {mib:.0f} MiB" for what, mib in (("the model took", self.model_mib), ("process peak",
                  self.peak_mib)) if mib is not None]
        rate = f", {self.frames / self.elapsed:.2f} frames per second in all" if self.elapsed > 0 else ""
        return (f"one model for {self.sources} sources (batch {self.batch}): {self.fill:.2f} frames per inference "
                f"over {self.inferences} inferences{rate}" + (f"; resident memory: {', '.join(memory)}" if memory else ""))


class _Item(NamedTuple):  # a frame on its way: its source, the frame, when its capture finished
    source: int
    frame: Frame
    captured: float


class _Slots:
    """Frames waiting for a batch, a slot per source, one condition (the assembler waits for any).
    Live: the newest frame replaces one not taken (a drop of that source); files: ``put`` waits for room."""

    def __init__(self, n: int, live: bool, depth: int = 2) -> None:
        self.cond = threading.Condition()
        self.live, self.depth = live, depth
        self.frames: list[deque[_Item]] = [deque() for _ in range(n)]
        self.ended = [False] * n
        self.dropped = [0] * n

    def put(self, item: _Item, stopping: Callable[[], bool]) -> bool:
        with self.cond:
            slot = self.frames[item.source]
            if self.live and slot:
                self.dropped[item.source] += 1
                slot.clear()
            while not self.live and len(slot) >= self.depth:
                if stopping():
                    return False
                self.cond.wait(0.1)
            slot.append(item)
            self.cond.notify_all()
            return True

    def end(self, source: int) -> None:
        with self.cond:
            self.ended[source] = True
            self.cond.notify_all()

    def finished(self, source: int) -> bool:
        """Ended with nothing left to take."""
        return self.ended[source] and not self.frames[source]

    def take(self, source: int) -> _Item:
        item = self.frames[source].popleft()
        self.cond.notify_all()
        return item


class Batcher:
    """Run ``segmenter`` on every source of ``sources`` into ``sinks[i]`` (see the module docstring).

    Sources are all live or all files (:func:`check_kinds`). ``max_frames`` counts per source.
    ``on_result(source_index, frame, detections)`` is called on the calling thread for every frame
    written (the Python API's way to the detections). :meth:`run` returns one ``RunStats`` per
    source, in order; :attr:`stats` holds the model's :class:`BatchStats`. Ends and stops as
    ``pipeline.Pipeline`` does: :meth:`stop` (``drain``: finish the frames captured), an error in a
    stage stops all of it and is raised by :meth:`run`, a sink that returns False stops the run.
    """

    join_timeout = 30.0

    def __init__(self, segmenter: Segmenter, sources: Sequence[Source], sinks: Sequence[Sequence[Sink]] = (),
                 max_frames: int | None = None, render: bool | None = None, deadline: float | None = None,
                 on_result: Callable[[int, Frame, Detections], None] | None = None, queue_size: int = 2) -> None:
        if not sources:
            raise ValueError("Batcher needs at least one source")
        if len({bool(s.live) for s in sources}) > 1:
            raise UserError("sources of different kinds: cameras and files cannot share a batch; run them apart")
        self.segmenter, self.sources = segmenter, list(sources)
        self.sinks = [list(s) for s in sinks] if sinks else [[] for _ in sources]
        if len(self.sinks) != len(self.sources):
            raise ValueError(f"{len(self.sources)} sources but {len(self.sinks)} lists of sinks")
        self.live = self.sources[0].live
        self.max_frames = max_frames if max_frames and max_frames > 0 else None
        self.render = any(self.sinks) if render is None else render
        self.on_result = on_result
        n, b = len(self.sources), segmenter.spec.batch
        fastest = max((s.fps for s in self.sources if s.fps and s.fps > 0), default=25.0)  # 25: unknown
        self.deadline = min(0.1, max(0.005, 1.0 / fastest)) if deadline is None else float(deadline)
        self.stats = BatchStats(batch=b, sources=n)
        self.source_stats = [RunStats(batch=b, live=self.live) for _ in range(n)]
        self._slots = _Slots(n, self.live, depth=queue_size)
        self._queues: list[queue.Queue] = [queue.Queue(maxsize=queue_size) for _ in range(3)]  # infer, post, write
        self._stop, self._draining = threading.Event(), threading.Event()
        self._model_free = threading.Event()  # live: no batch waits for the model (see _assemble_stage)
        self._model_free.set()
        self._pending = 0                      # batches prepared and not inferred yet
        # inference workers: the backend's concurrent requests (--requests), from files only; a
        # camera batch is taken when the model is free (newest frames), one at a time
        self._workers = InOrder(1 if self.live else segmenter.backend.requests, self._stop.is_set)
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._order = list(range(n))  # least recently served first: served sources move to the back
        self._stalled: set[int] = set()  # cameras that missed a deadline and have not delivered since
        self._done = [False] * n      # reached max_frames: its frames in flight are not written
        self._start = [0.0] * n
        self._last_write = [0.0] * n
        self._fps = [s.fps if s.fps and s.fps > 0 else 25.0 for s in self.sources]  # a file's timeline

    # -- control --------------------------------------------------------------------------------
    def stop(self, drain: bool = False) -> None:
        """Stop from any thread: ``drain`` finishes and writes the frames captured, otherwise now."""
        (self._draining if drain else self._stop).set()
        for source in self.sources:
            source.interrupt()
        with self._slots.cond:
            self._slots.cond.notify_all()

    def interrupt(self, drain: bool = True) -> None:
        """:meth:`stop`, recorded as an interruption (Ctrl-C, SIGTERM, SIGHUP) in every source's statistics."""
        for s in self.source_stats:
            s.interrupted = True
        self.stop(drain)

    def _capturing(self, i: int) -> bool:
        return not (self._stop.is_set() or self._draining.is_set() or self._done[i])

    def _put(self, q: queue.Queue, item: Any) -> bool:
        """Blocking put that gives up once the run is stopping (consumers then exit on their own)."""
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                q.put(item, timeout=0.1)
                return True
        return False

    def _get(self, q: queue.Queue) -> Any:
        """Next item, or _END at the end of the stream or as soon as the run is stopping."""
        while not self._stop.is_set():
            with contextlib.suppress(queue.Empty):
                return q.get(timeout=0.1)
        return _END

    def _thread(self, name: str, body: Callable[[], None], out: queue.Queue | None) -> threading.Thread:
        """A stage thread whose stream ends with ``_END`` into ``out`` (None: a capture, which ends its slot)."""
        return start_stage(name, body, self._errors, self.stop, None if out is None else lambda: self._put(out, _END))

    def _record(self, items: Sequence[_Item], stage: str, seconds: float) -> None:
        """A batch's stage time, in the statistics of each source it carried."""
        with self._lock:
            for source in {it.source for it in items}:
                self.source_stats[source].samples[stage].append(seconds)

    # -- capture, one thread per source ---------------------------------------------------------
    def _capture(self, i: int) -> None:
        source, stats = self.sources[i], self.source_stats[i]
        read = 0
        try:
            while self._capturing(i) and (self.max_frames is None or self.live or read < self.max_frames):
                t0 = time.perf_counter()
                try:
                    frame = source.read()
                except SourceLost as exc:  # the end of this source's stream only; what it recorded is kept
                    stats.lost = str(exc)
                    log.warning("%s; ending its stream, what was recorded is kept", exc)
                    return
                if frame is None or not self._capturing(i):
                    return
                done = time.perf_counter()
                self._start[i] = self._start[i] or t0
                with self._lock:
                    stats.samples["capture"].append(done - t0)
                if frame.image is None:
                    self._skip(i, frame, frame.problem or "unreadable")
                    continue
                if frame.time is None:
                    frame.time = done if self.live else frame.index / self._fps[i]
                read += 1
                if not self._slots.put(_Item(i, frame, done), self._stop.is_set):
                    return
        finally:
            self._slots.end(i)

    def _skip(self, i: int, frame: Frame, why: str) -> None:
        with self._lock:
            self.source_stats[i].skipped += 1
        log.warning("%s: skipping frame %d (%s): %s", self.sources[i].description, frame.index, frame.name, why)

    # -- assembly -------------------------------------------------------------------------------
    def _assemble(self) -> list[_Item] | None:
        """The next batch's frames, or None at the end (every source ended, or a stop)."""
        slots, batch, n = self._slots, self.segmenter.spec.batch, len(self.sources)
        first_ready: float | None = None
        with slots.cond:
            while not self._stop.is_set():
                active = [i for i in range(n) if not slots.finished(i)]
                if not active:
                    return None
                ready = [i for i in active if slots.frames[i]]
                if self.live:
                    now = time.monotonic()
                    if ready and first_ready is None:
                        first_ready = now
                    draining = self._draining.is_set()
                    waiting = [] if draining else [i for i in active if i not in ready and i not in self._stalled
                                                   and not slots.ended[i]]
                    late = first_ready is not None and now - first_ready >= self.deadline
                    if ready and (len(ready) >= batch or not waiting or late):
                        if len(ready) < batch:
                            self._stalled.update(waiting)  # not waited for again until it delivers
                        return self._take(ready, batch)
                    if draining and not ready:
                        return None
                    slots.cond.wait(0.1 if first_ready is None else max(0.0, first_ready + self.deadline - now))
                else:
                    # files: the next frame of each of the least recently served files, every frame
                    turn = [i for i in self._order if i in active][:batch]
                    if all(slots.frames[i] or slots.ended[i] for i in turn):
                        have = [i for i in turn if slots.frames[i]]
                        if have:
                            return self._take(have, batch)
                    slots.cond.wait(0.1)
        return None

    def _take(self, ready: list[int], batch: int) -> list[_Item]:
        """Up to ``batch`` of the ready sources, least recently served first (sources beyond the batch in turn)."""
        chosen = [i for i in self._order if i in ready][:batch]
        self._order = [i for i in self._order if i not in chosen] + chosen
        self._stalled.difference_update(chosen)
        return [self._slots.take(i) for i in sorted(chosen)]

    def _assemble_stage(self) -> None:
        number = 0
        while True:
            if self.live:
                # a camera batch is taken when the model is free: the frames are the newest then,
                # instead of waiting one inference in a queue
                while not self._model_free.wait(0.1):
                    if self._stop.is_set():
                        return
            items = self._assemble()
            if items is None:
                return
            for group, work in prepare_or_split(self.segmenter, items, lambda it: it.frame.image,
                                                lambda it, why: self._skip(it.source, it.frame, why)):
                self._record(group, "pre", work.timings["pre"])
                with self._lock:
                    self._pending += 1
                    self._model_free.clear()
                if not self._put(self._queues[0], (number, (group, work))):
                    return
                number += 1  # each batch's place in the stream (the inference workers keep the order)

    # -- model and post-processing --------------------------------------------------------------
    def _infer(self) -> None:
        """One inference worker (``pipeline.InOrder.work``): with several (files, ``--requests``), the
        batches go on in their order."""
        def step(item: tuple[list[_Item], Work]) -> tuple[list[_Item], Work]:
            items, work = item
            work = self.segmenter.infer(work)
            self._record(items, "infer", work.timings["infer"])
            with self._lock:
                self.stats.inferences += 1
                self.stats.frames += len(items)
                self._pending -= 1
                if self._pending == 0:  # nothing prepared is waiting: the next batch may be taken
                    self._model_free.set()
            return items, work

        self._workers.work(lambda: self._get(self._queues[0]), _END, step, lambda x: self._put(self._queues[1], x),
                           lambda x: self._put(self._queues[0], x), self.stop)

    def _post(self) -> None:
        while (got := self._get(self._queues[1])) is not _END:
            items, work = got
            detections = self.segmenter.finish(work)
            self._record(items, "post", work.timings["post"])
            t0 = time.perf_counter()
            images = [d.draw(image) if self.render else None for d, image in zip(detections, work.frames)]
            render = time.perf_counter() - t0
            if self.render:
                self._record(items, "render", render)
            service = sum(work.timings.get(k, 0.0) for k in ("pre", "infer", "post")) + render
            if not self._put(self._queues[2], [(it, d, im, service) for it, d, im in zip(items, detections, images)]):
                return

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> list[RunStats]:
        """Process every source to its end (or ``max_frames``, or a stop); one ``RunStats`` per source."""
        threads: list[threading.Thread] = []  # filled inside the try: stages started before a failed start are stopped
        try:
            threads += [self._thread(f"capture-{i}", lambda i=i: self._capture(i), None) for i in range(len(self.sources))]
            threads.append(self._thread("batch", self._assemble_stage, self._queues[0]))
            threads += [self._thread(f"infer-{i}" if self._workers.workers > 1 else "infer", self._infer, None)
                        for i in range(self._workers.workers)]
            threads.append(self._thread("post", self._post, self._queues[2]))
            while (got := self._get(self._queues[2])) is not _END:
                for item, detections, image, service in got:
                    self._write(item, detections, image, service)
        except KeyboardInterrupt:  # the Python API without runtime/run.py's signal handling
            for s in self.source_stats:
                s.interrupted = True
        finally:
            self.stop()
            join_stages(threads, self.join_timeout)
            self._finish_stats()
        if self._errors:
            raise self._errors[0]
        return self.source_stats

    def _finish_stats(self) -> None:
        end = time.perf_counter()
        for i, s in enumerate(self.source_stats):
            # a stream that ended on its own (a file's end, a lost camera) is timed to its last frame
            ended_alone = s.frames and (s.lost or not self.live) and not s.interrupted
            stop_at = self._last_write[i] if ended_alone else end
            s.elapsed = stop_at - self._start[i] if self._start[i] else 0.0
            s.dropped_at = {"capture": self._slots.dropped[i]}
            s.dropped = self._slots.dropped[i]
        self.stats.peak_mib = resident_mib(peak=True)
        starts, last = [t for t in self._start if t], max(self._last_write)
        self.stats.elapsed = last - min(starts) if starts and last else 0.0

    def _write(self, item: _Item, detections: Detections, image: Any, service: float) -> None:
        """One frame into its source's sinks (an error there, e.g. a full disk, ends the run)."""
        i, frame = item.source, item.frame
        if self._done[i]:
            return  # past max_frames: a frame that was in flight when the source was ended
        t0 = time.perf_counter()
        keep_going = all([sink.write(image, frame) for sink in self.sinks[i]]) if image is not None else True
        t1 = time.perf_counter()
        stats = self.source_stats[i]
        with self._lock:
            stats.samples["write"].append(t1 - t0)
            (stats.latency if self.live else stats.service).append(t1 - item.captured if self.live
                                                                   else service + t1 - t0)
        stats.frames += 1
        self._last_write[i] = t1
        stats.first_time = frame.time if stats.first_time is None else stats.first_time
        stats.last_time = frame.time
        if self.on_result is not None:
            self.on_result(i, frame, detections)
        if not keep_going:
            self.stop()
        elif self.max_frames and stats.frames >= self.max_frames:
            self._done[i] = True
            self.sources[i].interrupt()
            if all(self._done):
                self.stop()
