"""mrcnn_edge.export: the static-shape graph to ONNX (two flavors), validation, TensorRT engines.

Needs the ``[export]`` extra (torch, onnx, onnxscript, onnxruntime); TensorRT only for engine builds.
"""
