// Drives the instance-mask parser the way nvinfer (Gst-nvinfer's libnvds_infer) does, for the tests:
// no DeepStream, no GPU (host memory stands in for nvinfer's device and pinned host buffers).
//
// usage: parser_harness LIB DIR BATCH NET_W NET_H NUM_CLASSES THRESHOLD [PIPELINES]
// DIR holds, per output binding NAME, NAME.bin (the whole batch, as the engine wrote it) and
// NAME.dims ("<dataType> <nbDims> d0 d1 ...": the binding's full dims as TensorRT reports them, batch
// first). PIPELINES (default 1): element lifetimes in one process, as an RTSP reconnect loop rebuilds
// the pipeline. $HARNESS_LIBNVINFER, when set, is dlopen'ed RTLD_LOCAL first: nvinfer's GStreamer
// plugin links libnvinfer and GStreamer loads plugins with G_MODULE_BIND_LOCAL.
//
// What it follows, from DeepStream's sources/libs/nvdsinfer (DeepStream 6.x as published):
//  * nvdsinfer_func_utils.cpp, SplitFullDims(): "Use 0th dim as batch size and get rest of the dims",
//    then normalizeDims(), which sets `numElements = 0` when the per-frame dims have a wildcard or
//    `!dims.numDims`, else the product of the dims. A [B] output is therefore a 0-element layer.
//  * nvdsinfer_context_impl.cpp, NvDsInferContextImpl::initialize(): the custom library is opened
//    first (`DlLibHandle(initParams.customLibPath, RTLD_LAZY)`, "Could not open custom lib"), then for
//    every output binding a device buffer of `m_MaxBatchSize * bindingDims.numElements *
//    getElementSize(layerInfo.dataType)` bytes, failing with "Failed to allocate cuda output buffer
//    during context initialization" when none comes back (a 0-byte cudaMalloc gives no pointer; debug
//    builds stop earlier at `assert(bindingDims.numElements > 0)`), and a host buffer of the same size.
//  * InferPostprocessor::postProcessHost(): per frame `index`, each output layer's `info.buffer =
//    host buffer + info.inferDims.numElements * getElementSize(info.dataType) * index`, then the
//    parser is called once per frame with that vector.
//  * NvDsInferContextImpl destruction: buffers released, then `m_CustomLibHandle.reset()`, whose
//    destructor dlcloses the custom library.
// After each dlclose, if $HARNESS_LIBNVINFER has `standin_creator_name`, the harness asks the plugin
// registry for the MultilevelRoIAlign creator and calls it, as TensorRT does when the next pipeline
// deserialises its engine (a creator unmapped by the dlclose crashes here).
//
// Prints one JSON line per object (pipeline, frame, classId, confidence, box, mask sizes and values),
// one per pipeline after the dlclose, and exits 0; an initialisation failure is one stderr line and
// exit 3, as nvinfer fails to start the element.
#include "nvdsinfer_minimal.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

