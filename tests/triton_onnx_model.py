"""Triton Python-backend model for the tests: ``1/model.onnx`` run by ONNX Runtime on the CPU.

The pytriton wheel's ``tritonserver`` has the Python backend only, so the repository that
``mrcnn-edge serve triton model.onnx`` writes for Triton's ONNX Runtime backend is served here by
this file instead (``tests/triton_server.py`` swaps the backend and keeps the config's tensors):
inputs and outputs are the config's, by name, with its dims and datatypes.

Test-only parameters in the config (string values): ``delay_s`` sleeps before each answer (a run
long enough to restart the server under); ``broken_output`` names an output answered with the
wrong number of elements (``"masks:empty"`` or ``"masks:short"``), as a broken server would.
"""
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.delay = float(params.get("delay_s", "0"))
        self.broken = params.get("broken_output", "")
        self.outputs = [o["name"] for o in config["output"]]
        folder = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            results = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
            if self.broken:
                name, how = self.broken.split(":")
                value = results[name]
                results[name] = value.reshape(-1)[:0] if how == "empty" else value.reshape(-1)[: value.size // 2]
            if self.delay:
                time.sleep(self.delay)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in results.items()]))
        return responses
