// TensorRT side of MultilevelRoIAlign: the IPluginV3 plugin and its IPluginCreatorV3One creator.
//
// With multilevel_roi_align_attributes.cpp, plugin_entry.cpp and plugin_autoreg.cpp, the only files that include
// TensorRT. Works with the headers of TensorRT 10.3 and later,
// 11.x included (the IPluginV3One* interfaces did not change between them). The library needs no
// TensorRT library at link time: every TensorRT type used here is an interface TensorRT implements.
#ifndef MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_PLUGIN_H
#define MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_PLUGIN_H

#include <NvInferRuntime.h>

#include <exception>
#include <string>
#include <vector>

#include "roi_align_math.h"

namespace mrcnn_edge
{

constexpr char const* kPluginName = "MultilevelRoIAlign";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "mrcnn_edge";

//! The node's attributes, with DESIGN.md's defaults.
struct RoIAlignAttributes
{
    int32_t outputHeight{7};
    int32_t outputWidth{7};
    int32_t samplingRatio{2};
    int32_t aligned{0};
    std::vector<float> spatialScales{0.25F, 0.125F, 0.0625F, 0.03125F};
    float canonicalScale{224.0F};
    int32_t canonicalLevel{4};
};

//! Read attributes from `fc` by name into `attrs` (fields not given keep their defaults) and
//! check their values. Returns an empty string on success, else the reason (one sentence).
//! Integer fields take INT8/16/32/64; float fields take FLOAT16/32/64 and integers.
std::string parseAttributes(nvinfer1::PluginFieldCollection const* fc, RoIAlignAttributes& attrs);

//! The attributes the creator advertises (the ONNX parser forwards exactly these from a node).
nvinfer1::PluginFieldCollection const* advertisedFields() noexcept;

//! Log through the logger TensorRT handed to setLoggerFinder(), else TensorRT's getLogger(), else to
//! stderr (warnings and errors). Never throws.
void logMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

//! Remember TensorRT's logger finder (called by the exported setLoggerFinder()).
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Run `body` and return its result; on an exception, call `onError(what)` and return `fallback`.
//! The one place where the plugin's noexcept methods catch: no exception crosses into TensorRT.
template <typename Result, typename Body, typename OnError>
Result catchAll(Result fallback, Body&& body, OnError&& onError) noexcept
{
    try
    {
        return body();
    }
    catch (std::exception const& e)
    {
        onError(e.what());
    }
    catch (...)
    {
        onError("unknown exception");
    }
    return fallback;
}

//! What the input checker knows of one input tensor: rank and dims (-1: unknown), dtype if known.
//! Built from DataType arrays, PluginTensorDesc and DimsExprs alike, so one checker serves them all.
struct TensorFacts
{
    int32_t rank{-1};
    int64_t dims[nvinfer1::Dims::MAX_DIMS]{};
    bool typeKnown{false};
    nvinfer1::DataType type{nvinfer1::DataType::kFLOAT};
};

class MultilevelRoIAlignPlugin final : public nvinfer1::IPluginV3,
                                       public nvinfer1::IPluginV3OneCore,
                                       public nvinfer1::IPluginV3OneBuild,
                                       public nvinfer1::IPluginV3OneRuntime
{
public:
    //! `attrs` must have passed parseAttributes() (else std::invalid_argument); `layerName` only
    //! names the layer in messages.
    MultilevelRoIAlignPlugin(RoIAlignAttributes attrs, std::string layerName);
    ~MultilevelRoIAlignPlugin() override = default;

    MultilevelRoIAlignPlugin(MultilevelRoIAlignPlugin const&) = delete;
    MultilevelRoIAlignPlugin& operator=(MultilevelRoIAlignPlugin const&) = delete;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! The one input checker: counts, ranks, dtypes and known dimensions (-1: unknown) of the I/O.
    //! Returns "" when fine, else one sentence.
    std::string checkInputs(std::vector<TensorFacts> const& in, int32_t nbOutputs) const;
    std::string checkIO(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, int32_t nbOutputs) const;
    //! Report `what` + `detail` through the execution context's error recorder when attached, and log.
    void report(nvinfer1::ErrorCode code, char const* what, char const* detail = nullptr) const noexcept;
    //! 0 when `problem` is empty, else report it (kINVALID_ARGUMENT) and return 1.
    int32_t verdict(std::string const& problem) const noexcept;
    //! catchAll() that reports "<method> failed: <exception>" as an internal error.
    template <typename Result, typename Body>
    Result guarded(char const* method, Result fallback, Body&& body) const noexcept
    {
        return catchAll(fallback, body, [this, method](char const* why) noexcept {
            report(nvinfer1::ErrorCode::kINTERNAL_ERROR, method, why);
        });
    }
    int32_t numLevels() const noexcept
    {
        return static_cast<int32_t>(mAttrs.spatialScales.size());
    }

    RoIAlignAttributes mAttrs;
    //! torchvision LevelMapper's k_min, k_max: FPN levels of the first and the last scale.
    int32_t mLevelMin{0};
    int32_t mLevelMax{0};
    std::string mLayerName;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialCollection{};
    std::string mMetadata;
};

class MultilevelRoIAlignCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    MultilevelRoIAlignCreator() noexcept;
    ~MultilevelRoIAlignCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
};

} // namespace mrcnn_edge

#endif // MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_PLUGIN_H
