"""The CUDA kernels: compiled by NVRTC for Jetson (sm_87) and a desktop GPU (sm_89), no GPU needed;
their per-pixel arithmetic built for the host with g++ and run against the numpy reference;
on a GPU (marker ``gpu``), the kernels themselves against the reference.

(Over 600 lines on purpose: the three layers of the kernels' tests share their cases and helpers:
the NVRTC builds, the host build against the numpy reference, and CudaOps on the stand-in
cuda-python and on a GPU.)"""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from mrcnn_edge.runtime.gpu import kernel_build
from mrcnn_edge.runtime.gpu.kernel_build import KERNEL_DIR, KERNELS, compile_kernel
from mrcnn_edge.runtime.postprocess import expand_boxes, instance_map, overlay, paint_order, paste_probabilities
from mrcnn_edge.runtime.preprocess import Letterbox, letterbox, normalization

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCHS = ("sm_87", "sm_89", "compute_87")


def _nvrtc_or_skip():
    try:
        kernel_build.supported_archs()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NVRTC is not available here: {exc}")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    _nvrtc_or_skip()
    cache = tmp_path_factory.mktemp("kernel-cache")
    return cache, {(k, a): compile_kernel(k, a, cache) for k in KERNELS for a in ARCHS}


@pytest.mark.slow
def test_every_kernel_compiles_for_jetson_and_desktop(compiled):
    _, images = compiled
    for (kernel, arch), c in images.items():
        assert not c.from_cache and c.path.is_file() and c.path.parent.name == arch
        if arch.startswith("sm_"):
            assert c.image[:4] == b"\x7fELF", f"{kernel} {arch}: not a CUBIN"
        else:
            text = c.image.decode(errors="replace")
            assert f".target sm_{arch[-2:]}" in text
            for entry in KERNELS[kernel]:  # every entry point is exported with its C name
                assert f".entry {entry}" in text


@pytest.mark.slow
def test_compiled_kernels_are_cached_per_source(compiled, monkeypatch):
    cache, _ = compiled
    calls = []
    monkeypatch.setattr(kernel_build, "_compile", lambda *a: calls.append(a) or b"x")
    again = compile_kernel("preprocess", "sm_87", cache)
    assert again.from_cache and not calls
    # an edited header changes the key and recompiles
    monkeypatch.setattr(kernel_build, "NVRTC_OPTIONS", kernel_build.NVRTC_OPTIONS + ("-DEDITED",))
    assert not compile_kernel("preprocess", "sm_87", cache).from_cache and calls


@pytest.mark.slow
def test_compile_errors_are_reported_with_the_log(tmp_path, monkeypatch):
    _nvrtc_or_skip()
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { not_a_function(); }\n')
    monkeypatch.setattr(kernel_build, "KERNEL_DIR", tmp_path)
    monkeypatch.setitem(kernel_build.KERNELS, "broken", ("k",))
    with pytest.raises(RuntimeError, match="not_a_function"):
        compile_kernel("broken", "sm_87", tmp_path / "cache")


def test_arch_choice_falls_back_to_ptx_for_unknown_gpus():
    _nvrtc_or_skip()
    archs = kernel_build.supported_archs()
    assert kernel_build.pick_arch(8, 7) == "sm_87"
    assert kernel_build.pick_arch(99, 9) == f"compute_{max(archs)}"


def _ptx_parameters(ptx: str) -> dict[str, list[tuple[str, int]]]:
    """Entry point -> (PTX type, byte size) of each parameter, from NVRTC's PTX."""
    import re

    sizes = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "b32": 4, "s32": 4, "f32": 4, "b8": 1}
    entries = {}
    for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx):
        entries[name] = [(t, int(n) if n else sizes[t]) for t, n in
                         re.findall(r"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+\w+(?:\[(\d+)\])?", params)]
    return entries


