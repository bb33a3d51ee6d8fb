// MultilevelRoIAlign: IPluginV3 plugin and creator. See multilevel_roi_align_plugin.h and README.md.
//
// Every method TensorRT calls is noexcept and catches everything: problems come back as return
// codes (build phase), through the execution context's error recorder (runtime) and as a log line
// naming the layer and what is wrong.
#include "multilevel_roi_align_plugin.h"

#include <cstring>
#include <exception>
#include <new>
#include <sstream>
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

std::string dimsToString(Dims const& dims)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        s << (i ? ", " : "") << dims.d[i];
    }
    s << "]";
    return s.str();
}

// Integer value of element i of field f; false when f is not an integer field.
bool known(int64_t d)
{
    return d >= 0;
}
} // namespace

// -------------------------------------------------------------------------------------------------
// plugin

MultilevelRoIAlignPlugin::MultilevelRoIAlignPlugin(RoIAlignAttributes attrs, std::string layerName)
    : mAttrs(std::move(attrs))
    , mFirstLevel(levelOfScale(mAttrs.spatialScales.at(0)))
    , mLayerName(std::move(layerName))
{
}

void MultilevelRoIAlignPlugin::report(ErrorCode code, char const* what, char const* detail) const noexcept
{
    try
    {
        std::string message = std::string(kPluginName) + " '" + mLayerName + "': " + (what != nullptr ? what : "");
        if (detail != nullptr)
        {
            message += detail;
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
    try
    {
        auto* copy = new MultilevelRoIAlignPlugin(mAttrs, mLayerName);
        copy->mErrorRecorder = mErrorRecorder;
        return copy;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "clone failed: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kINTERNAL_ERROR, "clone failed");
    }
    return nullptr;
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

std::string MultilevelRoIAlignPlugin::checkIO(PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const
{
    int32_t const levels = numLevels();
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
    Dims const& roiDims = in[0].dims;
    if (roiDims.nbDims != 3 || (known(roiDims.d[2]) && roiDims.d[2] != 4))
    {
        s << "rois must have shape [B, R, 4], got " << dimsToString(roiDims);
        return s.str();
    }
    if (in[0].type != DataType::kFLOAT)
    {
        s << "rois must be float32, got " << dataTypeName(in[0].type);
        return s.str();
    }
    DataType const featureType = in[1].type;
    if (featureType != DataType::kFLOAT && featureType != DataType::kHALF)
    {
        s << "feature maps must be float32 or float16, got " << dataTypeName(featureType);
        return s.str();
    }
    for (int32_t l = 0; l < levels; ++l)
    {
        Dims const& d = in[1 + l].dims;
        if (d.nbDims != 4)
        {
            s << "feature map " << l << " must have shape [B, C, H, W], got " << dimsToString(d);
            return s.str();
        }
        if (in[1 + l].type != featureType)
        {
            s << "feature map " << l << " is " << dataTypeName(in[1 + l].type) << " but feature map 0 is "
              << dataTypeName(featureType) << " (all must have one dtype)";
            return s.str();
        }
        Dims const& d0 = in[1].dims;
        if (known(d.d[1]) && known(d0.d[1]) && d.d[1] != d0.d[1])
        {
            s << "feature map " << l << " has " << d.d[1] << " channels but feature map 0 has " << d0.d[1];
            return s.str();
        }
        if (known(d.d[0]) && known(roiDims.d[0]) && d.d[0] != roiDims.d[0])
        {
            s << "feature map " << l << " has batch " << d.d[0] << " but rois have batch " << roiDims.d[0];
            return s.str();
        }
        for (int32_t k = 0; k < 4; ++k)
        {
            if (known(d.d[k]) && d.d[k] > INT32_MAX)
            {
                s << "feature map " << l << " dimension " << k << " is too large: " << d.d[k];
                return s.str();
            }
        }
    }
    return std::string();
}

int32_t MultilevelRoIAlignPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || nbInputs < 1 || (nbOutputs > 0 && out == nullptr))
        {
            report(ErrorCode::kINVALID_ARGUMENT, "configurePlugin got no tensor descriptions");
            return 1;
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
        if (!problem.empty())
        {
            report(ErrorCode::kINVALID_ARGUMENT, problem.c_str());
            return 1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "internal error: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kUNSPECIFIED_ERROR, "unknown exception in configurePlugin");
    }
    return 1;
}

int32_t MultilevelRoIAlignPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        int32_t const levels = numLevels();
        std::ostringstream s;
        if (nbOutputs != 1 || outputTypes == nullptr)
        {
            s << "has one output (pooled), got " << nbOutputs;
        }
        else if (nbInputs != 1 + levels || inputTypes == nullptr)
        {
            s << "got " << nbInputs - 1 << " feature maps but spatial_scales has " << levels
              << " entries (inputs: rois, then one feature map per scale)";
        }
        else if (inputTypes[0] != DataType::kFLOAT)
        {
            s << "rois must be float32, got " << dataTypeName(inputTypes[0]);
        }
        else if (inputTypes[1] != DataType::kFLOAT && inputTypes[1] != DataType::kHALF)
        {
            s << "feature maps must be float32 or float16, got " << dataTypeName(inputTypes[1]);
        }
        else
        {
            for (int32_t l = 1; l < levels; ++l)
            {
                if (inputTypes[1 + l] != inputTypes[1])
                {
                    s << "feature map " << l << " is " << dataTypeName(inputTypes[1 + l]) << " but feature map 0 is "
                      << dataTypeName(inputTypes[1]) << " (all must have one dtype)";
                    break;
                }
            }
        }
        std::string const problem = s.str();
        if (!problem.empty())
        {
            report(ErrorCode::kINVALID_ARGUMENT, problem.c_str());
            return 1;
        }
        outputTypes[0] = inputTypes[1];
        return 0;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "internal error: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kUNSPECIFIED_ERROR, "unknown exception in getOutputDataTypes");
    }
    return 1;
}

int32_t MultilevelRoIAlignPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    try
    {
        int32_t const levels = numLevels();
        auto constant = [](nvinfer1::IDimensionExpr const* e, int64_t& v) {
            if (e != nullptr && e->isConstant())
            {
                v = e->getConstantValue();
                return true;
            }
            return false;
        };
        std::ostringstream s;
        if (nbOutputs != 1 || outputs == nullptr)
        {
            s << "has one output (pooled), got " << nbOutputs;
        }
        else if (nbInputs != 1 + levels || inputs == nullptr)
        {
            s << "got " << nbInputs - 1 << " feature maps but spatial_scales has " << levels
              << " entries (inputs: rois, then one feature map per scale)";
        }
        else if (inputs[0].nbDims != 3)
        {
            s << "rois must have shape [B, R, 4], got rank " << inputs[0].nbDims;
        }
        else
        {
            int64_t v = 0;
            int64_t c0 = 0;
            int64_t b0 = 0;
            if (constant(inputs[0].d[2], v) && v != 4)
            {
                s << "rois must have shape [B, R, 4], last dimension is " << v;
            }
            bool const roiBatchKnown = constant(inputs[0].d[0], b0);
            for (int32_t l = 0; l < levels && s.tellp() == 0; ++l)
            {
                DimsExprs const& d = inputs[1 + l];
                if (d.nbDims != 4)
                {
                    s << "feature map " << l << " must have shape [B, C, H, W], got rank " << d.nbDims;
                    break;
                }
                if (l == 0)
                {
                    if (!constant(d.d[1], c0))
                    {
                        c0 = -1;
                    }
                }
                else if (c0 >= 0 && constant(d.d[1], v) && v != c0)
                {
                    s << "feature map " << l << " has " << v << " channels but feature map 0 has " << c0;
                }
                if (s.tellp() == 0 && roiBatchKnown && constant(d.d[0], v) && v != b0)
                {
                    s << "feature map " << l << " has batch " << v << " but rois have batch " << b0;
                }
            }
        }
        std::string const problem = s.str();
        if (!problem.empty())
        {
            report(ErrorCode::kINVALID_ARGUMENT, problem.c_str());
            return 1;
        }
        DimsExprs& out = outputs[0];
        out.nbDims = 5;
        out.d[0] = inputs[0].d[0];
        out.d[1] = inputs[0].d[1];
        out.d[2] = inputs[1].d[1];
        out.d[3] = exprBuilder.constant(mAttrs.outputHeight);
        out.d[4] = exprBuilder.constant(mAttrs.outputWidth);
        return 0;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "internal error: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kUNSPECIFIED_ERROR, "unknown exception in getOutputShapes");
    }
    return 1;
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
    try
    {
        std::ostringstream s;
        s << "output " << mAttrs.outputHeight << "x" << mAttrs.outputWidth << ", sampling_ratio "
          << mAttrs.samplingRatio << ", aligned " << mAttrs.aligned << ", " << numLevels()
          << " levels from P" << mFirstLevel << ", canonical " << mAttrs.canonicalScale << " at P"
          << mAttrs.canonicalLevel;
        mMetadata = s.str();
        return mMetadata.c_str();
    }
    catch (...)
    {
        return nullptr;
    }
}

