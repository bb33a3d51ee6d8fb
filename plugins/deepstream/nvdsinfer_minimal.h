// A MINIMAL DECLARATION of DeepStream's documented nvinfer custom-parser interface, written for
// mrcnn-edge from the DeepStream SDK API reference (nvdsinfer.h / nvdsinfer_custom_impl.h), NOT
// NVIDIA's header. DeepStream's headers ship only inside the DeepStream SDK (installed with
// JetPack or from NGC), which CI cannot download, so CI compiles the parser against this file.
// On a DeepStream machine the parser is compiled against the SDK's own headers instead
// (-I /opt/nvidia/deepstream/deepstream/sources/includes), which this file never shadows: it is
// included only when MRCNN_EDGE_MINIMAL_NVDSINFER is defined.
//
// Only what the instance-mask parser touches is declared, with the documented field order (the
// struct layouts are part of the ABI between nvinfer and the parser library). It includes what the
// SDK's nvdsinfer_custom_impl.h includes, so that a build missing an include path fails here as it
// fails on a DeepStream machine: TensorRT (the SDK header includes TensorRT's parser headers, which
// include NvInfer.h), and through it CUDA (NvInferRuntimeBase.h includes <cuda_runtime_api.h>, which
// lives in /usr/local/cuda-<version>/include, on no compiler's default path).
#ifndef MRCNN_EDGE_NVDSINFER_MINIMAL_H
#define MRCNN_EDGE_NVDSINFER_MINIMAL_H

#include <string>
#include <vector>

#include <NvInfer.h>

#define NVDSINFER_MAX_DIMS 8

extern "C" {

// "Holds the dimensions of a layer": per frame, without the batch dimension.
typedef struct {
  unsigned int numDims;
  unsigned int d[NVDSINFER_MAX_DIMS];
  unsigned int numElements;
} NvDsInferDims;

// "Specifies the data type of a layer": FLOAT (FP32), HALF (FP16), INT8, INT32 (later SDKs add more).
typedef enum { FLOAT = 0, HALF = 1, INT8 = 2, INT32 = 3 } NvDsInferDataType;

// "Holds information about one layer in the model"; SDK headers also alias inferDims as a deprecated
// `dims` (a union: same storage), which the parser does not use.
typedef struct {
  NvDsInferDataType dataType;
  NvDsInferDims inferDims;
  int bindingIndex;
  const char *layerName;
  void *buffer;
  int isInput;
} NvDsInferLayerInfo;

// "Holds information about the model network": the network input size.
typedef struct {
  unsigned int width;
  unsigned int height;
  unsigned int channels;
} NvDsInferNetworkInfo;

// "Holds information about one parsed object and instance mask from a detector's output."
// mask_size is "size of mask in bytes"; nvinfer frees `mask` with delete[].
typedef struct {
  unsigned int classId;
  float left;
  float top;
  float width;
  float height;
  float detectionConfidence;
  float *mask;
  unsigned int mask_width;
  unsigned int mask_height;
  unsigned int mask_size;
} NvDsInferInstanceMaskInfo;

// "Holds the detection parameters required for parsing objects."
typedef struct {
  unsigned int numClassesConfigured;
  std::vector<float> perClassPreclusterThreshold;
  std::vector<float> perClassPostclusterThreshold;
} NvDsInferParseDetectionParams;

}  // extern "C"

// The documented instance-mask parser type (NvDsInferInstanceMaskParseCustomFunc).
typedef bool (*NvDsInferInstanceMaskParseCustomFunc)(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
                                                     NvDsInferNetworkInfo const &networkInfo,
                                                     NvDsInferParseDetectionParams const &detectionParams,
                                                     std::vector<NvDsInferInstanceMaskInfo> &objectList);

#define CHECK_CUSTOM_INSTANCE_MASK_PARSE_FUNC_PROTOTYPE(fn) \
  static NvDsInferInstanceMaskParseCustomFunc mrcnnEdgeCheck_##fn __attribute__((unused)) = fn;

#endif  // MRCNN_EDGE_NVDSINFER_MINIMAL_H
