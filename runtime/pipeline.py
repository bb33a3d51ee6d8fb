"""The real-time pipeline: capture -> pre -> infer -> post/render -> sinks, one thread per stage.

From a live source every stage boundary (capture -> pre -> infer -> post -> sinks) is a one-item
slot where the newest frame replaces one the next stage has not taken yet (counted as dropped,
per boundary): no stage ever waits for a slower one, so a frame reaches the sink about one model
time after capture instead of several. From files every frame is processed, in order (stages
are connected by bounded queues and block on a full one instead). Capture-to-sink latency
(capture finished -> sinks written) is reported as p50/p95 beside FPS and the per-stage times.
A frame that cannot be read or converted is skipped with a warning. Sinks run on the calling
thread (OpenCV windows must). With GPU pre-processing (TensorRT) the letterbox runs in the
infer stage, whose time then includes the frame upload and the kernel. An error in any stage stops all of them and is re-raised by
:meth:`Pipeline.run`; Ctrl-C stops cleanly and keeps what was written.
"""
from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.frames import as_bgr8
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.io.sinks import Sink
from mrcnn_edge.runtime.io.sources import Frame, Source

__all__ = ["Pipeline", "RunStats", "LatestSlot", "STAGES"]

log = logging.getLogger(__name__)

STAGES = ("capture", "pre", "infer", "post", "render", "write")
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
    """Frames an item between stages carries: a Frame, a (frames, work) pair or a list of results."""
    if isinstance(item, tuple) and item and isinstance(item[0], list):
        return len(item[0])
    if isinstance(item, list):
        return len(item)
    return 1


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class RunStats:
    frames: int = 0           # frames processed and written
    dropped: int = 0          # live frames replaced by newer ones before processing (all boundaries)
    skipped: int = 0          # unreadable or invalid frames
    elapsed: float = 0.0      # seconds from the first frame read to the end
    interrupted: bool = False
    batch: int = 1
    samples: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=5000) for s in STAGES})
    latency: deque = field(default_factory=lambda: deque(maxlen=5000))  # capture -> sinks, seconds
    dropped_at: dict[str, int] = field(default_factory=dict)  # boundary -> frames dropped there

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    def median_ms(self) -> dict[str, float]:
        return {s: 1000 * statistics.median(v) for s, v in self.samples.items() if v}

    def stage_line(self) -> str:
        unit = "ms" if self.batch == 1 else f"ms per batch of {self.batch}"
        return " ".join(f"{s} {ms:.1f}" for s, ms in self.median_ms().items()) + f" {unit} (median)"

    def latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) capture-to-sink latency in ms, None before the first frame."""
        if not self.latency:
            return None
        values = list(self.latency)
        return 1000 * _percentile(values, 0.5), 1000 * _percentile(values, 0.95)

    def latency_line(self) -> str:
        lat = self.latency_ms()
        return f"latency p50 {lat[0]:.1f} ms p95 {lat[1]:.1f} ms" if lat else "latency -"

    def summary(self) -> str:
        extra = ""
        if self.dropped:
            where = ", ".join(f"{k} {v}" for k, v in self.dropped_at.items() if v)
            extra = f", dropped {self.dropped} ({where})"
        extra += f", skipped {self.skipped}" if self.skipped else ""
        return (f"{self.frames} frames in {self.elapsed:.1f} s: {self.fps:.2f} fps, {self.latency_line()}{extra}; "
                f"per stage: {self.stage_line()}")


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
        self._errors: list[BaseException] = []
        live = source.live
        self._slot: Any = LatestSlot() if live else queue.Queue(maxsize=queue_size)
        # pre->infer, infer->post, post->sinks: latest-frame slots when live, queues from files
        self._queues = [LatestSlot() if live else queue.Queue(maxsize=queue_size) for _ in range(3)]
        self._captured: dict[int, float] = {}  # id(frame) -> capture time, until its sinks are written
        self.stats = RunStats(batch=segmenter.spec.batch)
        self._lock = threading.Lock()
        self._start = 0.0

    def stop(self) -> None:
        self._stop.set()
        self.source.interrupt()

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
        """Next item, or _END at the end of the stream or as soon as the pipeline is stopping."""
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                pass
        return _END

    def _record(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stats.samples[stage].append(seconds)

    def _skip(self, frame: Frame, why: str) -> None:
        with self._lock:
            self.stats.skipped += 1
        log.warning("skipping frame %d (%s): %s", frame.index, frame.name, why)

    def _thread(self, name: str, body: Callable[[], None], out: Any) -> threading.Thread:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of run()
                self._errors.append(exc)
                self.stop()
            finally:
                self._put(out, _END)
        t = threading.Thread(target=run, name=f"mrcnn-edge-{name}", daemon=True)
        t.start()
        return t

    # -- stages ---------------------------------------------------------------------------------
    def _capture(self) -> None:
        read = 0
        while not self._stop.is_set() and (self.max_frames is None or self.source.live or read < self.max_frames):
            t0 = time.perf_counter()
            frame = self.source.read()
            if frame is None:
                return
            if not self._start:
                self._start = t0
            done = time.perf_counter()
            self._record("capture", done - t0)
            if frame.image is None:
                self._skip(frame, frame.problem or "unreadable")
                continue
            read += 1
            with self._lock:  # bounded: a slot drops the oldest and its entry goes in _forget
                self._captured[id(frame)] = done
            if self.source.live:
                self._slot.put(frame)
            elif not self._put(self._slot, frame):
                return

    def _pre(self) -> None:
        batch = self.segmenter.spec.batch
        done = False
        while not done:
            frames: list[Frame] = []
            while len(frames) < batch:
                item = self._get(self._slot)
                if item is _END:
                    done = True
                    break
                try:
                    item.image = as_bgr8(item.image)
                except UserError as exc:
                    self._skip(item, str(exc))
                    continue
                frames.append(item)
                if self.source.live:
                    break  # never wait for more camera frames: latency first
            if frames:
                work = self.segmenter.prepare([f.image for f in frames])
                self._record("pre", work.timings["pre"])
                if not self._put(self._queues[0], (frames, work)):
                    return

    def _infer(self) -> None:
        while (item := self._get(self._queues[0])) is not _END:
            frames, work = item
            work = self.segmenter.infer(work)
            self._record("infer", work.timings["infer"])
            if not self._put(self._queues[1], (frames, work)):
                return

    def _post(self) -> None:
        while (item := self._get(self._queues[1])) is not _END:
            frames, work = item
            detections = self.segmenter.finish(work)
            self._record("post", work.timings["post"])
            t0 = time.perf_counter()
            images = [d.draw(f.image) if self.render else None for d, f in zip(detections, frames)]
            if self.render:
                self._record("render", time.perf_counter() - t0)
            if not self._put(self._queues[2], list(zip(frames, detections, images))):
                return

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> RunStats:
        """Process the source to its end (or ``max_frames``, or a stop); return the statistics."""
        threads = [
            self._thread("capture", self._capture, self._slot),
            self._thread("pre", self._pre, self._queues[0]),
            self._thread("infer", self._infer, self._queues[1]),
            self._thread("post", self._post, self._queues[2]),
        ]
        last = time.perf_counter()
        try:
            while (item := self._get(self._queues[2])) is not _END:
                for frame, detections, image in item:
                    t0 = time.perf_counter()
                    keep_going = all([sink.write(image, frame) for sink in self.sinks]) if image is not None else True
                    t1 = time.perf_counter()
                    self._record("write", t1 - t0)
                    with self._lock:
                        captured = self._captured.pop(id(frame), None)
                        if len(self._captured) > 64:  # frames dropped on the way never reach here
                            self._captured = dict(list(self._captured.items())[-16:])
                        if captured is not None:
                            self.stats.latency.append(t1 - captured)
                    self.stats.frames += 1
                    if not keep_going or (self.max_frames and self.stats.frames >= self.max_frames):
                        self.stop()
                if self.progress and time.perf_counter() - last >= self.progress_every:
                    last = time.perf_counter()
                    self.progress(self._progress_line())
        except KeyboardInterrupt:
            self.stats.interrupted = True
        finally:
            self.stop()
            deadline = time.monotonic() + self.join_timeout
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                log.warning("%s still running %.0f s after the stop; the model is released when it returns",
                            ", ".join(stuck), self.join_timeout)
            self.stats.elapsed = time.perf_counter() - self._start if self._start else 0.0
            names = ("capture", "pre", "infer", "post")
            slots = [self._slot, *self._queues]
            self.stats.dropped_at = {n: getattr(q, "dropped", 0) for n, q in zip(names, slots)}
            self.stats.dropped = sum(self.stats.dropped_at.values())
        if self._errors:
            raise self._errors[0]
        return self.stats

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
