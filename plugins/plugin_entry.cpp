// The entry points of libmrcnn_edge_plugins.so: what TensorRT documents for a plugin library that
// IPluginRegistry::loadLibrary() loads (trt.get_plugin_registry().load_library, trtexec
// --dynamicPlugins), and nothing that acts at load.
//
// * getCreators(): the creators for loadLibrary() to register.
// * setLoggerFinder(): the logger the plugin logs through (loadLibrary hands it over).
// * Two diagnostics of ours: the TensorRT version of the headers the library was compiled with,
//   which mrcnn-edge compares with the installed TensorRT before loading it, and a description.
//
// Registration when merely dlopen'ed (Triton's plugins=, DeepStream's custom-lib-path, LD_PRELOAD,
// trtexec --staticPlugins) is the job of the second library, libmrcnn_edge_plugins_autoreg.so
// (plugin_autoreg.cpp), so that under loadLibrary this library registers nothing by itself and
// always reports its creator: registering from inside TensorRT's own dlopen and then reporting no
// creator is not documented behaviour (plugins/README.md, "Loading").
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include "multilevel_roi_align_plugin.h"

#if defined(_WIN32)
#define MRE_PLUGIN_EXPORT extern "C" __declspec(dllexport)
#else
#define MRE_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace
{

mrcnn_edge::MultilevelRoIAlignCreator& creator() noexcept
{
    // A function-local static: built on first use, thread-safe, and the constructor cannot throw.
    static mrcnn_edge::MultilevelRoIAlignCreator sCreator;
    return sCreator;
}

} // namespace

MRE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&creator()};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

MRE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mrcnn_edge::setPluginLoggerFinder(finder);
}

//! major * 10000 + minor * 100 + patch of the TensorRT headers this library was built with.
MRE_PLUGIN_EXPORT int32_t mrcnnEdgePluginTensorRTVersion()
{
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

//! "MultilevelRoIAlign/1@mrcnn_edge": what this library's creator is, for diagnostics.
MRE_PLUGIN_EXPORT char const* mrcnnEdgePluginDescription()
{
    return "MultilevelRoIAlign/1@mrcnn_edge";
}
