"""The real-time pipeline: capture -> pre -> infer -> post/render -> sinks, one thread per stage.

From a live source every stage boundary (capture -> pre -> infer -> post -> sinks) is a one-item
slot where the newest frame replaces one the next stage has not taken yet (counted as dropped,
per boundary): no stage ever waits for a slower one, so a frame reaches the sink about one model
time after capture instead of several. From files every frame is processed, in order (stages
are connected by bounded queues and block on a full one instead).

Numbers: for a live source, capture-to-sink latency (capture finished -> sinks written) as
p50/p95; for files, where a frame waits in the queues behind the ones read before it (so the
time from capture is queueing, not speed), the service time: the time its batch spent in pre,
infer, post and render plus its own write, queues excluded.

From files, a backend that runs several inferences at once (``Backend.requests`` > 1: OpenVINO's
throughput mode) gets as many inference workers; each batch carries its number from the
pre-processing stage and the workers hand results on in that order, so post-processing and the
sinks see the frames as they came.

A frame that cannot be read or converted is skipped with a warning (``Segmenter.prepare`` checks and
converts each frame once; the pipeline does not convert them itself). Sinks run on the calling
thread (OpenCV windows must). With GPU pre-processing (TensorRT) the letterbox runs in the infer
stage, whose time then includes the frame upload and the kernel.

Ends: the source's end; a live source lost for good (:class:`~mrcnn_edge.runtime.io.sources.SourceLost`:
its message goes to ``RunStats.lost``, the frames in flight are still written, no error is raised);
:meth:`Pipeline.stop` with ``drain=True`` (capture stops, the frames in flight are finished and
written: a first Ctrl-C or SIGTERM) or ``drain=False`` (every stage stops now: a second one, an
error, a sink that asks to stop). An error in any stage stops all of them and is re-raised by
:meth:`Pipeline.run`. Closing the sinks is the caller's (``runtime/run.py``), after ``run`` returns
or raises, so what was written is finalised in every case.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.segmenter import Segmenter, Work
from mrcnn_edge.runtime.stats import RunStats
from mrcnn_edge.runtime.io.sinks import Sink
from mrcnn_edge.runtime.io.sources import Frame, Source, SourceLost

__all__ = ["InOrder", "Pipeline", "LatestSlot", "prepare_or_split", "start_stage", "join_stages"]

log = logging.getLogger(__name__)

_END = object()


class LatestSlot:
    """A one-item queue where ``put`` replaces an item nobody took (and counts it as dropped).

    The end-of-stream marker never replaces a frame: ``get`` returns the pending frame first.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = self._ended = False
        self.dropped = 0

    def put(self, item: Any, timeout: float | None = None) -> None:
        with self._cond:
            if item is _END:
                self._ended = True
            else:
                if self._full:
                    self.dropped += _frames_in(self._item)
                self._item, self._full = item, True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._ended, timeout):
                raise queue.Empty
            if not self._full:
                return _END
            item, self._item, self._full = self._item, None, False
            return item


def _frames_in(item: Any) -> int:
    """Frames an item between stages carries: a Frame, a ``(number, (frames, work))`` batch, a
    ``(frames, work)`` pair or a list of results."""
    if isinstance(item, tuple):  # the frames are its first list, or in its first tuple (a numbered batch)
        part = next((part for part in item if isinstance(part, (list, tuple))), None)
        return 1 if part is None else _frames_in(part)
    if isinstance(item, list):
        return len(item)
    return 1


def prepare_or_split(segmenter: Segmenter, items: list, image_of: Callable[[Any], Any],
                     skip: Callable[[Any, str], None]) -> list[tuple[list, Work]]:
    """``Segmenter.prepare`` of the items' images (``image_of``) as one batch; when one is refused,
    each item goes alone so that only the refused ones are skipped (``skip(item, why)``; rare: the
    cost is paid only then). Returns ``[(items, work)]`` for what was prepared. The pipeline's
    items are frames, the batcher's a source's frame."""
    if not items:
        return []
    try:
        return [(items, segmenter.prepare([image_of(it) for it in items]))]
    except UserError as exc:
        if len(items) == 1:
            skip(items[0], str(exc))
            return []
    return [one for it in items for one in prepare_or_split(segmenter, [it], image_of, skip)]


