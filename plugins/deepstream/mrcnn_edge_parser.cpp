// DeepStream nvinfer instance-mask parser for mrcnn-edge models (network-type=3, output-instance-mask=1).
//
// nvinfer calls the parser once per frame of a batch, with that frame's slice of every output layer:
// it sets `buffer = host_buffer + inferDims.numElements * element_size * frame_index` and passes
// per-frame dims (no batch dimension). The parser therefore reads the frame's tensors from the start
// of each buffer and never indexes by batch itself; every frame gets its own detections.
//
// Output layout (DESIGN.md "Engine I/O contract"), per frame:
//   num_detections int32 [1]        valid rows (the engine's [B,1]: nvinfer gives a per-frame layer of
//                                   0-d dims no element, so older [B] models cannot run under it)
//   boxes          float32 [K,4]    x1, y1, x2, y2 in canvas pixels = the network input's pixels
//   scores         float32 [K]      descending
//   classes        int32   [K]      torchvision label ids; -1 past num_detections
//   masks          float32|float16 [K,M,M]  probability of the detection's own class
// Boxes are already in the network input's coordinates (the canvas is the network input; the image
// sits top-left, as maintain-aspect-ratio=1 with symmetric-padding=0 places it), so they are only
// clipped to it; nvinfer scales them to the frame. Each mask is handed over as M x M floats
// (mask_width = mask_height = M, mask_size in bytes); nvinfer resizes it to the box and thresholds
// it with segmentation-threshold.
//
// No exception leaves the parser: nvinfer calls it through a C function pointer.
#ifdef MRCNN_EDGE_MINIMAL_NVDSINFER
#include "nvdsinfer_minimal.h"
#else
#include "nvdsinfer_custom_impl.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

namespace {

struct Layers {
  const NvDsInferLayerInfo *num = nullptr, *boxes = nullptr, *scores = nullptr, *classes = nullptr,
                           *masks = nullptr;
};

const NvDsInferLayerInfo *findLayer(std::vector<NvDsInferLayerInfo> const &layers, const char *name) {
  for (auto const &layer : layers) {
    if (layer.layerName && std::strcmp(layer.layerName, name) == 0) return &layer;
  }
  return nullptr;
}

// IEEE half -> float without CUDA headers (the parser runs on the host).
float halfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exponent = 127 - 15 + 1;
      while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        --exponent;
      }
      bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
  } else if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float clampTo(float v, float hi) { return std::min(std::max(v, 0.0f), hi); }

bool parseFrame(Layers const &l, NvDsInferNetworkInfo const &net, NvDsInferParseDetectionParams const &params,
                std::vector<NvDsInferInstanceMaskInfo> &out) {
  NvDsInferDims const &bd = l.boxes->inferDims;
  NvDsInferDims const &md = l.masks->inferDims;
  if (bd.numDims < 2 || bd.d[bd.numDims - 1] != 4 || md.numDims < 3) {
    std::fprintf(stderr, "mrcnn-edge parser: boxes must be [K,4] and masks [K,M,M] per frame\n");
    return false;
  }
  const unsigned k = bd.d[bd.numDims - 2];
  const unsigned mh = md.d[md.numDims - 2], mw = md.d[md.numDims - 1];
  if (l.num->inferDims.numElements != 1) {
    std::fprintf(stderr, "mrcnn-edge parser: num_detections must be one element per frame ([B,1], older "
                         "exports have [B]): re-export the model with 'mrcnn-edge export'\n");
    return false;
  }
  if (l.scores->inferDims.numElements != k || l.classes->inferDims.numElements != k ||
      md.numElements != k * mh * mw) {
    std::fprintf(stderr, "mrcnn-edge parser: outputs disagree on K (boxes %u)\n", k);
    return false;
  }
  if (l.num->dataType != INT32 || l.classes->dataType != INT32 || l.boxes->dataType != FLOAT ||
      l.scores->dataType != FLOAT || (l.masks->dataType != FLOAT && l.masks->dataType != HALF)) {
    std::fprintf(stderr, "mrcnn-edge parser: unexpected output data types\n");
    return false;
  }
  const int32_t count = *static_cast<const int32_t *>(l.num->buffer);
  const unsigned n = static_cast<unsigned>(std::min<int64_t>(std::max<int32_t>(count, 0), k));
  const float *boxes = static_cast<const float *>(l.boxes->buffer);
  const float *scores = static_cast<const float *>(l.scores->buffer);
  const int32_t *classes = static_cast<const int32_t *>(l.classes->buffer);
  const float w = static_cast<float>(net.width), h = static_cast<float>(net.height);
  const size_t plane = static_cast<size_t>(mh) * mw;
  for (unsigned i = 0; i < n; ++i) {
    const int32_t cls = classes[i];
    if (cls <= 0 || static_cast<unsigned>(cls) >= params.numClassesConfigured) continue;  // background, padding
    const float score = scores[i];
    if (!std::isfinite(score)) continue;
    if (static_cast<size_t>(cls) < params.perClassPreclusterThreshold.size() &&
        score < params.perClassPreclusterThreshold[cls])
      continue;
    const float x1 = clampTo(boxes[4 * i + 0], w), y1 = clampTo(boxes[4 * i + 1], h);
    const float x2 = clampTo(boxes[4 * i + 2], w), y2 = clampTo(boxes[4 * i + 3], h);
    if (!(x2 > x1 && y2 > y1)) continue;  // empty after clipping (or NaN)
    float *mask = new (std::nothrow) float[plane];
    if (!mask) return false;
    if (l.masks->dataType == FLOAT) {
      std::memcpy(mask, static_cast<const float *>(l.masks->buffer) + i * plane, plane * sizeof(float));
    } else {
      const uint16_t *src = static_cast<const uint16_t *>(l.masks->buffer) + i * plane;
      for (size_t j = 0; j < plane; ++j) mask[j] = halfToFloat(src[j]);
    }
    NvDsInferInstanceMaskInfo obj{};
    obj.classId = static_cast<unsigned>(cls);
    obj.left = x1;
    obj.top = y1;
    obj.width = x2 - x1;
    obj.height = y2 - y1;
    obj.detectionConfidence = score;
    obj.mask = mask;
    obj.mask_width = mw;
    obj.mask_height = mh;
    obj.mask_size = static_cast<unsigned>(plane * sizeof(float));
    out.push_back(obj);
  }
  return true;
}

}  // namespace

extern "C" bool NvDsInferParseMrcnnEdge(std::vector<NvDsInferLayerInfo> const &outputLayersInfo,
                                        NvDsInferNetworkInfo const &networkInfo,
                                        NvDsInferParseDetectionParams const &detectionParams,
                                        std::vector<NvDsInferInstanceMaskInfo> &objectList) {
  try {
    Layers l;
    l.num = findLayer(outputLayersInfo, "num_detections");
    l.boxes = findLayer(outputLayersInfo, "boxes");
    l.scores = findLayer(outputLayersInfo, "scores");
    l.classes = findLayer(outputLayersInfo, "classes");
    l.masks = findLayer(outputLayersInfo, "masks");
    if (!l.num || !l.boxes || !l.scores || !l.classes || !l.masks) {
      std::fprintf(stderr, "mrcnn-edge parser: the model lacks one of num_detections, boxes, scores, classes, masks\n");
      return false;
    }
    return parseFrame(l, networkInfo, detectionParams, objectList);
  } catch (...) {
    return false;
  }
}

CHECK_CUSTOM_INSTANCE_MASK_PARSE_FUNC_PROTOTYPE(NvDsInferParseMrcnnEdge);
