"""The bus budget of the GPU path (issue 11), counted by the stand-in cuda-python.

Per drawn frame, host<->device traffic may be at most: the frame up (once), the drawn frame down
(once) and the compact outputs (boxes, scores, classes, num_detections, masks at M x M, and the
few bytes per detection of paste boxes, paint order and colours). Nothing else frame-sized: no
id map, no second upload of the frame, no pasted masks. The drawn frame must equal the CPU
reference's. Runs the real kernels (their host build) through the stand-in, on this machine.
"""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CANVAS = (96, 128)
MASK = 28


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("budget")


def _model(dirs, detections: int):
    rng = np.random.default_rng(detections)
    x0 = rng.uniform(0, CANVAS[1] - 24, detections)
    y0 = rng.uniform(0, CANVAS[0] - 20, detections)
    boxes = np.stack([x0, y0, x0 + rng.uniform(8, 24, detections), y0 + rng.uniform(8, 20, detections)], 1)
    scores = np.sort(rng.uniform(0.55, 0.99, detections))[::-1]
    return make_contract_model(dirs / f"budget-{detections}.onnx", canvas_hw=CANVAS, mask_size=MASK,
                               boxes=boxes.tolist(), classes=[1 + i % 2 for i in range(detections)],
                               base_scores=scores.tolist(), max_detections=detections, gain=8.0)


def _stand_in(dirs, monkeypatch, **options):
    """The stand-in GPU (cuda-python and TensorRT): the real TrtBackend runs engines there."""
    from fakes.gpu_stand_in import StandInGPU

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(dirs / "cache"))
    return StandInGPU.install(monkeypatch, dirs, **options)


def _frame(hw, seed):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 120, size=(*hw, 3), dtype=np.uint8)
    frame[hw[0] // 6: hw[0] // 2, hw[1] // 5: hw[1] // 2] = 250  # bright: masks there
    return frame


@pytest.mark.parametrize("hw", [(480, 640), (1080, 1920)])
@pytest.mark.parametrize("detections", [10, 100])
def test_drawn_frame_moves_frame_up_frame_down_and_compact_outputs(dirs, monkeypatch, hw, detections):
    machine = _stand_in(dirs, monkeypatch)
    fake = machine.cuda
    path = _model(dirs, detections)
    frames = [_frame(hw, s) for s in range(2)]
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        gpu(frames[0]).draw(frames[0])  # warm-up: buffers are allocated on first use
        for key in ("htod_bytes", "dtoh_bytes"):
            fake.stats[key] = 0
        fake.stats["htod_copies"].clear()
        fake.stats["dtoh_copies"].clear()
        dets = gpu(frames[1])
        drawn = dets.draw(frames[1])
        want = cpu(frames[1]).draw(frames[1])
        assert len(dets) == detections
        assert np.array_equal(drawn, want)  # the device render is the reference's drawing
        outputs = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in gpu.backend.outputs.values())
    frame = frames[1].nbytes
    per_detection = 16 + 4 + 3  # paste box, paint order, colour
    compact = outputs + detections * per_detection
    up, down = fake.stats["htod_bytes"], fake.stats["dtoh_bytes"]
    assert up <= frame + detections * per_detection, fake.stats["htod_copies"]
    assert down <= frame + outputs, fake.stats["dtoh_copies"]
    assert up + down <= 2 * frame + compact
    # exactly one frame-sized copy each way
    assert sum(c >= frame for c in fake.stats["htod_copies"]) == 1
    assert sum(c >= frame for c in fake.stats["dtoh_copies"]) == 1
    # nothing waits inside a blocking cuda-python call (cuda-python < 12.9.1 holds the GIL there):
    # the engine's run too is waited for by polling an event (TrtBackend.execute)
    assert not fake.stats["stream_syncs"]
    assert fake.errors == []


