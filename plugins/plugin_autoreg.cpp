// libmrcnn_edge_plugins_autoreg.so: registers MultilevelRoIAlign with TensorRT's plugin registry
// when the library is merely dlopen'ed, for the hosts that load plugins no other way: Triton's
// --backend-config=tensorrt,plugins=, DeepStream's custom-lib-path (the parser library links it),
// LD_PRELOAD, trtexec --staticPlugins, ctypes.CDLL after `import tensorrt`.
//
// It holds no plugin code: it is linked against libmrcnn_edge_plugins.so (found next to it,
// RUNPATH $ORIGIN) and registers the creators that library's getCreators() returns, as
// REGISTER_TENSORRT_PLUGIN would, but without linking libnvinfer: TensorRT is looked up in the
// process (tensorrt_in_process.h).
//
// * Only into a registry of the TensorRT major it was built for: the IPluginRegistry interface
//   differs between 10 and 11 (10.x starts with the deprecated IPluginV2 methods, 11 has none), so a
//   call through the wrong major's table is a call to another function. getInferLibMajorVersion()
//   is asked first; another major gets one stderr line and no registration.
// * Linked -z nodelete: DeepStream dlcloses the parser library (and with it this one) when an
//   nvinfer element is destroyed, while TensorRT's registry keeps the creator pointer. The creator
//   must outlive every dlclose, so this library (and the plugin library it holds) is never unmapped.
// * Once per process, never doubled: registerCreator() "returns false if a plugin creator with the
//   same type is already registered" (IPluginRegistry::registerCreator, NvInferRuntimeCommon.h):
//   a second copy, or a loadLibrary() of the plugin library before, is not an error.
// * Nothing registered and nothing said silently: with no TensorRT in the process (for instance
//   LD_PRELOAD with a pip-only TensorRT, whose libnvinfer lies in site-packages where the dynamic
//   loader does not look) it says so in one stderr line.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

#include "multilevel_roi_align_plugin.h"
#include "tensorrt_in_process.h"

#if defined(_WIN32)
#define MRE_PLUGIN_EXPORT extern "C" __declspec(dllexport)
#else
#define MRE_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))
#endif

// libmrcnn_edge_plugins.so's documented entry point (plugin_entry.cpp); this library links it.
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{

//! What the registrar did at load (mrcnnEdgePluginAutoregStatus()).
enum Status : int32_t
{
    kNotRun = 0,
    kRegistered = 1,
    kAlreadyRegistered = 2,  //!< registerCreator() refused it: the registry holds it already
    kNoTensorRT = -1,        //!< no libnvinfer in the process: nothing registered
    kOtherMajor = -2,        //!< a libnvinfer of another major: nothing registered
    kNoRegistry = -3,        //!< libnvinfer without a plugin registry (getPluginRegistry missing or null)
};

std::atomic<int32_t> gStatus{kNotRun};

constexpr char const* kSelf = "libmrcnn_edge_plugins_autoreg.so";

void say(std::string const& line) noexcept
{
    std::fprintf(stderr, "mrcnn_edge: %s: %s\n", kSelf, line.c_str());
}

#if !defined(_WIN32)
//! This library's own file is one of the entries of LD_PRELOAD (separated by ':' or ' ', ld.so(8)).
bool preloaded() noexcept
{
    char const* preload = std::getenv("LD_PRELOAD");
    Dl_info self{};
    if (preload == nullptr || dladdr(reinterpret_cast<void*>(&preloaded), &self) == 0 || self.dli_fname == nullptr)
    {
        return false;
    }
    char const* slash = std::strrchr(self.dli_fname, '/');
    std::string const mine = slash != nullptr ? slash + 1 : self.dli_fname;
    std::string const all = preload;
    size_t start = 0;
    while (start <= all.size())
    {
        size_t end = all.find_first_of(": ", start);
        std::string entry = all.substr(start, end == std::string::npos ? std::string::npos : end - start);
        size_t cut = entry.rfind('/');
        if ((cut == std::string::npos ? entry : entry.substr(cut + 1)) == mine)
        {
            return true;
        }
        if (end == std::string::npos)
        {
            break;
        }
        start = end + 1;
    }
    return false;
}

int32_t registerAtLoad()
{
    using namespace mrcnn_edge;
    bool const preload = preloaded();
    TensorRTInProcess const trt = findTensorRT(preload);
    if (trt.handle == nullptr)
    {
        if (preload)
        {
            say(std::string("LD_PRELOAD: ") + tensorrtSoname()
                + " is not on the library path (pip's tensorrt keeps it in site-packages/tensorrt_libs, which the "
                  "dynamic loader does not search): MultilevelRoIAlign not registered; add that folder to "
                  "LD_LIBRARY_PATH, or load libmrcnn_edge_plugins.so with IPluginRegistry::loadLibrary");
        }
        else
        {
            say("no TensorRT (libnvinfer) in this process: MultilevelRoIAlign not registered; load TensorRT "
                "first, or load libmrcnn_edge_plugins.so with IPluginRegistry::loadLibrary");
        }
        return kNoTensorRT;
    }
    if (trt.major != NV_TENSORRT_MAJOR)
    {
        std::string const found = trt.major < 0 ? "a libnvinfer that does not say its version"
                                                : "TensorRT " + std::to_string(trt.major);
        say("built for TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + " but this process has " + found + " ("
            + (trt.path != nullptr ? trt.path : "?")
            + "): MultilevelRoIAlign not registered (the plugin registry differs between majors); rebuild it "
              "with 'mrcnn-edge build-plugin' against that TensorRT's headers");
        return kOtherMajor;
    }
    using GetPluginRegistry = nvinfer1::IPluginRegistry* (*) ();
    auto getRegistry = reinterpret_cast<GetPluginRegistry>(tensorrtSymbol(trt, "getPluginRegistry"));
    nvinfer1::IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
    if (registry == nullptr)
    {
        say(std::string(trt.path != nullptr ? trt.path : "libnvinfer")
            + " has no plugin registry: MultilevelRoIAlign not registered");
        return kNoRegistry;
    }
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    bool registered = false;
    for (int32_t i = 0; i < n; ++i)
    {
        // false: already registered (another copy of these libraries, or a loadLibrary() of the
        // plugin library before); loading twice is not an error.
        registered = (creators[i] != nullptr && registry->registerCreator(*creators[i], kPluginNamespace)) || registered;
    }
    return registered ? kRegistered : kAlreadyRegistered;
}
#endif

//! Registers the creator at load; see the file comment. Never throws, never aborts a load.
struct Registrar
{
    Registrar() noexcept
    {
#if !defined(_WIN32)
        try
        {
            gStatus.store(registerAtLoad());
        }
        catch (...)
        {
            gStatus.store(kNoRegistry);
        }
#endif
    }
};

Registrar const gRegistrar;

} // namespace

//! What happened at load: 1 registered, 2 already registered by someone else, -1 no TensorRT in the
//! process, -2 a TensorRT of another major, -3 a TensorRT without a plugin registry (diagnostics and
//! tests).
MRE_PLUGIN_EXPORT int32_t mrcnnEdgePluginAutoregStatus()
{
    return gStatus.load();
}
