"""mrcnn_edge.export.serve: what NVIDIA's fleet engines need (a Triton model repository, a DeepStream
nvinfer setup). Imports no torch."""