namespace {

size_t elementSize(NvDsInferDataType t) { return t == HALF ? 2 : t == INT8 ? 1 : 4; }

// nvdsinfer's normalizeDims() rule on per-frame dims.
void normalizeDims(NvDsInferDims &dims) {
  bool wildcard = false;
  for (unsigned i = 0; i < dims.numDims; ++i) wildcard = wildcard || static_cast<int>(dims.d[i]) < 0;
  if (wildcard || !dims.numDims) {
    dims.numElements = 0;
    return;
  }
  dims.numElements = 1;
  for (unsigned i = 0; i < dims.numDims; ++i) dims.numElements *= dims.d[i];
}

struct Binding {
  NvDsInferLayerInfo info{};
  std::string name;
  std::vector<char> engineOutput;  // what the engine wrote for the whole batch
};

int fail(const char *what, const std::string &detail = "") {
  std::fprintf(stderr, "%s%s\n", what, detail.c_str());
  return 3;
}

// One element lifetime: open the custom library, allocate every output binding, parse each frame,
// release the buffers, dlclose. Returns 0, or 3 when the element would not start.
int runPipeline(unsigned pipeline, const char *libPath, std::vector<Binding> &bindings, unsigned batch,
                NvDsInferNetworkInfo const &net, NvDsInferParseDetectionParams const &params) {
  void *lib = dlopen(libPath, RTLD_LAZY);
  if (!lib) return fail("Could not open custom lib: ", dlerror());
  auto parse = reinterpret_cast<NvDsInferInstanceMaskParseCustomFunc>(dlsym(lib, "NvDsInferParseMrcnnEdge"));
  if (!parse) {
    dlclose(lib);
    return fail("Could not find the parse function in the custom lib: ", dlerror());
  }
  std::vector<std::unique_ptr<char[]>> hostBuffers;
  for (Binding &b : bindings) {
    const size_t size = batch * b.info.inferDims.numElements * elementSize(b.info.dataType);
    if (size == 0) {
      dlclose(lib);
      return fail("Failed to allocate cuda output buffer during context initialization (layer ", b.name + ")");
    }
    hostBuffers.emplace_back(new char[size]);
    if (b.engineOutput.size() != size) {
      dlclose(lib);
      return fail("engine output does not match the binding: ", b.name);
    }
    std::copy(b.engineOutput.begin(), b.engineOutput.end(), hostBuffers.back().get());  // device -> host copy
  }
  std::vector<NvDsInferLayerInfo> layers;
  for (Binding &b : bindings) layers.push_back(b.info);
  for (unsigned frame = 0; frame < batch; ++frame) {
    for (size_t j = 0; j < layers.size(); ++j) {
      layers[j].buffer = hostBuffers[j].get() + layers[j].inferDims.numElements * elementSize(layers[j].dataType) * frame;
    }
    std::vector<NvDsInferInstanceMaskInfo> objects;
    if (!parse(layers, net, params, objects)) {
      std::printf("{\"pipeline\": %u, \"frame\": %u, \"failed\": true}\n", pipeline, frame);
      continue;
    }
    for (auto const &o : objects) {
      std::printf("{\"pipeline\": %u, \"frame\": %u, \"classId\": %u, \"confidence\": %.9g, "
                  "\"box\": [%.9g, %.9g, %.9g, %.9g], \"mask_width\": %u, \"mask_height\": %u, \"mask_size\": %u, "
                  "\"mask\": [",
                  pipeline, frame, o.classId, o.detectionConfidence, o.left, o.top, o.width, o.height, o.mask_width,
                  o.mask_height, o.mask_size);
      for (unsigned i = 0; i < o.mask_width * o.mask_height; ++i) std::printf(i ? ", %.9g" : "%.9g", o.mask[i]);
      std::printf("]}\n");
      delete[] o.mask;  // as nvinfer does
    }
  }
  hostBuffers.clear();
  dlclose(lib);
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 8 && argc != 9) {
    std::fprintf(stderr, "usage: %s LIB DIR BATCH NET_W NET_H NUM_CLASSES THRESHOLD [PIPELINES]\n", argv[0]);
    return 2;
  }
  void *tensorrt = nullptr;
  if (const char *trt = std::getenv("HARNESS_LIBNVINFER")) {
    tensorrt = dlopen(trt, RTLD_LAZY | RTLD_LOCAL);
    if (!tensorrt) return fail("cannot load $HARNESS_LIBNVINFER: ", dlerror());
  }
  const std::string dir = argv[2];
  const unsigned batch = std::atoi(argv[3]);
  NvDsInferNetworkInfo net{static_cast<unsigned>(std::atoi(argv[4])), static_cast<unsigned>(std::atoi(argv[5])), 3};
  NvDsInferParseDetectionParams params;
  params.numClassesConfigured = std::atoi(argv[6]);
  params.perClassPreclusterThreshold.assign(params.numClassesConfigured, std::atof(argv[7]));
  const unsigned pipelines = argc == 9 ? std::atoi(argv[8]) : 1;

  // Every output binding of the contract's engine, in binding order (the input is binding 0).
  const char *names[] = {"num_detections", "boxes", "scores", "classes", "masks"};
  std::vector<Binding> bindings(5);
  for (int j = 0; j < 5; ++j) {
    Binding &b = bindings[j];
    b.name = names[j];
    std::ifstream dims(dir + "/" + names[j] + ".dims");
    int type = 0;
    unsigned nbDims = 0;
    dims >> type >> nbDims;
    std::vector<int> full(nbDims);
    for (int &d : full) dims >> d;
    if (!dims || nbDims == 0 || nbDims > NVDSINFER_MAX_DIMS + 1 || full[0] != static_cast<int>(batch)) {
      return fail("binding dims do not start with the batch: ", b.name);
    }
    b.info.dataType = static_cast<NvDsInferDataType>(type);
    b.info.inferDims.numDims = nbDims - 1;  // SplitFullDims: the batch goes, the rest are per frame
    for (unsigned d = 1; d < nbDims; ++d) b.info.inferDims.d[d - 1] = static_cast<unsigned>(full[d]);
    normalizeDims(b.info.inferDims);
    b.info.layerName = names[j];
    b.info.bindingIndex = j + 1;
    b.info.isInput = 0;
    std::ifstream bin(dir + "/" + names[j] + ".bin", std::ios::binary);
    b.engineOutput.assign(std::istreambuf_iterator<char>(bin), std::istreambuf_iterator<char>());
  }
  using CreatorName = const char *(*)(const char *, const char *, const char *);
  auto creatorName =
      tensorrt ? reinterpret_cast<CreatorName>(dlsym(tensorrt, "standin_creator_name")) : static_cast<CreatorName>(nullptr);
  for (unsigned p = 0; p < pipelines; ++p) {
    if (int rc = runPipeline(p, argv[1], bindings, batch, net, params)) return rc;
    if (creatorName) {
      std::printf("{\"pipeline\": %u, \"creator_after_dlclose\": \"%s\"}\n", p,
                  creatorName("MultilevelRoIAlign", "1", "mrcnn_edge"));
    }
    std::fflush(stdout);
  }
  return 0;
}
