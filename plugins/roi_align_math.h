// Sampling arithmetic of MultilevelRoIAlign, shared by the CUDA kernel and the CPU build.
//
// No TensorRT here and no CUDA dependency when the compiler is not nvcc: the same functions run
// in the GPU kernel (multilevel_roi_align_kernel.cu) and in the host library that the tests load
// with ctypes and compare with torchvision (roi_align_host.cpp). One definition of the arithmetic
// is what makes the CPU tests say something about the GPU.
//
// Semantics are torchvision's: the level rule of torchvision.ops.poolers.LevelMapper and, per
// level, torchvision.ops.roi_align (same `aligned`, same `sampling_ratio`), written in the same
// order of float operations so that float32 results agree to rounding.
#ifndef MRCNN_EDGE_ROI_ALIGN_MATH_H
#define MRCNN_EDGE_ROI_ALIGN_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MRE_HD __host__ __device__ __forceinline__
#else
#define MRE_HD inline
#endif

namespace mrcnn_edge
{

//! Most feature maps one node takes (FPN uses 4 or 5).
constexpr int32_t kMaxLevels = 8;

//! Cap on the adaptive sample grid (sampling_ratio <= 0) per bin side. torchvision has none; an ROI
//! would need to be more than 64 bins' worth of feature pixels wide at its level to reach it (never
//! the case for proposals clipped to the canvas), and without it one garbage box could make the
//! kernel run for seconds.
constexpr int32_t kMaxAdaptiveGrid = 64;

//! Largest fixed sampling_ratio accepted (the same bound, for the same reason).
constexpr int32_t kMaxSamplingRatio = 64;

//! Everything one MultilevelRoIAlign call needs; shared by the CUDA launcher and the CPU build.
//! Plain C layout (the Python side mirrors it with ctypes): pointers, then 32-bit fields.
struct MultilevelRoIAlignParams
{
    //! rois [B, R, 4] float32: x1, y1, x2, y2 in canvas pixels.
    float const* rois;
    //! feature_l [B, C, H_l, W_l], finest first, all of one dtype (float32 or float16), NCHW.
    void const* features[kMaxLevels];
    //! pooled [B, R, C, outputHeight, outputWidth], dtype of the features.
    void* output;
    int32_t batch;
    int32_t numRois;
    int32_t channels;
    int32_t numLevels;
    int32_t heights[kMaxLevels];
    int32_t widths[kMaxLevels];
    //! feature pixels per canvas pixel, e.g. 1/4, 1/8, 1/16, 1/32.
    float spatialScales[kMaxLevels];
    int32_t outputHeight;
    int32_t outputWidth;
    //! samples per bin side; <= 0: adaptive, ceil(roi_size / bins).
    int32_t samplingRatio;
    //! 1: half-pixel offset (-0.5, Detectron2); 0: torchvision's Mask R-CNN.
    int32_t aligned;
    float canonicalScale;
    int32_t canonicalLevel;
    //! torchvision LevelMapper's k_min and k_max: -log2 of the first and of the last spatial scale
    //! (2 and 5 for 1/4 .. 1/32; 5 and 5 for MobileNetV3-FPN's two 1/32 maps). See fpnLevelRange().
    int32_t levelMin;
    int32_t levelMax;
};

//! Bits of a float are finite (not inf, not NaN); immune to -ffast-math folding.
MRE_HD bool isFiniteFloat(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof(bits));
    return (bits & 0x7f800000u) != 0x7f800000u;
}

//! IEEE binary16 bits to float, exact for every input (subnormals, inf, NaN included).
MRE_HD float halfBitsToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu)
    {
        bits = sign | 0x7f800000u | (mantissa << 13); // inf, NaN (payload kept)
    }
    else if (exponent != 0)
    {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13); // normal: rebias 15 -> 127
    }
    else if (mantissa == 0)
    {
        bits = sign; // signed zero
    }
    else
    {
        // subnormal half: normalise into a float normal
        exponent = 113u;
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float out;
    memcpy(&out, &bits, sizeof(out));
    return out;
}