# what each SIGNATURES kind compiles to: PTX parameter types, and the C types in the .cu source
_PTX_TYPES = {"ptr": {"u64", "b64"}, "int": {"u32", "s32", "b32"}, "float": {"f32"}}
_SOURCE_KINDS = {"ptr": "ptr", "int": "int", "float": "float"}


def _expected(kind) -> tuple[set[str], int]:
    if isinstance(kind, str):
        return _PTX_TYPES[kind], {"ptr": 8, "int": 4, "float": 4}[kind]
    return {"b8"}, ctypes.sizeof(kind)  # a struct by value is a byte array in PTX


@pytest.mark.slow
def test_launch_signatures_match_the_compiled_kernels(compiled):
    """Types, not only sizes: an int passed where the kernel takes a float (both 4 bytes) fails."""
    from mrcnn_edge.runtime.gpu.kernel_args import SIGNATURES

    _, images = compiled
    compiled_params = {}
    for kernel in KERNELS:
        compiled_params.update(_ptx_parameters(images[(kernel, "compute_87")].image.decode(errors="replace")))
    assert set(compiled_params) == set(SIGNATURES) == {e for entries in KERNELS.values() for e in entries}
    for name, signature in SIGNATURES.items():
        assert len(compiled_params[name]) == len(signature), name
        for i, (kind, (ptx_type, size)) in enumerate(zip(signature, compiled_params[name])):
            types, nbytes = _expected(kind)
            assert ptx_type in types and size == nbytes, f"{name} parameter {i}: {kind} vs .{ptx_type} ({size} B)"


def test_launch_signatures_match_the_kernel_sources():
    """The same check against the C parameter lists in runtime/gpu/kernels/*.cu (no NVRTC needed)."""
    from mrcnn_edge.runtime.gpu.kernel_args import SIGNATURES
    from fakes.fake_cuda import kernel_signatures

    source = kernel_signatures(KERNEL_DIR)
    assert set(source) == set(SIGNATURES)
    for name, signature in SIGNATURES.items():
        want = [_SOURCE_KINDS[k] if isinstance(k, str) else f"mre::{k.__name__}" for k in signature]
        assert source[name] == want, name


def test_kernel_arguments_are_packed_by_address():
    from mrcnn_edge.runtime.gpu.kernel_args import LetterboxParams, pack_arguments

    mul, add = normalization(MEAN, STD)
    params = LetterboxParams.make(Letterbox.fit((480, 640), (128, 160)), 1920, mul, add)
    pointers, holders = pack_arguments("letterbox_f32", [0x1000, params, 0x2000])
    assert ctypes.c_void_p.from_address(pointers[0]).value == 0x1000
    assert ctypes.string_at(pointers[1], ctypes.sizeof(params)) == bytes(params)
    assert ctypes.c_void_p.from_address(pointers[2]).value == 0x2000
    assert (params.src_h, params.out_h, params.out_w) == (480, 120, 160) and params.scale_x == 4.0
    pointers, holders = pack_arguments("overlay", [0x10, 1920, 0x20, 0x30, 480, 640, 0.25])
    assert ctypes.c_int.from_address(pointers[1]).value == 1920
    assert ctypes.c_float.from_address(pointers[6]).value == 0.25
    with pytest.raises(TypeError, match="takes 7 arguments"):
        pack_arguments("overlay", [1, 2, 3])
    with pytest.raises(TypeError, match="expected LetterboxParams"):
        pack_arguments("letterbox_f16", [1, 2, 3])


