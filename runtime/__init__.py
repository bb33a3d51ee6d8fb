"""mrcnn_edge.runtime: run an exported model on frames, with no torch (Jetson-friendly)."""
