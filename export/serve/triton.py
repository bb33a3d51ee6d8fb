"""``mrcnn-edge serve triton MODEL --repo DIR``: a Triton Inference Server model repository.

Layout (Triton's model repository: one folder per model, numbered version folders)::

    DIR/<name>/config.pbtxt              ModelConfig in protobuf text format
    DIR/<name>/1/model.plan | model.onnx the default file names of the TensorRT / ONNX Runtime backends
    DIR/<name>/libmrcnn_edge_plugins.so  the TensorRT plugin an engine needs (beside the model)
    DIR/<name>/libmrcnn_edge_plugins_autoreg.so  what Triton's TensorRT backend loads (plugins=)
    DIR/<name>/tritonserver.sh           the exact command that serves the repository

The plugin libraries sit inside the model's folder, not in a folder of its own at DIR's top level:
Triton takes every folder there for a model. Triton's TensorRT backend only dlopens what
``--backend-config=tensorrt,plugins=`` names, so it gets the self-registering library, which finds
``libmrcnn_edge_plugins.so`` beside it; with ``--pre-post server`` the runtime inside the Python
backend loads ``libmrcnn_edge_plugins.so`` itself, through TensorRT's ``load_library``. ``config.pbtxt`` follows Triton's
``model_config.proto``:

- an engine: ``platform: "tensorrt_plan"``, ``instance_group`` on the GPU, CUDA graphs off
  (``optimization.cuda.graphs: false``: NMS gives data-dependent shapes);
- a portable ONNX: ``backend: "onnxruntime"`` on the CPU (``KIND_CPU``), for servers without GPUs;
- the batch as the model was built: ``max_batch_size: 0`` and the full static shapes ``[B, ...]``
  from the contract (``mrcnn_edge.core.contract.OUTPUTS``; ``num_detections`` is ``[B, 1]``, or
  ``[B]`` in an ONNX exported before that). With ``max_batch_size: 0`` Triton adds no batch
  dimension of its own and ``dims`` are the full shapes; our models have a fixed B;
- the mrcnn-edge metadata in ``parameters`` (``mrcnn_edge.<key>`` -> JSON string), which the
  ``triton://`` runtime backend reads back through the ModelConfig RPC.

``--pre-post server`` writes a Python-backend model instead (``backend: "python"``,
``1/model.py`` = ``mrcnn_edge/export/serve/prepost_model.py``, the model file beside it): encoded
images or raw frames in, boxes, scores, classes, class names and COCO RLE masks out, with the
runtime's own pre- and post-processing running inside Triton. Its tensors are that file's
``INPUTS``/``OUTPUTS`` tables, its settings ``parameters`` (``model_file``, ``backend``, ``device``,
``score_threshold``, ``plugin_lib``), plus the metadata with ``mrcnn_edge.pre_post = "server"``.

Nothing is half-written: the model folder is built under a temporary name and renamed into place.
DIR may be absent, empty, or a Triton repository (folders with a ``config.pbtxt``); a model folder
that mrcnn-edge did not write is never replaced.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
from pathlib import Path

from mrcnn_edge.core.atomic import atomic_dir
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.backends.triton import DEFAULT_GRPC_PORT, PARAMETER_PREFIX, PRE_POST_KEY, encode_parameters

from mrcnn_edge.export.serve import prepost_model
from mrcnn_edge.export.serve.cli import ServedModel

__all__ = ["add_arguments", "write", "config_pbtxt", "tritonserver_command", "MODEL_FILES", "PRE_POST"]

MODEL_FILES = {"engine": "model.plan", "onnx": "model.onnx"}  # Triton's default_model_filename per backend
PRE_POST = {
    "client": "clients letterbox and post-process (mrcnn-edge run triton://...); the server runs the model only",
    "server": "a Python-backend model runs the runtime's pre/post on the server: images in, detections out",
}
DEFAULT_HTTP_PORT = 8000  # tritonserver's --http-port default
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, metavar="DIR", help="the Triton model repository to write into")
    p.add_argument("--name", default=None, help="model name in the repository (default: MODEL's file stem)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (instance_group count)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port in the printed command")
    p.add_argument("--pre-post", choices=tuple(PRE_POST), default="client",
                   help="where letterbox and post-processing run: " + "; ".join(f"{k}: {v}" for k, v in PRE_POST.items()))
    p.add_argument("--score-threshold", type=float, default=None, metavar="S",
                   help="--pre-post server: detections under S are not returned (default: the runtime's, 0.5)")


def _quote(text: str) -> str:
    """A protobuf text-format string literal. ``json.dumps`` leaves only ASCII (non-ASCII as
    ``\\uXXXX``), so escaping backslash, quote and control characters is enough."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _tensor(name: str, datatype: str, dims: tuple[int, ...], optional: bool = False) -> str:
    shape = ", ".join(str(d) for d in dims)
    extra = "\n    optional: true" if optional else ""
    return f'  {{\n    name: {_quote(name)}\n    data_type: TYPE_{datatype}\n    dims: [ {shape} ]{extra}\n  }}'


