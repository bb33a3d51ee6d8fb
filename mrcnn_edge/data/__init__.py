"""Data and training: synthetic shapes, COCO datasets in and AP out, the demo model's trainer.

- :mod:`.shapes`: draw one synthetic scene (image + visible instance masks);
- :mod:`.dataset`: write a COCO dataset of such scenes (``mrcnn-edge synth``) and summarise one;
- :mod:`.video`: videos of moving shapes (``mrcnn-edge synth-video``, the demo's camera);
- :mod:`.coco`: read a COCO dataset, score detections (box and mask AP, pycocotools);
- :mod:`.train`: train and evaluate a Mask R-CNN on such a dataset (``mrcnn-edge train``).

Imports nothing at package level: each module states what it needs.
"""
