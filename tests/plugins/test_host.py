"""The CPU build of the plugin's arithmetic (plugins/roi_align_math.h) against torchvision.

Reference semantics (DESIGN.md, "Plugin MultilevelRoIAlign"): torchvision's LevelMapper picks the
level, torchvision.ops.roi_align pools on it. Tolerance: max abs error <= 1e-5 in float32; float16
inputs accumulate in float32, so their output is the float32 result rounded once (<= 1 half ulp).
Each case prints its statistics (run with -s to see them).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.ops import MultiScaleRoIAlign, roi_align  # noqa: E402
from torchvision.ops.poolers import initLevelMapper  # noqa: E402

from mrcnn_edge.core.errors import UserError  # noqa: E402
from mrcnn_edge.export import plugin_host  # noqa: E402
from mrcnn_edge.export.plugin_host import (  # noqa: E402
    half_to_float_host,
    level_of_rois,
    multilevel_roi_align_host,
)

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
ATOL_FP32 = 1e-5


def make_rois(rng: np.random.Generator, batch: int, n: int, height: int, width: int) -> np.ndarray:
    """[batch, n, 4] float32 boxes on an height x width canvas: ordinary (all FPN levels), empty,
    tiny, huge, inverted and out-of-image ones, shuffled."""
    kinds = ["ordinary"] * 5 + ["empty", "tiny", "huge", "inverted", "outside"]
    out = np.empty((batch, n, 4), dtype=np.float32)
    for b in range(batch):
        rows = []
        for i in range(n):
            kind = kinds[i % len(kinds)]
            x1, y1 = rng.uniform(0, width), rng.uniform(0, height)
            if kind == "ordinary":  # log-uniform sizes: every level is used
                w, h = np.exp(rng.uniform(np.log(2), np.log(2 * max(height, width)), 2))
                box = [x1 - w / 2, y1 - h / 2, x1 + w / 2, y1 + h / 2]
            elif kind == "empty":
                box = [x1, y1, x1, y1] if i % 2 else [x1, y1, x1, y1 + rng.uniform(1, 50)]
            elif kind == "tiny":
                w, h = rng.uniform(0.01, 1.0, 2)
                box = [x1, y1, x1 + w, y1 + h]
            elif kind == "huge":
                w, h = rng.uniform(1, 4, 2) * (width, height)
                box = [x1 - w / 2, y1 - h / 2, x1 + w / 2, y1 + h / 2]
            elif kind == "inverted":  # one or both axes; negative area has no level in torchvision
                w, h = rng.uniform(1, 200, 2)
                box = [x1, y1, x1 - w, y1 - h] if i % 3 == 0 else ([x1, y1, x1 - w, y1 + h] if i % 3 == 1
                                                                    else [x1, y1, x1 + w, y1 - h])
            else:  # outside, fully or partly
                w, h = rng.uniform(4, 300, 2)
                ox = rng.choice([-1.5, 1.5, 0.0]) * width
                oy = rng.choice([-1.5, 1.5, 0.5]) * height
                box = [x1 + ox, y1 + oy, x1 + ox + w, y1 + oy + h]
            rows.append(box)
        out[b] = np.asarray(rows, dtype=np.float32)[rng.permutation(n)]
    return out


def make_features(rng, batch, channels, height, width, dtype=np.float32):
    return [rng.standard_normal((batch, channels, height // s, width // s)).astype(dtype) for s in (4, 8, 16, 32)]


def torchvision_reference(rois, features, oh, ow, sampling_ratio, aligned, scales=SCALES,
                          canonical_scale=224, canonical_level=4) -> np.ndarray:
    """LevelMapper + roi_align per level, in float32 (features upcast), as [B, R, C, oh, ow]."""
    batch, n = rois.shape[:2]
    boxes = torch.from_numpy(rois.reshape(-1, 4).astype(np.float32))
    feats = [torch.from_numpy(f.astype(np.float32)) for f in features]
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    mapper = initLevelMapper(k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)
    levels = mapper([boxes])
    batch_index = torch.arange(batch, dtype=torch.float32).repeat_interleave(n)[:, None]
    rois5 = torch.cat([batch_index, boxes], dim=1)
    out = torch.zeros((batch * n, feats[0].shape[1], oh, ow), dtype=torch.float32)
    for level, (feat, scale) in enumerate(zip(feats, scales)):
        idx = torch.where(levels == level)[0]
        if idx.numel():
            out[idx] = roi_align(feat, rois5[idx], (oh, ow), scale, sampling_ratio, bool(aligned))
    return out.numpy().reshape(batch, n, -1, oh, ow)


def stats(name: str, got: np.ndarray, want: np.ndarray) -> float:
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(err.max()) if err.size else 0.0
    print(f"{name}: max abs err {worst:.3g}, mean {float(err.mean()) if err.size else 0:.3g}, "
          f"median {float(np.median(err)) if err.size else 0:.3g}, {got.size} values")
    return worst


CASES = [
    pytest.param(aligned, sampling, size, batch, id=f"aligned{aligned}-sr{sampling}-{size}x{size}-b{batch}")
    for (aligned, sampling, size), batch in zip(itertools.product((0, 1), (0, 1, 2), (7, 14)), itertools.cycle((1, 2, 3)))
]


@pytest.mark.parametrize("aligned,sampling_ratio,size,batch", CASES)
def test_matches_torchvision_float32(aligned, sampling_ratio, size, batch):
    rng = np.random.default_rng(1000 * aligned + 100 * sampling_ratio + size + batch)
    height, width = 128, 160
    rois = make_rois(rng, batch, 1000, height, width)
    feats = make_features(rng, batch, 4, height, width)
    got = multilevel_roi_align_host(rois, feats, size, size, sampling_ratio, aligned)
    want = torchvision_reference(rois, feats, size, size, sampling_ratio, aligned)
    assert got.shape == (batch, 1000, 4, size, size) and got.dtype == np.float32
    assert stats(f"fp32 aligned={aligned} sr={sampling_ratio} {size}x{size} B={batch}", got, want) <= ATOL_FP32
    # every level got ROIs, and so did "no level" (negative area)
    levels = level_of_rois(rois)
    assert set(np.unique(levels)) == {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("size", [7, 14])
def test_equals_multiscale_roi_align_of_mask_rcnn(size):
    """torchvision's own MultiScaleRoIAlign as Mask R-CNN builds it (box head 7x7, mask head 14x14,
    sampling_ratio 2, aligned False), on a 4-level feature dict and the images' sizes."""
    rng = np.random.default_rng(size)
    batch, height, width = 2, 192, 256
    rois = make_rois(rng, batch, 1000, height, width)
    feats = make_features(rng, batch, 6, height, width)
    pooler = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=size, sampling_ratio=2)
    x = {str(i): torch.from_numpy(f) for i, f in enumerate(feats)}
    want = pooler(x, [torch.from_numpy(r) for r in rois], [(height, width)] * batch).numpy()
    got = multilevel_roi_align_host(rois, feats, size, size, 2, 0)
    assert stats(f"MultiScaleRoIAlign {size}x{size}", got.reshape(want.shape), want) <= ATOL_FP32


