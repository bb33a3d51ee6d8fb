"""Triton Python-backend model written by ``mrcnn-edge serve triton --pre-post server``.

This file is copied as ``<repo>/<name>/1/model.py``; it runs inside Triton's Python backend and
does what ``mrcnn-edge run`` does on a client: decode, letterbox, model, boxes back to the frame,
masks pasted and encoded. Clients then need nothing of ours (curl, or tritonclient in any language).

Inputs, per request (one of the two; both are ``optional`` in the config):

- ``image`` BYTES ``[1]``: an encoded image (JPEG, PNG, whatever OpenCV's ``imdecode`` reads);
- ``frame`` UINT8 ``[H,W,3]``: a raw frame, BGR (OpenCV's order, as ``Segmenter`` takes it).

Outputs, per request (N detections at or over the score threshold, best first):

- ``boxes`` FP32 ``[N,4]``: x1, y1, x2, y2 in the image's pixels;
- ``scores`` FP32 ``[N]``; ``classes`` INT32 ``[N]`` (the model's class ids); ``class_names`` BYTES ``[N]``;
- ``masks`` BYTES ``[N]``: each a JSON COCO RLE ``{"size": [h, w], "counts": "..."}``, what COCO
  result files and pycocotools' ``decode`` take.

The config's ``parameters`` set it up: ``model_file`` (in the version folder), ``backend`` (the
runtime's backend name or ``auto``), ``device`` (``auto``, ``cpu``, ``cuda``), ``score_threshold``,
``plugin_lib`` (beside the config, for TensorRT engines). On a GPU instance a TensorRT engine runs
on the instance's GPU with the runtime's CUDA pre/post-processing; an ONNX model runs on OpenVINO or
ONNX Runtime on the CPU. The requests of one ``execute`` call share model batches.

The Python that runs this file must have mrcnn-edge and numpy < 2 (Triton's Python-backend stubs
are built against numpy 1: under numpy 2 their outputs come back empty).
"""
import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: 'serve triton' reads the tensor tables below
    pb_utils = None

# name -> (ModelConfig data type without TYPE_, dims); both inputs are optional, one is sent
INPUTS = {"image": ("STRING", (1,)), "frame": ("UINT8", (-1, -1, 3))}
# name -> (ModelConfig data type without TYPE_, dims, numpy dtype of the answer)
OUTPUTS = {
    "boxes": ("FP32", (-1, 4), np.float32),
    "scores": ("FP32", (-1,), np.float32),
    "classes": ("INT32", (-1,), np.int32),
    "class_names": ("STRING", (-1,), np.object_),
    "masks": ("STRING", (-1,), np.object_),
}


class TritonPythonModel:
    """Triton's Python-backend entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args):
        try:
            import cv2  # noqa: F401 - imdecode
            from mrcnn_edge.runtime.segmenter import Segmenter
        except ImportError as exc:
            raise pb_utils.TritonModelException(
                f"mrcnn-edge cannot be imported by the Python of Triton's Python backend ({exc}): install it "
                "there with an inference backend, e.g. pip install 'mrcnn-edge[opencv,ort]' 'numpy<2'") from exc
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        folder = args["model_repository"]
        path = os.path.join(folder, args["model_version"], params["model_file"])
        plugin = os.path.join(folder, params["plugin_lib"]) if params.get("plugin_lib") else None
        backend, device = params.get("backend", "auto"), params.get("device", "auto")
        threshold = float(params.get("score_threshold", "0.5"))
        options = {}
        if params["model_file"].endswith((".plan", ".engine")):
            # the engine on this instance's GPU (Triton gives each GPU instance its device)
            gpu = int(args.get("model_instance_device_id", 0) or 0) if args.get("model_instance_kind") == "GPU" else 0
            options = {"plugin_lib": plugin, "device_id": gpu}
        self.segmenter = Segmenter.from_path(path, backend=backend, score_threshold=threshold, device=device, **options)

    def execute(self, requests):
        frames, errors = [], []
        for request in requests:
            try:
                frames.append(_frame(request))
                errors.append(None)
            except ValueError as exc:
                frames.append(None)
                errors.append(str(exc))
        good = [f for f in frames if f is not None]
        found = iter(self.segmenter.batch(good) if good else [])
        responses = []
        for frame, error in zip(frames, errors):
            if error is not None:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(error)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=_tensors(next(found))))
        return responses

    def finalize(self):
        segmenter = getattr(self, "segmenter", None)
        if segmenter is not None:
            segmenter.close()


def _frame(request):
    """The request's image as an H×W×3 uint8 BGR array; ValueError (the client's error) otherwise."""
    import cv2

    image = pb_utils.get_input_tensor_by_name(request, "image")
    frame = pb_utils.get_input_tensor_by_name(request, "frame")
    if (image is None) == (frame is None):
        raise ValueError("send one input: 'image' (encoded JPEG/PNG bytes, BYTES [1]) or 'frame' (UINT8 [H,W,3], BGR)")
    if image is not None:
        data = image.as_numpy().reshape(-1)
        if data.size != 1:
            raise ValueError(f"'image' takes one encoded image per request, got {data.size}")
        raw = data[0]
        raw = raw.encode() if isinstance(raw, str) else bytes(raw)
        decoded = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
        if decoded is None:
            raise ValueError(f"'image' ({len(raw)} bytes) is not an image OpenCV can decode (JPEG, PNG, ...)")
        return decoded
    array = frame.as_numpy()
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"'frame' must be UINT8 [H,W,3] (BGR), got {array.dtype} {list(array.shape)}")
    return array


def _tensors(detections):
    """One request's outputs (see the module docstring)."""
    coco = detections.to_coco(0)
    values = {
        "boxes": detections.boxes.reshape(-1, 4),
        "scores": detections.scores,
        "classes": detections.class_ids,
        "class_names": [name.encode() for name in detections.class_names],
        "masks": [json.dumps(c["segmentation"], separators=(",", ":")).encode() for c in coco],
    }
    return [pb_utils.Tensor(name, np.asarray(values[name], dtype=dtype).reshape(dims))
            for name, (_, dims, dtype) in OUTPUTS.items()]
