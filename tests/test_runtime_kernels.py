"""The CUDA kernels: compiled by NVRTC for Jetson (sm_87) and a desktop GPU (sm_89), no GPU needed;
their per-pixel arithmetic built for the host with g++ and run against the numpy reference;
on a GPU (marker ``gpu``), the kernels themselves against the reference."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from mrcnn_edge.runtime import kernel_build
from mrcnn_edge.runtime.kernel_build import KERNEL_DIR, KERNELS, compile_kernel
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


def test_compiled_kernels_are_cached_per_source(compiled, monkeypatch):
    cache, _ = compiled
    calls = []
    monkeypatch.setattr(kernel_build, "_compile", lambda *a: calls.append(a) or b"x")
    again = compile_kernel("preprocess", "sm_87", cache)
    assert again.from_cache and not calls
    # an edited header changes the key and recompiles
    monkeypatch.setattr(kernel_build, "NVRTC_OPTIONS", kernel_build.NVRTC_OPTIONS + ("-DEDITED",))
    assert not compile_kernel("preprocess", "sm_87", cache).from_cache and calls


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


def _ptx_parameters(ptx: str) -> dict[str, list[int]]:
    """Entry point -> byte size of each parameter, from NVRTC's PTX."""
    import re

    sizes = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "b32": 4, "s32": 4, "f32": 4}
    entries = {}
    for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx):
        entries[name] = [int(n) if n else sizes[t] for t, n in
                         re.findall(r"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+\w+(?:\[(\d+)\])?", params)]
    return entries


def test_launch_signatures_match_the_compiled_kernels(compiled):
    from mrcnn_edge.runtime.cuda_ops import SIGNATURES

    _, images = compiled
    compiled_params = {}
    for kernel in KERNELS:
        compiled_params.update(_ptx_parameters(images[(kernel, "compute_87")].image.decode(errors="replace")))
    assert set(compiled_params) == set(SIGNATURES) == {e for entries in KERNELS.values() for e in entries}
    for name, signature in SIGNATURES.items():
        expected = [{"ptr": 8, "int": 4, "float": 4}[k] if isinstance(k, str) else ctypes.sizeof(k) for k in signature]
        assert compiled_params[name] == expected, name


def test_kernel_arguments_are_packed_by_address():
    from mrcnn_edge.runtime.cuda_ops import LetterboxParams, pack_arguments

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
    from mrcnn_edge.runtime.cuda_ops import LetterboxParams

    assert host.host_sizeof_letterbox_params() == ctypes.sizeof(LetterboxParams)
    assert host.host_offsetof_letterbox_add() == LetterboxParams.add.offset
    assert host.host_sizeof_paste_box() == expand_boxes(np.zeros((1, 4)), 28).itemsize * 4


@pytest.mark.parametrize("hw,canvas", [((480, 640), (128, 160)), ((37, 53), (96, 64)), ((1, 1), (32, 32)),
                                       ((800, 10), (64, 64)), ((64, 64), (64, 64))])
def test_host_letterbox_is_the_reference_bit_for_bit(host, hw, canvas):
    from mrcnn_edge.runtime.cuda_ops import LetterboxParams

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
    from mrcnn_edge.runtime.cuda_ops import CudaOps
    from mrcnn_edge.runtime.cuda_util import check, cuda_modules

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