def test_a_frame_that_is_not_the_uploaded_one_is_uploaded_again(dirs, monkeypatch):
    """draw() with another array (or after the slot was reused) must not draw the old frame."""
    machine = _stand_in(dirs, monkeypatch)
    fake = machine.cuda
    path = _model(dirs, 10)
    a, b = _frame((120, 160), 1), _frame((120, 160), 2)
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        dets = gpu(a)
        ref = cpu(a)
        assert np.array_equal(dets.draw(b.copy()), ref.draw(b))   # another array: its pixels
        for i in range(6):  # more frames than slots: the first detections' slot is reused
            gpu(_frame((120, 160), 10 + i))
        assert np.array_equal(dets.draw(a), ref.draw(a))
        assert np.array_equal(dets.instance_map(), ref.instance_map())
    assert fake.errors == []


def _draw_once(machine, path, frames):
    """Warm up on frames[0], then count what segmenting and drawing frames[1] moves."""
    fake = machine.cuda
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        gpu(frames[0]).draw(frames[0])
        for key in ("htod_bytes", "dtoh_bytes"):
            fake.stats[key] = 0
        fake.stats["htod_copies"].clear()
        fake.stats["dtoh_copies"].clear()
        fake.stats["launches"].clear()
        dets = gpu(frames[1])
        drawn = dets.draw(frames[1])
        want = cpu(frames[1]).draw(frames[1])
        # what the kernels read and wrote, while it is still allocated
        kernel_memory = {name: [fake.find(a) for a in args if isinstance(a, int) and fake.find(a) is not None]
                         for name, _, args in fake.stats["launch_args"][-4:]}
        return gpu, dets, drawn, want, kernel_memory


def test_fp16_engine_masks_are_drawn_where_the_engine_left_them(dirs, monkeypatch):
    """An fp16 engine's masks are read in place as half bits: never copied down to be uploaded
    again as float32 (they were: 4 bytes x M x M per detection up on every drawn frame)."""
    machine = _stand_in(dirs, monkeypatch)
    fake = machine.cuda
    detections = 10
    path = make_contract_model(dirs / "budget-fp16.onnx", canvas_hw=CANVAS, mask_size=MASK, precision="fp16",
                               boxes=[[4 + 11 * i, 3 + 8 * (i % 5), 30 + 9 * i, 40 + 5 * (i % 3)] for i in range(detections)],
                               classes=[1 + i % 2 for i in range(detections)],
                               base_scores=[0.95 - 0.03 * i for i in range(detections)],
                               max_detections=detections, gain=8.0)
    frames = [_frame((240, 320), s) for s in range(2)]
    gpu, dets, drawn, want, _ = _draw_once(machine, path, frames)
    assert gpu.backend.outputs["masks"].dtype == np.float16 and len(dets) == detections
    assert np.array_equal(drawn, want)  # half bits widened exactly: the reference's drawing
    assert fake.stats["launches"]["render_instances_f16"] == 1
    assert fake.stats["launches"]["render_instances"] == 0
    frame, per_detection = frames[1].nbytes, 16 + 4 + 3
    assert fake.stats["htod_bytes"] <= frame + detections * per_detection, fake.stats["htod_copies"]
    assert fake.errors == []


