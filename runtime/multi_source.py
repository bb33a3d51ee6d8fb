"""Several sources in one ``run``: one pipeline per source, all on the same model or server.

Each source gets its own :class:`~mrcnn_edge.runtime.segmenter.Segmenter` (for ``triton://`` its
own gRPC channel to the one server, which batches and schedules the requests), its own
:class:`~mrcnn_edge.runtime.pipeline.Pipeline` in a thread, and its own statistics (FPS, per-stage
latency). A pipeline that fails stops the others; the first error is re-raised once all have
stopped. Sinks run on the pipeline's thread here, so a window (OpenCV wants the main thread) is
for single-source runs only: with several sources, write outputs.

Hook for ``mrcnn-edge run`` (runtime/cli.py): ``--source`` with ``action="append"``; with more
than one, call :func:`run_sources` with one output per source (or none) and print each summary.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mrcnn_edge.core.errors import UserError

__all__ = ["SourceRun", "run_sources"]


@dataclass
class SourceRun:
    """One source's result: the spec it was given and its pipeline's ``RunStats``."""

    source: str
    stats: Any

    def summary(self) -> str:
        return f"{self.source}: {self.stats.summary()}"


def run_sources(open_segmenter: Callable[[], Any], sources: Sequence[str], outputs: Sequence[str | None] = (),
                max_frames: int | None = None, reconnect_tries: int = 5) -> list[SourceRun]:
    """Run every source through its own pipeline, concurrently; one :class:`SourceRun` per source.

    ``open_segmenter()`` opens a fresh Segmenter (e.g. ``lambda: Segmenter.from_path(url)``).
    ``outputs``: empty, or one path (or None) per source.
    """
    from mrcnn_edge.runtime.pipeline import Pipeline
    from mrcnn_edge.runtime.io.sinks import open_sink
    from mrcnn_edge.runtime.io.sources import check_source, open_source

    if not sources:
        raise UserError("give at least one --source")
    outputs = list(outputs) or [None] * len(sources)
    if len(outputs) != len(sources):
        raise UserError(f"{len(sources)} sources but {len(outputs)} outputs: give one --output per --source, or none")
    for spec in sources:
        check_source(spec)
    results: list[SourceRun | None] = [None] * len(sources)
    errors: list[BaseException] = []
    pipelines: list[Any] = []
    lock = threading.Lock()

    def one(i: int, segmenter: Any) -> None:
        try:
            with contextlib.ExitStack() as stack:
                source = stack.enter_context(open_source(sources[i], reconnect_tries=reconnect_tries))
                sinks = [open_sink(outputs[i], source)] if outputs[i] else []
                done = [False]  # a sink keeps a partial output only after a clean end
                for sink in sinks:
                    stack.callback(lambda s=sink: s.close(done[0]))
                pipeline = Pipeline(segmenter, source, sinks, max_frames=max_frames)
                with lock:
                    if errors:
                        return
                    pipelines.append(pipeline)
                results[i] = SourceRun(str(sources[i]), pipeline.run())
                done[0] = True
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            with lock:
                errors.append(exc)
                for p in pipelines:
                    p.stop()

    with contextlib.ExitStack() as stack:
        segmenters = [stack.enter_context(open_segmenter()) for _ in sources]
        threads = [threading.Thread(target=one, args=(i, s), name=f"source-{i}", daemon=True)
                   for i, s in enumerate(segmenters)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            for p in pipelines:
                p.stop()
            for t in threads:
                t.join(30)
            raise
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]