def _parameter(key: str, value: str) -> str:
    return f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}"


def config_pbtxt(model: ServedModel, name: str, instances: int = 1, pre_post: str = "client",
                 score_threshold: float = 0.5, plugin_file: str | None = None) -> str:
    """The ``config.pbtxt`` text for ``model`` (see the module docstring)."""
    server = pre_post == "server"
    lines = [f"name: {_quote(name)}"]
    if server:
        lines += ['backend: "python"']
        inputs = [_tensor(n, t, d, optional=True) for n, (t, d) in prepost_model.INPUTS.items()]
        outputs = [_tensor(n, t, d) for n, (t, d, _) in prepost_model.OUTPUTS.items()]
    else:
        if model.kind == "engine":
            lines += ['platform: "tensorrt_plan"', f'default_model_filename: "{MODEL_FILES["engine"]}"']
        else:
            lines += ['backend: "onnxruntime"', f'default_model_filename: "{MODEL_FILES["onnx"]}"']
        inputs = [_tensor(t.name, t.datatype, t.dims) for t in model.io if t.is_input]
        outputs = [_tensor(t.name, t.datatype, t.dims) for t in model.io if not t.is_input]
    lines.append("max_batch_size: 0")
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(outputs) + "\n]")
    kind = "KIND_GPU" if model.kind == "engine" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: {kind}\n  }}\n]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    if model.kind == "engine" and not server:
        # NMS makes the output row counts data-dependent: a captured CUDA graph would replay stale shapes
        lines.append("optimization {\n  cuda {\n    graphs: false\n  }\n}")
    meta = dict(model.meta)
    if server:
        meta[PRE_POST_KEY] = "server"
        settings = {"model_file": MODEL_FILES[model.kind], "backend": "auto", "device": "auto",
                    "score_threshold": repr(float(score_threshold)), "plugin_lib": plugin_file or ""}
        lines += [_parameter(k, v) for k, v in settings.items()]
    lines += [_parameter(k, v) for k, v in encode_parameters(meta).items()]
    return "\n".join(lines) + "\n"


def tritonserver_command(repo: Path, plugin: Path | None, grpc_port: int = DEFAULT_GRPC_PORT) -> list[str]:
    """``tritonserver`` with the repository and, for a plugin model, the TensorRT backend's ``plugins``
    option (the documented way the TensorRT backend loads plugin libraries before deserializing)."""
    cmd = ["tritonserver", f"--model-repository={repo}", f"--grpc-port={grpc_port}"]
    if plugin is not None:
        cmd.append(f"--backend-config=tensorrt,plugins={plugin}")
    return cmd


def _ours(model_dir: Path) -> bool:
    config = model_dir / "config.pbtxt"
    try:
        return config.is_file() and f'key: "{PARAMETER_PREFIX}' in config.read_text(errors="replace")
    except OSError:
        return False


