"""Stand-ins for libraries this machine cannot have (TensorRT, cuda-python), faithful to their documentation."""
