// MultilevelRoIAlign: IPluginV3 plugin and creator. See multilevel_roi_align_plugin.h and README.md.
//
// Every method TensorRT calls is noexcept and catches everything, in one place (guarded() /
// catchAll()): problems come back as return codes (build phase), through the execution context's
// error recorder (runtime) and as a log line naming the layer and what is wrong. The I/O checks of
// every phase go through one checker, checkInputs().
#include "multilevel_roi_align_plugin.h"

#include <cstring>
#include <exception>
#include <new>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "multilevel_roi_align_kernel.h"

namespace mrcnn_edge
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::ErrorCode;
using nvinfer1::IExprBuilder;
using nvinfer1::ILogger;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

std::string dataTypeName(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT64: return "int64";
    default: return "data type " + std::to_string(static_cast<int32_t>(type));
    }
}

bool known(int64_t d)
{
    return d >= 0;
}

std::string factsToString(TensorFacts const& t)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < t.rank; ++i)
    {
        s << (i ? ", " : "") << t.dims[i];
    }
    s << "]";
    return s.str();
}

TensorFacts factsOf(Dims const& dims, DataType type)
{
    TensorFacts t;
    t.rank = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        t.dims[i] = dims.d[i];
    }
    t.typeKnown = true;
    t.type = type;
    return t;
}

TensorFacts factsOf(DimsExprs const& dims)
{
    TensorFacts t;
    t.rank = dims.nbDims;
    for (int32_t i = 0; i < dims.nbDims && i < Dims::MAX_DIMS; ++i)
    {
        nvinfer1::IDimensionExpr const* e = dims.d[i];
        t.dims[i] = e != nullptr && e->isConstant() ? e->getConstantValue() : -1;
    }
    return t;
}

TensorFacts factsOf(DataType type)
{
    TensorFacts t;
    t.typeKnown = true;
    t.type = type;
    return t;
}

TensorFacts factsOf(PluginTensorDesc const& desc)
{
    return factsOf(desc.dims, desc.type);
}

//! What is known of each of n inputs (descriptors, shape expressions or data types).
template <typename Input>
std::vector<TensorFacts> factsOfEach(Input const* inputs, int32_t n)
{
    std::vector<TensorFacts> facts;
    for (int32_t i = 0; i < n; ++i)
    {
        facts.push_back(factsOf(inputs[i]));
    }
    return facts;
}
} // namespace

// -------------------------------------------------------------------------------------------------
// plugin

MultilevelRoIAlignPlugin::MultilevelRoIAlignPlugin(RoIAlignAttributes attrs, std::string layerName)
    : mAttrs(std::move(attrs))
    , mLayerName(std::move(layerName))
{
    int32_t const levels = numLevels();
    if (levels < 1 || levels > kMaxLevels
        || fpnLevelRange(mAttrs.spatialScales.data(), levels, mLevelMin, mLevelMax) != nullptr)
    {
        throw std::invalid_argument("spatial_scales did not pass parseAttributes()");
    }
}

void MultilevelRoIAlignPlugin::report(ErrorCode code, char const* what, char const* detail) const noexcept
{
    try
    {
        std::string message = std::string(kPluginName) + " '" + mLayerName + "': " + (what != nullptr ? what : "");
        if (detail != nullptr)
        {
            message += std::string(what != nullptr && *what != '\0' ? " failed: " : "") + detail;
        }
        if (mErrorRecorder != nullptr)
        {
            mErrorRecorder->reportError(code, message.c_str());
        }
        logMessage(ILogger::Severity::kERROR, message.c_str());
    }
    catch (...)
    {
        logMessage(ILogger::Severity::kERROR, what != nullptr ? what : "MultilevelRoIAlign: error");
    }
}

int32_t MultilevelRoIAlignPlugin::verdict(std::string const& problem) const noexcept
{
    if (problem.empty())
    {
        return 0;
    }
    report(ErrorCode::kINVALID_ARGUMENT, problem.c_str());
    return 1;
}

IPluginCapability* MultilevelRoIAlignPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

IPluginV3* MultilevelRoIAlignPlugin::clone() noexcept
{
    return guarded("clone", static_cast<IPluginV3*>(nullptr), [&]() -> IPluginV3* {
        auto* copy = new MultilevelRoIAlignPlugin(mAttrs, mLayerName);
        copy->mErrorRecorder = mErrorRecorder;
        return copy;
    });
}

char const* MultilevelRoIAlignPlugin::getPluginName() const noexcept
{
    return kPluginName;
}

char const* MultilevelRoIAlignPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* MultilevelRoIAlignPlugin::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

std::string MultilevelRoIAlignPlugin::checkInputs(std::vector<TensorFacts> const& in, int32_t nbOutputs) const
{
    int32_t const levels = numLevels();
    int32_t const nbInputs = static_cast<int32_t>(in.size());
    std::ostringstream s;
    if (nbOutputs != 1)
    {
        s << "has one output (pooled), got " << nbOutputs;
        return s.str();
    }
    if (nbInputs != 1 + levels)
    {
        s << "got " << nbInputs - 1 << " feature maps but spatial_scales has " << levels
          << " entries (inputs: rois, then one feature map per scale)";
        return s.str();
    }
    TensorFacts const& rois = in[0];
    if (rois.rank >= 0 && (rois.rank != 3 || (known(rois.dims[2]) && rois.dims[2] != 4)))
    {
        s << "rois must have shape [B, R, 4], got " << factsToString(rois);
        return s.str();
    }
    if (rois.typeKnown && rois.type != DataType::kFLOAT)
    {
        s << "rois must be float32, got " << dataTypeName(rois.type);
        return s.str();
    }
    TensorFacts const& first = in[1];
    if (first.typeKnown && first.type != DataType::kFLOAT && first.type != DataType::kHALF)
    {
        s << "feature maps must be float32 or float16, got " << dataTypeName(first.type);
        return s.str();
    }
    for (int32_t l = 0; l < levels; ++l)
    {
        TensorFacts const& d = in[1 + l];
        if (d.rank >= 0 && d.rank != 4)
        {
            s << "feature map " << l << " must have shape [B, C, H, W], got " << factsToString(d);
            return s.str();
        }
        if (d.typeKnown && first.typeKnown && d.type != first.type)
        {
            s << "feature map " << l << " is " << dataTypeName(d.type) << " but feature map 0 is "
              << dataTypeName(first.type) << " (all must have one dtype)";
            return s.str();
        }
        if (d.rank != 4 || first.rank != 4)
        {
            continue; // dtypes only
        }
        if (known(d.dims[1]) && known(first.dims[1]) && d.dims[1] != first.dims[1])
        {
            s << "feature map " << l << " has " << d.dims[1] << " channels but feature map 0 has " << first.dims[1];
            return s.str();
        }
        if (rois.rank == 3 && known(d.dims[0]) && known(rois.dims[0]) && d.dims[0] != rois.dims[0])
        {
            s << "feature map " << l << " has batch " << d.dims[0] << " but rois have batch " << rois.dims[0];
            return s.str();
        }
        for (int32_t k = 0; k < 4; ++k)
        {
            if (known(d.dims[k]) && d.dims[k] > INT32_MAX)
            {
                s << "feature map " << l << " dimension " << k << " is too large: " << d.dims[k];
                return s.str();
            }
        }
    }
    return std::string();
}

std::string MultilevelRoIAlignPlugin::checkIO(PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const
{
    return checkInputs(factsOfEach(in, nbInputs), nbOutputs);
}

int32_t MultilevelRoIAlignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded("configurePlugin", int32_t{1}, [&]() {
        if (in == nullptr || nbInputs < 1 || (nbOutputs > 0 && out == nullptr))
        {
            return verdict("configurePlugin got no tensor descriptions");
        }
        std::vector<PluginTensorDesc> descs;
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            descs.push_back(in[i].desc);
        }
        std::string problem = checkIO(descs.data(), nbInputs, nbOutputs);
        if (problem.empty() && out[0].desc.type != in[1].desc.type)
        {
            problem = "the output must have the feature maps' dtype";
        }
        return verdict(problem);
    });
}

