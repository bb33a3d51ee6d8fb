// Test launcher of the MultilevelRoIAlign CUDA kernel: a C ABI that Python loads with ctypes to
// compare the kernel with torchvision.ops.roi_align on a GPU and to time it with CUDA events.
//
// Built with plain nvcc from this file and plugins/multilevel_roi_align_kernel.cu (no TensorRT):
//   nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -arch=sm_XX -I plugins
//        plugins/tests/roi_align_launcher.cu plugins/multilevel_roi_align_kernel.cu
//        -o libroi_align_launcher.so
// tests/plugins/test_kernel_gpu.py does exactly that (build_launcher) and mirrors RoiAlignLaunch.
//
// The launcher has its own argument struct instead of handing Python the kernel's
// MultilevelRoIAlignParams: the kernel's fields may change (the FPN level rule), the test ABI
// should not. toKernelParams() is the one place that knows the kernel's struct.
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "multilevel_roi_align_kernel.h"

namespace
{

constexpr int32_t kLauncherAbiVersion = 1;
constexpr int32_t kLauncherMaxLevels = 8;

} // namespace

extern "C"
{

//! One launch, as Python fills it (ctypes mirror: tests/plugins/test_kernel_gpu.py, _Launch).
//! Every pointer is a device pointer; `stream` is a cudaStream_t (nullptr: the legacy default).
struct RoiAlignLaunch
{
    float const* rois;                      //!< [B, R, 4] float32, x1, y1, x2, y2 in canvas pixels
    void const* features[kLauncherMaxLevels]; //!< [B, C, H_l, W_l] each, finest first, one dtype
    void* output;                           //!< [B, R, C, outputHeight, outputWidth], features' dtype
    void* stream;
    int32_t batch;
    int32_t numRois;
    int32_t channels;
    int32_t numLevels;
    int32_t heights[kLauncherMaxLevels];
    int32_t widths[kLauncherMaxLevels];
    float spatialScales[kLauncherMaxLevels];
    int32_t outputHeight;
    int32_t outputWidth;
    int32_t samplingRatio;
    int32_t aligned;
    float canonicalScale;
    int32_t canonicalLevel;
    int32_t kMin; //!< torchvision LevelMapper's k_min: -log2(spatialScales[0]) (mrcnn_edge.contract)
    int32_t kMax; //!< and k_max: -log2(spatialScales[numLevels - 1])
    int32_t featureType; //!< 0 float32, 1 float16 (mrcnn_edge::FeatureType)
    int32_t timedRuns;   //!< launches between the two timing events after the first one; 0: no timing
};

} // extern "C"

namespace
{

//! The FPN level rule as the kernel's params hold it: the one place to edit if its fields change.
//! The kernel refuses (cudaErrorInvalidValue) a range that is not its scales' own.
void setLevelRule(mrcnn_edge::MultilevelRoIAlignParams& p, int32_t kMin, int32_t kMax)
{
    p.levelMin = kMin;
    p.levelMax = kMax;
}

mrcnn_edge::MultilevelRoIAlignParams toKernelParams(RoiAlignLaunch const& a)
{
    mrcnn_edge::MultilevelRoIAlignParams p{};
    p.rois = a.rois;
    p.output = a.output;
    p.batch = a.batch;
    p.numRois = a.numRois;
    p.channels = a.channels;
    p.numLevels = a.numLevels;
    for (int32_t l = 0; l < kLauncherMaxLevels; ++l)
    {
        p.features[l] = a.features[l];
        p.heights[l] = a.heights[l];
        p.widths[l] = a.widths[l];
        p.spatialScales[l] = a.spatialScales[l];
    }
    p.outputHeight = a.outputHeight;
    p.outputWidth = a.outputWidth;
    p.samplingRatio = a.samplingRatio;
    p.aligned = a.aligned;
    p.canonicalScale = a.canonicalScale;
    p.canonicalLevel = a.canonicalLevel;
    setLevelRule(p, a.kMin, a.kMax);
    return p;
}

// The launch and its error check, with events destroyed on every path.
cudaError_t launchAndTime(RoiAlignLaunch const& a, float* milliseconds)
{
    static_assert(kLauncherMaxLevels == mrcnn_edge::kMaxLevels, "launcher and kernel disagree on the level count");
    if (a.featureType != 0 && a.featureType != 1)
    {
        return cudaErrorInvalidValue;
    }
    mrcnn_edge::MultilevelRoIAlignParams const p = toKernelParams(a);
    auto const type = static_cast<mrcnn_edge::FeatureType>(a.featureType);
    auto const stream = static_cast<cudaStream_t>(a.stream);

    // The first launch writes the result that Python compares; it also warms the caches and the
    // module load so that the timed launches below measure the kernel alone.
    cudaError_t err = mrcnn_edge::launchMultilevelRoIAlign(p, type, stream);
    if (err != cudaSuccess || a.timedRuns <= 0)
    {
        return err != cudaSuccess ? err : cudaStreamSynchronize(stream);
    }
    cudaEvent_t start = nullptr;
    cudaEvent_t stop = nullptr;
    err = cudaEventCreate(&start);
    if (err == cudaSuccess)
    {
        err = cudaEventCreate(&stop);
    }
    if (err == cudaSuccess)
    {
        err = cudaEventRecord(start, stream);
    }
    // Every launch rewrites the whole output with the same values: the result stays the first one's.
    for (int32_t i = 0; err == cudaSuccess && i < a.timedRuns; ++i)
    {
        err = mrcnn_edge::launchMultilevelRoIAlign(p, type, stream);
    }
    if (err == cudaSuccess)
    {
        err = cudaEventRecord(stop, stream);
    }
    if (err == cudaSuccess)
    {
        err = cudaEventSynchronize(stop);
    }
    float total = 0.0f;
    if (err == cudaSuccess)
    {
        // "Computes the elapsed time between two events (in milliseconds with a resolution of
        // around 0.5 microseconds)": hence several launches between the events.
        err = cudaEventElapsedTime(&total, start, stop);
    }
    if (err == cudaSuccess && milliseconds != nullptr)
    {
        *milliseconds = total / static_cast<float>(a.timedRuns);
    }
    if (stop != nullptr)
    {
        cudaEventDestroy(stop);
    }
    if (start != nullptr)
    {
        cudaEventDestroy(start);
    }
    return err;
}

} // namespace

extern "C"
{

//! Version of this C ABI; Python refuses a library of another version.
__attribute__((visibility("default"))) int32_t roi_align_launcher_abi_version()
{
    return kLauncherAbiVersion;
}

//! sizeof(RoiAlignLaunch), for Python to check its ctypes mirror.
__attribute__((visibility("default"))) int64_t roi_align_launcher_args_size()
{
    return static_cast<int64_t>(sizeof(RoiAlignLaunch));
}

//! Pool with the plugin's kernel, then synchronise the stream. With `timedRuns > 0`, launch that
//! many more times between two CUDA events and write the mean time per launch to `milliseconds`.
//! Returns 0 or a cudaError_t value (roi_align_launcher_error_string names it); never throws.
__attribute__((visibility("default"))) int32_t roi_align_launch(RoiAlignLaunch const* args, float* milliseconds)
{
    if (args == nullptr)
    {
        return static_cast<int32_t>(cudaErrorInvalidValue);
    }
    return static_cast<int32_t>(launchAndTime(*args, milliseconds));
}

//! CUDA's name and sentence for an error code returned above.
__attribute__((visibility("default"))) char const* roi_align_launcher_error_string(int32_t code)
{
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

} // extern "C"
