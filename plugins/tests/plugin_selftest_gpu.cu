// The --gpu mode of the plugin self-test: MultilevelRoIAlign's enqueue() on a real GPU.
//
// TensorRT's part is played through the public interfaces, in the order NvInferRuntime.h (10.3 to
// 11.x, v_1_0 interfaces unchanged) describes. Build phase: createPlugin(kBUILD),
// supportsFormatCombination, getOutputDataTypes, configurePlugin with DynamicPluginTensorDesc whose
// "desc.dims has -1 in place of any runtime dimension" (the ROI count) and min/opt/max of the
// profile, then getWorkspaceSize ("called after the plugin is configured"). Run time: createPlugin
// (kRUNTIME) from getFieldsToSerialize(), attachToContext, setTactic(0) ("If no custom tactics were
// advertised, this will have a value of 0"), onShapeChange with the actual shapes, and enqueue() on a
// cudaStream_t with cudaMalloc'ed inputs and output and a workspace of the size the plugin asked for
// (nullptr when it asks for none).
//
// Each case is copied back and compared with the plugin's CPU build (roi_align_host.cpp, linked in:
// the same roi_align_math.h functions the kernel runs) within a stated tolerance; the output is
// filled with NaN bytes first, so an element the kernel never wrote fails. Zero ROIs must succeed
// and write nothing. The kernel launcher's own status is checked once more directly.
//
// One line per case ("ok   ..." / "FAIL ..."), then a summary. Exit status: 0 every case passed,
// 1 one failed, kExitNoGpu (77) no usable CUDA device (one line saying why). Test code only.
#include <NvInferRuntime.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "multilevel_roi_align_kernel.h"
#include "roi_align_math.h"
#include "selftest_support.h"

// The plugin's CPU build (roi_align_host.cpp): output float32 [B, R, C, oh, ow] whatever the feature
// type; featureType 1 takes float16 features as their bits.
extern "C" int32_t mre_host_multilevel_roi_align(mrcnn_edge::MultilevelRoIAlignParams const* params,
    int32_t featureType, float* output, char const** error);
extern "C" int32_t mre_host_roi_levels(mrcnn_edge::MultilevelRoIAlignParams const* params, int32_t* levels);

using namespace nvinfer1;