# Pyramids other than ResNet-FPN's P2-P5, as (canvas, [(stride, ...)]): torchvision's
# MobileNetV3-Large FPN (fasterrcnn_mobilenet_v3_large_fpn) returns two maps, both at 1/32, so its
# LevelMapper has k_min = k_max = 5 and pools every ROI from the first map; a pyramid starting at
# 1/8 has k_min = 3, k_max = 5.
PYRAMIDS = {
    "mobilenet-two-1/32": ((256, 320), (32, 32)),
    "three-from-1/8": ((256, 320), (8, 16, 32)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("pyramid", list(PYRAMIDS))
def test_equals_multiscale_roi_align_on_other_pyramids(pyramid, dtype):
    """torchvision's MultiScaleRoIAlign, its scales inferred from the map and image sizes, against the
    plugin's CPU build given those scales. fp16: the float32 result rounded once (<= 1 half ulp)."""
    (height, width), strides = PYRAMIDS[pyramid]
    rng = np.random.default_rng(len(strides) + (dtype == np.float16))
    batch = 2
    rois = make_rois(rng, batch, 500, height, width)
    feats = [rng.standard_normal((batch, 3, height // s, width // s)).astype(dtype) for s in strides]
    names = [f"m{i}" for i in range(len(feats))]
    pooler = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
    x = {n: torch.from_numpy(f.astype(np.float32)) for n, f in zip(names, feats)}
    want = pooler(x, [torch.from_numpy(r) for r in rois], [(height, width)] * batch).numpy()
    scales = tuple(1 / s for s in strides)
    assert pooler.scales == list(scales)  # torchvision inferred the scales we pass to the plugin
    got = multilevel_roi_align_host(rois, feats, 7, 7, 2, 0, spatial_scales=scales)
    assert got.dtype == dtype
    got = got.astype(np.float32).reshape(want.shape)
    worst = stats(f"MultiScaleRoIAlign {pyramid} {np.dtype(dtype).name}", got, want)
    if dtype == np.float32:
        assert worst <= ATOL_FP32
    else:
        half_ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
        assert np.all(np.abs(got - want) <= half_ulp + ATOL_FP32)


def test_two_maps_at_one_scale_pool_everything_from_the_first():
    """The MobileNetV3-FPN case as levels: every pooled ROI (finite, area >= 0) is on map 0."""
    rng = np.random.default_rng(2)
    rois = make_rois(rng, 1, 1000, 256, 320)
    levels = level_of_rois(rois, spatial_scales=(1 / 32, 1 / 32))
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    assert np.all(levels[area >= 0] == 0) and np.all(levels[area < 0] == -1)


@pytest.mark.parametrize("scales", [(1 / 4, 0.1, 1 / 16, 1 / 32), (1 / 3,), (0.25, 1.5)])
def test_scales_that_are_not_powers_of_two_are_refused_in_one_line(scales):
    rois = np.zeros((1, 2, 4), np.float32)
    feats = [np.zeros((1, 2, 8, 8), np.float32) for _ in scales]
    with pytest.raises(ValueError) as err:
        multilevel_roi_align_host(rois, feats, spatial_scales=scales)
    assert "powers of two" in str(err.value) or "(0, 1]" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="powers of two|\\(0, 1\\]"):
        level_of_rois(rois, spatial_scales=scales)


def test_level_mapping_matches_torchvision():
    rng = np.random.default_rng(7)
    rois = make_rois(rng, 3, 1000, 800, 1344)
    mapper = initLevelMapper(2, 5)
    want = mapper([torch.from_numpy(rois.reshape(-1, 4))]).numpy()
    got = level_of_rois(rois).reshape(-1)
    valid = (want >= 0) & (want <= 3)  # NaN levels (negative area) come out of torch as garbage ints
    assert np.array_equal(got[valid], want[valid])
    assert np.all(got[~valid] == -1)
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    assert np.array_equal(got == -1, area.reshape(-1) < 0)


def test_other_level_rule_and_scales():
    """canonical_scale / canonical_level and a 3-level pyramid are honoured."""
    rng = np.random.default_rng(3)
    scales = (1 / 8, 1 / 16, 1 / 32)
    rois = make_rois(rng, 2, 1000, 128, 160)
    feats = make_features(rng, 2, 4, 128, 160)[1:]
    got = multilevel_roi_align_host(rois, feats, 7, 7, 2, 0, spatial_scales=scales, canonical_scale=56,
                                    canonical_level=3)
    want = torchvision_reference(rois, feats, 7, 7, 2, 0, scales=scales, canonical_scale=56, canonical_level=3)
    assert stats("3 levels, canonical 56 at P3", got, want) <= ATOL_FP32


@pytest.mark.parametrize("aligned,size", [(0, 7), (1, 14)])
def test_half_inputs_accumulate_in_float32(aligned, size):
    rng = np.random.default_rng(11 + size)
    rois = make_rois(rng, 2, 1000, 128, 160)
    feats16 = make_features(rng, 2, 4, 128, 160, np.float16)
    got = multilevel_roi_align_host(rois, feats16, size, size, 2, aligned)
    assert got.dtype == np.float16
    # float32 arithmetic on the half values, rounded once at the end
    same_in_fp32 = multilevel_roi_align_host(rois, [f.astype(np.float32) for f in feats16], size, size, 2, aligned)
    assert np.array_equal(got, same_in_fp32.astype(np.float16))
    want = torchvision_reference(rois, feats16, size, size, 2, aligned)
    half_ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)
    err = np.abs(got.astype(np.float32) - want)
    stats(f"fp16 aligned={aligned} {size}x{size}", got, want)
    assert np.all(err <= half_ulp + ATOL_FP32)


def test_half_to_float_matches_numpy_for_every_value():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16)
    got = half_to_float_host(values)
    want = values.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # signed zeros too


@pytest.mark.parametrize("batch,num_rois", [(1, 0), (0, 5), (0, 0)])
def test_zero_rois_is_a_normal_case(batch, num_rois):
    rois = np.zeros((batch, num_rois, 4), np.float32)
    feats = make_features(np.random.default_rng(0), batch, 3, 64, 64)
    out = multilevel_roi_align_host(rois, feats, 7, 7)
    assert out.shape == (batch, num_rois, 3, 7, 7) and out.dtype == np.float32
    out16 = multilevel_roi_align_host(rois, [f.astype(np.float16) for f in feats], 14, 14)
    assert out16.shape == (batch, num_rois, 3, 14, 14) and out16.dtype == np.float16


def test_non_finite_rois_pool_to_zeros():
    rng = np.random.default_rng(5)
    feats = make_features(rng, 1, 4, 64, 64)
    bad = [np.nan, np.inf, -np.inf]
    rois = np.tile(np.array([[8.0, 8.0, 40.0, 40.0]], np.float32), (12, 1))
    for i in range(12):
        rois[i, i % 4] = bad[i % 3]
    rois = np.concatenate([rois, [[8.0, 8.0, 40.0, 40.0], [-3e38, -3e38, 3e38, 3e38]]]).astype(np.float32)[None]
    out = multilevel_roi_align_host(rois, feats, 7, 7, 0, 0)
    assert np.all(np.isfinite(out))
    assert np.all(out[0, :12] == 0)
    assert np.abs(out[0, 12]).max() > 0  # the good box next to them is pooled
    assert np.all(level_of_rois(rois)[0, :12] == -1)


def test_bad_inputs_are_value_errors():
    rng = np.random.default_rng(0)
    feats = make_features(rng, 1, 4, 64, 64)
    rois = np.zeros((1, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[B, R, 4\]"):
        multilevel_roi_align_host(np.zeros((3, 4), np.float32), feats)
    with pytest.raises(ValueError, match="3 feature maps given but 4 spatial_scales"):
        multilevel_roi_align_host(rois, feats[:3])
    with pytest.raises(ValueError, match="all float32 or all float16"):
        multilevel_roi_align_host(rois, feats[:3] + [feats[3].astype(np.float16)])
    with pytest.raises(ValueError, match="channels"):
        multilevel_roi_align_host(rois, feats[:3] + [feats[3][:, :2]])
    with pytest.raises(ValueError, match="batch"):
        multilevel_roi_align_host(np.zeros((2, 3, 4), np.float32), feats)
    with pytest.raises(ValueError, match="aligned"):
        multilevel_roi_align_host(rois, feats, aligned=2)
    with pytest.raises(ValueError, match="sampling_ratio"):
        multilevel_roi_align_host(rois, feats, sampling_ratio=65)


def test_missing_compiler_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(plugin_host.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"g\+\+ not found"):
        plugin_host._find_compiler()


def test_library_is_cached_by_source_hash():
    first = plugin_host.host_library_path()
    mtime = first.stat().st_mtime_ns
    assert plugin_host.host_library_path() == first and first.stat().st_mtime_ns == mtime
    assert first.parent == plugin_host.cache_dir() / "host"
