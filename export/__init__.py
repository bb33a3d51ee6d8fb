"""mrcnn_edge.export: the static-shape graph to ONNX (two flavors), validation, TensorRT engines.

- :mod:`.onnx_export`: a torchvision Mask R-CNN -> ONNX with metadata (``export_onnx``);
  :mod:`.translations`: how the custom ops become ONNX in each flavor;
- :mod:`.checks`: what a file must pass before it is written (onnx.checker, the I/O contract,
  TensorRT's ops and shapes, Q/DQ placement), run by the export and the quantizer alike;
- :mod:`.quantize`: INT8 Q/DQ models calibrated on the user's images;
- :mod:`.ort_custom`, :mod:`.plugin_host`: the plugin node run in ONNX Runtime on the CPU;
- ``validate/``, ``build/`` (TensorRT only, no torch or onnx), ``serve/`` (Triton, DeepStream).

Needs the ``[export]`` extra (torch, onnx, onnxscript, onnxruntime); TensorRT only for engine builds.
"""
