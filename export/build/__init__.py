"""mrcnn_edge.export.build: the plugin library and TensorRT engines. Runs on the device: imports neither
torch nor onnx (the ONNX metadata is read by the runtime's protobuf walk)."""
