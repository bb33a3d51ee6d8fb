// MultilevelRoIAlign CUDA kernel: no TensorRT, compiles with plain nvcc.
//
// Thread mapping: one thread per output element, in the output's own order
// [B, R, C, out_h, out_w] with out_w fastest. Consecutive threads of a warp therefore
//   * write consecutive output addresses (fully coalesced stores), and
//   * read the same channel plane of the same ROI (at most two planes per warp for 7x7 bins),
//     at neighbouring columns: the bilinear corners of neighbouring threads fall on the same or
//     adjacent 32-byte sectors, and what one thread's corner misses, its neighbour's hits in L1.
// A channel-fastest mapping would coalesce only on an NHWC layout; TensorRT hands this plugin
// NCHW (kLINEAR), where channel-fastest threads would each touch a different plane H*W elements
// apart: one sector per thread per corner. plugins/README.md has the arithmetic.
#include <cuda_fp16.h>

#include "multilevel_roi_align_kernel.h"

namespace mrcnn_edge
{
namespace
{

constexpr int32_t kThreadsPerBlock = 256;
// Grid-stride loop past this many blocks (only reached by outputs of more than 2^31 elements).
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

template <typename T>
__device__ __forceinline__ float loadAsFloat(T const* p);

template <>
__device__ __forceinline__ float loadAsFloat<float>(float const* p)
{
    return __ldg(p);
}

template <>
__device__ __forceinline__ float loadAsFloat<__half>(__half const* p)
{
    return __half2float(__ldg(p));
}

template <typename T>
__device__ __forceinline__ T storeAs(float v);

template <>
__device__ __forceinline__ float storeAs<float>(float v)
{
    return v;
}

template <>
__device__ __forceinline__ __half storeAs<__half>(float v)
{
    return __float2half_rn(v);
}

// Index is uint32_t when the output has fewer than 2^31 elements (cheap divisions), else int64_t.
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreadsPerBlock)
    multilevelRoIAlignKernel(MultilevelRoIAlignParams const p, Index const total)
{
    Index const outW = static_cast<Index>(p.outputWidth);
    Index const outH = static_cast<Index>(p.outputHeight);
    Index const channels = static_cast<Index>(p.channels);
    Index const numRois = static_cast<Index>(p.numRois);
    Index const stride = static_cast<Index>(gridDim.x) * static_cast<Index>(blockDim.x);
    T* const output = static_cast<T*>(p.output);

    for (Index idx = static_cast<Index>(blockIdx.x) * static_cast<Index>(blockDim.x) + threadIdx.x; idx < total;
         idx += stride)
    {
        Index rest = idx;
        int32_t const pw = static_cast<int32_t>(rest % outW);
        rest /= outW;
        int32_t const ph = static_cast<int32_t>(rest % outH);
        rest /= outH;
        int32_t const c = static_cast<int32_t>(rest % channels);
        Index const roiIndex = rest / channels; // b * R + r
        int32_t const b = static_cast<int32_t>(roiIndex / numRois);

        // Same 16 bytes for every thread of the warp: one broadcast transaction.
        float const* roi = p.rois + static_cast<int64_t>(roiIndex) * 4;
        float const x1 = __ldg(roi + 0);
        float const y1 = __ldg(roi + 1);
        float const x2 = __ldg(roi + 2);
        float const y2 = __ldg(roi + 3);

        float result = 0.0f;
        int32_t const level = roiLevel(x1, y1, x2, y2, p.canonicalScale, p.canonicalLevel, p.levelMin, p.levelMax, p.numLevels);
        if (level >= 0)
        {
            RoIGeometry const g = roiGeometry(
                x1, y1, x2, y2, p.spatialScales[level], p.outputHeight, p.outputWidth, p.samplingRatio, p.aligned);
            if (g.valid)
            {
                int32_t const height = p.heights[level];
                int32_t const width = p.widths[level];
                T const* plane = static_cast<T const*>(p.features[level])
                    + (static_cast<int64_t>(b) * p.channels + c) * static_cast<int64_t>(height) * width;
                float acc = 0.0f; // float32 accumulation for both element types
                for (int32_t iy = 0; iy < g.gridH; ++iy)
                {
                    float const y = sampleY(g, ph, iy);
                    for (int32_t ix = 0; ix < g.gridW; ++ix)
                    {
                        float const x = sampleX(g, pw, ix);
                        BilinearTap tap;
                        if (bilinearTap(y, x, height, width, tap))
                        {
                            acc += tap.w1 * loadAsFloat(plane + tap.o1) + tap.w2 * loadAsFloat(plane + tap.o2)
                                + tap.w3 * loadAsFloat(plane + tap.o3) + tap.w4 * loadAsFloat(plane + tap.o4);
                        }
                    }
                }
                result = acc / g.count;
            }
        }
        output[idx] = storeAs<T>(result);
    }
}

} // namespace

template <typename T>
cudaError_t launchMultilevelRoIAlignTyped(MultilevelRoIAlignParams const& params, cudaStream_t stream) noexcept
{
    if (validateParams(params) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int64_t const total = outputElementCount(params);
    if (total == 0)
    {
        return cudaSuccess; // zero ROIs: nothing to launch, nothing to check
    }
    int64_t const blocks64 = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
    unsigned int const blocks = static_cast<unsigned int>(blocks64 < kMaxBlocks ? blocks64 : kMaxBlocks);
    if (total < (int64_t{1} << 31))
    {
        multilevelRoIAlignKernel<T, uint32_t>
            <<<blocks, kThreadsPerBlock, 0, stream>>>(params, static_cast<uint32_t>(total));
    }
    else
    {
        multilevelRoIAlignKernel<T, int64_t><<<blocks, kThreadsPerBlock, 0, stream>>>(params, total);
    }
    return cudaGetLastError();
}

template cudaError_t launchMultilevelRoIAlignTyped<float>(MultilevelRoIAlignParams const&, cudaStream_t) noexcept;
template cudaError_t launchMultilevelRoIAlignTyped<__half>(MultilevelRoIAlignParams const&, cudaStream_t) noexcept;

cudaError_t launchMultilevelRoIAlign(
    MultilevelRoIAlignParams const& params, FeatureType type, cudaStream_t stream) noexcept
{
    switch (type)
    {
    case FeatureType::kFLOAT32: return launchMultilevelRoIAlignTyped<float>(params, stream);
    case FeatureType::kFLOAT16: return launchMultilevelRoIAlignTyped<__half>(params, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace mrcnn_edge
