// Entry points of libmrcnn_edge_plugins.so that TensorRT looks up when it loads the library
// (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, trt.get_plugin_registry().load_library):
// getCreators() and setLoggerFinder(). Plus one of ours: the TensorRT version the library was
// compiled against, which mrcnn-edge compares with the installed TensorRT before loading it.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include "multilevel_roi_align_plugin.h"

#if defined(_WIN32)
#define MRE_PLUGIN_EXPORT extern "C" __declspec(dllexport)
#else
#define MRE_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#endif

MRE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    // A function-local static: built on first use, thread-safe, and the constructor cannot throw.
    static mrcnn_edge::MultilevelRoIAlignCreator sMultilevelRoIAlignCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sMultilevelRoIAlignCreator};
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

//! "MultilevelRoIAlign/1@mrcnn_edge": what this library registers, for diagnostics.
MRE_PLUGIN_EXPORT char const* mrcnnEdgePluginDescription()
{
    return "MultilevelRoIAlign/1@mrcnn_edge";
}
