// Launcher of the MultilevelRoIAlign CUDA kernel. No TensorRT: compiles with plain nvcc, and the
// plugin class (multilevel_roi_align_plugin.cpp) is its only caller in the library.
#ifndef MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_KERNEL_H
#define MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_KERNEL_H

#include <cuda_runtime_api.h>

#include "roi_align_math.h"

namespace mrcnn_edge
{

//! Element type of the feature maps and of the output.
enum class FeatureType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
};

//! Pool every ROI of `params` on `stream`.
//!
//! `params` holds device pointers. Zero ROIs (or zero channels) is a normal no-op. Returns
//! cudaErrorInvalidValue for inconsistent parameters, else cudaGetLastError() after the launch.
//! The accumulation is float32 for both element types.
cudaError_t launchMultilevelRoIAlign(
    MultilevelRoIAlignParams const& params, FeatureType type, cudaStream_t stream) noexcept;

//! Typed launcher; explicitly instantiated for float and __half in the .cu file.
template <typename T>
cudaError_t launchMultilevelRoIAlignTyped(MultilevelRoIAlignParams const& params, cudaStream_t stream) noexcept;

} // namespace mrcnn_edge

#endif // MRCNN_EDGE_MULTILEVEL_ROI_ALIGN_KERNEL_H
