"""One run: sources -> the model stage -> sinks, closed in every case. ``mrcnn-edge run`` (one or
several ``--source``) and ``mrcnn-edge demo`` both run through :func:`run_sources`.

The three parts stay separate: :func:`open_outputs` makes a source's sinks, the model stage is
one :class:`~mrcnn_edge.runtime.segmenter.Segmenter` for every source (a
:class:`~mrcnn_edge.runtime.pipeline.Pipeline` for one source; for several, a
:class:`~mrcnn_edge.runtime.batcher.Batcher` puts one frame of each into one batch), and
:func:`run_sources` runs N sources, each into its sinks, and returns each source's statistics.
Sinks are written on the calling thread (an OpenCV window needs the main thread); several sources
run without a window, all of one kind (cameras or files, :func:`check_run`).

What a recording survives (docs/DESIGN.md, "Command line"; README "Recorder"):

- a live source lost for good ends that source's stream only: a warning, its output kept and
  finished, the other sources go on, and the run exits :data:`EXIT_SOURCE_LOST` (3);
- Ctrl-C, SIGTERM (``systemctl stop``, ``docker stop``) and SIGHUP stop the run alike
  (:class:`StopSignals`): capture stops, the frames in flight are finished and written, every
  output is finished; a second signal skips the frames in flight but never the finishing of what
  was written. Exit code 128 + the signal's number (130, 143, 129);
- an output that cannot be written (a full disk) ends the run with its one line (exit 2); every
  output keeps what was written before.
Outputs are closed whatever ends the run, and an output that received no frame leaves nothing.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mrcnn_edge.core.errors import UserError

__all__ = ["RunOptions", "SourceRun", "StopSignals", "run_sources", "check_run", "open_outputs",
           "exit_code", "EXIT_SOURCE_LOST"]

log = logging.getLogger(__name__)

EXIT_SOURCE_LOST = 3  # a live source was lost for good; what it recorded is kept


@dataclass
class RunOptions:
    max_frames: int | None = None          # per source
    reconnect_tries: int = 5               # live sources
    segment_seconds: float | None = None   # rotate video outputs (out_000.mp4, ...)
    window: bool = False                   # show a window too (one source only)
    progress: Callable[[str], None] | None = None  # one source only: a status line now and then
    announce: Callable[[str], None] | None = None  # "source: ...", "output: ..." lines


@dataclass
class SourceRun:
    """One source's result: the spec it was given, its pipeline's ``RunStats``, its outputs in place."""

    source: str
    stats: Any
    outputs: list[Path] = field(default_factory=list)
    batch: Any = None  # several sources: the one model's batcher.BatchStats, shared by all of them

    def summary(self) -> str:
        return f"{self.source}: {self.stats.summary()}"


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP as one stop request (see the module docstring).

    While the ``with`` block runs, the first of them stops every watched pipeline with a drain,
    a second stops them at once; neither raises into the code that is writing, so nothing can
    interrupt the finishing of an output (a ``KeyboardInterrupt`` there used to delete it).
    Handlers can only be set from the main thread; elsewhere this does nothing.
    """

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

    def __init__(self) -> None:
        self.received: int | None = None   # the first signal's number
        self._count = 0
        self._pipelines: list[Any] = []
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        # runs on the main thread between two bytecodes: only set flags, never raise
        with self._lock:
            self._count += 1
            if self.received is None:
                self.received = signum
            first, pipelines = self._count == 1, list(self._pipelines)
        name = signal.Signals(signum).name
        if first:
            log.warning("%s: stopping; finishing the frames in flight and closing the outputs "
                        "(again to skip the frames in flight)", name)
        else:
            log.warning("%s: stopping now; the outputs are still closed with what was written", name)
        for pipeline in pipelines:
            pipeline.interrupt(drain=first)

    def watch(self, pipeline: Any) -> None:
        """Stop ``pipeline`` on the next signal (or now, if one came already)."""
        with self._lock:
            self._pipelines.append(pipeline)
            count = self._count
        if count:
            pipeline.interrupt(drain=count == 1)

    def forget(self, pipeline: Any) -> None:
        with self._lock:
            if pipeline in self._pipelines:
                self._pipelines.remove(pipeline)


def check_run(sources: Sequence[str], outputs: Sequence[str | None], segment_seconds: float | None = None) -> list[str]:
    """Everything about the sources and outputs that can be refused before the model loads; the
    sources' kinds (``check_source``)."""
    from mrcnn_edge.runtime.batcher import check_kinds
    from mrcnn_edge.runtime.io.outputs import check_output
    from mrcnn_edge.runtime.io.sources import check_source

    if not sources:
        raise UserError("give at least one --source")
    if outputs and len(outputs) != len(sources):
        raise UserError(f"{len(sources)} sources but {len(outputs)} outputs: give one --output per --source, or none")
    kinds = [check_source(spec) for spec in sources]
    check_kinds(sources, kinds)
    for out in outputs:
        if out:
            check_output(out, segment_seconds)
    return kinds