//! FPN level index in [0, numLevels) of an ROI, or -1 when it belongs to no level.
//!
//! torchvision's LevelMapper: floor(canonicalLevel + log2(sqrt(w*h) / canonicalScale) + 1e-6),
//! clamped to [levelMin, levelMax] (k_min, k_max: from the first and the last scale, not from the
//! number of maps), minus levelMin. The clamp is torch.clamp's, max(min(.)) in that order, so that
//! levelMin > levelMax (scales given coarse first) gives what torchvision gives. An index past the
//! last map (levels that skip a power of two) is pooled by no map, as in MultiScaleRoIAlign, whose
//! per-level loop never reaches it. An ROI with negative area has a NaN level there and is pooled
//! by no level (its output stays zero); non-finite coordinates get the same treatment here.
MRE_HD int32_t roiLevel(float x1, float y1, float x2, float y2, float canonicalScale, int32_t canonicalLevel,
    int32_t levelMin, int32_t levelMax, int32_t numLevels)
{
    if (!(isFiniteFloat(x1) && isFiniteFloat(y1) && isFiniteFloat(x2) && isFiniteFloat(y2)))
    {
        return -1;
    }
    if (numLevels <= 1)
    {
        return 0; // torchvision pools a single map without a level rule
    }
    float const area = (x2 - x1) * (y2 - y1);
    float const size = sqrtf(area);
    float const level = floorf(static_cast<float>(canonicalLevel) + log2f(size / canonicalScale) + 1e-6f);
    if (level != level)
    {
        return -1; // NaN: negative area
    }
    float const lowest = static_cast<float>(levelMin);
    float const highest = static_cast<float>(levelMax);
    float clamped = level < lowest ? lowest : level;
    clamped = clamped > highest ? highest : clamped;
    int32_t const index = static_cast<int32_t>(clamped) - levelMin;
    return index >= 0 && index < numLevels ? index : -1;
}

//! Where an ROI's bins lie on its feature map and how densely they are sampled.
struct RoIGeometry
{
    float startH;
    float startW;
    float binH;
    float binW;
    int32_t gridH; //!< samples per bin along y (may be <= 0: the bin has no samples, output 0)
    int32_t gridW;
    float count; //!< divisor of the bin average, max(gridH * gridW, 1)
    bool valid;  //!< false: non-finite geometry, output zeros
};

//! Adaptive grid of one side: ceil(size / bins), as an int, clamped to [<=0 .. kMaxAdaptiveGrid].
MRE_HD int32_t adaptiveGrid(float size, int32_t bins)
{
    float const g = ceilf(size / static_cast<float>(bins));
    if (!(g <= static_cast<float>(kMaxAdaptiveGrid)))
    {
        return kMaxAdaptiveGrid;
    }
    return g < -1.0f ? -1 : static_cast<int32_t>(g); // only the sign matters below zero
}

//! torchvision roi_align's ROI set-up for one ROI on a map of stride 1/spatialScale.
MRE_HD RoIGeometry roiGeometry(float x1, float y1, float x2, float y2, float spatialScale, int32_t outputHeight,
    int32_t outputWidth, int32_t samplingRatio, int32_t aligned)
{
    RoIGeometry g;
    float const offset = aligned ? 0.5f : 0.0f;
    g.startW = x1 * spatialScale - offset;
    g.startH = y1 * spatialScale - offset;
    float const endW = x2 * spatialScale - offset;
    float const endH = y2 * spatialScale - offset;
    float roiWidth = endW - g.startW;
    float roiHeight = endH - g.startH;
    if (!aligned)
    {
        // torchvision forces malformed ROIs to be 1x1 feature pixels
        roiWidth = roiWidth > 1.0f ? roiWidth : 1.0f;
        roiHeight = roiHeight > 1.0f ? roiHeight : 1.0f;
    }
    g.binH = roiHeight / static_cast<float>(outputHeight);
    g.binW = roiWidth / static_cast<float>(outputWidth);
    g.gridH = samplingRatio > 0 ? samplingRatio : adaptiveGrid(roiHeight, outputHeight);
    g.gridW = samplingRatio > 0 ? samplingRatio : adaptiveGrid(roiWidth, outputWidth);
    int32_t const samples = g.gridH * g.gridW; // both <= 64 or both fixed: no overflow
    g.count = static_cast<float>(samples > 1 ? samples : 1);
    g.valid = isFiniteFloat(g.startH) && isFiniteFloat(g.startW) && isFiniteFloat(g.binH) && isFiniteFloat(g.binW);
    return g;
}

