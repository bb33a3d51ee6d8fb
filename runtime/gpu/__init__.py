"""mrcnn_edge.runtime.gpu: the CUDA side of the runtime (cuda-python, NVRTC kernels, TensorRT platform
helpers). Imported only when a GPU backend runs; nothing here imports torch or onnx."""
