// See tensorrt_in_process.h. Linux only (dlfcn); elsewhere TensorRT is never found.
#include "tensorrt_in_process.h"

#include <NvInferVersion.h>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

#define MRE_STRINGIFY_(x) #x
#define MRE_STRINGIFY(x) MRE_STRINGIFY_(x)

namespace mrcnn_edge
{

char const* tensorrtSoname() noexcept
{
    return "libnvinfer.so." MRE_STRINGIFY(NV_TENSORRT_MAJOR);
}

#if !defined(_WIN32)
namespace
{
// Present in libnvinfer of every version this plugin supports (NvInferRuntime.h of 10.3, 10.16 and
// 11.1 declare it `extern "C" TENSORRTAPI`), and a name no other library is likely to export.
constexpr char const* kMajorSymbol = "getInferLibMajorVersion";
using GetMajor = int32_t (*)();
} // namespace

TensorRTInProcess findTensorRT(bool mayLoad) noexcept
{
    TensorRTInProcess trt;
    void* handle = nullptr;
    // 1. the global scope; the handle of the file that defines the symbol, by its own name
    if (void* symbol = dlsym(RTLD_DEFAULT, kMajorSymbol))
    {
        Dl_info info{};
        if (dladdr(symbol, &info) != 0 && info.dli_fname != nullptr)
        {
            handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        }
    }
    // 2. loaded RTLD_LOCAL, found by its soname (only the major these headers describe)
    if (handle == nullptr)
    {
        handle = dlopen(tensorrtSoname(), RTLD_LAZY | RTLD_NOLOAD);
    }
    // 3. not loaded yet; the caller knows the program is about to load it
    if (handle == nullptr && mayLoad)
    {
        handle = dlopen(tensorrtSoname(), RTLD_LAZY);
    }
    if (handle == nullptr)
    {
        return trt;
    }
    trt.handle = handle;
    void* major = dlsym(handle, kMajorSymbol);
    Dl_info info{};
    if (major != nullptr && dladdr(major, &info) != 0)
    {
        trt.base = info.dli_fbase;
        trt.path = info.dli_fname;
        trt.major = reinterpret_cast<GetMajor>(major)();
    }
    return trt;
}

void* tensorrtSymbol(TensorRTInProcess const& trt, char const* name) noexcept
{
    if (trt.handle == nullptr || trt.base == nullptr)
    {
        return nullptr;
    }
    // dlsym(handle) also searches the library's dependencies: keep only TensorRT's own symbol.
    void* symbol = dlsym(trt.handle, name);
    Dl_info info{};
    return symbol != nullptr && dladdr(symbol, &info) != 0 && info.dli_fbase == trt.base ? symbol : nullptr;
}
#else
TensorRTInProcess findTensorRT(bool) noexcept
{
    return {};
}

void* tensorrtSymbol(TensorRTInProcess const&, char const*) noexcept
{
    return nullptr;
}
#endif

} // namespace mrcnn_edge