//! y of sample iy in bin row ph (same expression and order as torchvision).
MRE_HD float sampleY(RoIGeometry const& g, int32_t ph, int32_t iy)
{
    return g.startH + ph * g.binH + static_cast<float>(iy + .5f) * g.binH / static_cast<float>(g.gridH);
}

//! x of sample ix in bin column pw.
MRE_HD float sampleX(RoIGeometry const& g, int32_t pw, int32_t ix)
{
    return g.startW + pw * g.binW + static_cast<float>(ix + .5f) * g.binW / static_cast<float>(g.gridW);
}

//! The four pixels and weights of one bilinear sample on an H x W plane.
struct BilinearTap
{
    int32_t o1, o2, o3, o4; //!< y*W + x of (y_low,x_low), (y_low,x_high), (y_high,x_low), (y_high,x_high)
    float w1, w2, w3, w4;
};

//! Fill `tap` for the sample at (y, x); false when the sample lies outside [-1, H] x [-1, W] (or is
//! NaN), in which case it contributes zero.
MRE_HD bool bilinearTap(float y, float x, int32_t height, int32_t width, BilinearTap& tap)
{
    // written as !(inside) so that NaN takes this branch rather than reaching the int casts
    if (!(y >= -1.0f && y <= static_cast<float>(height) && x >= -1.0f && x <= static_cast<float>(width)))
    {
        return false;
    }
    if (y <= 0.0f)
    {
        y = 0.0f;
    }
    if (x <= 0.0f)
    {
        x = 0.0f;
    }
    int32_t yLow = static_cast<int32_t>(y);
    int32_t xLow = static_cast<int32_t>(x);
    int32_t yHigh;
    int32_t xHigh;
    if (yLow >= height - 1)
    {
        yHigh = yLow = height - 1;
        y = static_cast<float>(yLow);
    }
    else
    {
        yHigh = yLow + 1;
    }
    if (xLow >= width - 1)
    {
        xHigh = xLow = width - 1;
        x = static_cast<float>(xLow);
    }
    else
    {
        xHigh = xLow + 1;
    }
    float const ly = y - static_cast<float>(yLow);
    float const lx = x - static_cast<float>(xLow);
    float const hy = 1.0f - ly;
    float const hx = 1.0f - lx;
    tap.o1 = yLow * width + xLow;
    tap.o2 = yLow * width + xHigh;
    tap.o3 = yHigh * width + xLow;
    tap.o4 = yHigh * width + xHigh;
    tap.w1 = hy * hx;
    tap.w2 = hy * lx;
    tap.w3 = ly * hx;
    tap.w4 = ly * lx;
    return true;
}

//! FPN level of a map of scale 1/2^k: k, in `level`. False when `scale` is not a power of two in
//! (0, 1] (within 1e-6 in log2, as mrcnn_edge.contract.fpn_level_range), or not finite.
inline bool fpnLevelOfScale(float scale, int32_t& level)
{
    if (!(isFiniteFloat(scale) && scale > 0.0f && scale <= 1.0f))
    {
        return false;
    }
    double const k = -log2(static_cast<double>(scale));
    double const rounded = floor(k + 0.5);
    if (fabs(k - rounded) > 1e-6)
    {
        return false;
    }
    level = static_cast<int32_t>(rounded);
    return true;
}