namespace
{

//! Exit status for "no GPU": automake's "skipped", which tests/plugins/test_compile.py turns into a skip.
constexpr int kExitNoGpu = 77;

// Tolerances, |gpu - cpu| <= atol + rtol * |cpu|. float32: the kernel and the CPU build run the same
// float operations, up to FMA contraction in the kernel, so features of O(1) agree to ~1e-7.
// float16: both read the same half inputs exactly and accumulate in float32; the kernel then rounds
// once to half, at most half an ulp: 2^-11 = 4.9e-4 relative. rtol 1e-3 is twice that.
constexpr float kAtol = 1e-5F;
constexpr float kRtolFloat32 = 1e-5F;
constexpr float kRtolFloat16 = 1e-3F;

struct CudaFree
{
    void operator()(void* p) const noexcept
    {
        cudaFree(p);
    }
};
using DevicePtr = std::unique_ptr<void, CudaFree>;

struct StreamDestroy
{
    void operator()(cudaStream_t s) const noexcept
    {
        cudaStreamDestroy(s);
    }
};
using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDestroy>;

//! Why a CUDA call failed, or "" when it did not.
std::string cudaProblem(cudaError_t status, char const* what)
{
    if (status == cudaSuccess)
    {
        return std::string();
    }
    return std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
}

//! `bytes` of device memory (at least 256: cudaMalloc of 0 bytes is not asked for), filled with
//! `fill`; `problem` says why not.
DevicePtr deviceBuffer(size_t bytes, int fill, std::string& problem)
{
    void* p = nullptr;
    size_t const size = bytes < 256 ? 256 : bytes;
    problem = cudaProblem(cudaMalloc(&p, size), "cudaMalloc");
    DevicePtr owned(problem.empty() ? p : nullptr);
    if (problem.empty())
    {
        problem = cudaProblem(cudaMemset(p, fill, size), "cudaMemset");
    }
    return owned;
}

DevicePtr upload(void const* host, size_t bytes, std::string& problem)
{
    DevicePtr d = deviceBuffer(bytes, 0, problem);
    if (problem.empty() && bytes > 0)
    {
        problem = cudaProblem(cudaMemcpy(d.get(), host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the GPU");
    }
    return d;
}

uint16_t halfBits(float v)
{
    return static_cast<__half_raw>(__float2half_rn(v)).x;
}

float halfValue(uint16_t bits)
{
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
}

//! Deterministic uniform numbers (a 32-bit LCG), so that a failure reproduces.
class Random
{
public:
    float uniform(float lo, float hi)
    {
        mState = mState * 1664525U + 1013904223U;
        return lo + (hi - lo) * static_cast<float>(mState >> 8) / 16777216.0F;
    }

private:
    uint32_t mState{12345U};
};

struct GpuCase
{
    char const* name;
    std::vector<float> scales;
    int32_t outputHeight;
    int32_t outputWidth;
    int32_t samplingRatio;
    int32_t aligned;
    float canonicalScale;
    int32_t canonicalLevel;
    int32_t batch;
    int32_t numRois;
    int32_t channels;
    int32_t canvasHeight; //!< multiples of 32: every map is canvas * scale exactly
    int32_t canvasWidth;
};

//! rois [B, R, 4] on the canvas: the odd boxes DESIGN.md calls normal input first (empty, negative
//! area, outside the image, across the corner), then boxes sized for each FPN level in turn.
std::vector<float> makeRois(GpuCase const& c, int32_t levelMin, int32_t levelMax, Random& random)
{
    float const w = static_cast<float>(c.canvasWidth);
    float const h = static_cast<float>(c.canvasHeight);
    float const odd[4][4] = {{40, 30, 40, 30}, {60, 20, 50, 50}, {w + 10, h + 10, w + 80, h + 90}, {-20, -15, 40, 30}};
    std::vector<float> rois;
    for (int32_t b = 0; b < c.batch; ++b)
    {
        for (int32_t r = 0; r < c.numRois; ++r)
        {
            if (r < 4)
            {
                rois.insert(rois.end(), odd[r], odd[r] + 4);
                continue;
            }
            int32_t const level = levelMin + (r - 4) % (levelMax - levelMin + 1);
            // sqrt(w*h) = base * f lands on `level` (clamped at both ends, hence the wider ranges there)
            float const base = c.canonicalScale * std::ldexp(1.0F, level - c.canonicalLevel);
            // (one level only, as MobileNetV3-FPN: any size, so sizes that keep most bins on the canvas)
            float const hi = levelMin == levelMax ? 0.6F : level == levelMax ? 3.0F : 1.8F;
            float const f = random.uniform(level == levelMin ? 0.15F : 1.2F, hi);
            float const aspect = std::sqrt(random.uniform(0.5F, 2.0F));
            float const bw = base * f * aspect;
            float const bh = base * f / aspect;
            float const cx = random.uniform(0.0F, w);
            float const cy = random.uniform(0.0F, h);
            float const box[4] = {cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2};
            rois.insert(rois.end(), box, box + 4);
        }
    }
    return rois;
}

//! Pool one case through the plugin on the GPU and compare with the CPU build. Returns "" and fills
//! `summary`, or says what failed.
std::string runCase(IPluginCreatorV3One* creator, GpuCase const& c, DataType type, std::string& summary,
    float& maxAbsErr)
{
    bool const half = type == DataType::kHALF;
    int32_t const levels = static_cast<int32_t>(c.scales.size());
    int32_t levelMin = 0;
    int32_t levelMax = 0;
    if (char const* problem = mrcnn_edge::fpnLevelRange(c.scales.data(), levels, levelMin, levelMax))
    {
        return std::string("bad case: ") + problem;
    }

    // ---- build phase -------------------------------------------------------------------------
    mre_selftest::Fields fields;
    fields.list = {
        PluginField("output_height", &c.outputHeight, PluginFieldType::kINT32, 1),
        PluginField("output_width", &c.outputWidth, PluginFieldType::kINT32, 1),
        PluginField("sampling_ratio", &c.samplingRatio, PluginFieldType::kINT32, 1),
        PluginField("aligned", &c.aligned, PluginFieldType::kINT32, 1),
        PluginField("spatial_scales", c.scales.data(), PluginFieldType::kFLOAT32, levels),
        PluginField("canonical_scale", &c.canonicalScale, PluginFieldType::kFLOAT32, 1),
        PluginField("canonical_level", &c.canonicalLevel, PluginFieldType::kINT32, 1),
    };
    PluginFieldCollection const fc = fields.collection();
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("gpu_selftest", &fc, TensorRTPhase::kBUILD));
    if (!plugin)
    {
        return "createPlugin (build phase) returned nullptr";
    }
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (build == nullptr || runtime == nullptr)
    {
        return "no build or runtime capability";
    }
    int64_t const b = c.batch;
    int64_t const r = c.numRois;
    int64_t const ch = c.channels;
    std::vector<std::vector<int64_t>> shapes{{b, r, 4}};
    for (float s : c.scales)
    {
        shapes.push_back({b, ch, static_cast<int64_t>(c.canvasHeight * s), static_cast<int64_t>(c.canvasWidth * s)});
    }
    shapes.push_back({b, r, ch, c.outputHeight, c.outputWidth});
    int32_t const nbInputs = levels + 1;
    std::vector<PluginTensorDesc> actual;
    std::vector<DynamicPluginTensorDesc> dynamic;
    for (int32_t i = 0; i <= nbInputs; ++i)
    {
        actual.push_back(mre_selftest::desc(shapes[i], i == 0 ? DataType::kFLOAT : type));
        DynamicPluginTensorDesc d{};
        d.desc = actual.back();
        d.min = d.opt = d.max = d.desc.dims;
        if (i == 0 || i == nbInputs)
        {
            d.desc.dims.d[1] = -1; // the ROI count is a runtime dimension, 0 .. R in the profile
            d.min.d[1] = 0;
        }
        dynamic.push_back(d);
    }
    for (int32_t pos = 0; pos <= nbInputs; ++pos)
    {
        if (!build->supportsFormatCombination(pos, dynamic.data(), nbInputs, 1))
        {
            return "supportsFormatCombination refuses position " + std::to_string(pos);
        }
    }
    std::vector<DataType> inputTypes(static_cast<size_t>(nbInputs), type);
    inputTypes[0] = DataType::kFLOAT;
    DataType outputType = DataType::kINT32;
    if (build->getOutputDataTypes(&outputType, 1, inputTypes.data(), nbInputs) != 0 || outputType != type)
    {
        return "getOutputDataTypes does not give the features' dtype";
    }
    if (build->configurePlugin(dynamic.data(), nbInputs, dynamic.data() + nbInputs, 1) != 0)
    {
        return "configurePlugin failed";
    }
    size_t const workspaceSize = build->getWorkspaceSize(dynamic.data(), nbInputs, dynamic.data() + nbInputs, 1);

    // ---- run time: the plugin TensorRT rebuilds from the engine, attached to a context ----------
    PluginFieldCollection const* serial = runtime->getFieldsToSerialize();
    std::unique_ptr<IPluginV3> restored(
        serial != nullptr ? creator->createPlugin("gpu_selftest", serial, TensorRTPhase::kRUNTIME) : nullptr);
    if (!restored)
    {
        return "createPlugin (runtime phase) from the serialised fields returned nullptr";
    }
    mre_selftest::RecordingErrorRecorder recorder;
    mre_selftest::FakeResourceContext context(&recorder);
    auto* restoredRuntime
        = static_cast<IPluginV3OneRuntime*>(restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::unique_ptr<IPluginV3> attached(restoredRuntime->attachToContext(&context));
    if (!attached)
    {
        return "attachToContext returned nullptr";
    }
    auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (rt->setTactic(0) != 0 || rt->onShapeChange(actual.data(), nbInputs, actual.data() + nbInputs, 1) != 0)
    {
        return "setTactic(0) or onShapeChange failed: " + recorder.joined();
    }

    // ---- data, on the host and on the GPU -------------------------------------------------------
    Random random;
    std::vector<float> rois = makeRois(c, levelMin, levelMax, random);
    std::vector<std::vector<float>> features32(static_cast<size_t>(levels));
    std::vector<std::vector<uint16_t>> features16(static_cast<size_t>(levels));
    std::string problem;
    std::vector<DevicePtr> owned;
    owned.push_back(upload(rois.data(), rois.size() * sizeof(float), problem));
    for (int32_t l = 0; l < levels && problem.empty(); ++l)
    {
        std::vector<int64_t> const& s = shapes[static_cast<size_t>(1 + l)];
        size_t const n = static_cast<size_t>(s[0] * s[1] * s[2] * s[3]);
        for (size_t i = 0; i < n; ++i)
        {
            float const v = random.uniform(-1.0F, 1.0F);
            features32[l].push_back(v);
            features16[l].push_back(halfBits(v));
        }
        owned.push_back(half ? upload(features16[l].data(), n * 2, problem) : upload(features32[l].data(), n * 4, problem));
    }
    size_t const outCount = static_cast<size_t>(b * r * ch * c.outputHeight * c.outputWidth);
    size_t const elementSize = half ? 2 : 4;
    size_t const outBytes = outCount * elementSize;
    DevicePtr output;
    if (problem.empty())
    {
        output = deviceBuffer(outBytes, 0xFF, problem); // NaN in float32 and float16 alike
    }
    DevicePtr workspace;
    if (problem.empty() && workspaceSize > 0)
    {
        workspace = deviceBuffer(workspaceSize, 0, problem);
    }
    cudaStream_t rawStream = nullptr;
    if (problem.empty())
    {
        problem = cudaProblem(cudaStreamCreateWithFlags(&rawStream, cudaStreamNonBlocking), "cudaStreamCreate");
    }
    StreamPtr stream(problem.empty() ? rawStream : nullptr);
    if (!problem.empty())
    {
        return problem;
    }

    // ---- enqueue, wait, copy back -----------------------------------------------------------------
    std::vector<void const*> inputs;
    for (DevicePtr const& d : owned)
    {
        inputs.push_back(d.get());
    }
    void* const outputs[1] = {output.get()};
    int32_t const status = rt->enqueue(actual.data(), actual.data() + nbInputs, inputs.data(), outputs,
        workspace.get(), stream.get());
    std::string const synced = cudaProblem(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
    std::string const last = cudaProblem(cudaGetLastError(), "cudaGetLastError");
    if (status != 0 || recorder.getNbErrors() != 0)
    {
        return "enqueue returned " + std::to_string(status) + ": " + recorder.joined();
    }
    if (!synced.empty() || !last.empty())
    {
        return synced + last;
    }
    size_t const copied = outBytes > 0 ? outBytes : 256; // zero ROIs: the whole (256-byte) guard
    std::vector<unsigned char> gpu(copied);
    problem = cudaProblem(cudaMemcpy(gpu.data(), output.get(), copied, cudaMemcpyDeviceToHost), "cudaMemcpy back");
    if (!problem.empty())
    {
        return problem;
    }
    std::string const shape = "pooled [" + std::to_string(b) + ", " + std::to_string(r) + ", " + std::to_string(ch)
        + ", " + std::to_string(c.outputHeight) + ", " + std::to_string(c.outputWidth) + "]";
    if (outCount == 0)
    {
        for (unsigned char byte : gpu)
        {
            if (byte != 0xFF)
            {
                return "zero ROIs: enqueue wrote into the output buffer";
            }
        }
        summary = shape + ": enqueue returned 0, nothing written, no error reported, workspace "
            + std::to_string(workspaceSize) + " B";
        return std::string();
    }

    // ---- the CPU build on the same inputs --------------------------------------------------------
    mrcnn_edge::MultilevelRoIAlignParams p{};
    p.rois = rois.data();
    p.batch = c.batch;
    p.numRois = c.numRois;
    p.channels = c.channels;
    p.numLevels = levels;
    for (int32_t l = 0; l < levels; ++l)
    {
        p.features[l] = half ? static_cast<void const*>(features16[l].data()) : features32[l].data();
        p.heights[l] = static_cast<int32_t>(shapes[static_cast<size_t>(1 + l)][2]);
        p.widths[l] = static_cast<int32_t>(shapes[static_cast<size_t>(1 + l)][3]);
        p.spatialScales[l] = c.scales[static_cast<size_t>(l)];
    }
    p.outputHeight = c.outputHeight;
    p.outputWidth = c.outputWidth;
    p.samplingRatio = c.samplingRatio;
    p.aligned = c.aligned;
    p.canonicalScale = c.canonicalScale;
    p.canonicalLevel = c.canonicalLevel;
    p.levelMin = levelMin;
    p.levelMax = levelMax;
    std::vector<float> expected(outCount);
    p.output = expected.data(); // validateParams wants it; the host build writes to its own argument
    char const* hostError = nullptr;
    if (mre_host_multilevel_roi_align(&p, half ? 1 : 0, expected.data(), &hostError) != 0)
    {
        return std::string("CPU build refused the case: ") + (hostError != nullptr ? hostError : "?");
    }
    // the case must reach every map it can (else it tests less than its name says)
    std::vector<int32_t> roiLevels(static_cast<size_t>(b * r));
    mre_host_roi_levels(&p, roiLevels.data());
    int32_t const reachable = std::min(levels, levelMax - levelMin + 1);
    std::vector<bool> hit(static_cast<size_t>(levels), false);
    for (int32_t level : roiLevels)
    {
        if (level >= 0)
        {
            hit[static_cast<size_t>(level)] = true;
        }
    }
    int32_t const mapsHit = static_cast<int32_t>(std::count(hit.begin(), hit.end(), true));
    if (mapsHit != reachable)
    {
        return "bad case: its ROIs reach " + std::to_string(mapsHit) + " of " + std::to_string(reachable) + " maps";
    }

    float const rtol = half ? kRtolFloat16 : kRtolFloat32;
    auto gpuValue = [&](size_t i) {
        if (half)
        {
            uint16_t bits;
            std::memcpy(&bits, gpu.data() + 2 * i, 2);
            return halfValue(bits);
        }
        float value;
        std::memcpy(&value, gpu.data() + 4 * i, 4);
        return value;
    };
    size_t bad = 0;
    size_t firstBad = 0;
    size_t nonzero = 0;
    maxAbsErr = 0.0F;
    for (size_t i = 0; i < outCount; ++i)
    {
        float const err = std::fabs(gpuValue(i) - expected[i]);
        if (!(err <= kAtol + rtol * std::fabs(expected[i]))) // NaN (never written) fails too
        {
            firstBad = bad++ == 0 ? i : firstBad;
        }
        maxAbsErr = err > maxAbsErr || err != err ? err : maxAbsErr;
        nonzero += expected[i] != 0.0F;
    }
    char line[320];
    if (bad > 0)
    {
        float const firstValue = gpuValue(firstBad);
        std::snprintf(line, sizeof(line), "%s: %zu of %zu elements differ from the CPU build by more than %g + %g * |cpu| "
            "(first: element %zu, gpu %.9g, cpu %.9g)", shape.c_str(), bad, outCount, static_cast<double>(kAtol),
            static_cast<double>(rtol), firstBad, static_cast<double>(firstValue), static_cast<double>(expected[firstBad]));
        return line;
    }
    if (nonzero * 2 < outCount)
    {
        return shape + ": most of the expected output is zero, the case compares too little";
    }
    std::snprintf(line, sizeof(line), "%s from %d/%d maps, max abs err %.3g (allowed %g + %g * |cpu|), workspace %zu B",
        shape.c_str(), mapsHit, levels, static_cast<double>(maxAbsErr), static_cast<double>(kAtol),
        static_cast<double>(rtol), workspaceSize);
    summary = line;
    return std::string();
}

//! The kernel launcher's own return status, outside the plugin: cudaSuccess for a valid launch and
//! for zero ROIs, cudaErrorInvalidValue (before any launch) for a level range that is not the
//! scales' own, and no error left behind for the next CUDA call.
std::string checkLauncherStatus(std::string& summary)
{
    std::string problem;
    float const rois[8] = {4, 4, 60, 40, 0, 0, 16, 16};
    DevicePtr droi = upload(rois, sizeof(rois), problem);
    std::vector<float> plane(32 * 32, 0.5F);
    DevicePtr feature = problem.empty() ? upload(plane.data(), plane.size() * 4, problem) : DevicePtr();
    DevicePtr out = problem.empty() ? deviceBuffer(2 * 7 * 7 * 4, 0, problem) : DevicePtr();
    if (!problem.empty())
    {
        return problem;
    }
    mrcnn_edge::MultilevelRoIAlignParams p{};
    p.rois = static_cast<float const*>(droi.get());
    p.features[0] = feature.get();
    p.output = out.get();
    p.batch = 1;
    p.numRois = 2;
    p.channels = 1;
    p.numLevels = 1;
    p.heights[0] = p.widths[0] = 32;
    p.spatialScales[0] = 0.25F;
    p.outputHeight = p.outputWidth = 7;
    p.samplingRatio = 2;
    p.canonicalScale = 224.0F;
    p.canonicalLevel = 4;
    p.levelMin = p.levelMax = 2;
    cudaError_t const valid = mrcnn_edge::launchMultilevelRoIAlign(p, mrcnn_edge::FeatureType::kFLOAT32, nullptr);
    std::string const synced = cudaProblem(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    mrcnn_edge::MultilevelRoIAlignParams wrongRange = p;
    wrongRange.levelMax = 3;
    cudaError_t const refused
        = mrcnn_edge::launchMultilevelRoIAlign(wrongRange, mrcnn_edge::FeatureType::kFLOAT16, nullptr);
    mrcnn_edge::MultilevelRoIAlignParams none = p;
    none.numRois = 0;
    none.rois = nullptr;
    none.output = nullptr;
    cudaError_t const empty = mrcnn_edge::launchMultilevelRoIAlign(none, mrcnn_edge::FeatureType::kFLOAT16, nullptr);
    cudaError_t const after = cudaGetLastError();
    if (valid != cudaSuccess || !synced.empty())
    {
        return cudaProblem(valid, "a valid launch") + synced;
    }
    if (refused != cudaErrorInvalidValue)
    {
        return std::string("a wrong level range gave ") + cudaGetErrorName(refused) + ", not cudaErrorInvalidValue";
    }
    if (empty != cudaSuccess || after != cudaSuccess)
    {
        return cudaProblem(empty, "zero ROIs") + cudaProblem(after, "cudaGetLastError afterwards");
    }
    summary = "cudaSuccess for a launch and for zero ROIs, cudaErrorInvalidValue for a wrong level range, "
              "no error left behind";
    return std::string();
}

} // namespace

int runGpuSelftest(IPluginCreatorV3One* creator)
{
    // cudaGetDeviceCount: "If there is no such device then cudaGetDeviceCount() will return
    // cudaErrorNoDevice. If no driver can be loaded ... cudaErrorInsufficientDriver."
    int count = 0;
    cudaError_t const found = cudaGetDeviceCount(&count);
    if (found != cudaSuccess || count < 1)
    {
        std::printf("plugin self-test --gpu: no CUDA device (%s)\n",
            found != cudaSuccess ? cudaGetErrorName(found) : "the driver sees none");
        return kExitNoGpu;
    }
    cudaDeviceProp props{};
    if (cudaGetDeviceProperties(&props, 0) == cudaSuccess)
    {
        std::printf("device 0: %s, sm_%d%d\n", props.name, props.major, props.minor);
    }

    float const fpn[4] = {0.25F, 0.125F, 0.0625F, 0.03125F};
    std::vector<GpuCase> const cases = {
        {"4 maps 1/4..1/32, 7x7, sampling 2, aligned 0 (box head)", {fpn, fpn + 4}, 7, 7, 2, 0, 224.0F, 4, 2, 24, 4,
            512, 640},
        {"3 maps 1/8..1/32, 14x14, adaptive sampling, aligned 1, canonical 112 at P4", {fpn + 1, fpn + 4}, 14, 14, 0,
            1, 112.0F, 4, 1, 16, 3, 256, 320},
        {"2 maps both 1/32 (MobileNetV3-FPN), 7x7, sampling 2", {fpn[3], fpn[3]}, 7, 7, 2, 0, 224.0F, 4, 2, 12, 5, 256,
            320},
        {"zero ROIs, 4 maps", {fpn, fpn + 4}, 7, 7, 2, 0, 224.0F, 4, 2, 0, 4, 128, 160},
    };
    int failed = 0;
    int run = 0;
    for (DataType type : {DataType::kFLOAT, DataType::kHALF})
    {
        char const* typeName = type == DataType::kHALF ? "fp16" : "fp32";
        for (GpuCase const& c : cases)
        {
            std::string summary;
            float maxAbsErr = 0.0F;
            std::string const problem = runCase(creator, c, type, summary, maxAbsErr);
            ++run;
            failed += problem.empty() ? 0 : 1;
            std::printf("%s %s %s: %s\n", problem.empty() ? "ok  " : "FAIL", typeName, c.name,
                problem.empty() ? summary.c_str() : problem.c_str());
        }
    }
    std::string summary;
    std::string const problem = checkLauncherStatus(summary);
    ++run;
    failed += problem.empty() ? 0 : 1;
    std::printf("%s launcher status: %s\n", problem.empty() ? "ok  " : "FAIL",
        problem.empty() ? summary.c_str() : problem.c_str());
    std::printf("gpu: %s, %d of %d case(s) failed\n", failed ? "FAILED" : "ok", failed, run);
    return failed ? 1 : 0;
}