int32_t MultilevelRoIAlignPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || nbInputs < 1 || out == nullptr)
        {
            report(ErrorCode::kINVALID_ARGUMENT, "onShapeChange got no tensor descriptions");
            return 1;
        }
        std::string const problem = checkIO(in, nbInputs, nbOutputs);
        if (!problem.empty())
        {
            report(ErrorCode::kINVALID_ARGUMENT, problem.c_str());
            return 1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "internal error: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kUNSPECIFIED_ERROR, "unknown exception in onShapeChange");
    }
    return 1;
}

int32_t MultilevelRoIAlignPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        int32_t const levels = numLevels();
        MultilevelRoIAlignParams p{};
        Dims const& roiDims = inputDesc[0].dims;
        Dims const& featureDims = inputDesc[1].dims;
        int64_t const sizes[3] = {roiDims.d[0], roiDims.d[1], featureDims.d[1]};
        for (int64_t v : sizes)
        {
            if (v < 0 || v > INT32_MAX)
            {
                report(ErrorCode::kINVALID_ARGUMENT, "batch, ROI or channel count out of range");
                return 1;
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
        p.firstLevel = mFirstLevel;
        if (char const* problem = validateParams(p))
        {
            report(ErrorCode::kINVALID_ARGUMENT, problem);
            return 1;
        }
        FeatureType const type = inputDesc[1].type == DataType::kHALF ? FeatureType::kFLOAT16 : FeatureType::kFLOAT32;
        cudaError_t const status = launchMultilevelRoIAlign(p, type, stream);
        if (status != cudaSuccess)
        {
            std::string const detail = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
            report(ErrorCode::kFAILED_EXECUTION, "kernel launch failed: ", detail.c_str());
            return 1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "internal error: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kUNSPECIFIED_ERROR, "unknown exception in enqueue");
    }
    return 1;
}

IPluginV3* MultilevelRoIAlignPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    try
    {
        auto* copy = new MultilevelRoIAlignPlugin(mAttrs, mLayerName);
        copy->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return copy;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "attachToContext failed: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kINTERNAL_ERROR, "attachToContext failed");
    }
    return nullptr;
}

