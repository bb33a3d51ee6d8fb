// A stand-in libnvinfer for the plugin's registration tests: no GPU, no TensorRT library.
//
// Exports what the plugin libraries look up in TensorRT (getInferLibMajorVersion, getPluginRegistry,
// getLogger) and a plugin registry that records every registration and behaves as
// NvInferRuntimeCommon.h documents the real one (10.3 to 11.x): a duplicate name/version/namespace
// is refused, and loadLibrary() fails when one of the library's creators is already registered.
// Plus a small C ABI the test reads it through (standin_*). Built with
// -Wl,-soname,libnvinfer.so.<major> so that a dlopen of TensorRT's soname finds it, against the
// headers of the major it stands in for: a plugin built for another major then calls its registry
// through the wrong virtual table, as it would call the real one (every registry method counts the
// calls it gets, standin_registry_calls). Test code only.
#include <NvInferRuntime.h>
#include <NvInferVersion.h>

#include <dlfcn.h>

#include <cstring>
#include <memory>
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
        ++mAnyCalls;
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
        ++mAnyCalls;
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
        ++mAnyCalls;
        Registration const* r = find(pluginName, pluginVersion, pluginNamespace != nullptr ? pluginNamespace : "");
        return r != nullptr ? r->creator : nullptr;
    }

    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        ++mAnyCalls;
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
        ++mAnyCalls;
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

    void deregisterLibrary(PluginLibraryHandle /*handle*/) noexcept override
    {
        ++mAnyCalls;
    }
    void setErrorRecorder(IErrorRecorder* const recorder) noexcept override
    {
        ++mAnyCalls;
        mRecorder = recorder;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        ++mAnyCalls;
        return mRecorder;
    }
    bool isParentSearchEnabled() const override
    {
        ++mAnyCalls;
        return true;
    }
    void setParentSearchEnabled(bool const /*enabled*/) override
    {
        ++mAnyCalls;
    }
    IPluginResource* acquirePluginResource(AsciiChar const* /*key*/, IPluginResource* /*resource*/) noexcept override
    {
        ++mAnyCalls;
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const* /*key*/) noexcept override
    {
        ++mAnyCalls;
        return 1;
    }
    // Pure virtual from some 10.x release on; no `override` so that 10.3's headers compile too.
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept
    {
        ++mAnyCalls;
        return getAllCreators(numCreators);
    }
#if NV_TENSORRT_MAJOR < 11
    // The deprecated IPluginV2 half of the 10.x interface: this stand-in holds no V2 creator.
    bool registerCreator(IPluginCreator& /*creator*/, AsciiChar const* const /*ns*/) noexcept override
    {
        ++mAnyCalls;
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        ++mAnyCalls;
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(
        AsciiChar const* const /*name*/, AsciiChar const* const /*version*/, AsciiChar const* const /*ns*/) noexcept override
    {
        ++mAnyCalls;
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const& /*creator*/) noexcept override
    {
        ++mAnyCalls;
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
    mutable int32_t mAnyCalls{0}; //!< calls of any registry method, from whatever virtual table
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

//! The global logger: records every line, so that a test can see what reached TensorRT's logger.
class RecordingLogger final : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        std::lock_guard<std::mutex> lock(mMutex);
        mLines.push_back(std::to_string(static_cast<int32_t>(severity)) + " " + (msg != nullptr ? msg : ""));
    }
    std::mutex mMutex;
    std::vector<std::string> mLines;
};

RecordingLogger& recordingLogger()
{
    static RecordingLogger sLogger;
    return sLogger;
}

IPluginCreatorV3One* v3Creator(char const* name, char const* version, char const* ns)
{
    Registration const* r = registry().find(name, version, ns);
    if (r == nullptr)
    {
        return nullptr;
    }
    // A call into the creator: a creator whose library was unmapped crashes here, as TensorRT
    // crashes when it asks that creator for a plugin while deserialising an engine.
    if (std::strcmp(r->creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return nullptr;
    }
    return static_cast<IPluginCreatorV3One*>(r->creator);
}

} // namespace

#define STANDIN_EXPORT extern "C" __attribute__((visibility("default")))

// TensorRT's own entry points (NvInferRuntime.h): "Return the plugin registry", "Return the logger
// object" and "Return the library major version number".
STANDIN_EXPORT nvinfer1::IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

STANDIN_EXPORT nvinfer1::ILogger* getLogger() noexcept
{
    return &recordingLogger();
}

STANDIN_EXPORT int32_t getInferLibMajorVersion() noexcept
{
    return NV_TENSORRT_MAJOR;
}

//! Calls of any registry method through its virtual table (right or wrong).
STANDIN_EXPORT int32_t standin_registry_calls()
{
    return registry().mAnyCalls;
}

//! Lines the global logger received, and line i as "<severity> <message>" ("" past the end).
STANDIN_EXPORT int32_t standin_logged_count()
{
    std::lock_guard<std::mutex> lock(recordingLogger().mMutex);
    return static_cast<int32_t>(recordingLogger().mLines.size());
}

STANDIN_EXPORT char const* standin_logged(int32_t i)
{
    static std::string s;
    std::lock_guard<std::mutex> lock(recordingLogger().mMutex);
    auto const& lines = recordingLogger().mLines;
    s = i >= 0 && i < static_cast<int32_t>(lines.size()) ? lines[i] : "";
    return s.c_str();
}

//! The registered creator's own getPluginName(), called through the pointer the registry holds;
//! "" when none is registered under name/version/namespace.
STANDIN_EXPORT char const* standin_creator_name(char const* name, char const* version, char const* ns)
{
    IPluginCreatorV3One* creator = v3Creator(name, version, ns);
    return creator != nullptr && creator->getPluginName() != nullptr ? creator->getPluginName() : "";
}

//! createPlugin() of the registered creator, as TensorRT's ONNX parser calls it, with one INT32
//! attribute `field` = 1 (an unknown name makes the plugin refuse and log why): 1 when a plugin came
//! back, 0 when the creator refused, -1 when no such creator is registered.
STANDIN_EXPORT int32_t standin_create_plugin(char const* name, char const* version, char const* ns, char const* field)
{
    IPluginCreatorV3One* creator = v3Creator(name, version, ns);
    if (creator == nullptr)
    {
        return -1;
    }
    int32_t one = 1;
    PluginField f(field, &one, PluginFieldType::kINT32, 1);
    PluginFieldCollection fc{1, &f};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("standin_layer", &fc, TensorRTPhase::kBUILD));
    return plugin != nullptr ? 1 : 0;
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
