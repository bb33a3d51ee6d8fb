"""The torch side: a trained torchvision Mask R-CNN in, the static-shape edge graph out.

- :mod:`.checkpoint`: checkpoints of three formats -> torchvision ``MaskRCNN`` + config, built and
  recognised through the architecture table (``core.config.ARCHS``, ``checkpoint.BACKBONES``);
- :mod:`.edge`: :class:`~.edge.EdgeMaskRCNN`, torchvision's inference with static shapes;
- :mod:`.ops`: the custom ops of that graph (multi-level ROIAlign, padded NMS) with CPU references;
- :mod:`.assets`: the shipped demo checkpoint.

Next along the data flow: ``mrcnn_edge.export`` (ONNX, validation, engine build).
"""
