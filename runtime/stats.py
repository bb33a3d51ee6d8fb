"""What a run measured, per source: frames, drops, stage times, latency or service time, and the
summary line ``mrcnn-edge run`` prints (the pipeline and the batcher fill one each)."""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["RunStats", "STAGES"]

STAGES = ("capture", "pre", "infer", "post", "render", "write")


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class RunStats:
    frames: int = 0           # frames processed and written
    dropped: int = 0          # live frames replaced by newer ones before processing (all boundaries)
    skipped: int = 0          # unreadable or invalid frames
    elapsed: float = 0.0      # seconds from the first frame read to the end
    interrupted: bool = False  # stopped by Ctrl-C or a signal (what was written is kept)
    lost: str = ""            # a live source lost for good: why (its stream ended there)
    live: bool = False        # a live source: latency is reported; from files, service time
    batch: int = 1
    samples: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=5000) for s in STAGES})
    latency: deque = field(default_factory=lambda: deque(maxlen=5000))  # live: capture -> sinks, seconds
    service: deque = field(default_factory=lambda: deque(maxlen=5000))  # files: pre..write of a frame, seconds
    dropped_at: dict[str, int] = field(default_factory=dict)  # boundary -> frames dropped there
    first_time: float | None = None  # Frame.time of the first and the last frame written: the part of
    last_time: float | None = None   # the source's timeline that a recording covers

    @property
    def span(self) -> float:
        """Seconds of the source's timeline from the first to the last frame written."""
        return self.last_time - self.first_time if self.first_time is not None and self.last_time is not None else 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    def median_ms(self) -> dict[str, float]:
        return {s: 1000 * statistics.median(v) for s, v in self.samples.items() if v}

    def stage_line(self) -> str:
        unit = "ms" if self.batch == 1 else f"ms per batch of {self.batch}"
        return " ".join(f"{s} {ms:.1f}" for s, ms in self.median_ms().items()) + f" {unit} (median)"

    def latency_ms(self) -> tuple[float, float] | None:
        """(p50, p95) capture-to-sink latency in ms (live sources), None without samples."""
        return _p50_p95(self.latency)

    def service_ms(self) -> tuple[float, float] | None:
        """(p50, p95) service time per frame in ms (file sources), None without samples."""
        return _p50_p95(self.service)

    def latency_line(self) -> str:
        """The time a frame takes, labelled: capture-to-output latency when live, service time from files."""
        if self.live:
            lat = self.latency_ms()
            return f"latency p50 {lat[0]:.1f} ms p95 {lat[1]:.1f} ms (capture to output)" if lat else "latency -"
        svc = self.service_ms()
        return (f"service time p50 {svc[0]:.1f} ms p95 {svc[1]:.1f} ms (per frame, queueing excluded)"
                if svc else "service time -")

    def summary(self) -> str:
        extra = ""
        if self.dropped:
            where = ", ".join(f"{k} {v}" for k, v in self.dropped_at.items() if v)
            extra = f", dropped {self.dropped} ({where})"
        extra += f", skipped {self.skipped}" if self.skipped else ""
        extra += f", written frames span {self.span:.1f} s" if self.live and self.frames else ""
        extra += ", interrupted" if self.interrupted else ""
        extra += ", source lost" if self.lost else ""
        return (f"{self.frames} frames in {self.elapsed:.1f} s: {self.fps:.2f} fps, {self.latency_line()}{extra}; "
                f"per stage: {self.stage_line()}")


def _p50_p95(samples: Sequence[float]) -> tuple[float, float] | None:
    if not samples:
        return None
    values = list(samples)
    return 1000 * _percentile(values, 0.5), 1000 * _percentile(values, 0.95)