# -- host build of the per-pixel arithmetic ---------------------------------------------------------
@pytest.fixture(scope="module")
def host(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ to build the host version of the kernels")
    lib = tmp_path_factory.mktemp("host") / "libmre_host.so"
    cmd = [gxx, "-O2", "-std=c++17", "-ffp-contract=off", "-Wall", "-Werror", "-shared", "-fPIC",
           str(KERNEL_DIR / "host_build.cpp"), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True)
    return ctypes.CDLL(str(lib))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def test_ctypes_mirrors_match_the_c_layouts(host):
    from mrcnn_edge.runtime.gpu.kernel_args import LetterboxParams

    assert host.host_sizeof_letterbox_params() == ctypes.sizeof(LetterboxParams)
    assert host.host_offsetof_letterbox_add() == LetterboxParams.add.offset
    assert host.host_sizeof_paste_box() == expand_boxes(np.zeros((1, 4)), 28).itemsize * 4


@pytest.mark.parametrize("hw,canvas", [((480, 640), (128, 160)), ((37, 53), (96, 64)), ((1, 1), (32, 32)),
                                       ((800, 10), (64, 64)), ((64, 64), (64, 64))])
def test_host_letterbox_is_the_reference_bit_for_bit(host, hw, canvas):
    from mrcnn_edge.runtime.gpu.kernel_args import LetterboxParams

    rng = np.random.default_rng(hw[0])
    frame = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    ref, box = letterbox(frame, canvas, MEAN, STD)
    mul, add = normalization(MEAN, STD)
    params = LetterboxParams.make(Letterbox.fit(hw, canvas), hw[1] * 3, mul, add)
    out = np.full((3, *canvas), np.nan, np.float32)
    host.host_letterbox_f32(_ptr(frame), ctypes.byref(params), _ptr(out))
    assert np.array_equal(out, ref), f"max diff {np.abs(out - ref).max():.3e}"


def test_host_half_conversion_is_round_to_nearest_even(host):
    rng = np.random.default_rng(5)
    special = np.array([0, -0.0, 1, -1, 65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 6.1e-5, 6.0e-8,
                        2.0 ** -25, 2.0 ** -25 * 1.0001, 2.0 ** -24, 3 * 2.0 ** -25, 1e-10], np.float32)
    values = np.concatenate([special, rng.normal(0, 3, 20000).astype(np.float32),
                             (rng.random(20000) * 1e-4).astype(np.float32)])
    out = np.empty(values.shape, np.uint16)
    host.host_float_to_half(_ptr(values), _ptr(out), ctypes.c_longlong(values.size))
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, expected)
    nan = np.array([np.nan], np.float32)
    host.host_float_to_half(_ptr(nan), _ptr(out), ctypes.c_longlong(1))
    assert np.isnan(out[:1].view(np.float16)[0])


def test_host_half_widening_is_exact_for_every_half(host):
    """The _f16 kernels read an fp16 engine's masks as half bits: every one of the 65536 patterns
    must widen to numpy's float16 -> float32 value (NaNs stay NaN)."""
    bits = np.arange(65536, dtype=np.uint16)
    out = np.empty(bits.shape, np.float32)
    host.host_half_to_float(_ptr(bits), _ptr(out), ctypes.c_longlong(bits.size))
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(out[nan]).all() and nan.sum() == 2046


def test_host_f16_instance_map_reads_half_masks_as_the_reference_reads_them_widened(host):
    """instance_map_f16 on half bits == the reference on the same masks widened to float32."""
    from mrcnn_edge.runtime.gpu.kernel_args import InstanceParams, grid, pack_arguments

    masks, boxes, scores, (h, w) = _paste_case(9)
    half = masks.astype(np.float16)
    pboxes = np.ascontiguousarray(expand_boxes(boxes, 28))
    order = paint_order(scores)
    out = np.full((h, w), -1, np.int32)
    params = InstanceParams(len(masks), 28, h, w, 0, 0, 0.5, 0.0)
    packed, _keep = pack_arguments("instance_map_f16", [half.ctypes.data, pboxes.ctypes.data, order.ctypes.data,
                                                        params, out.ctypes.data])
    g = grid(h, w)
    assert host.host_launch(b"instance_map_f16", g[0], g[1], g[2], 32, 8, 1, packed) == 0
    want = instance_map(half.astype(np.float32), boxes, scores, (h, w))
    assert want.any() and np.array_equal(out, want)
    assert not np.array_equal(want, instance_map(masks + np.float32(0.004), boxes, scores, (h, w)))


