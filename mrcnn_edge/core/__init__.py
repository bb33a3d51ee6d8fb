"""The floor of the house: torch-free, importable on a Jetson with nothing but numpy.

- :mod:`.contract`: the facts every part relies on (I/O names, metadata keys, TensorRT limits, the
  plugin's identity and attribute table, flavors, precisions, file suffixes);
- :mod:`.paths`: every default location on disk (one cache root);
- :mod:`.config`: architectures, :class:`~.config.ModelConfig` and training presets;
- :mod:`.jetpack`: the JetPack lines (L4T, CUDA, TensorRT, Python, the pip extra and constraints file of each);
- :mod:`.metadata`: reading and writing the metadata that travels with ONNX models and engines, and
  the one check of the keys a reader requires;
- :mod:`.onnx_info`: what an ONNX file holds (metadata, op domains, plugin nodes) read without onnx, so
  that the runtime and the engine build read models on a device that has neither onnx nor torch;
- :mod:`.errors`, :mod:`.atomic`, :mod:`.progress`, :mod:`.cliutil`: one-line user errors, atomic writes,
  progress, command-line value checks.

The runtime may import from here and from nowhere else in ``mrcnn_edge`` outside ``runtime``.
"""
