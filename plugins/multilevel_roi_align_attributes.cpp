// Attributes and logging of MultilevelRoIAlign: the field table the creator advertises, parsing
// and checking fields by name, and the logger (the one setLoggerFinder() handed over, else
// TensorRT's global getLogger()). No CUDA here.
#include "multilevel_roi_align_plugin.h"
#include "tensorrt_in_process.h"

#include <NvInferVersion.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <set>
#include <sstream>
#include <utility>

namespace mrcnn_edge
{

using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;

namespace
{

// ---------------------------------------------------------------------------------------------
// logging

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

// ---------------------------------------------------------------------------------------------
// attribute table

enum class FieldKind
{
    kINT,
    kFLOAT,
    kFLOATS,
};

struct FieldSpec
{
    char const* name;
    FieldKind kind;
};

constexpr FieldSpec kFields[] = {
    {"output_height", FieldKind::kINT},
    {"output_width", FieldKind::kINT},
    {"sampling_ratio", FieldKind::kINT},
    {"aligned", FieldKind::kINT},
    {"spatial_scales", FieldKind::kFLOATS},
    {"canonical_scale", FieldKind::kFLOAT},
    {"canonical_level", FieldKind::kINT},
};

// What the creator advertises (the ONNX parser forwards exactly these attributes of a node).
PluginField const kFieldNames[] = {
    PluginField("output_height", nullptr, PluginFieldType::kINT32, 1),
    PluginField("output_width", nullptr, PluginFieldType::kINT32, 1),
    PluginField("sampling_ratio", nullptr, PluginFieldType::kINT32, 1),
    PluginField("aligned", nullptr, PluginFieldType::kINT32, 1),
    PluginField("spatial_scales", nullptr, PluginFieldType::kFLOAT32, 4),
    PluginField("canonical_scale", nullptr, PluginFieldType::kFLOAT32, 1),
    PluginField("canonical_level", nullptr, PluginFieldType::kINT32, 1),
};

// Attributes of the ONNX node that belong to the parser, not to the plugin; accepted and ignored.
constexpr char const* kParserFields[] = {"plugin_version", "plugin_namespace"};

std::string fieldTypeName(PluginFieldType type)
{
    switch (static_cast<int32_t>(type))
    {
    case 0: return "FLOAT16";
    case 1: return "FLOAT32";
    case 2: return "FLOAT64";
    case 3: return "INT8";
    case 4: return "INT16";
    case 5: return "INT32";
    case 6: return "CHAR";
    case 7: return "DIMS";
    case 8: return "UNKNOWN";
    case 9: return "BF16";
    case 10: return "INT64";
    default: return "type " + std::to_string(static_cast<int32_t>(type));
    }
}

bool readInteger(PluginField const& f, int32_t i, int64_t& value)
{
    switch (f.type)
    {
    case PluginFieldType::kINT8: value = static_cast<int8_t const*>(f.data)[i]; return true;
    case PluginFieldType::kINT16: value = static_cast<int16_t const*>(f.data)[i]; return true;
    case PluginFieldType::kINT32: value = static_cast<int32_t const*>(f.data)[i]; return true;
    case PluginFieldType::kINT64: value = static_cast<int64_t const*>(f.data)[i]; return true;
    default: return false;
    }
}

// Float value of element i of field f (integers widen); false when f is neither.
bool readFloat(PluginField const& f, int32_t i, double& value)
{
    switch (f.type)
    {
    case PluginFieldType::kFLOAT16: value = halfBitsToFloat(static_cast<uint16_t const*>(f.data)[i]); return true;
    case PluginFieldType::kFLOAT32: value = static_cast<float const*>(f.data)[i]; return true;
    case PluginFieldType::kFLOAT64: value = static_cast<double const*>(f.data)[i]; return true;
    default:
    {
        int64_t v = 0;
        if (!readInteger(f, i, v))
        {
            return false;
        }
        value = static_cast<double>(v);
        return true;
    }
    }
}

std::string checkAttributes(RoIAlignAttributes const& a)
{
    std::ostringstream s;
    if (a.outputHeight < 1 || a.outputHeight > 1024 || a.outputWidth < 1 || a.outputWidth > 1024)
    {
        s << "output_height and output_width must be between 1 and 1024, got " << a.outputHeight << " and "
          << a.outputWidth;
    }
    else if (a.samplingRatio > kMaxSamplingRatio)
    {
        s << "sampling_ratio must be <= " << kMaxSamplingRatio << " (<= 0: adaptive), got " << a.samplingRatio;
    }
    else if (a.aligned != 0 && a.aligned != 1)
    {
        s << "aligned must be 0 or 1, got " << a.aligned;
    }
    else if (a.spatialScales.empty() || a.spatialScales.size() > static_cast<size_t>(kMaxLevels))
    {
        s << "spatial_scales must have 1 to " << kMaxLevels << " entries, got " << a.spatialScales.size();
    }
    else if (!(isFiniteFloat(a.canonicalScale) && a.canonicalScale > 0.0F))
    {
        s << "canonical_scale must be a positive finite number, got " << a.canonicalScale;
    }
    else if (a.canonicalLevel < 0 || a.canonicalLevel > 64)
    {
        s << "canonical_level must be between 0 and 64, got " << a.canonicalLevel;
    }
    else
    {
        for (float scale : a.spatialScales)
        {
            int32_t level = 0;
            if (!(isFiniteFloat(scale) && scale > 0.0F && scale <= 1.0F))
            {
                s << "spatial_scales must be in (0, 1] (feature pixels per canvas pixel, e.g. 0.25), got " << scale;
                break;
            }
            if (!fpnLevelOfScale(scale, level))
            {
                // torchvision's LevelMapper takes k_min/k_max as -log2 of the first/last scale
                s << "spatial_scales must be powers of two (1/4, 1/8, ...) as FPN maps are, got " << scale;
                break;
            }
        }
    }
    return s.str();
}
} // namespace

// -------------------------------------------------------------------------------------------------
// logging

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    try
    {
        std::lock_guard<std::mutex> lock(gLoggerMutex);
        if (gLoggerFinder == nullptr)
        {
            gLoggerFinder = finder;
        }
    }
    catch (...)
    {
    }
}