def _paste_case(seed: int, n: int = 12, m: int = 28, hw=(90, 120)):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, m, m)).astype(np.float32)
    x1, y1 = rng.uniform(-10, hw[1], n), rng.uniform(-10, hw[0], n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, 80, n), y1 + rng.uniform(0, 60, n)], 1).astype(np.float32)
    return masks, boxes, rng.random(n).astype(np.float32), hw


def test_host_paste_is_the_reference_bit_for_bit(host):
    masks, boxes, _, (h, w) = _paste_case(6)
    pboxes = np.ascontiguousarray(expand_boxes(boxes, 28))
    out = np.empty((len(masks), h, w), np.float32)
    host.host_paste_values(_ptr(masks), _ptr(pboxes), len(masks), 28, h, w, _ptr(out))
    assert np.array_equal(out, paste_probabilities(masks, boxes, (h, w)))


def test_host_instance_map_is_the_reference(host):
    masks, boxes, scores, (h, w) = _paste_case(7)
    pboxes = np.ascontiguousarray(expand_boxes(boxes, 28))
    order = paint_order(scores)
    out = np.empty((h, w), np.int32)
    host.host_instance_map(_ptr(masks), _ptr(pboxes), _ptr(order), len(masks), 28, h, w,
                           ctypes.c_float(0.5), _ptr(out))
    ref = instance_map(masks, boxes, scores, (h, w))
    assert ref.any() and np.array_equal(out, ref)


def test_host_overlay_is_the_reference(host):
    rng = np.random.default_rng(8)
    frame = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    ids = rng.integers(0, 4, size=(40, 50)).astype(np.int32)
    colours = rng.integers(0, 256, size=(3, 3), dtype=np.uint8)
    for alpha in (0.0, 0.35, 0.5, 1.0):
        out = frame.copy()
        host.host_overlay(_ptr(out), 50 * 3, _ptr(ids), _ptr(colours), 40, 50, ctypes.c_float(alpha))
        assert np.array_equal(out, overlay(frame, ids, colours, alpha))


