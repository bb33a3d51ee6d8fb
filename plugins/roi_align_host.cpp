// CPU build of MultilevelRoIAlign: the arithmetic of roi_align_math.h behind a small C ABI, loaded
// with ctypes by mrcnn_edge.export.plugin_host. It is the reference the tests compare with
// torchvision, and the ONNX Runtime implementation of the MultilevelRoIAlign node.
//
// Same per-sample arithmetic as the CUDA kernel; the loop order differs only in that the bilinear
// taps of an ROI are computed once and reused across channels (they do not depend on the channel).
#include <stdint.h>

#include <vector>

#include "roi_align_math.h"

#if defined(_WIN32)
#define MRE_HOST_EXPORT extern "C" __declspec(dllexport)
#else
#define MRE_HOST_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace
{

using mrcnn_edge::BilinearTap;
using mrcnn_edge::MultilevelRoIAlignParams;
using mrcnn_edge::RoIGeometry;

struct Sample
{
    BilinearTap tap;
    bool inside;
};

inline float toFloat(float v)
{
    return v;
}

inline float toFloat(uint16_t v)
{
    return mrcnn_edge::halfBitsToFloat(v);
}

// Pool ROI `roiIndex` (= b * R + r) into out[C, oh, ow] (float32).
template <typename T>
void poolRoi(MultilevelRoIAlignParams const& p, int64_t roiIndex, std::vector<Sample>& samples, float* out)
{
    int64_t const binsPerChannel = static_cast<int64_t>(p.outputHeight) * p.outputWidth;
    int64_t const outCount = binsPerChannel * p.channels;
    float const* roi = p.rois + roiIndex * 4;
    int32_t const level = mrcnn_edge::roiLevel(
        roi[0], roi[1], roi[2], roi[3], p.canonicalScale, p.canonicalLevel, p.levelMin, p.levelMax, p.numLevels);
    RoIGeometry g{};
    if (level >= 0)
    {
        g = mrcnn_edge::roiGeometry(roi[0], roi[1], roi[2], roi[3], p.spatialScales[level], p.outputHeight,
            p.outputWidth, p.samplingRatio, p.aligned);
    }
    if (level < 0 || !g.valid)
    {
        for (int64_t i = 0; i < outCount; ++i)
        {
            out[i] = 0.0f;
        }
        return;
    }
    int32_t const height = p.heights[level];
    int32_t const width = p.widths[level];
    int32_t const gridH = g.gridH > 0 ? g.gridH : 0;
    int32_t const gridW = g.gridW > 0 ? g.gridW : 0;
    int64_t const perBin = static_cast<int64_t>(gridH) * gridW;

    // Taps of every sample of every bin, shared by all channels.
    samples.resize(static_cast<size_t>(binsPerChannel * perBin));
    size_t k = 0;
    for (int32_t ph = 0; ph < p.outputHeight; ++ph)
    {
        for (int32_t pw = 0; pw < p.outputWidth; ++pw)
        {
            for (int32_t iy = 0; iy < gridH; ++iy)
            {
                float const y = mrcnn_edge::sampleY(g, ph, iy);
                for (int32_t ix = 0; ix < gridW; ++ix)
                {
                    float const x = mrcnn_edge::sampleX(g, pw, ix);
                    Sample& s = samples[k++];
                    s.inside = mrcnn_edge::bilinearTap(y, x, height, width, s.tap);
                }
            }
        }
    }

    int32_t const b = static_cast<int32_t>(roiIndex / p.numRois);
    T const* base = static_cast<T const*>(p.features[level]);
    int64_t const planeSize = static_cast<int64_t>(height) * width;
    for (int32_t c = 0; c < p.channels; ++c)
    {
        T const* plane = base + (static_cast<int64_t>(b) * p.channels + c) * planeSize;
        float* outChannel = out + static_cast<int64_t>(c) * binsPerChannel;
        Sample const* s = samples.data();
        for (int64_t bin = 0; bin < binsPerChannel; ++bin)
        {
            float acc = 0.0f;
            for (int64_t i = 0; i < perBin; ++i, ++s)
            {
                if (s->inside)
                {
                    BilinearTap const& t = s->tap;
                    acc += t.w1 * toFloat(plane[t.o1]) + t.w2 * toFloat(plane[t.o2]) + t.w3 * toFloat(plane[t.o3])
                        + t.w4 * toFloat(plane[t.o4]);
                }
            }
            outChannel[bin] = acc / g.count;
        }
    }
}

// Returns false when memory ran out; no exception leaves an OpenMP region or the C ABI.
template <typename T>
bool poolAll(MultilevelRoIAlignParams const& p, float* output) noexcept
{
    int64_t const numRoisTotal = static_cast<int64_t>(p.batch) * p.numRois;
    int64_t const perRoi = static_cast<int64_t>(p.channels) * p.outputHeight * p.outputWidth;
    int failed = 0;
#if defined(_OPENMP)
#pragma omp parallel reduction(| : failed)
#endif
    {
        std::vector<Sample> samples;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 8)
#endif
        for (int64_t n = 0; n < numRoisTotal; ++n)
        {
            try
            {
                poolRoi<T>(p, n, samples, output + n * perRoi);
            }
            catch (...)
            {
                failed = 1;
            }
        }
    }
    return failed == 0;
}

} // namespace