def open_outputs(source: Any, output: str | None, options: RunOptions, stack: contextlib.ExitStack) -> list[Any]:
    """The sinks of one source (a window first, when asked), each closed by ``stack`` on the way out."""
    from mrcnn_edge.runtime.io.outputs import open_sink
    from mrcnn_edge.runtime.io.sinks import WindowSink

    sinks: list[Any] = []
    if options.window:
        sinks.append(WindowSink())
        stack.callback(sinks[-1].close)
    if output:
        sinks.append(open_sink(output, source, options.segment_seconds))
        stack.callback(sinks[-1].close)
    return sinks


def _run_one(segmenter: Any, spec: str, output: str | None, options: RunOptions, stopper: StopSignals,
             progress: Callable[[str], None] | None) -> SourceRun:
    from mrcnn_edge.runtime.io.sources import open_source
    from mrcnn_edge.runtime.pipeline import Pipeline

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(spec, reconnect_tries=options.reconnect_tries))
        sinks = open_outputs(source, output, options, stack)
        if options.announce:
            options.announce(f"source: {source.description}" + "".join(f"\noutput: {s.description}" for s in sinks))
        pipeline = Pipeline(segmenter, source, sinks, max_frames=options.max_frames, progress=progress)
        stopper.watch(pipeline)
        try:
            stats = pipeline.run()
        finally:
            stopper.forget(pipeline)
    # the stack closed the sinks: their files are in place now
    return SourceRun(str(spec), stats, [p for sink in sinks for p in sink.outputs()])


def run_sources(segmenter: Any, sources: Sequence[str], outputs: Sequence[str | None] = (),
                options: RunOptions | None = None, stopper: StopSignals | None = None,
                model_mib: float | None = None) -> list[SourceRun]:
    """Run ``sources[i]`` through ``segmenter`` into ``outputs[i]`` (one per source, or none);
    one :class:`SourceRun` per source, in order. The caller owns the segmenter.

    One source runs in a :class:`~mrcnn_edge.runtime.pipeline.Pipeline`; several share the one
    model through a :class:`~mrcnn_edge.runtime.batcher.Batcher` (one frame of each source per
    batch; ``model_mib``, the memory the model took when it opened, goes into its statistics).
    A source lost for good ends its own stream (``stats.lost``); any other error stops every
    source and is raised once all outputs are closed.
    """
    options = options or RunOptions()
    stopper = stopper or StopSignals()
    outputs = list(outputs) or [None] * len(sources)
    if len(outputs) != len(sources):
        raise ValueError(f"{len(sources)} sources, {len(outputs)} outputs")
    if len(sources) == 1:
        return [_run_one(segmenter, str(sources[0]), outputs[0], options, stopper, options.progress)]
    if options.window:
        raise UserError("several --source run without a window: pass --no-display (and --output per source to save)")
    return _run_batched(segmenter, [str(s) for s in sources], outputs, options, stopper, model_mib)


def _run_batched(segmenter: Any, specs: list[str], outputs: list[str | None], options: RunOptions,
                 stopper: StopSignals, model_mib: float | None) -> list[SourceRun]:
    from mrcnn_edge.runtime.batcher import Batcher
    from mrcnn_edge.runtime.io.sources import open_source

    with contextlib.ExitStack() as stack:
        # one after the other (OpenCV opens streams one at a time anyway); what a stream opened
        # first buffers meanwhile is dropped by its newest-frame slot, not processed late
        opened, sinks = [], []
        for spec, output in zip(specs, outputs):
            source = stack.enter_context(open_source(spec, reconnect_tries=options.reconnect_tries))
            opened.append(source)
            sinks.append(open_outputs(source, output, options, stack))
            if options.announce:
                options.announce(f"source: {source.description}" + "".join(f"\noutput: {s.description}"
                                                                            for s in sinks[-1]))
        batcher = Batcher(segmenter, opened, sinks, max_frames=options.max_frames)
        batcher.stats.model_mib = model_mib
        stopper.watch(batcher)
        try:
            stats = batcher.run()
        finally:
            stopper.forget(batcher)
    # the stack closed the sinks: their files are in place now
    return [SourceRun(spec, st, [p for sink in ss for p in sink.outputs()], batcher.stats)
            for spec, st, ss in zip(specs, stats, sinks)]


def exit_code(runs: Sequence[SourceRun], stopper: StopSignals) -> int:
    """The run's exit status (see the module docstring); raises the one line when a source gave nothing."""
    if stopper.received is not None:
        return 128 + stopper.received
    if any(r.stats.interrupted for r in runs):  # Ctrl-C without the handlers (not the main thread)
        return 130
    empty = [r for r in runs if r.stats.frames == 0]
    if empty:
        r = empty[0]
        why = f": {r.stats.lost}" if r.stats.lost else (f" ({r.stats.skipped} skipped)" if r.stats.skipped else "")
        raise UserError(f"no frame of {', '.join(e.source for e in empty)} could be processed{why}")
    lost = [r for r in runs if r.stats.lost]
    for r in lost:
        names = [p.name for p in r.outputs]
        # a day of 10-minute files is 144 names: the first and the last say where they are
        kept = ", ".join(names) if len(names) <= 3 else f"{names[0]} ... {names[-1]} ({len(names)} files)"
        log.warning("%s was lost%s (exit %d)", r.source,
                    f"; what it recorded is kept in {kept}" if kept else "", EXIT_SOURCE_LOST)
    return EXIT_SOURCE_LOST if lost else 0