//! torchvision LevelMapper's (k_min, k_max) of `scales[0 .. numLevels)`: the levels of the first and
//! of the last map. nullptr on success, else why not (a static string).
inline char const* fpnLevelRange(float const* scales, int32_t numLevels, int32_t& levelMin, int32_t& levelMax)
{
    if (numLevels < 1 || numLevels > kMaxLevels)
    {
        return "spatial_scales must have 1 to 8 entries";
    }
    for (int32_t l = 0; l < numLevels; ++l)
    {
        int32_t unused = 0;
        if (!fpnLevelOfScale(scales[l], unused))
        {
            return "spatial_scales must be powers of two (1/4, 1/8, ...) in (0, 1], as FPN maps are";
        }
    }
    fpnLevelOfScale(scales[0], levelMin);
    fpnLevelOfScale(scales[numLevels - 1], levelMax);
    return nullptr;
}

//! Number of output elements, B * R * C * outputHeight * outputWidth (0 for any negative size).
inline int64_t outputElementCount(MultilevelRoIAlignParams const& p)
{
    if (p.batch <= 0 || p.numRois <= 0 || p.channels <= 0 || p.outputHeight <= 0 || p.outputWidth <= 0)
    {
        return 0;
    }
    return static_cast<int64_t>(p.batch) * p.numRois * p.channels * p.outputHeight * p.outputWidth;
}

//! nullptr when `p` is consistent, else a sentence saying what is wrong (a static string).
inline char const* validateParams(MultilevelRoIAlignParams const& p)
{
    if (p.numLevels < 1 || p.numLevels > kMaxLevels)
    {
        return "the number of feature maps must be between 1 and 8";
    }
    if (p.batch < 0 || p.numRois < 0 || p.channels < 0)
    {
        return "negative batch, ROI or channel count";
    }
    if (p.outputHeight < 1 || p.outputWidth < 1)
    {
        return "output_height and output_width must be >= 1";
    }
    if (p.aligned != 0 && p.aligned != 1)
    {
        return "aligned must be 0 or 1";
    }
    if (p.samplingRatio > kMaxSamplingRatio)
    {
        return "sampling_ratio must be <= 64";
    }
    if (!(isFiniteFloat(p.canonicalScale) && p.canonicalScale > 0.0f))
    {
        return "canonical_scale must be a positive finite number";
    }
    for (int32_t l = 0; l < p.numLevels; ++l)
    {
        if (!(isFiniteFloat(p.spatialScales[l]) && p.spatialScales[l] > 0.0f))
        {
            return "spatial_scales must be positive finite numbers";
        }
    }
    int32_t levelMin = 0;
    int32_t levelMax = 0;
    if (char const* problem = fpnLevelRange(p.spatialScales, p.numLevels, levelMin, levelMax))
    {
        return problem;
    }
    if (levelMin != p.levelMin || levelMax != p.levelMax)
    {
        return "levelMin and levelMax must be the FPN levels of the first and the last spatial scale";
    }
    if (outputElementCount(p) == 0)
    {
        return nullptr; // nothing will be read or written
    }
    if (p.rois == nullptr || p.output == nullptr)
    {
        return "null ROI or output pointer";
    }
    for (int32_t l = 0; l < p.numLevels; ++l)
    {
        if (p.features[l] == nullptr)
        {
            return "null feature map pointer";
        }
        if (p.heights[l] < 1 || p.widths[l] < 1)
        {
            return "feature maps must be at least 1x1";
        }
        if (static_cast<int64_t>(p.heights[l]) * p.widths[l] > INT32_MAX)
        {
            return "a feature map plane has more than 2^31 - 1 pixels";
        }
    }
    return nullptr;
}

} // namespace mrcnn_edge

#endif // MRCNN_EDGE_ROI_ALIGN_MATH_H
