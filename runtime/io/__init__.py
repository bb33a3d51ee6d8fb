"""mrcnn_edge.runtime.io: where frames come from (cameras, streams, files) and where drawings go
(window, video, image folder). OpenCV is imported in one place, ``opencv``."""