int32_t MultilevelRoIAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return guarded("getOutputDataTypes", int32_t{1}, [&]() {
        if (outputTypes == nullptr || inputTypes == nullptr || nbInputs < 2)
        {
            return verdict("getOutputDataTypes got no data types");
        }
        int32_t const status = verdict(checkInputs(factsOfEach(inputTypes, nbInputs), nbOutputs));
        if (status == 0)
        {
            outputTypes[0] = inputTypes[1];
        }
        return status;
    });
}

int32_t MultilevelRoIAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    return guarded("getOutputShapes", int32_t{1}, [&]() {
        if (inputs == nullptr || outputs == nullptr || nbInputs < 2)
        {
            return verdict("getOutputShapes got no input shapes");
        }
        int32_t const status = verdict(checkInputs(factsOfEach(inputs, nbInputs), nbOutputs));
        if (status != 0)
        {
            return status;
        }
        DimsExprs& out = outputs[0];
        out.nbDims = 5;
        out.d[0] = inputs[0].d[0];
        out.d[1] = inputs[0].d[1];
        out.d[2] = inputs[1].d[1];
        out.d[3] = exprBuilder.constant(mAttrs.outputHeight);
        out.d[4] = exprBuilder.constant(mAttrs.outputWidth);
        return 0;
    });
}

bool MultilevelRoIAlignPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != 1 + numLevels() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return d.type == DataType::kFLOAT;
    }
    if (pos == 1)
    {
        return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
    }
    return d.type == inOut[1].desc.type; // remaining feature maps and the output follow feature map 0
}

int32_t MultilevelRoIAlignPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t MultilevelRoIAlignPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* MultilevelRoIAlignPlugin::getMetadataString() noexcept
{
    return guarded("getMetadataString", static_cast<char const*>(nullptr), [&]() {
        std::ostringstream s;
        s << "output " << mAttrs.outputHeight << "x" << mAttrs.outputWidth << ", sampling_ratio "
          << mAttrs.samplingRatio << ", aligned " << mAttrs.aligned << ", " << numLevels() << " maps, levels P"
          << mLevelMin << "..P" << mLevelMax << ", canonical " << mAttrs.canonicalScale << " at P"
          << mAttrs.canonicalLevel;
        mMetadata = s.str();
        return mMetadata.c_str();
    });
}

int32_t MultilevelRoIAlignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return guarded("onShapeChange", int32_t{1}, [&]() {
        if (in == nullptr || nbInputs < 1 || out == nullptr)
        {
            return verdict("onShapeChange got no tensor descriptions");
        }
        return verdict(checkIO(in, nbInputs, nbOutputs));
    });
}

