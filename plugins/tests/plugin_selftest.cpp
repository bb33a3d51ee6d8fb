// CPU self-test of the MultilevelRoIAlign plugin class, without TensorRT's library or a GPU.
//
// Links the plugin's objects directly and plays TensorRT's part through the public interfaces:
// getCreators(), createPlugin() with good and bad attributes, the serialisation round trip, the
// build-phase checks (data types, shapes, formats, configurePlugin) and the runtime ones
// (onShapeChange, enqueue with zero ROIs, which must be a no-op, and with inconsistent shapes,
// which must be reported through the execution context's error recorder).
//
// getOutputShapes needs an IExprBuilder, which only TensorRT implements; the stand-in below wraps
// TensorRT's internal apiv::VExprBuilder interface, unchanged from 10.3 to 11.x. Test code only.
//
// Prints one line per failed check and exits with the number of failures. With --fields it prints
// instead what the creator advertises (getFieldNames: "field NAME TYPE LENGTH", TYPE the
// PluginFieldType number) and the values of a plugin created with no field ("default NAME V..."),
// which tests/plugins/test_attributes.py holds against mrcnn_edge.contract.PLUGIN_ATTRIBUTES.
//
// With --gpu it runs enqueue on a GPU instead (plugin_selftest_gpu.cu); only the build that nvcc
// compiles and links with MRE_SELFTEST_GPU defined has that mode (_testbuild.gpu_selftest_executable).
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "selftest_support.h"

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

#if defined(MRE_SELFTEST_GPU)
//! The --gpu mode (plugin_selftest_gpu.cu): 0 every case passed, 1 one failed, kExitNoGpu no GPU.
int runGpuSelftest(nvinfer1::IPluginCreatorV3One* creator);
#endif

using namespace nvinfer1;
using mre_selftest::desc;
using mre_selftest::FakeResourceContext;
using mre_selftest::Fields;
using mre_selftest::RecordingErrorRecorder;

namespace
{

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL: %s\n", what.c_str());
    }
}

// ---- stand-ins for what TensorRT provides ---------------------------------------------------

class FakeDimImpl : public apiv::VDimensionExpr
{
public:
    FakeDimImpl(bool isConst, int64_t value)
        : mConst(isConst)
        , mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mConst;
    }
    int64_t getConstantValue() const override
    {
        return mConst ? mValue : -1;
    }
    bool isSizeTensor() const override
    {
        return false;
    }

private:
    bool mConst;
    int64_t mValue;
};

class FakeDim : public IDimensionExpr
{
public:
    FakeDim(bool isConst, int64_t value)
        : mFake(isConst, value)
    {
        mImpl = &mFake;
    }

private:
    FakeDimImpl mFake;
};

class FakeBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        mDims.push_back(std::make_unique<FakeDim>(true, value));
        return mDims.back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        mDims.push_back(std::make_unique<FakeDim>(false, -1));
        return mDims.back().get();
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return nullptr;
    }
    IDimensionExpr const* dim(bool isConst, int64_t value)
    {
        mDims.push_back(std::make_unique<FakeDim>(isConst, value));
        return mDims.back().get();
    }

private:
    std::vector<std::unique_ptr<FakeDim>> mDims;
};

class FakeBuilder : public IExprBuilder
{
public:
    FakeBuilder()
    {
        mImpl = &mFake;
    }
    FakeBuilderImpl& impl()
    {
        return mFake;
    }

private:
    FakeBuilderImpl mFake;
};

// ---- helpers --------------------------------------------------------------------------------

// I/O of a 4-level node on an 800x1344 canvas: rois [B, R, 4], P2..P5 [B, C, H/s, W/s].
std::vector<PluginTensorDesc> io(int64_t batch, int64_t rois, int64_t channels, DataType featureType,
    int32_t levels = 4, int64_t lastChannels = -2, DataType lastType = DataType::kFLOAT)
{
    std::vector<PluginTensorDesc> v;
    v.push_back(desc({batch, rois, 4}, DataType::kFLOAT));
    for (int32_t l = 0; l < levels; ++l)
    {
        int64_t const stride = int64_t{4} << l;
        bool const last = l == levels - 1;
        int64_t const c = last && lastChannels != -2 ? lastChannels : channels;
        DataType const t = last && lastType != DataType::kFLOAT ? lastType : featureType;
        v.push_back(desc({batch, c, 800 / stride, 1344 / stride}, t));
    }
    v.push_back(desc({batch, rois, channels, 7, 7}, featureType));
    return v;
}