//! Version of this C ABI; the Python loader refuses a library with another.
MRE_HOST_EXPORT int32_t mre_host_abi_version()
{
    return 2; // 2: levelMin/levelMax (torchvision's k_min/k_max) replace firstLevel
}

//! sizeof(MultilevelRoIAlignParams), checked against the ctypes mirror.
MRE_HOST_EXPORT int64_t mre_host_params_size()
{
    return static_cast<int64_t>(sizeof(MultilevelRoIAlignParams));
}

//! Pool into `output` ([B, R, C, oh, ow] float32, whatever the feature type).
//! featureType 0: float32 features; 1: float16 features given as their uint16 bits.
//! Returns 0, or 1 with a message (a static string) in *error.
MRE_HOST_EXPORT int32_t mre_host_multilevel_roi_align(
    MultilevelRoIAlignParams const* params, int32_t featureType, float* output, char const** error)
{
    char const* problem = nullptr;
    if (params == nullptr)
    {
        problem = "null parameters";
    }
    else if (featureType != 0 && featureType != 1)
    {
        problem = "feature type must be 0 (float32) or 1 (float16)";
    }
    else
    {
        problem = mrcnn_edge::validateParams(*params);
    }
    if (problem == nullptr && output == nullptr && mrcnn_edge::outputElementCount(*params) > 0)
    {
        problem = "null output pointer";
    }
    if (problem != nullptr)
    {
        if (error != nullptr)
        {
            *error = problem;
        }
        return 1;
    }
    if (mrcnn_edge::outputElementCount(*params) == 0)
    {
        return 0;
    }
    bool const ok = featureType == 0 ? poolAll<float>(*params, output) : poolAll<uint16_t>(*params, output);
    if (!ok)
    {
        if (error != nullptr)
        {
            *error = "out of memory";
        }
        return 1;
    }
    return 0;
}

//! Level index of each of the B*R ROIs (-1: none), as the kernel chooses it.
MRE_HOST_EXPORT int32_t mre_host_roi_levels(MultilevelRoIAlignParams const* params, int32_t* levels)
{
    if (params == nullptr || params->numLevels < 1 || params->numLevels > mrcnn_edge::kMaxLevels)
    {
        return 1;
    }
    int64_t const n = static_cast<int64_t>(params->batch) * params->numRois;
    for (int64_t i = 0; i < n; ++i)
    {
        float const* roi = params->rois + i * 4;
        levels[i] = mrcnn_edge::roiLevel(roi[0], roi[1], roi[2], roi[3], params->canonicalScale,
            params->canonicalLevel, params->levelMin, params->levelMax, params->numLevels);
    }
    return 0;
}

//! float16 bits to float32 with the same function the CPU pooling uses (tested against numpy).
MRE_HOST_EXPORT void mre_host_half_to_float(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = mrcnn_edge::halfBitsToFloat(in[i]);
    }
}