int32_t MultilevelRoIAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    return guarded("enqueue", int32_t{1}, [&]() {
        int32_t const levels = numLevels();
        MultilevelRoIAlignParams p{};
        Dims const& roiDims = inputDesc[0].dims;
        Dims const& featureDims = inputDesc[1].dims;
        int64_t const sizes[3] = {roiDims.d[0], roiDims.d[1], featureDims.d[1]};
        for (int64_t v : sizes)
        {
            if (v < 0 || v > INT32_MAX)
            {
                return verdict("batch, ROI or channel count out of range");
            }
        }
        p.rois = static_cast<float const*>(inputs[0]);
        p.output = outputs[0];
        p.batch = static_cast<int32_t>(sizes[0]);
        p.numRois = static_cast<int32_t>(sizes[1]);
        p.channels = static_cast<int32_t>(sizes[2]);
        p.numLevels = levels;
        for (int32_t l = 0; l < levels; ++l)
        {
            Dims const& d = inputDesc[1 + l].dims;
            p.features[l] = inputs[1 + l];
            p.heights[l] = static_cast<int32_t>(d.d[2]);
            p.widths[l] = static_cast<int32_t>(d.d[3]);
            p.spatialScales[l] = mAttrs.spatialScales[l];
        }
        p.outputHeight = mAttrs.outputHeight;
        p.outputWidth = mAttrs.outputWidth;
        p.samplingRatio = mAttrs.samplingRatio;
        p.aligned = mAttrs.aligned;
        p.canonicalScale = mAttrs.canonicalScale;
        p.canonicalLevel = mAttrs.canonicalLevel;
        p.levelMin = mLevelMin;
        p.levelMax = mLevelMax;
        if (char const* problem = validateParams(p))
        {
            return verdict(problem);
        }
        FeatureType const type = inputDesc[1].type == DataType::kHALF ? FeatureType::kFLOAT16 : FeatureType::kFLOAT32;
        cudaError_t const status = launchMultilevelRoIAlign(p, type, stream);
        if (status != cudaSuccess)
        {
            std::string const detail = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
            report(ErrorCode::kFAILED_EXECUTION, "kernel launch", detail.c_str());
            return 1;
        }
        return 0;
    });
}

IPluginV3* MultilevelRoIAlignPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    return guarded("attachToContext", static_cast<IPluginV3*>(nullptr), [&]() -> IPluginV3* {
        auto* copy = new MultilevelRoIAlignPlugin(mAttrs, mLayerName);
        copy->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return copy;
    });
}

PluginFieldCollection const* MultilevelRoIAlignPlugin::getFieldsToSerialize() noexcept
{
    return guarded("getFieldsToSerialize", static_cast<PluginFieldCollection const*>(nullptr), [&]() {
        mSerialFields.clear();
        mSerialFields.emplace_back("output_height", &mAttrs.outputHeight, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("output_width", &mAttrs.outputWidth, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("sampling_ratio", &mAttrs.samplingRatio, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("aligned", &mAttrs.aligned, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("spatial_scales", mAttrs.spatialScales.data(), PluginFieldType::kFLOAT32,
            static_cast<int32_t>(mAttrs.spatialScales.size()));
        mSerialFields.emplace_back("canonical_scale", &mAttrs.canonicalScale, PluginFieldType::kFLOAT32, 1);
        mSerialFields.emplace_back("canonical_level", &mAttrs.canonicalLevel, PluginFieldType::kINT32, 1);
        mSerialCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialCollection.fields = mSerialFields.data();
        return static_cast<PluginFieldCollection const*>(&mSerialCollection);
    });
}

// -------------------------------------------------------------------------------------------------
// creator

MultilevelRoIAlignCreator::MultilevelRoIAlignCreator() noexcept = default;

IPluginV3* MultilevelRoIAlignCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    std::string layer;
    auto onError = [&layer](char const* why) noexcept {
        try
        {
            std::string const message = std::string(kPluginName) + " '" + layer + "': " + why;
            logMessage(ILogger::Severity::kERROR, message.c_str());
        }
        catch (...)
        {
            logMessage(ILogger::Severity::kERROR, why);
        }
    };
    return catchAll(static_cast<IPluginV3*>(nullptr),
        [&]() -> IPluginV3* {
            layer = name != nullptr ? name : "";
            RoIAlignAttributes attrs;
            std::string const problem = parseAttributes(fc, attrs);
            if (!problem.empty())
            {
                onError(problem.c_str());
                return nullptr;
            }
            return new MultilevelRoIAlignPlugin(std::move(attrs), layer);
        },
        onError);
}

PluginFieldCollection const* MultilevelRoIAlignCreator::getFieldNames() noexcept
{
    return advertisedFields();
}

char const* MultilevelRoIAlignCreator::getPluginName() const noexcept
{
    return kPluginName;
}

char const* MultilevelRoIAlignCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* MultilevelRoIAlignCreator::getPluginNamespace() const noexcept
{
    return kPluginNamespace;
}

} // namespace mrcnn_edge
