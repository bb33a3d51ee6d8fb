// Drives the instance-mask parser the way nvinfer does, for the tests (no DeepStream needed).
//
// usage: parser_harness LIB DIR BATCH NET_W NET_H NUM_CLASSES THRESHOLD
// DIR holds, per output layer NAME, NAME.bin (the whole batch, as the engine wrote it) and
// NAME.dims ("<dataType> <numDims> d0 d1 ...": per-frame dims, no batch dimension, as nvinfer
// reports them). Like nvinfer's InferPostprocessor, frame i's layer buffer is
// base + numElements * element_size * i, and the parser is looked up with dlsym and called once per
// frame. Prints one JSON line per object: frame, classId, confidence, box, mask sizes and values.
#include "nvdsinfer_minimal.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

static size_t elementSize(NvDsInferDataType t) { return t == HALF ? 2 : t == INT8 ? 1 : 4; }

int main(int argc, char **argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s LIB DIR BATCH NET_W NET_H NUM_CLASSES THRESHOLD\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[1], RTLD_LAZY);
  if (!lib) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  auto parse = reinterpret_cast<NvDsInferInstanceMaskParseCustomFunc>(dlsym(lib, "NvDsInferParseMrcnnEdge"));
  if (!parse) {
    std::fprintf(stderr, "dlsym: %s\n", dlerror());
    return 1;
  }
  const std::string dir = argv[2];
  const unsigned batch = std::atoi(argv[3]);
  NvDsInferNetworkInfo net{static_cast<unsigned>(std::atoi(argv[4])), static_cast<unsigned>(std::atoi(argv[5])), 3};
  NvDsInferParseDetectionParams params;
  params.numClassesConfigured = std::atoi(argv[6]);
  params.perClassPreclusterThreshold.assign(params.numClassesConfigured, std::atof(argv[7]));

  const char *names[] = {"num_detections", "boxes", "scores", "classes", "masks"};
  std::vector<std::vector<char>> data(5);
  std::vector<NvDsInferLayerInfo> layers(5);
  for (int j = 0; j < 5; ++j) {
    std::ifstream dims(dir + "/" + names[j] + ".dims");
    int type = 0;
    NvDsInferLayerInfo &l = layers[j];
    dims >> type >> l.inferDims.numDims;
    l.dataType = static_cast<NvDsInferDataType>(type);
    l.inferDims.numElements = 1;
    for (unsigned d = 0; d < l.inferDims.numDims; ++d) {
      dims >> l.inferDims.d[d];
      l.inferDims.numElements *= l.inferDims.d[d];
    }
    std::ifstream bin(dir + "/" + names[j] + ".bin", std::ios::binary);
    data[j].assign(std::istreambuf_iterator<char>(bin), std::istreambuf_iterator<char>());
    if (!dims || data[j].size() != l.inferDims.numElements * elementSize(l.dataType) * batch) {
      std::fprintf(stderr, "layer %s: dims or size do not match the batch\n", names[j]);
      return 1;
    }
    l.layerName = names[j];
    l.bindingIndex = j + 1;
    l.isInput = 0;
  }
  for (unsigned frame = 0; frame < batch; ++frame) {
    for (int j = 0; j < 5; ++j) {
      layers[j].buffer = data[j].data() + layers[j].inferDims.numElements * elementSize(layers[j].dataType) * frame;
    }
    std::vector<NvDsInferInstanceMaskInfo> objects;
    if (!parse(layers, net, params, objects)) {
      std::printf("{\"frame\": %u, \"failed\": true}\n", frame);
      continue;
    }
    for (auto const &o : objects) {
      std::printf("{\"frame\": %u, \"classId\": %u, \"confidence\": %.9g, \"box\": [%.9g, %.9g, %.9g, %.9g], "
                  "\"mask_width\": %u, \"mask_height\": %u, \"mask_size\": %u, \"mask\": [",
                  frame, o.classId, o.detectionConfidence, o.left, o.top, o.width, o.height, o.mask_width,
                  o.mask_height, o.mask_size);
      for (unsigned i = 0; i < o.mask_width * o.mask_height; ++i) std::printf(i ? ", %.9g" : "%.9g", o.mask[i]);
      std::printf("]}\n");
      delete[] o.mask;  // as nvinfer does
    }
  }
  return 0;
}