# -- on a GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_ops_match_the_reference_on_a_gpu():
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps
    from mrcnn_edge.runtime.gpu.cuda_util import check, cuda_modules

    ops = CudaOps()
    try:
        _, cudart, _ = cuda_modules()
        rng = np.random.default_rng(9)
        frame = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        mul, add = normalization(MEAN, STD)
        for fp16, dtype in ((False, np.float32), (True, np.float16)):
            ref, _ = letterbox(frame, (256, 320), MEAN, STD, dtype=dtype)
            dev = check(cudart.cudaMalloc(ref.nbytes), "malloc")
            ops.letterbox(frame, dev, (256, 320), mul, add, fp16)
            got = np.empty_like(ref)
            check(cudart.cudaStreamSynchronize(ops._pre_stream), "sync")
            check(cudart.cudaMemcpy(got.ctypes.data, dev, ref.nbytes,
                                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "copy")
            cudart.cudaFree(dev)
            assert np.array_equal(got, ref)
        masks, boxes, scores, hw = _paste_case(10, hw=(480, 640))
        assert np.array_equal(ops.instance_map(masks, boxes, scores, hw), instance_map(masks, boxes, scores, hw))
        assert np.array_equal(ops.paste_masks(masks, boxes, hw), paste_probabilities(masks, boxes, hw) > 0.5)
        ids = instance_map(masks, boxes, scores, hw)
        colours = rng.integers(0, 256, size=(len(masks), 3), dtype=np.uint8)
        assert np.array_equal(ops.overlay(frame, ids, colours, 0.4), overlay(frame, ids, colours, 0.4))
    finally:
        ops.close()


def _render_from_the_device(ops, mask_dtype) -> None:
    """Frame uploaded, masks left in an "engine output" buffer as float32 or half, drawn on the
    device from there: must equal the reference's drawing of the same (widened) masks."""
    import dataclasses

    from mrcnn_edge.runtime.gpu.cuda_util import check, cuda_modules
    from mrcnn_edge.runtime.postprocess import ReferenceOps

    _, cudart, _ = cuda_modules()
    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    masks, boxes, scores, hw = _paste_case(12, hw=(120, 160))
    engine = np.ascontiguousarray(masks.astype(mask_dtype))
    colours = rng.integers(0, 256, size=(len(masks), 3), dtype=np.uint8)
    mul, add = normalization(MEAN, STD)
    canvas = check(cudart.cudaMalloc(3 * 64 * 80 * 4), "malloc")
    out = check(cudart.cudaMalloc(engine.nbytes), "malloc")
    try:
        check(cudart.cudaMemcpy(out, engine.ctypes.data, engine.nbytes,
                                cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "copy")
        dframe = ops.upload(frame)
        ops.letterbox_from(dframe, canvas, (64, 80), mul, add, False)
        ops.keep_masks([dframe], out, len(masks), masks.shape[-1], engine.itemsize)
        device = dataclasses.replace(dframe, rows=np.arange(len(masks), dtype=np.int32))
        widened = engine.astype(np.float32)
        got = ops.render(frame, widened, boxes, scores, colours, 0.5, device=device)
        want = ReferenceOps().render(frame, widened, boxes, scores, colours, 0.5)
        assert (want != frame).any() and np.array_equal(got, want)
    finally:
        cudart.cudaFree(canvas)
        cudart.cudaFree(out)


@pytest.mark.gpu
@pytest.mark.parametrize("zero_copy", [False, True])
@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16])
def test_device_resident_render_matches_the_reference_on_a_gpu(zero_copy, mask_dtype):
    """The fp16 kernels and the mapped (zero-copy) frame on a real GPU (mapped memory works on a
    discrete GPU too, over the bus: this checks correctness, not speed)."""
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    ops = CudaOps(zero_copy=zero_copy)
    try:
        _render_from_the_device(ops, mask_dtype)
    finally:
        ops.close()


# -- CudaOps on the stand-in cuda-python (tests/fakes/fake_cuda.py: the kernels' host build) -------
@pytest.fixture(scope="module")
def fake_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("fake-cuda"), tmp_path_factory.mktemp("kernel-cache")


@pytest.fixture
def fake(fake_dirs, monkeypatch):
    from fakes.fake_cuda import FakeCuda

    build, cache = fake_dirs
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(cache))  # NVRTC compiles once per module
    return FakeCuda.install(monkeypatch, build)


def test_cuda_ops_on_the_stand_in_equal_the_reference(fake):
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    ops = CudaOps()
    try:
        masks, boxes, scores, hw = _paste_case(11, hw=(90, 120))
        assert np.array_equal(ops.paste_masks(masks, boxes, hw), paste_probabilities(masks, boxes, hw) > 0.5)
        ids = ops.instance_map(masks, boxes, scores, hw)
        assert ids.any() and np.array_equal(ids, instance_map(masks, boxes, scores, hw))
        frame = np.random.default_rng(3).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
        colours = np.random.default_rng(4).integers(0, 256, size=(len(masks), 3), dtype=np.uint8)
        assert np.array_equal(ops.overlay(frame, ids, colours, 0.4), overlay(frame, ids, colours, 0.4))
    finally:
        ops.close()
    assert fake.errors == [] and fake.stats["launches"]["paste_mask_u8"] > 0


