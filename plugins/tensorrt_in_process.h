// Finding the TensorRT library (libnvinfer) that this process has loaded, without linking it.
//
// Both libraries of this folder need TensorRT's own C entry points without a link-time dependency
// on libnvinfer (the plugin only implements TensorRT's interfaces, and pip's TensorRT has no
// libnvinfer.so to link against): the self-registering library asks for getPluginRegistry(), the
// plugin library for getLogger() when TensorRT handed it no logger. Both must first know which
// TensorRT major is loaded, since the registry and logger interfaces differ between 10 and 11
// (getInferLibMajorVersion(), NvInferRuntime.h: "Return the library major version number").
// No exception, no abort: every function here is noexcept and says "not found" instead.
#pragma once

#include <cstdint>

namespace mrcnn_edge
{

//! The libnvinfer of this process, or handle == nullptr.
struct TensorRTInProcess
{
    void* handle{nullptr};      //!< dlopen handle (RTLD_NOLOAD: a reference the library keeps)
    void* base{nullptr};        //!< load address of that file, to check where symbols come from
    char const* path{nullptr};  //!< its file name as the dynamic loader reports it
    int32_t major{-1};          //!< getInferLibMajorVersion(), -1 when it has none
};

//! Where libnvinfer is looked for, in order:
//!  1. the global scope: a program linked with libnvinfer (trtexec, Triton's TensorRT backend,
//!     DeepStream's nvinfer) or a library loaded RTLD_GLOBAL;
//!  2. an RTLD_NOLOAD dlopen of libnvinfer.so.<the major these headers are>, which finds a copy
//!     loaded RTLD_LOCAL, as Python's tensorrt package loads it;
//!  3. with mayLoad only, a plain dlopen of that soname (LD_PRELOAD runs before the program loaded
//!     TensorRT: this loads the library the program is about to load by the same name).
TensorRTInProcess findTensorRT(bool mayLoad) noexcept;

//! The soname looked for in steps 2 and 3: "libnvinfer.so.<NV_TENSORRT_MAJOR>".
char const* tensorrtSoname() noexcept;

//! dlsym of `name` in that library itself (not a same-named function of another library);
//! nullptr when it has none.
void* tensorrtSymbol(TensorRTInProcess const& trt, char const* name) noexcept;

} // namespace mrcnn_edge