def _check_repo(repo: Path, name: str) -> None:
    """Refuse a DIR that is not (or not yet) a Triton model repository, and a model folder not ours."""
    if repo.exists() and not repo.is_dir():
        raise UserError(f"--repo {repo} exists and is not a folder")
    if not repo.is_dir():
        return
    for entry in sorted(repo.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden entries are not models to Triton either
        if not entry.is_dir() or not (entry / "config.pbtxt").is_file():
            raise UserError(f"--repo {repo} exists and holds {entry.name}, which is not a Triton model folder: "
                            "give a new or empty folder, or a Triton model repository")
    target = repo / name
    if target.exists() and not _ours(target):
        raise UserError(f"{target} is a Triton model that mrcnn-edge did not write; choose another --name")


def _fill(folder: Path, model: ServedModel, args: argparse.Namespace, name: str, final: Path) -> str:
    """Write the model folder's content into ``folder`` (its final place will be ``final``); return
    the tritonserver command line."""
    server = args.pre_post == "server"
    version = folder / "1"
    version.mkdir()
    shutil.copy2(model.path, version / MODEL_FILES[model.kind])
    if server:
        shutil.copy2(Path(prepost_model.__file__), version / "model.py")
        if model.kind == "engine":  # the runtime reads an engine's metadata from its sidecar
            from mrcnn_edge.core.metadata import sidecar_path

            shutil.copy2(sidecar_path(model.path), sidecar_path(version / MODEL_FILES["engine"]))
    plugin = None
    if model.kind == "engine" and model.plugin_library is not None:
        shutil.copy2(model.plugin_library, folder / model.plugin_library.name)
        plugin = final / model.plugin_library.name
        if not server:  # the TensorRT backend loads the self-registering one before deserializing
            autoreg = _autoreg_library(model.plugin_library)
            shutil.copy2(autoreg, folder / autoreg.name)
            plugin = final / autoreg.name
    threshold = _score_threshold(args)
    (folder / "config.pbtxt").write_text(config_pbtxt(model, name, args.instances, args.pre_post, threshold,
                                                      plugin.name if plugin and server else None))
    cmd = " ".join(shlex.quote(c) for c in tritonserver_command(final.parent, None if server else plugin, args.grpc_port))
    script = folder / "tritonserver.sh"
    script.write_text("#!/bin/sh\n# written by mrcnn-edge serve triton: serves the repository this model is in\n"
                      f"exec {cmd} \"$@\"\n")
    script.chmod(0o755)
    return cmd


def _autoreg_library(plugin_library: Path) -> Path:
    """The self-registering library that ``mrcnn-edge build-plugin`` writes beside the plugin library."""
    from mrcnn_edge.core.paths import PLUGIN_AUTOREG_LIBRARY_NAME

    autoreg = plugin_library.with_name(PLUGIN_AUTOREG_LIBRARY_NAME)
    if not autoreg.is_file():
        raise UserError(f"{autoreg.name} not found beside {plugin_library}: Triton's TensorRT backend loads the plugin "
                        "through it; rebuild with 'mrcnn-edge build-plugin', which writes both")
    return autoreg


def _score_threshold(args: argparse.Namespace) -> float:
    if args.pre_post != "server":
        if args.score_threshold is not None:
            raise UserError("--score-threshold applies to --pre-post server; with client pre/post, pass it to "
                            "'mrcnn-edge run triton://...'")
        return 0.0
    if args.score_threshold is None:
        from mrcnn_edge.runtime.segmenter import DEFAULT_SCORE_THRESHOLD

        return DEFAULT_SCORE_THRESHOLD
    if not 0.0 <= args.score_threshold <= 1.0:
        raise UserError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    return float(args.score_threshold)


def write(model: ServedModel, args: argparse.Namespace) -> list[str]:
    """Write the repository entry for ``model``; return the lines to print."""
    server = args.pre_post == "server"
    if model.kind == "engine" and model.plugin_library is not None and not server:
        _autoreg_library(model.plugin_library)  # refused before anything is written
    if model.kind == "onnx" and model.needs_plugin:
        who = "the runtime's CPU backends inside Triton" if server else "Triton's ONNX Runtime backend"
        raise UserError(f"{model.path.name} is the tensorrt flavor, which {who} cannot run: "
                        f"build an engine with 'mrcnn-edge build {model.path}' and serve that, or export "
                        "with '--flavor portable'")
    if args.instances < 1:
        raise UserError("--instances must be 1 or more")
    _score_threshold(args)  # refused before anything is written
    name = args.name or model.path.stem
    if not _NAME.match(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (set it with --name)")
    repo = Path(args.repo).expanduser().resolve()
    _check_repo(repo, name)
    final = repo / name
    if repo.exists():
        with atomic_dir(final) as tmp:
            cmd = _fill(tmp, model, args, name, final)
    else:  # a new repository appears whole or not at all
        with atomic_dir(repo) as tmp:
            (tmp / name).mkdir()
            cmd = _fill(tmp / name, model, args, name, final)
    if server:
        backend = ("Python backend: TensorRT with CUDA pre/post on the GPU" if model.kind == "engine"
                   else "Python backend: OpenVINO or ONNX Runtime on the CPU") + ", pre/post on the server"
    else:
        backend = "TensorRT (tensorrt_plan, GPU)" if model.kind == "engine" else "ONNX Runtime (CPU)"
    lines = [f"wrote Triton model {name!r} ({backend}) to {final}"]
    if model.kind == "engine" and model.plugin_library:
        lines.append(f"plugin: {model.plugin_library.name} (built against TensorRT {model.plugin_tensorrt})")
    lines += [f"serve it with: {cmd}", f"   (or {final / 'tritonserver.sh'})"]
    if server:
        # clients name the protocol's datatype: a config's TYPE_STRING is BYTES on the wire
        inputs = ", ".join(f"'{n}' ({'BYTES' if t == 'STRING' else t} {list(d)})" for n, (t, d) in prepost_model.INPUTS.items())
        lines += [
            "   (the Python of Triton's Python backend needs mrcnn-edge and numpy < 2: "
            "pip install 'mrcnn-edge[opencv,ort]' 'numpy<2' there)",
            f"then: POST http://localhost:{DEFAULT_HTTP_PORT}/v2/models/{name}/infer with one of {inputs}; "
            f"it answers {', '.join(prepost_model.OUTPUTS)} (masks: COCO RLE as JSON)",
        ]
    else:
        lines.append(f"then: mrcnn-edge run triton://localhost:{args.grpc_port}/{name} --source ...")
    return lines