@pytest.mark.parametrize("n,hw", [(12, (90, 120)), (300, (70, 100))])
def test_tiled_instance_map_and_render_equal_the_reference(fake, n, hw):
    """Issue 11: instance_map culls boxes per 32x8 tile (hits kept in shared memory in rank order,
    rounds of 256 ranks: 300 boxes take two) and render_instances draws the frame in one pass;
    both must equal the every-box reference, overlaps going to the higher score."""
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps
    from mrcnn_edge.runtime.postprocess import ReferenceOps

    masks, boxes, scores, hw = _paste_case(20 + n, n=n, hw=hw)
    scores[::7] = scores[0]  # ties: the lower index wins, in both
    frame = np.random.default_rng(5).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    colours = np.random.default_rng(6).integers(0, 256, size=(n, 3), dtype=np.uint8)
    ops = CudaOps()
    try:
        ids = ops.instance_map(masks, boxes, scores, hw)
        want = instance_map(masks, boxes, scores, hw)
        assert len(np.unique(want)) > 5 and np.array_equal(ids, want)
        drawn = ops.render(frame, masks, boxes, scores, colours, 0.6)
        assert np.array_equal(drawn, overlay(frame, want, colours, 0.6))
        assert np.array_equal(drawn, ReferenceOps().render(frame, masks, boxes, scores, colours, 0.6))
        regions = ops.paste_regions(masks, boxes, hw)
        assert [r is None for r in regions] == [r is None for r in ReferenceOps().paste_regions(masks, boxes, hw)]
    finally:
        ops.close()
    assert fake.stats["launches"]["render_instances"] == 1 and fake.errors == []
    tiles = [a for name, a, _ in fake.stats["launch_args"] if name == "instance_map"]
    assert tiles == [((hw[1] + 31) // 32, (hw[0] + 7) // 8, 1)]


@pytest.mark.parametrize("shape,dtype", [((90, 120), np.uint8), ((90, 120, 1), np.uint8), ((90, 120, 4), np.uint8),
                                         ((90, 120, 3), np.float32)])
def test_cuda_ops_refuse_frames_the_kernels_would_read_out_of_bounds(fake, shape, dtype):
    """Issue 18 item 10: a gray H×W (or H×W×1) frame given to CudaOps.letterbox was staged at its
    own size and read by the kernel as H×W×3 bytes, past its end: one line instead, nothing launched."""
    from mrcnn_edge.core.errors import UserError
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    ops = CudaOps()
    try:
        dst = int(fake.runtime.cudaMalloc(3 * 64 * 64 * 4)[1])
        mul, add = normalization(MEAN, STD)
        frame = np.zeros(shape, dtype)
        with pytest.raises(UserError) as err:
            ops.letterbox(frame, dst, (64, 64), mul, add, False)
        assert "H×W×3 uint8" in str(err.value) and str(shape) in str(err.value) and "\n" not in str(err.value)
        masks, boxes, scores, hw = _paste_case(3, hw=shape[:2])
        with pytest.raises(UserError, match="CudaOps.render"):
            ops.render(frame, masks, boxes, scores, np.zeros((3, 3), np.uint8))
        fake.runtime.cudaFree(dst)
    finally:
        ops.close()
    assert not fake.stats["launches"] and fake.errors == []


def test_frame_buffers_shrink_back_after_a_big_frame(fake):
    """Issue 18 item 10: one 4K frame kept ~270 MB of frame buffers for the rest of the run. After
    SHRINK_AFTER smaller frames each buffer is back to about twice what those need."""
    from mrcnn_edge.runtime.gpu import cuda_util
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    ops = CudaOps()
    try:
        dst = int(fake.runtime.cudaMalloc(3 * 64 * 64 * 4)[1])
        mul, add = normalization(MEAN, STD)
        masks, boxes, scores, _ = _paste_case(5, hw=(48, 64))
        colours = np.full((5, 3), 200, np.uint8)

        def frame_through(hw):
            frame = np.full((*hw, 3), 90, np.uint8)
            ops.letterbox(frame, dst, (64, 64), mul, add, False)
            return ops.render(frame, masks, boxes, scores, colours)

        small = (48, 64)
        frame_through(small)
        before = fake.live_device_bytes() + fake.live_pinned_bytes()
        frame_through((2160, 3840))
        big = fake.live_device_bytes() + fake.live_pinned_bytes()
        assert big > before + 4 * 2160 * 3840 * 3  # staging, device frame, render buffers ...
        for _ in range(cuda_util.SHRINK_AFTER + 1):
            frame_through(small)
        after = fake.live_device_bytes() + fake.live_pinned_bytes()
        assert after < before + 2 * 2160 * 3840 * 3 // 10, (before, big, after)  # a few small buffers' worth
        fake.runtime.cudaFree(dst)
    finally:
        ops.close()
    assert fake.errors == []


def test_tiled_kernels_refuse_other_blocks(host):
    """The tiled kernels' shared lists hold 32x8 ranks: the host build refuses other blocks."""
    assert host.host_launch(b"instance_map", 1, 1, 1, 16, 16, 1, None) == -2


def test_cuda_ops_close_is_idempotent_and_falls_back_to_the_reference(fake):
    """Issue 9 item 12: a second close destroyed the streams twice; ops used after close launched
    on unloaded modules."""
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    ops = CudaOps()
    masks, boxes, scores, hw = _paste_case(12, n=4, hw=(60, 80))
    ops.close()
    ops.close()
    assert fake.errors == []  # no stream destroyed twice, no buffer freed twice
    launches = sum(fake.stats["launches"].values())
    assert np.array_equal(ops.paste_masks(masks, boxes, hw), paste_probabilities(masks, boxes, hw) > 0.5)
    assert np.array_equal(ops.instance_map(masks, boxes, scores, hw), instance_map(masks, boxes, scores, hw))
    assert sum(fake.stats["launches"].values()) == launches and fake.live_device_bytes() == 0


def test_paste_memory_follows_the_boxes_not_n_by_frame(fake, monkeypatch):
    """Issue 9 item 13: 40 small boxes in a 480x640 frame used to stage 40x480x640 bytes on the device
    and again pinned; now each round stages the boxes' areas, and a buffer grown past the staging
    size for one big box is freed after the call."""
    from mrcnn_edge.runtime.gpu import cuda_ops

    ops = cuda_ops.CudaOps()
    try:
        n, hw = 40, (480, 640)
        rng = np.random.default_rng(13)
        masks = rng.random((n, 28, 28)).astype(np.float32)
        x1, y1 = rng.uniform(0, 600, n), rng.uniform(0, 440, n)
        boxes = np.stack([x1, y1, x1 + 30, y1 + 30], 1).astype(np.float32)
        pasted = ops.paste_masks(masks, boxes, hw)
        assert np.array_equal(pasted, paste_probabilities(masks, boxes, hw) > 0.5)
        region_bytes = int(np.prod(np.diff(expand_boxes(boxes, 28).reshape(n, 2, 2), axis=1) + 1, axis=-1).sum())
        print(f"peak device bytes {fake.stats['peak_device_bytes']}, boxes {region_bytes}, N*H*W {n * hw[0] * hw[1]}")
        assert fake.stats["peak_device_bytes"] <= region_bytes + masks.nbytes + n * 16 + 4096
        # one box larger than the staging size: its buffers do not stay
        monkeypatch.setattr(cuda_ops, "PASTE_STAGING_BYTES", 1024)
        big = ops.paste_masks(masks[:2], np.array([[0, 0, 600, 400], [10, 10, 40, 40]], np.float32), hw)
        assert np.array_equal(big, paste_probabilities(masks[:2], np.array([[0, 0, 600, 400], [10, 10, 40, 40]],
                                                                            np.float32), hw) > 0.5)
        assert ops._dev["paste"].size == 0 and ops._host["paste"].size == 0
    finally:
        ops.close()
    assert fake.errors == []


def test_cuda_ops_on_device_1_work_from_another_thread(fake_dirs, monkeypatch):
    """Issue 9 item 14: a worker thread's current device is 0 until it sets one."""
    import threading

    from fakes.fake_cuda import FakeCuda

    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(fake_dirs[1]))
    fake = FakeCuda.install(monkeypatch, fake_dirs[0], devices=((8, 7), (8, 9)))
    ops = CudaOps(device_id=1)
    masks, boxes, scores, hw = _paste_case(14, hw=(60, 80))
    got = {}

    def worker():
        try:
            got["ids"] = ops.instance_map(masks, boxes, scores, hw)
            got["masks"] = ops.paste_masks(masks, boxes, hw)
        except Exception as exc:  # noqa: BLE001 - reported below
            got["error"] = exc

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    try:
        assert "error" not in got, got.get("error")
        assert np.array_equal(got["ids"], instance_map(masks, boxes, scores, hw))
        assert np.array_equal(got["masks"], paste_probabilities(masks, boxes, hw) > 0.5)
        assert fake.live_device_bytes(0) == 0 and fake.live_device_bytes(1) > 0
        assert all(s.device == 1 for s in fake.streams)
    finally:
        ops.close()
    assert fake.errors == []


# -- cuda-python / driver / NVRTC versions (issue 9 item 9) ---------------------------------------
@pytest.mark.parametrize("bindings,driver,nvrtc,words", [
    ("13.0.1", 12060, (13, 0), ["CUDA 13 (r580 or newer)", "CUDA 12.6", "pip install 'cuda-python>=12.6,<13'"]),
    ("13.0.1", 13000, (12, 6), ["needs NVRTC 13", "pip install 'nvidia-cuda-nvrtc==13.*'"]),
    ("12.6.2", 12060, (13, 0), ["needs NVRTC 12", "pip install 'nvidia-cuda-nvrtc-cu12==12.*'"]),
])
def test_version_mismatches_name_what_to_install(bindings, driver, nvrtc, words):
    from mrcnn_edge.runtime.gpu.cuda_util import version_problem

    line = version_problem(bindings, driver, nvrtc)
    assert line is not None and "\n" not in line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("bindings,driver,nvrtc", [
    ("12.6.2", 12060, (12, 6)),    # JetPack 6.x
    ("13.0.1", 13020, (13, 0)),    # JetPack 7.2, desktop r580+
    ("12.9.0", 13000, (12, 9)),    # an older cuda-python on a newer driver is fine
    ("13.0.1", 0, None),           # no driver at all: the device query says so instead
])
def test_matching_versions_pass(bindings, driver, nvrtc):
    from mrcnn_edge.runtime.gpu.cuda_util import version_problem

    assert version_problem(bindings, driver, nvrtc) is None


def test_cuda_ops_refuse_a_driver_older_than_cuda_python(fake, monkeypatch):
    from mrcnn_edge.core.errors import UserError
    from mrcnn_edge.runtime.gpu import cuda_util
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    monkeypatch.setattr(cuda_util, "bindings_version", lambda: "13.0.1")
    fake.driver_version = 12060  # JetPack 6
    with pytest.raises(UserError, match="cuda-python>=12.6,<13"):
        CudaOps()
    assert fake.live_device_bytes() == 0 and not fake.streams


@pytest.mark.parametrize("integrated", [False, True])
@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16])
def test_device_resident_render_on_the_stand_in(fake_dirs, monkeypatch, integrated, mask_dtype):
    from fakes.fake_cuda import FakeCuda
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps

    build, cache = fake_dirs
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(cache))
    fake = FakeCuda.install(monkeypatch, build, integrated=integrated)
    ops = CudaOps()
    try:
        assert ops.zero_copy == integrated
        _render_from_the_device(ops, mask_dtype)
    finally:
        ops.close()
    kernel = "render_instances_f16" if mask_dtype == np.float16 else "render_instances"
    assert fake.stats["launches"][kernel] == 1 and fake.errors == []
    assert fake.live_device_bytes() == 0 and fake.live_pinned_bytes() == 0