IPluginV3* create(IPluginCreatorV3One* creator, Fields const& f, TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    PluginFieldCollection const fc = f.collection();
    return creator->createPlugin("roi_pool", &fc, phase);
}

//! --fields: the creator's advertised fields and a default plugin's values, one line each.
int printFields(IPluginCreatorV3One* creator)
{
    PluginFieldCollection const* names = creator->getFieldNames();
    for (int32_t i = 0; names != nullptr && i < names->nbFields; ++i)
    {
        PluginField const& f = names->fields[i];
        std::printf("field %s %d %d\n", f.name, static_cast<int>(f.type), static_cast<int>(f.length));
    }
    PluginFieldCollection const empty{0, nullptr};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("defaults", &empty, TensorRTPhase::kBUILD));
    if (!plugin)
    {
        return 1;
    }
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* values = runtime->getFieldsToSerialize();
    for (int32_t i = 0; values != nullptr && i < values->nbFields; ++i)
    {
        PluginField const& f = values->fields[i];
        std::printf("default %s", f.name);
        for (int32_t k = 0; k < f.length; ++k)
        {
            if (f.type == PluginFieldType::kINT32)
            {
                std::printf(" %d", static_cast<int32_t const*>(f.data)[k]);
            }
            else if (f.type == PluginFieldType::kFLOAT32)
            {
                std::printf(" %.9g", static_cast<double>(static_cast<float const*>(f.data)[k]));
            }
            else
            {
                std::printf(" ?");
            }
        }
        std::printf("\n");
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    int32_t nbCreators = -1;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    if (argc > 1 && std::strcmp(argv[1], "--fields") == 0)
    {
        return nbCreators == 1 ? printFields(static_cast<IPluginCreatorV3One*>(creators[0])) : 1;
    }
    if (argc > 1 && std::strcmp(argv[1], "--gpu") == 0)
    {
#if defined(MRE_SELFTEST_GPU)
        return nbCreators == 1 ? runGpuSelftest(static_cast<IPluginCreatorV3One*>(creators[0])) : 1;
#else
        std::printf("this build has no --gpu mode: build it with nvcc (_testbuild.gpu_selftest_executable)\n");
        return 2;
#endif
    }
    check(nbCreators == 1 && creators != nullptr && creators[0] != nullptr, "getCreators returns one creator");
    if (gFailures)
    {
        return gFailures;
    }
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
        "creator is an IPluginCreatorV3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "MultilevelRoIAlign") == 0, "plugin name");
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, "plugin version");
    check(std::strcmp(creator->getPluginNamespace(), "mrcnn_edge") == 0, "plugin namespace");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && names->nbFields == 7, "seven advertised fields");

    // ---- attributes as the ONNX parser passes them (INT -> INT32, FLOAT(S) -> FLOAT32) -----------
    int32_t const outH = 14;
    int32_t const outW = 14;
    int32_t const sampling = 0;
    int32_t const aligned = 1;
    float const scales[4] = {0.25F, 0.125F, 0.0625F, 0.03125F};
    float const canonicalScale = 224.0F;
    int32_t const canonicalLevel = 4;
    char const version[] = "1";
    Fields good;
    good.list = {
        PluginField("output_height", &outH, PluginFieldType::kINT32, 1),
        PluginField("output_width", &outW, PluginFieldType::kINT32, 1),
        PluginField("sampling_ratio", &sampling, PluginFieldType::kINT32, 1),
        PluginField("aligned", &aligned, PluginFieldType::kINT32, 1),
        PluginField("spatial_scales", scales, PluginFieldType::kFLOAT32, 4),
        PluginField("canonical_scale", &canonicalScale, PluginFieldType::kFLOAT32, 1),
        PluginField("canonical_level", &canonicalLevel, PluginFieldType::kINT32, 1),
        PluginField("plugin_version", version, PluginFieldType::kCHAR, 1),
    };
    std::unique_ptr<IPluginV3> plugin(create(creator, good));
    check(plugin != nullptr, "createPlugin with every attribute");
    std::unique_ptr<IPluginV3> defaults(create(creator, Fields{}));
    check(defaults != nullptr, "createPlugin with no attribute (defaults)");
    if (!plugin || !defaults)
    {
        return gFailures;
    }

    // ---- bad attributes: nullptr, never a crash ----------------------------------------------
    float const badScales[9] = {0.25F, 0.125F, 0.0625F, 0.03125F, 0.1F, 0.1F, 0.1F, 0.1F, 0.1F};
    float const nan = std::nanf("");
    float const floatSeven = 7.0F;
    int32_t const two = 2;
    int32_t const tooMany = 65;
    int32_t const zero = 0;
    int64_t const seven64 = 7;
    double const scales64[4] = {0.25, 0.125, 0.0625, 0.03125};
    char const text[] = "0.25";
    float const notPowerOfTwo[2] = {0.25F, 0.1F};
    struct BadCase
    {
        char const* what;
        PluginField field;
    };
    BadCase const badCases[] = {
        {"unknown attribute", PluginField("output_size", &outH, PluginFieldType::kINT32, 1)},
        {"float for an int", PluginField("output_height", &floatSeven, PluginFieldType::kFLOAT32, 1)},
        {"text for floats", PluginField("spatial_scales", text, PluginFieldType::kCHAR, 4)},
        {"aligned 2", PluginField("aligned", &two, PluginFieldType::kINT32, 1)},
        {"sampling_ratio 65", PluginField("sampling_ratio", &tooMany, PluginFieldType::kINT32, 1)},
        {"output_width 0", PluginField("output_width", &zero, PluginFieldType::kINT32, 1)},
        {"nine levels", PluginField("spatial_scales", badScales, PluginFieldType::kFLOAT32, 9)},
        {"NaN canonical_scale", PluginField("canonical_scale", &nan, PluginFieldType::kFLOAT32, 1)},
        {"two values for an int", PluginField("output_height", scales, PluginFieldType::kINT32, 2)},
        {"no data", PluginField("output_height", nullptr, PluginFieldType::kINT32, 1)},
        {"scale above 1", PluginField("spatial_scales", &floatSeven, PluginFieldType::kFLOAT32, 1)},
        {"a scale that is not a power of two", PluginField("spatial_scales", notPowerOfTwo, PluginFieldType::kFLOAT32, 2)},
    };
    for (BadCase const& c : badCases)
    {
        Fields f;
        f.list = {c.field};
        std::unique_ptr<IPluginV3> p(create(creator, f));
        check(p == nullptr, std::string("createPlugin refuses ") + c.what);
    }
    {
        Fields twice;
        twice.list = {good.list[0], good.list[0]};
        std::unique_ptr<IPluginV3> p(create(creator, twice));
        check(p == nullptr, "createPlugin refuses an attribute given twice");
        Fields wide;
        wide.list = {PluginField("output_height", &seven64, PluginFieldType::kINT64, 1),
            PluginField("spatial_scales", scales64, PluginFieldType::kFLOAT64, 4)};
        std::unique_ptr<IPluginV3> q(create(creator, wide));
        check(q != nullptr, "createPlugin takes INT64 and FLOAT64 fields");
        float const twoAt32[2] = {0.03125F, 0.03125F};
        Fields mobile;
        mobile.list = {PluginField("spatial_scales", twoAt32, PluginFieldType::kFLOAT32, 2)};
        std::unique_ptr<IPluginV3> m(create(creator, mobile));
        check(m != nullptr, "createPlugin takes two maps at 1/32 (MobileNetV3-FPN)");
    }

    // ---- capabilities and serialisation round trip -------------------------------------------
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime
        = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core && build && runtime, "core, build and runtime capabilities");
    if (!core || !build || !runtime)
    {
        return gFailures;
    }
    check(std::strcmp(core->getPluginName(), "MultilevelRoIAlign") == 0
            && std::strcmp(core->getPluginNamespace(), "mrcnn_edge") == 0,
        "plugin object names");
    check(build->getNbOutputs() == 1, "one output");
    PluginFieldCollection const* serial = runtime->getFieldsToSerialize();
    check(serial != nullptr && serial->nbFields == 7, "seven serialised fields");
    if (serial != nullptr)
    {
        std::unique_ptr<IPluginV3> restored(creator->createPlugin("roi_pool", serial, TensorRTPhase::kRUNTIME));
        check(restored != nullptr, "createPlugin from the serialised fields (runtime phase)");
        if (restored)
        {
            auto* r2 = static_cast<IPluginV3OneRuntime*>(
                restored->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            PluginFieldCollection const* again = r2->getFieldsToSerialize();
            bool same = again != nullptr && again->nbFields == serial->nbFields;
            for (int32_t i = 0; same && i < again->nbFields; ++i)
            {
                PluginField const& a = serial->fields[i];
                PluginField const& b = again->fields[i];
                same = std::strcmp(a.name, b.name) == 0 && a.type == b.type && a.length == b.length
                    && std::memcmp(a.data, b.data, static_cast<size_t>(a.length) * 4) == 0;
            }
            check(same, "serialised fields survive a round trip");
        }
    }
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    check(copy != nullptr, "clone");

    // ---- build phase: data types ---------------------------------------------------------------
    DataType out[1] = {DataType::kINT32};
    DataType const halfTypes[5] = {DataType::kFLOAT, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    check(build->getOutputDataTypes(out, 1, halfTypes, 5) == 0 && out[0] == DataType::kHALF,
        "output follows float16 features");
    DataType const mixed[5] = {DataType::kFLOAT, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT};
    check(build->getOutputDataTypes(out, 1, mixed, 5) != 0, "mixed feature dtypes refused");
    DataType const intRois[5] = {DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
    check(build->getOutputDataTypes(out, 1, intRois, 5) != 0, "int32 rois refused");
    check(build->getOutputDataTypes(out, 1, halfTypes, 4) != 0, "3 feature maps for 4 scales refused");

    // ---- build phase: shapes (through the IExprBuilder stand-in) --------------------------------
    {
        FakeBuilder builder;
        FakeBuilderImpl& b = builder.impl();
        auto makeInputs = [&](int64_t lastChannels, int64_t roiLast) {
            std::vector<DimsExprs> in(5);
            in[0].nbDims = 3;
            in[0].d[0] = b.dim(true, 2);
            in[0].d[1] = b.dim(false, -1); // R unknown at build time
            in[0].d[2] = b.dim(true, roiLast);
            for (int32_t l = 0; l < 4; ++l)
            {
                in[1 + l].nbDims = 4;
                in[1 + l].d[0] = b.dim(true, 2);
                in[1 + l].d[1] = b.dim(true, l == 3 ? lastChannels : 256);
                in[1 + l].d[2] = b.dim(true, 200 >> l);
                in[1 + l].d[3] = b.dim(true, 336 >> l);
            }
            return in;
        };
        std::vector<DimsExprs> in = makeInputs(256, 4);
        DimsExprs outShape{};
        check(build->getOutputShapes(in.data(), 5, nullptr, 0, &outShape, 1, builder) == 0, "getOutputShapes");
        check(outShape.nbDims == 5 && outShape.d[0] == in[0].d[0] && outShape.d[1] == in[0].d[1]
                && outShape.d[2]->getConstantValue() == 256 && outShape.d[3]->getConstantValue() == 14
                && outShape.d[4]->getConstantValue() == 14,
            "output shape [B, R, C, 14, 14]");
        std::vector<DimsExprs> badChannels = makeInputs(128, 4);
        check(build->getOutputShapes(badChannels.data(), 5, nullptr, 0, &outShape, 1, builder) != 0,
            "unequal channel counts refused by getOutputShapes");
        std::vector<DimsExprs> badRois = makeInputs(256, 5);
        check(build->getOutputShapes(badRois.data(), 5, nullptr, 0, &outShape, 1, builder) != 0,
            "rois [B, R, 5] refused by getOutputShapes");
        check(build->getOutputShapes(in.data(), 4, nullptr, 0, &outShape, 1, builder) != 0,
            "level count != len(spatial_scales) refused by getOutputShapes");
    }

    // ---- build phase: formats and configurePlugin ------------------------------------------------
    {
        std::vector<PluginTensorDesc> half = io(2, 1000, 256, DataType::kHALF);
        std::vector<DynamicPluginTensorDesc> d;
        for (auto const& t : half)
        {
            DynamicPluginTensorDesc x{};
            x.desc = t;
            x.min = x.opt = x.max = t.dims;
            d.push_back(x);
        }
        bool all = true;
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            all = all && build->supportsFormatCombination(pos, d.data(), 5, 1);
        }
        check(all, "float16 features, float32 rois, linear: supported");
        d[0].desc.type = DataType::kHALF;
        check(!build->supportsFormatCombination(0, d.data(), 5, 1), "float16 rois not supported");
        d[0].desc.type = DataType::kFLOAT;
        d[3].desc.type = DataType::kFLOAT;
        check(!build->supportsFormatCombination(3, d.data(), 5, 1), "mixed feature dtypes not supported");
        d[3].desc.type = DataType::kHALF;
        d[2].desc.format = TensorFormat::kHWC8;
        check(!build->supportsFormatCombination(2, d.data(), 5, 1), "non-linear formats not supported");
        d[2].desc.format = TensorFormat::kLINEAR;
        check(build->configurePlugin(d.data(), 5, d.data() + 5, 1) == 0, "configurePlugin, float16");

        std::vector<PluginTensorDesc> mismatch = io(2, 1000, 256, DataType::kFLOAT, 4, 128);
        std::vector<DynamicPluginTensorDesc> m;
        for (auto const& t : mismatch)
        {
            DynamicPluginTensorDesc x{};
            x.desc = t;
            m.push_back(x);
        }
        check(build->configurePlugin(m.data(), 5, m.data() + 5, 1) != 0, "configurePlugin refuses 256 vs 128 channels");
        check(build->configurePlugin(m.data(), 4, m.data() + 5, 1) != 0, "configurePlugin refuses 3 maps for 4 scales");
    }

    // ---- runtime: error recorder, zero ROIs, inconsistent shapes -------------------------------
    {
        RecordingErrorRecorder recorder;
        FakeResourceContext context(&recorder);
        std::unique_ptr<IPluginV3> attached(runtime->attachToContext(&context));
        check(attached != nullptr, "attachToContext");
        if (attached)
        {
            auto* rt = static_cast<IPluginV3OneRuntime*>(attached->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            std::vector<PluginTensorDesc> zero = io(1, 0, 256, DataType::kFLOAT);
            check(rt->onShapeChange(zero.data(), 5, zero.data() + 5, 1) == 0, "onShapeChange with zero ROIs");
            float dummy = 0.0F;
            void const* inputs[5] = {&dummy, &dummy, &dummy, &dummy, &dummy};
            void* outputs[1] = {&dummy};
            check(rt->enqueue(zero.data(), zero.data() + 5, inputs, outputs, nullptr, nullptr) == 0,
                "enqueue with zero ROIs is a no-op");
            check(recorder.getNbErrors() == 0, "no error reported for zero ROIs");

            std::vector<PluginTensorDesc> bad = io(1, 10, 256, DataType::kFLOAT, 4, 128);
            check(rt->onShapeChange(bad.data(), 5, bad.data() + 5, 1) != 0, "onShapeChange refuses 256 vs 128 channels");
            check(recorder.getNbErrors() >= 1 && std::strstr(recorder.getErrorDesc(0), "channels") != nullptr,
                "the error recorder hears about the channel mismatch");

            std::vector<PluginTensorDesc> negative = io(1, 10, 256, DataType::kFLOAT);
            negative[0].dims.d[1] = -3;
            int32_t const before = recorder.getNbErrors();
            check(rt->enqueue(negative.data(), negative.data() + 5, inputs, outputs, nullptr, nullptr) != 0,
                "enqueue refuses a negative ROI count");
            check(recorder.getNbErrors() == before + 1, "enqueue reports through the error recorder");
        }
    }

    std::printf("%s: %d failure(s)\n", gFailures ? "FAILED" : "ok", gFailures);
    return gFailures;
}