def start_stage(name: str, body: Callable[[], None], errors: list[BaseException], stop: Callable[[], None],
                end: Callable[[], Any] | None) -> threading.Thread:
    """Run one stage's ``body`` in the daemon thread ``mrcnn-edge-<name>``: an exception is kept in
    ``errors`` (the caller's ``run`` raises the first) and stops every stage; then ``end`` marks the
    end of the stage's stream for the next one (None: the body does it itself). The pipeline's and
    the batcher's stages run so."""
    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of run()
            errors.append(exc)
            stop()
        finally:
            if end is not None:
                end()
    t = threading.Thread(target=run, name=f"mrcnn-edge-{name}", daemon=True)
    t.start()
    return t


def join_stages(threads: Sequence[threading.Thread], timeout: float) -> None:
    """Wait at most ``timeout`` seconds in all for stage threads that were told to stop; a stage
    still inside a call (a model that does not return) is named in a warning, not waited for."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        log.warning("%s still running %.0f s after the stop; the model is released when it returns",
                    ", ".join(stuck), timeout)


class InOrder:
    """``workers`` inference workers that finish out of order hand their batches on in the order of
    the numbers the pre-processing stage gave them (0, 1, 2, ...): the pipeline's and the batcher's,
    from files. One worker hands on at once (a live slot may skip numbers)."""

    def __init__(self, workers: int, stopping: Callable[[], bool]) -> None:
        self.workers = max(1, int(workers))
        self._left = self.workers
        self._next = 0  # the number of the batch whose results go on next
        self._turn = threading.Condition()
        self._stopping = stopping

    def hand_on(self, number: int, put: Callable[[], bool]) -> bool:
        """``put()`` batch ``number`` after every earlier batch was put; False when stopping."""
        if self.workers == 1:
            return put()
        with self._turn:
            while self._next != number:
                if self._stopping():
                    return False
                self._turn.wait(0.1)
        try:
            return put()
        finally:
            with self._turn:
                self._next += 1
                self._turn.notify_all()

    def worker_done(self) -> bool:
        """A worker's end; True for the last one (it ends the stream for the next stage, the others
        hand the end-of-stream mark on to the workers still waiting for it)."""
        with self._turn:
            self._left -= 1
            return self._left == 0

    def work(self, get: Callable[[], Any], end: Any, step: Callable[[Any], Any], put: Callable[[Any], bool],
             put_back: Callable[[Any], bool], stop: Callable[[], None]) -> None:
        """One worker's loop: ``get()`` ``(number, item)`` until ``end``, ``put(step(item))`` in the
        numbers' order; an error stops the run first (the other workers must not wait for this
        worker's batch); the last worker to end puts ``end`` for the next stage, the others put it
        back (``put_back``) for the workers still waiting."""
        try:
            while (got := get()) is not end:
                number, item = got
                out = step(item)
                if not self.hand_on(number, lambda: put(out)):
                    return
        except BaseException:
            stop()
            raise
        finally:
            (put if self.worker_done() else put_back)(end)


class Pipeline:
    """Run ``segmenter`` on ``source`` into ``sinks``; see the module docstring.

    ``join_timeout``: seconds :meth:`run` waits, in all, for the stage threads to stop. A stage still busy
    then (a model call that does not return) is left running with a warning; the segmenter's
    ``close()`` waits for it before freeing device memory.
    """

    join_timeout = 30.0

    def __init__(self, segmenter: Segmenter, source: Source, sinks: Sequence[Sink] = (),
                 max_frames: int | None = None, render: bool | None = None,
                 progress: Callable[[str], None] | None = None, progress_every: float = 1.0,
                 queue_size: int = 2) -> None:
        self.segmenter, self.source, self.sinks = segmenter, source, list(sinks)
        self.max_frames = max_frames if max_frames and max_frames > 0 else None
        self.render = bool(self.sinks) if render is None else render
        self.progress, self.progress_every = progress, progress_every
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._errors: list[BaseException] = []
        live = source.live
        self._slot: Any = LatestSlot() if live else queue.Queue(maxsize=queue_size)
        # pre->infer, infer->post, post->sinks: latest-frame slots when live, queues from files
        self._queues = [LatestSlot() if live else queue.Queue(maxsize=queue_size) for _ in range(3)]
        self._captured: dict[int, float] = {}  # id(frame) -> capture time, until its sinks are written
        self.stats = RunStats(batch=segmenter.spec.batch, live=live)
        self._lock = threading.Lock()
        # inference workers: the backend's concurrent requests, from files only (a camera's
        # frames are taken newest-first, one at a time: latency first)
        self._workers = InOrder(1 if live else segmenter.backend.requests, self._stop.is_set)
        self._start = 0.0
        self._fps = source.fps if source.fps and source.fps > 0 else 25.0  # a file's timeline

    def stop(self, drain: bool = False) -> None:
        """Stop the run from any thread: ``drain`` finishes and writes the frames already captured,
        otherwise every stage stops now. A drain may be followed by a stop without one."""
        if drain:
            self._draining.set()
        else:
            self._stop.set()
        self.source.interrupt()

    def interrupt(self, drain: bool = True) -> None:
        """:meth:`stop`, recorded as an interruption (Ctrl-C, SIGTERM, SIGHUP) in the statistics."""
        self.stats.interrupted = True
        self.stop(drain)

    # -- plumbing -------------------------------------------------------------------------------
    def _put(self, q: Any, item: Any) -> bool:
        """Blocking put that gives up once the pipeline is stopping (consumers then exit on their own)."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, q: Any) -> Any:
        """Next item, or _END at the end of the stream or as soon as the pipeline is stopping.

        While draining, an empty capture slot is the end too: capture may be stuck in a read
        (a stalled stream blocks up to its read timeout) and is not waited for."""
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if q is self._slot and self._draining.is_set():
                    return _END
        return _END

    def _record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stats.samples[stage].append(seconds)

    def _skip(self, frame: Frame, why: str) -> None:
        with self._lock:
            self.stats.skipped += 1
        log.warning("skipping frame %d (%s): %s", frame.index, frame.name, why)

    def _thread(self, name: str, body: Callable[[], None], out: Any) -> threading.Thread:
        """A stage thread whose stream ends with ``_END`` into ``out`` (None: the body ends it)."""
        return start_stage(name, body, self._errors, self.stop, None if out is None else lambda: self._put(out, _END))

    # -- stages ---------------------------------------------------------------------------------
    def _capture(self) -> None:
        read = 0
        live = self.source.live
        while self._running() and (self.max_frames is None or live or read < self.max_frames):
            t0 = time.perf_counter()
            try:
                frame = self.source.read()
            except SourceLost as exc:
                # the end of this source's stream, not of the run: what was captured is still written
                self.stats.lost = str(exc)
                log.warning("%s; ending its stream, what was recorded is kept", exc)
                return
            if frame is None or not self._running():
                return
            if not self._start:
                self._start = t0
            done = time.perf_counter()
            self._record("capture", done - t0)
            if frame.image is None:
                self._skip(frame, frame.problem or "unreadable")
                continue
            if frame.time is None:
                frame.time = done if live else frame.index / self._fps
            read += 1
            with self._lock:  # bounded: a slot drops the oldest and its entry goes in _forget
                self._captured[id(frame)] = done
            if live:
                self._slot.put(frame)
            elif not self._put(self._slot, frame):
                return

    def _running(self) -> bool:
        return not (self._stop.is_set() or self._draining.is_set())

    def _pre(self) -> None:
        batch = self.segmenter.spec.batch
        done = False
        number = 0  # each batch's place in the stream (the inference workers keep the order)
        while not done:
            frames: list[Frame] = []
            while len(frames) < batch:
                item = self._get(self._slot)
                if item is _END:
                    done = True
                    break
                frames.append(item)
                if self.source.live:
                    break  # never wait for more camera frames: latency first
            for group, work in prepare_or_split(self.segmenter, frames, lambda f: f.image, self._skip):
                self._record("pre", work.timings["pre"])
                if not self._put(self._queues[0], (number, (group, work))):
                    return
                number += 1

    def _infer(self) -> None:
        """One inference worker (:meth:`InOrder.work`): with several, the batches go on in their order."""
        def step(item: tuple[list[Frame], Work]) -> tuple[list[Frame], Work]:
            frames, work = item
            work = self.segmenter.infer(work)
            self._record("infer", work.timings["infer"])
            return frames, work

        self._workers.work(lambda: self._get(self._queues[0]), _END, step, lambda x: self._put(self._queues[1], x),
                           lambda x: self._put(self._queues[0], x), self.stop)

    def _post(self) -> None:
        while (item := self._get(self._queues[1])) is not _END:
            frames, work = item
            detections = self.segmenter.finish(work)
            self._record("post", work.timings["post"])
            t0 = time.perf_counter()
            # drawn on the frames as the segmenter converted them (the arrays it uploaded on a GPU)
            images = [d.draw(image) if self.render else None for d, image in zip(detections, work.frames)]
            render = time.perf_counter() - t0
            if self.render:
                self._record("render", render)
            service = sum(work.timings.get(k, 0.0) for k in ("pre", "infer", "post")) + render
            if not self._put(self._queues[2], [(f, d, i, service) for f, d, i in zip(frames, detections, images)]):
                return

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> RunStats:
        """Process the source to its end (or ``max_frames``, or a stop); return the statistics."""
        threads: list[threading.Thread] = []  # filled inside the try: stages started before a failed start are stopped
        last = time.perf_counter()
        try:
            threads.append(self._thread("capture", self._capture, self._slot))
            threads.append(self._thread("pre", self._pre, self._queues[0]))
            threads += [self._thread(f"infer-{i}" if self._workers.workers > 1 else "infer", self._infer, None)
                        for i in range(self._workers.workers)]
            threads.append(self._thread("post", self._post, self._queues[2]))
            while (item := self._get(self._queues[2])) is not _END:
                for frame, detections, image, service in item:
                    self._write(frame, image, service)
                if self.progress and time.perf_counter() - last >= self.progress_every:
                    last = time.perf_counter()
                    self.progress(self._progress_line())
        except KeyboardInterrupt:  # the Python API without runtime/run.py's signal handling
            self.stats.interrupted = True
        finally:
            self.stop()
            join_stages(threads, self.join_timeout)
            self.stats.elapsed = time.perf_counter() - self._start if self._start else 0.0
            names = ("capture", "pre", "infer", "post")
            slots = [self._slot, *self._queues]
            self.stats.dropped_at = {n: getattr(q, "dropped", 0) for n, q in zip(names, slots)}
            self.stats.dropped = sum(self.stats.dropped_at.values())
        if self._errors:
            raise self._errors[0]
        return self.stats

    def _write(self, frame: Frame, image: Any, service: float) -> None:
        """One frame into every sink (an error there, e.g. a full disk, ends the run)."""
        t0 = time.perf_counter()
        keep_going = all([sink.write(image, frame) for sink in self.sinks]) if image is not None else True
        t1 = time.perf_counter()
        self._record("write", t1 - t0)
        with self._lock:
            captured = self._captured.pop(id(frame), None)
            if len(self._captured) > 64:  # frames dropped on the way never reach here
                self._captured = dict(list(self._captured.items())[-16:])
            if self.source.live:
                if captured is not None:
                    self.stats.latency.append(t1 - captured)
            else:
                self.stats.service.append(service + t1 - t0)
        self.stats.frames += 1
        if self.stats.first_time is None:
            self.stats.first_time = frame.time
        self.stats.last_time = frame.time
        if not keep_going or (self.max_frames and self.stats.frames >= self.max_frames):
            self.stop()

    def _progress_line(self) -> str:
        s = self.stats
        elapsed = time.perf_counter() - self._start if self._start else 0.0
        fps = s.frames / elapsed if elapsed > 0 else 0.0
        total = self.max_frames if not self.source.length else min(self.source.length, self.max_frames or 10**12)
        if total and not self.source.live:
            head = f"[{s.frames:>{len(str(total))}}/{total} {100 * s.frames / total:3.0f}%]"
        else:
            head = f"[frame {s.frames}]"
        dropped = sum(getattr(q, "dropped", 0) for q in (self._slot, *self._queues))
        drops = f" | dropped {dropped}" if self.source.live else ""
        with self._lock:
            lat = s.latency_line()
        return f"{head} {fps:.1f} fps | {lat} | {s.stage_line()}{drops}"
