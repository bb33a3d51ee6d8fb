"""``mrcnn-edge serve triton MODEL --repo DIR``: a Triton Inference Server model repository.

Layout (Triton's model repository: one folder per model, numbered version folders)::

    DIR/<name>/config.pbtxt              ModelConfig in protobuf text format
    DIR/<name>/1/model.plan | model.onnx the default file names of the TensorRT / ONNX Runtime backends
    DIR/<name>/libmrcnn_edge_plugins.so  the TensorRT plugin an engine needs (beside the model)
    DIR/<name>/tritonserver.sh           the exact command that serves the repository

The plugin library sits inside the model's folder, not in a folder of its own at DIR's top level:
Triton takes every folder there for a model. ``config.pbtxt`` follows Triton's
``model_config.proto``:

- an engine: ``platform: "tensorrt_plan"``, ``instance_group`` on the GPU, CUDA graphs off
  (``optimization.cuda.graphs: false``: NMS gives data-dependent shapes);
- a portable ONNX: ``backend: "onnxruntime"`` on the CPU (``KIND_CPU``), for servers without GPUs;
- the batch as the model was built: ``max_batch_size: 0`` and the full static shapes ``[B, ...]``
  (Triton then adds no batch dimension of its own; our models have a fixed B);
- the mrcnn-edge metadata in ``parameters`` (``mrcnn_edge.<key>`` -> JSON string), which the
  ``triton://`` runtime backend reads back through the ModelConfig RPC.

Nothing is half-written: the model folder is built under a temporary name and renamed into place.
DIR may be absent, empty, or a Triton repository (folders with a ``config.pbtxt``); a model folder
that mrcnn-edge did not write is never replaced.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from mrcnn_edge.core.atomic import atomic_dir
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.backends.triton import DEFAULT_GRPC_PORT, PARAMETER_PREFIX, encode_parameters

from mrcnn_edge.export.serve.cli import ServedModel

__all__ = ["add_arguments", "write", "config_pbtxt", "tritonserver_command", "MODEL_FILES"]

MODEL_FILES = {"engine": "model.plan", "onnx": "model.onnx"}  # Triton's default_model_filename per backend
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, metavar="DIR", help="the Triton model repository to write into")
    p.add_argument("--name", default=None, help="model name in the repository (default: MODEL's file stem)")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (instance_group count)")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port in the printed command")


def _quote(text: str) -> str:
    """A protobuf text-format string literal. ``json.dumps`` leaves only ASCII (non-ASCII as
    ``\\uXXXX``), so escaping backslash, quote and control characters is enough."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _tensor(t: Any) -> str:
    dims = ", ".join(str(d) for d in t.dims)
    return f'  {{\n    name: {_quote(t.name)}\n    data_type: TYPE_{t.datatype}\n    dims: [ {dims} ]\n  }}'


def config_pbtxt(model: ServedModel, name: str, instances: int = 1) -> str:
    """The ``config.pbtxt`` text for ``model`` (see the module docstring)."""
    inputs = [t for t in model.io if t.is_input]
    outputs = [t for t in model.io if not t.is_input]
    lines = [f"name: {_quote(name)}"]
    if model.kind == "engine":
        lines += ['platform: "tensorrt_plan"', f'default_model_filename: "{MODEL_FILES["engine"]}"']
    else:
        lines += ['backend: "onnxruntime"', f'default_model_filename: "{MODEL_FILES["onnx"]}"']
    lines.append("max_batch_size: 0")
    lines.append("input [\n" + ",\n".join(_tensor(t) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor(t) for t in outputs) + "\n]")
    kind = "KIND_GPU" if model.kind == "engine" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: {kind}\n  }}\n]")
    lines.append("version_policy: { latest: { num_versions: 1 } }")
    if model.kind == "engine":
        # NMS makes the output row counts data-dependent: a captured CUDA graph would replay stale shapes
        lines.append("optimization {\n  cuda {\n    graphs: false\n  }\n}")
    for key, value in encode_parameters(model.meta).items():
        lines.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}")
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


def _fill(folder: Path, model: ServedModel, name: str, instances: int, final: Path, grpc_port: int) -> list[str]:
    """Write the model folder's content into ``folder`` (its final place will be ``final``)."""
    version = folder / "1"
    version.mkdir()
    shutil.copy2(model.path, version / MODEL_FILES[model.kind])
    plugin = None
    if model.kind == "engine" and model.plugin_library is not None:
        shutil.copy2(model.plugin_library, folder / model.plugin_library.name)
        plugin = final / model.plugin_library.name
    (folder / "config.pbtxt").write_text(config_pbtxt(model, name, instances))
    cmd = " ".join(shlex.quote(c) for c in tritonserver_command(final.parent, plugin, grpc_port))
    script = folder / "tritonserver.sh"
    script.write_text("#!/bin/sh\n# written by mrcnn-edge serve triton: serves the repository this model is in\n"
                      f"exec {cmd} \"$@\"\n")
    script.chmod(0o755)
    return [cmd]


def write(model: ServedModel, args: argparse.Namespace) -> list[str]:
    """Write the repository entry for ``model``; return the lines to print."""
    if model.kind == "onnx" and model.needs_plugin:
        raise UserError(f"{model.path.name} is the tensorrt flavor, which Triton's ONNX Runtime backend cannot run: "
                        f"build an engine with 'mrcnn-edge build {model.path}' and serve that, or export "
                        "with '--flavor portable'")
    if args.instances < 1:
        raise UserError("--instances must be 1 or more")
    name = args.name or model.path.stem
    if not _NAME.match(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (set it with --name)")
    repo = Path(args.repo).expanduser().resolve()
    _check_repo(repo, name)
    final = repo / name
    if repo.exists():
        with atomic_dir(final) as tmp:
            cmd = _fill(tmp, model, name, args.instances, final, args.grpc_port)
    else:  # a new repository appears whole or not at all
        with atomic_dir(repo) as tmp:
            (tmp / name).mkdir()
            cmd = _fill(tmp / name, model, name, args.instances, final, args.grpc_port)
    backend = "TensorRT (tensorrt_plan, GPU)" if model.kind == "engine" else "ONNX Runtime (CPU)"
    return [
        f"wrote Triton model {name!r} ({backend}) to {final}" + (os.linesep + f"plugin: {model.plugin_library.name} "
                                                                 f"(built against TensorRT {model.plugin_tensorrt})"
                                                                 if model.kind == "engine" and model.plugin_library else ""),
        f"serve it with: {cmd[0]}",
        f"   (or {final / 'tritonserver.sh'})",
        f"then: mrcnn-edge run triton://localhost:{args.grpc_port}/{name} --source ...",
    ]
