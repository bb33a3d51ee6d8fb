// What the plugin self-tests (plugin_selftest.cpp, and its --gpu mode in plugin_selftest_gpu.cu)
// share: the execution context's error recorder and resource context TensorRT would hand the plugin,
// and short ways to write plugin fields and tensor descriptions. Test code only.
#ifndef MRCNN_EDGE_SELFTEST_SUPPORT_H
#define MRCNN_EDGE_SELFTEST_SUPPORT_H

#include <NvInferRuntime.h>

#include <cstddef>
#include <string>
#include <vector>

namespace mre_selftest
{

//! An application's IErrorRecorder that keeps every report (the application implements this
//! interface, not TensorRT). NvInferRuntimeBase.h, reportError: "The desc C-string data is only valid
//! during the call to reportError ... The implementation must not store the desc pointer", hence the
//! copies.
class RecordingErrorRecorder : public nvinfer1::IErrorRecorder
{
public:
    int32_t getNbErrors() const noexcept override
    {
        return static_cast<int32_t>(mErrors.size());
    }
    nvinfer1::ErrorCode getErrorCode(int32_t i) const noexcept override
    {
        return i >= 0 && i < getNbErrors() ? mCodes[static_cast<size_t>(i)] : nvinfer1::ErrorCode::kUNSPECIFIED_ERROR;
    }
    ErrorDesc getErrorDesc(int32_t i) const noexcept override
    {
        return i >= 0 && i < getNbErrors() ? mErrors[static_cast<size_t>(i)].c_str() : "";
    }
    bool hasOverflowed() const noexcept override
    {
        return false;
    }
    void clear() noexcept override
    {
        mErrors.clear();
        mCodes.clear();
    }
    //! "return True if the error is determined to be fatal": every error the plugin reports is.
    bool reportError(nvinfer1::ErrorCode code, ErrorDesc desc) noexcept override
    {
        mCodes.push_back(code);
        mErrors.emplace_back(desc != nullptr ? desc : "");
        return true;
    }
    RefCount incRefCount() noexcept override
    {
        return 1;
    }
    RefCount decRefCount() noexcept override
    {
        return 0;
    }
    //! Every report, "; "-separated (for a failure line).
    std::string joined() const
    {
        std::string all;
        for (std::string const& e : mErrors)
        {
            all += (all.empty() ? "" : "; ") + e;
        }
        return all;
    }

private:
    std::vector<std::string> mErrors;
    std::vector<nvinfer1::ErrorCode> mCodes;
};

//! The per-context resources TensorRT hands attachToContext(). NvInferRuntime.h: "There is no public
//! way to construct an IPluginResourceContext. It appears as an argument to
//! IPluginV3OneRuntime::attachToContext()": TensorRT builds it; here it holds only the recorder.
class FakeResourceContext : public nvinfer1::IPluginResourceContext
{
public:
    explicit FakeResourceContext(nvinfer1::IErrorRecorder* recorder)
        : mRecorder(recorder)
    {
    }
    //! No allocator: the plugin allocates nothing per context, and a plugin that tried would fail here.
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return mRecorder;
    }

private:
    nvinfer1::IErrorRecorder* mRecorder;
};

//! Plugin fields as the ONNX parser hands them to createPlugin().
struct Fields
{
    std::vector<nvinfer1::PluginField> list;
    nvinfer1::PluginFieldCollection collection() const
    {
        nvinfer1::PluginFieldCollection fc;
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return fc;
    }
};

inline nvinfer1::Dims dims(std::vector<int64_t> const& values)
{
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    for (size_t i = 0; i < values.size(); ++i)
    {
        d.d[i] = values[i];
    }
    return d;
}

//! A linear (NCHW) tensor description; `scale` is -1 as for any tensor that is not INT8.
inline nvinfer1::PluginTensorDesc desc(std::vector<int64_t> const& shape, nvinfer1::DataType type)
{
    nvinfer1::PluginTensorDesc t{};
    t.dims = dims(shape);
    t.type = type;
    t.format = nvinfer1::TensorFormat::kLINEAR;
    t.scale = -1.0F;
    return t;
}

} // namespace mre_selftest

#endif // MRCNN_EDGE_SELFTEST_SUPPORT_H
