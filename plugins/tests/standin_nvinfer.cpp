// A stand-in libnvinfer for the plugin's registration tests: no GPU, no TensorRT library.
//
// Exports what the plugin library looks up in TensorRT at load (getPluginRegistry) and a plugin
// registry that records every registration and behaves as NvInferRuntimeCommon.h documents the
// real one (10.3 to 11.x): a duplicate name/version/namespace is refused, and loadLibrary() fails
// when one of the library's creators is already registered. Plus a small C ABI the test reads it
// through (standin_*). Built with -Wl,-soname,libnvinfer.so.<major> so that a dlopen of TensorRT's
// soname finds it. Test code only.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

struct Registration
{
    IPluginCreatorInterface* creator;
    std::string name;
    std::string version;
    std::string ns;          //!< the pluginNamespace argument of registerCreator
    std::string creatorNs;   //!< what the creator itself says
};

bool describe(IPluginCreatorInterface& creator, Registration& r)
{
    // Only V3 creators ("PLUGIN CREATOR_V3ONE") can be asked their name without a cast to a
    // deprecated V2 type; the plugin under test has nothing else.
    if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return false;
    }
    auto& v3 = static_cast<IPluginCreatorV3One&>(creator);
    r.creator = &creator;
    r.name = v3.getPluginName() != nullptr ? v3.getPluginName() : "";
    r.version = v3.getPluginVersion() != nullptr ? v3.getPluginVersion() : "";
    r.creatorNs = v3.getPluginNamespace() != nullptr ? v3.getPluginNamespace() : "";
    return true;
}

class StandInRegistry final : public IPluginRegistry
{
public:
    // "Register a plugin creator. Returns false if a plugin creator with the same type is already
    // registered." (IPluginRegistry::registerCreator, NvInferRuntimeCommon.h)
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex); // "calls to this method will be synchronized by a mutex"
        ++mRegisterCalls;
        Registration r{};
        if (!describe(creator, r))
        {
            return false;
        }
        r.ns = pluginNamespace != nullptr ? pluginNamespace : "";
        if (find(r.name, r.version, r.ns) != nullptr)
        {
            return false;
        }
        mRegistrations.push_back(r);
        return true;
    }

    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        mAll.clear();
        for (Registration const& r : mRegistrations)
        {
            mAll.push_back(r.creator);
        }
        *numCreators = static_cast<int32_t>(mAll.size());
        return mAll.empty() ? nullptr : mAll.data(); // "Returns nullptr if none found."
    }

    IPluginCreatorInterface* getCreator(AsciiChar const* const pluginName, AsciiChar const* const pluginVersion,
        AsciiChar const* const pluginNamespace = "") noexcept override
    {
        Registration const* r = find(pluginName, pluginVersion, pluginNamespace != nullptr ? pluginNamespace : "");
        return r != nullptr ? r->creator : nullptr;
    }

    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        for (auto it = mRegistrations.begin(); it != mRegistrations.end(); ++it)
        {
            if (it->creator == &creator)
            {
                mRegistrations.erase(it);
                return true;
            }
        }
        return false; // "false if it was not found in the registry"
    }

    // "Load and register a shared library of plugins. ... The call will fail and return nullptr if
    // any of the plugins are already registered." (IPluginRegistry::loadLibrary). The library is
    // found through its exported getCreators(), as TensorRT 10 looks it up.
    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        void* handle = dlopen(pluginPath, RTLD_LAZY | RTLD_LOCAL);
        if (handle == nullptr)
        {
            return nullptr;
        }
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
        if (getCreators == nullptr)
        {
            return nullptr;
        }
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators(n);
        std::vector<Registration> pending;
        for (int32_t i = 0; i < n; ++i)
        {
            Registration r{};
            if (creators == nullptr || creators[i] == nullptr || !describe(*creators[i], r))
            {
                return nullptr;
            }
            r.ns = r.creatorNs;
            if (find(r.name, r.version, r.ns) != nullptr)
            {
                return nullptr; // already registered: the whole call fails
            }
            pending.push_back(r);
        }
        for (Registration const& r : pending)
        {
            ++mRegisterCalls;
            mRegistrations.push_back(r);
        }
        mLibraryCreators += n;
        return handle;
    }

    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override {}
    void setErrorRecorder(IErrorRecorder* const recorder) noexcept override
    {
        mRecorder = recorder;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return mRecorder;
    }
    bool isParentSearchEnabled() const override
    {
        return true;
    }
    void setParentSearchEnabled(bool const /*enabled*/) override {}
    IPluginResource* acquirePluginResource(AsciiChar const* /*key*/, IPluginResource* /*resource*/) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const* /*key*/) noexcept override
    {
        return 1;
    }
    // Pure virtual from some 10.x release on; no `override` so that 10.3's headers compile too.
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept
    {
        return getAllCreators(numCreators);
    }
#if NV_TENSORRT_MAJOR < 11
    // The deprecated IPluginV2 half of the 10.x interface: this stand-in holds no V2 creator.
    bool registerCreator(IPluginCreator& /*creator*/, AsciiChar const* const /*ns*/) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(
        AsciiChar const* const /*name*/, AsciiChar const* const /*version*/, AsciiChar const* const /*ns*/) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const& /*creator*/) noexcept override
    {
        return false;
    }
#endif

    Registration const* find(std::string const& name, std::string const& version, std::string const& ns) const
    {
        for (Registration const& r : mRegistrations)
        {
            if (r.name == name && r.version == version && r.ns == ns)
            {
                return &r;
            }
        }
        return nullptr;
    }

    std::vector<Registration> mRegistrations;
    int32_t mRegisterCalls{0};
    int32_t mLibraryCreators{0};

private:
    std::mutex mMutex;
    mutable std::vector<IPluginCreatorInterface*> mAll;
    IErrorRecorder* mRecorder{nullptr};
};

StandInRegistry& registry()
{
    static StandInRegistry sRegistry;
    return sRegistry;
}

} // namespace

#define STANDIN_EXPORT extern "C" __attribute__((visibility("default")))

// TensorRT's own entry point (NvInferRuntime.h): "Return the plugin registry".
STANDIN_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

//! Creators in the registry now.
STANDIN_EXPORT int32_t standin_registered_count()
{
    return static_cast<int32_t>(registry().mRegistrations.size());
}

//! registerCreator() calls plus creators registered by loadLibrary(), refused ones included.
STANDIN_EXPORT int32_t standin_register_calls()
{
    return registry().mRegisterCalls;
}

//! Creators that loadLibrary() took from getCreators(), over all calls.
STANDIN_EXPORT int32_t standin_library_creators()
{
    return registry().mLibraryCreators;
}

//! "name/version@namespace (creator says namespace)" of registration i, or "" past the end.
STANDIN_EXPORT char const* standin_registration(int32_t i)
{
    static std::string s;
    auto const& all = registry().mRegistrations;
    if (i < 0 || i >= static_cast<int32_t>(all.size()))
    {
        return "";
    }
    s = all[i].name + "/" + all[i].version + "@" + all[i].ns + " (" + all[i].creatorNs + ")";
    return s.c_str();
}

//! IPluginRegistry::loadLibrary(path) on the stand-in registry: 1 when it returned a handle.
STANDIN_EXPORT int32_t standin_load_library(char const* path)
{
    return registry().loadLibrary(path) != nullptr ? 1 : 0;
}