def test_integrated_gpu_maps_the_frame_and_the_drawing_instead_of_copying(dirs, monkeypatch):
    """On a Jetson (integrated GPU) the kernels read the captured frame and write the drawn frame
    in mapped pinned memory: no frame-sized copy in either direction, same pixels."""
    machine = _stand_in(dirs, monkeypatch, integrated=True)
    fake = machine.cuda
    path = _model(dirs, 10)
    frames = [_frame((240, 320), s) for s in range(2)]
    gpu, dets, drawn, want, memory = _draw_once(machine, path, frames)
    assert gpu.ops.zero_copy
    assert np.array_equal(drawn, want)
    frame = frames[1].nbytes
    assert not [c for c in fake.stats["htod_copies"] if c >= frame // 4], fake.stats["htod_copies"]
    assert not [c for c in fake.stats["dtoh_copies"] if c >= frame // 4], fake.stats["dtoh_copies"]
    # the letterbox read the frame, and the render read it and wrote the drawing, in mapped memory
    assert memory["letterbox_f32"][0].mapped
    src, *_, dst = memory["render_instances"]
    assert src.mapped and dst.mapped and src is not dst
    assert fake.errors == []


def test_discrete_gpu_copies_instead_of_mapping(dirs, monkeypatch):
    """A discrete GPU would read mapped memory over PCIe on every access: there the frame is copied."""
    machine = _stand_in(dirs, monkeypatch, integrated=False)
    path = _model(dirs, 10)
    frames = [_frame((240, 320), s) for s in range(2)]
    gpu, _, drawn, want, memory = _draw_once(machine, path, frames)
    assert not gpu.ops.zero_copy and np.array_equal(drawn, want)
    assert not any(a.mapped for allocations in memory.values() for a in allocations)
    assert all(a.device == 0 for a in memory["render_instances"])


def test_frames_that_change_size_mid_stream_reuse_buffers_sized_for_the_largest(dirs, monkeypatch):
    """Issue 11: buffers are sized once for the largest frame seen, with headroom: a stream whose
    frames change size grows them a few times, then never again; every frame is drawn right."""
    machine = _stand_in(dirs, monkeypatch)
    fake = machine.cuda
    path = _model(dirs, 10)
    sizes = [(120, 160), (240, 320), (90, 300), (240, 320), (120, 160)]
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        def one_pass(seed):
            for i, hw in enumerate(sizes):
                frame = _frame(hw, seed + i)
                assert np.array_equal(gpu(frame).draw(frame), cpu(frame).draw(frame)), hw
        one_pass(0)
        one_pass(10)  # every slot has now held the largest frame
        live = fake.live_device_bytes() + fake.live_pinned_bytes()
        regrowths = [b.grown for slot in gpu.ops.slots for b in slot.buffers()]
        one_pass(20)
        assert [b.grown for slot in gpu.ops.slots for b in slot.buffers()] == regrowths
        assert fake.live_device_bytes() + fake.live_pinned_bytes() == live
        largest = 240 * 320 * 3
        assert all(slot.frame.size <= 1.25 * largest + 65536 for slot in gpu.ops.slots)
    assert fake.errors == []


class _CpuCopies:
    """Frame-sized copies made by the CPU while counting: ``np.copyto`` calls into frame-sized
    memory (the staging copy), and allocations of a frame or more (``.copy()``, ``astype``...),
    seen by tracemalloc, which numpy reports its buffers to (the peak over each step)."""

    def __init__(self, monkeypatch, frame_bytes):
        import tracemalloc

        self.frame_bytes, self.copyto, self.allocations = frame_bytes, 0, 0
        self._tm, self.counting = tracemalloc, False
        plain = np.copyto

        def copyto(dst, src, *args, **kwargs):
            if self.counting and np.asarray(dst).nbytes >= frame_bytes:
                self.copyto += 1
            return plain(dst, src, *args, **kwargs)

        monkeypatch.setattr(np, "copyto", copyto)

    def __enter__(self):
        self._tm.start()
        self._tm.reset_peak()
        self._base = self._tm.get_traced_memory()[0]
        self.counting = True
        return self

    def __exit__(self, *exc):
        self.counting = False
        if self._tm.get_traced_memory()[1] - self._base >= self.frame_bytes // 2:
            self.allocations += 1
        self._tm.stop()


@pytest.mark.parametrize("integrated", [False, True], ids=["discrete", "integrated"])
@pytest.mark.parametrize("batch", [1, 2])
def test_budget_holds_at_batch_1_and_2_with_a_pipeline_in_flight_and_counts_cpu_copies(
        dirs, monkeypatch, batch, integrated):
    """Issue 18 items 7 and 8: as ``run`` drives it (batches in flight between upload and draw, drawn
    frames held by the sinks for a while), every frame goes up once and comes down once on a
    discrete GPU, with one CPU copy (into the pinned staging) and no other frame-sized CPU copy;
    on an integrated GPU, with the source capturing into ``Segmenter.frame_buffer``, no frame-sized
    copy at all, on the bus or by the CPU. The slot ring was fixed at 4 frames (1.71 uploads per
    frame at batch 2) and the Jetson path copied twice on the CPU (staging, drawn frame)."""
    from mrcnn_edge.runtime.segmenter import BATCHES_IN_FLIGHT

    machine = _stand_in(dirs, monkeypatch, integrated=integrated)
    fake = machine.cuda
    rng = np.random.default_rng(batch)
    boxes = [[8 + 10 * i, 6 + 5 * i, 40 + 8 * i, 50 + 4 * i] for i in range(6)]
    path = make_contract_model(dirs / f"budget-b{batch}.onnx", batch=batch, canvas_hw=CANVAS, mask_size=MASK,
                               boxes=boxes, classes=[1, 2] * 3, base_scores=[0.95 - 0.05 * i for i in range(6)],
                               max_detections=6, gain=8.0)
    hw = (480, 640)
    pictures = [_frame(hw, s) for s in range(batch * (2 * BATCHES_IN_FLIGHT + 2))]
    frame_bytes = pictures[0].nbytes
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        want = [d.draw(p) for d, p in zip(cpu.batch(pictures), pictures)]

        def capture(picture):
            """The source: reads into the segmenter's buffer when it offers one (the decoder's write)."""
            buf = gpu.frame_buffer(picture.shape)
            assert (buf is not None) == integrated
            if buf is None:
                return picture.copy()
            buf[...] = picture
            return buf

        copies = _CpuCopies(monkeypatch, frame_bytes)

        def one_pass():
            """Batches in flight between upload and draw as in a pipeline; the sinks hold the drawn
            frames of two more batches before writing them. Returns the frames written."""
            in_flight, sinks, written = [], [], 0

            def draw_oldest():
                work = in_flight.pop(0)
                with copies:
                    sinks.append([d.draw() for d in gpu.finish(work)])  # draws on the frame it was given

            def write_oldest():
                nonlocal written
                for image in sinks.pop(0):  # a sink writes it: still the drawing, not reused under it
                    assert np.array_equal(image, want[written]), written
                    written += 1

            for i in range(0, len(pictures), batch):
                frames = [capture(p) for p in pictures[i:i + batch]]
                with copies:
                    in_flight.append(gpu.infer(gpu.prepare(frames)))
                del frames
                if len(in_flight) == BATCHES_IN_FLIGHT:
                    draw_oldest()
                while len(sinks) > 2:
                    write_oldest()
            while in_flight:
                draw_oldest()
            while sinks:
                write_oldest()
            return written

        assert one_pass() == len(pictures)  # warm-up: slots and buffers are made on first use
        for key in ("htod_bytes", "dtoh_bytes"):
            fake.stats[key] = 0
        fake.stats["htod_copies"].clear()
        fake.stats["dtoh_copies"].clear()
        copies.copyto = copies.allocations = 0
        written = one_pass()
        assert written == len(pictures)
    n = len(pictures)
    big_up = [c for c in fake.stats["htod_copies"] if c >= frame_bytes]
    big_down = [c for c in fake.stats["dtoh_copies"] if c >= frame_bytes]
    if integrated:
        assert big_up == [] and big_down == [], (big_up, big_down)
        assert copies.copyto == 0 and copies.allocations == 0, (copies.copyto, copies.allocations)
    else:
        assert len(big_up) == n and len(big_down) == n, (len(big_up), len(big_down), n)
        assert copies.copyto == n and copies.allocations == 0, (copies.copyto, copies.allocations)
    assert not fake.stats["stream_syncs"] and fake.errors == []
