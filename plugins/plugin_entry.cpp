// How TensorRT finds the plugin in libmrcnn_edge_plugins.so; plugins/README.md, "Loading", has the
// table of loaders.
//
// * getCreators() and setLoggerFinder(): what IPluginRegistry::loadLibrary (trtexec
//   --dynamicPlugins, trt.get_plugin_registry().load_library) looks up after its dlopen.
// * A static registrar that registers the creator with TensorRT's plugin registry when the library
//   is merely dlopen'ed (Triton, DeepStream's custom-lib-path, LD_PRELOAD, trtexec --staticPlugins,
//   ctypes.CDLL), as REGISTER_TENSORRT_PLUGIN would, but without linking libnvinfer: it looks
//   TensorRT up in the process instead.
// * Two entry points of ours: the TensorRT version of the headers the library was compiled with,
//   which mrcnn-edge compares with the installed TensorRT before loading it, and a description.
//
// The two paths do not double: loadLibrary() "will fail and return nullptr if any of the plugins
// are already registered" (IPluginRegistry::loadLibrary, NvInferRuntimeCommon.h), and its dlopen
// runs the registrar first. So once the registrar has registered the creator, getCreators()
// reports no creator: loadLibrary() succeeds and the registry holds the creator once.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

#include "multilevel_roi_align_plugin.h"

#if defined(_WIN32)
#define MRE_PLUGIN_EXPORT extern "C" __declspec(dllexport)
#else
#define MRE_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#define MRE_STRINGIFY_(x) #x
#define MRE_STRINGIFY(x) MRE_STRINGIFY_(x)

namespace
{

//! True once this copy of the library registered its creator itself (at most once per process:
//! the registrar is one static object, constructed once per load of the file).
std::atomic<bool> gSelfRegistered{false};

mrcnn_edge::MultilevelRoIAlignCreator& creator() noexcept
{
    // A function-local static: built on first use, thread-safe, and the constructor cannot throw.
    static mrcnn_edge::MultilevelRoIAlignCreator sCreator;
    return sCreator;
}

#if !defined(_WIN32)
using GetPluginRegistry = nvinfer1::IPluginRegistry* (*) ();

//! This library's file was named in LD_PRELOAD.
bool preloaded() noexcept
{
    char const* preload = std::getenv("LD_PRELOAD");
    Dl_info self{};
    if (preload == nullptr || dladdr(reinterpret_cast<void*>(&preloaded), &self) == 0 || self.dli_fname == nullptr)
    {
        return false;
    }
    char const* slash = std::strrchr(self.dli_fname, '/');
    return std::strstr(preload, slash != nullptr ? slash + 1 : self.dli_fname) != nullptr;
}

//! TensorRT's getPluginRegistry() if TensorRT is in this process, else nullptr.
GetPluginRegistry findPluginRegistry() noexcept
{
    // 1. libnvinfer linked into the program or loaded RTLD_GLOBAL (trtexec, Triton's TensorRT
    //    backend, DeepStream's nvinfer).
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    if (symbol == nullptr)
    {
        // 2. loaded RTLD_LOCAL, as Python's tensorrt package does: found by its soname. The handle
        //    is kept: libnvinfer must outlive the creator it now holds.
        char const* soname = "libnvinfer.so." MRE_STRINGIFY(NV_TENSORRT_MAJOR);
        void* handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD);
        // 3. LD_PRELOAD runs this before the program has loaded TensorRT: load it by the soname the
        //    program will load (what linking libnvinfer, as NVIDIA's plugins do, would have done).
        //    Nowhere else does this library load TensorRT itself.
        if (handle == nullptr && preloaded())
        {
            handle = dlopen(soname, RTLD_LAZY);
        }
        symbol = handle != nullptr ? dlsym(handle, "getPluginRegistry") : nullptr;
    }
    return reinterpret_cast<GetPluginRegistry>(symbol);
}
#endif

//! Registers the creator at load; see the file comment. Never throws, never aborts a load.
struct SelfRegistrar
{
    SelfRegistrar() noexcept
    {
#if !defined(_WIN32)
        GetPluginRegistry getRegistry = findPluginRegistry();
        nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
        if (registry == nullptr)
        {
            return; // no TensorRT in the process yet: loadLibrary() will find getCreators()
        }
        // false: already registered (another copy of this library, or a loadLibrary() before us);
        // loading twice is not an error.
        if (registry->registerCreator(creator(), mrcnn_edge::kPluginNamespace))
        {
            gSelfRegistered.store(true);
        }
#endif
    }
};

SelfRegistrar const gSelfRegistrar;

} // namespace

MRE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&creator()};
    // Already in the registry through the registrar: hand loadLibrary() nothing to register twice.
    nbCreators = gSelfRegistered.load() ? 0 : static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
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

//! 1 when the library registered its creator itself at load, else 0 (diagnostics and tests).
MRE_PLUGIN_EXPORT int32_t mrcnnEdgePluginSelfRegistered()
{
    return gSelfRegistered.load() ? 1 : 0;
}
