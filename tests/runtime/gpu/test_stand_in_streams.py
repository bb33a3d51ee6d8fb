"""The stand-in cuda-python keeps a stream's order when several host threads drain it (as the
runtime's batcher does: the capture, inference and drawing threads poll events on shared streams)."""
from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture
def fake(tmp_path, monkeypatch):
    from fakes.fake_cuda import FakeCuda

    return FakeCuda.install(monkeypatch, tmp_path)


def test_an_event_is_complete_only_after_the_work_before_it_even_when_another_thread_runs_that_work(fake):
    rt = fake.runtime
    _, stream = rt.cudaStreamCreate()
    _, event = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)
    started, finished = threading.Event(), []

    def slow_kernel() -> int:
        started.set()
        time.sleep(0.3)
        finished.append(time.perf_counter())
        return 0

    fake._enqueue(stream, slow_kernel)
    rt.cudaEventRecord(event, stream)
    syncing = threading.Thread(target=rt.cudaStreamSynchronize, args=(stream,))
    syncing.start()  # this thread runs the slow kernel...
    assert started.wait(5)
    while rt.cudaEventQuery(event)[0] != rt.cudaError_t.cudaSuccess:  # ...while this one polls the event
        pass
    complete_at = time.perf_counter()
    syncing.join()
    assert finished and finished[0] <= complete_at, "the event completed before the work captured in it"


def test_two_threads_draining_one_stream_run_its_work_in_order(fake):
    rt = fake.runtime
    _, stream = rt.cudaStreamCreate()
    ran: list[int] = []

    def item(i: int, seconds: float):
        def run() -> int:
            time.sleep(seconds)
            ran.append(i)
            return 0
        return run

    for i in range(6):
        fake._enqueue(stream, item(i, 0.05 if i % 2 == 0 else 0.0))
    threads = [threading.Thread(target=rt.cudaStreamSynchronize, args=(stream,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ran == list(range(6))