namespace
{
//! TensorRT's getLogger() ("Return the logger object", NvInferRuntime.h of 10.3, 10.16 and 11.1), for
//! when no logger finder was handed over: a creator registered by libmrcnn_edge_plugins_autoreg.so,
//! or a library loaded with dlopen rather than loadLibrary. Only from a TensorRT of the major these
//! headers describe (ILogger is called through its virtual table). nullptr when there is none.
ILogger* tensorrtGlobalLogger() noexcept
{
    using GetLogger = ILogger* (*) ();
    static std::atomic<GetLogger> sGetLogger{nullptr};
    GetLogger getLogger = sGetLogger.load();
    if (getLogger == nullptr)
    {
        // Looked up until found: TensorRT may be loaded after the plugin library.
        TensorRTInProcess const trt = findTensorRT(false);
        if (trt.major != NV_TENSORRT_MAJOR)
        {
            return nullptr;
        }
        getLogger = reinterpret_cast<GetLogger>(tensorrtSymbol(trt, "getLogger"));
        sGetLogger.store(getLogger);
    }
    return getLogger != nullptr ? getLogger() : nullptr;
}
} // namespace

void logMessage(ILogger::Severity severity, char const* message) noexcept
{
    try
    {
        nvinfer1::ILoggerFinder* finder = nullptr;
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            finder = gLoggerFinder;
        }
        ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger == nullptr)
        {
            logger = tensorrtGlobalLogger();
        }
        if (logger != nullptr)
        {
            logger->log(severity, message);
            return;
        }
    }
    catch (...)
    {
    }
    if (severity == ILogger::Severity::kINTERNAL_ERROR || severity == ILogger::Severity::kERROR
        || severity == ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[mrcnn_edge] %s\n", message != nullptr ? message : "(null)");
    }
}

// -------------------------------------------------------------------------------------------------
// attributes

std::string parseAttributes(PluginFieldCollection const* fc, RoIAlignAttributes& attrs)
{
    if (fc == nullptr || fc->nbFields == 0)
    {
        return checkAttributes(attrs);
    }
    if (fc->nbFields < 0 || fc->fields == nullptr)
    {
        return "malformed plugin field collection";
    }
    std::set<std::string> seen;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            return "attribute " + std::to_string(i) + " has no name";
        }
        std::string const name = f.name;
        bool parserField = false;
        for (char const* p : kParserFields)
        {
            parserField = parserField || name == p;
        }
        if (parserField)
        {
            continue;
        }
        FieldSpec const* spec = nullptr;
        for (FieldSpec const& candidate : kFields)
        {
            if (name == candidate.name)
            {
                spec = &candidate;
            }
        }
        if (spec == nullptr)
        {
            return "unknown attribute '" + name
                + "' (known: output_height, output_width, sampling_ratio, aligned, spatial_scales, "
                  "canonical_scale, canonical_level)";
        }
        if (!seen.insert(name).second)
        {
            return "attribute '" + name + "' given twice";
        }
        if (f.data == nullptr || f.length < 1)
        {
            return "attribute '" + name + "' has no value";
        }
        if (spec->kind != FieldKind::kFLOATS && f.length != 1)
        {
            return "attribute '" + name + "' must be a single value, got " + std::to_string(f.length);
        }
        if (spec->kind == FieldKind::kINT)
        {
            int64_t v = 0;
            if (!readInteger(f, 0, v))
            {
                return "attribute '" + name + "' must be an integer, got " + fieldTypeName(f.type);
            }
            if (v < INT32_MIN || v > INT32_MAX)
            {
                return "attribute '" + name + "' is out of the int32 range: " + std::to_string(v);
            }
            auto const v32 = static_cast<int32_t>(v);
            if (name == "output_height")
            {
                attrs.outputHeight = v32;
            }
            else if (name == "output_width")
            {
                attrs.outputWidth = v32;
            }
            else if (name == "sampling_ratio")
            {
                attrs.samplingRatio = v32;
            }
            else if (name == "aligned")
            {
                attrs.aligned = v32;
            }
            else
            {
                attrs.canonicalLevel = v32;
            }
        }
        else
        {
            if (f.length > kMaxLevels)
            {
                return "attribute '" + name + "' has " + std::to_string(f.length) + " values, at most "
                    + std::to_string(kMaxLevels) + " are supported";
            }
            std::vector<float> values;
            for (int32_t k = 0; k < f.length; ++k)
            {
                double v = 0.0;
                if (!readFloat(f, k, v))
                {
                    return "attribute '" + name + "' must be " + (spec->kind == FieldKind::kFLOATS ? "floats" : "a float")
                        + ", got " + fieldTypeName(f.type);
                }
                values.push_back(static_cast<float>(v));
            }
            if (spec->kind == FieldKind::kFLOATS)
            {
                attrs.spatialScales = std::move(values);
            }
            else
            {
                attrs.canonicalScale = values[0];
            }
        }
    }
    return checkAttributes(attrs);
}

PluginFieldCollection const* advertisedFields() noexcept
{
    static PluginFieldCollection const sFields{
        static_cast<int32_t>(sizeof(kFieldNames) / sizeof(kFieldNames[0])), kFieldNames};
    return &sFields;
}

} // namespace mrcnn_edge