PluginFieldCollection const* MultilevelRoIAlignPlugin::getFieldsToSerialize() noexcept
{
    try
    {
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
        return &mSerialCollection;
    }
    catch (std::exception const& e)
    {
        report(ErrorCode::kINTERNAL_ERROR, "serialization failed: ", e.what());
    }
    catch (...)
    {
        report(ErrorCode::kINTERNAL_ERROR, "serialization failed");
    }
    return nullptr;
}

// -------------------------------------------------------------------------------------------------
// creator

MultilevelRoIAlignCreator::MultilevelRoIAlignCreator() noexcept = default;

IPluginV3* MultilevelRoIAlignCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "";
        RoIAlignAttributes attrs;
        std::string const problem = parseAttributes(fc, attrs);
        if (!problem.empty())
        {
            std::string const message = std::string(kPluginName) + " '" + layer + "': " + problem;
            logMessage(ILogger::Severity::kERROR, message.c_str());
            return nullptr;
        }
        return new MultilevelRoIAlignPlugin(std::move(attrs), layer);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, "MultilevelRoIAlign: createPlugin failed (exception)");
        logMessage(ILogger::Severity::kERROR, e.what());
    }
    catch (...)
    {
        logMessage(ILogger::Severity::kERROR, "MultilevelRoIAlign: createPlugin failed");
    }
    return nullptr;
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
