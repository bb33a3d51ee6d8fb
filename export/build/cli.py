"""``mrcnn-edge build-plugin`` and ``mrcnn-edge build``: the TensorRT plugin library and engines.

Cheap to import: TensorRT, onnx and the compilers are touched only when a command runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mrcnn_edge.core.cliutil import positive_float, positive_int

__all__ = [
    "DESCRIPTION_BUILD_PLUGIN",
    "DESCRIPTION_BUILD",
    "add_build_plugin_arguments",
    "run_build_plugin",
    "add_build_arguments",
    "run_build",
]

DESCRIPTION_BUILD_PLUGIN = (
    "Compile the MultilevelRoIAlign TensorRT plugin (libmrcnn_edge_plugins.so, for loadLibrary: "
    "'mrcnn-edge build' and 'run', trtexec --dynamicPlugins) and, next to it, "
    "libmrcnn_edge_plugins_autoreg.so, which registers the plugin when merely loaded (Triton's plugins=, "
    "DeepStream's custom-lib-path, LD_PRELOAD), from the sources shipped with mrcnn-edge. Needs nvcc (the "
    "CUDA toolkit) and TensorRT's headers (>= 10.3; JetPack's libnvinfer-dev or a desktop TensorRT "
    "install), no GPU. Written by default to the mrcnn-edge cache, where 'mrcnn-edge build' finds them; "
    "the files are replaced only once both are complete. "
    "--cuda-archs auto builds for this machine's GPU as the CUDA driver reports it (sm_87 on a Jetson "
    "Orin) or, with none, for Turing and newer."
)
DESCRIPTION_BUILD = (
    "Build a TensorRT engine from an ONNX model exported by 'mrcnn-edge export'. The network is "
    "strongly typed: the precision is the ONNX model's (export with --precision fp16 for a half "
    "engine). Loads the plugin library for tensorrt-flavor models, keeps a timing cache that makes "
    "rebuilds faster, and writes MODEL.engine and its metadata MODEL.engine.json, both only once "
    "complete. Needs TensorRT and an NVIDIA GPU: build on the device that will run the engine."
)


# ---- build-plugin -------------------------------------------------------------------------------


def add_build_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    import os

    from mrcnn_edge.export.build.plugin_library import default_plugin_path

    parser.add_argument("-o", "--output", metavar="LIB", default=str(default_plugin_path()),
                        help="folder to write both libraries to, or the path of libmrcnn_edge_plugins.so in it "
                             "(the libraries keep their names: one loads the other by name)")
    parser.add_argument("--tensorrt-include", metavar="DIR", default="auto",
                        help="folder with NvInferRuntime.h; auto: the usual places (see --check)")
    parser.add_argument("--cuda-home", metavar="DIR", default="auto",
                        help="CUDA toolkit folder with bin/nvcc; auto: $CUDACXX, $CUDA_HOME, PATH, /usr/local/cuda")
    parser.add_argument("--cuda-archs", metavar="LIST", default="auto",
                        help="compute capabilities, e.g. 87 (Orin) or 75,86,89; auto: this machine's GPU, "
                             "else Turing and newer; all: Turing and newer")
    parser.add_argument("--no-cmake", action="store_true", help="compile with one nvcc command even if cmake is there")
    parser.add_argument("-j", "--jobs", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="parallel compile jobs")
    parser.add_argument("--check", action="store_true", help="print the toolchain found and build nothing")


def run_build_plugin(args: argparse.Namespace) -> int:
    from mrcnn_edge.export.build import plugin_library as pb

    auto = ("", "auto")
    toolchain = pb.find_toolchain(
        None if args.tensorrt_include in auto else args.tensorrt_include,
        None if args.cuda_home in auto else args.cuda_home,
    )
    archs = pb.resolve_cuda_archs(args.cuda_archs, toolchain.nvcc)
    note = pb.check_driver_supports_toolkit(toolchain.cuda_version)
    for line in toolchain.describe():
        print(line)
    if note:
        print(note)
    print(f"architectures:     sm_{', sm_'.join(map(str, archs))} (+ PTX of sm_{max(archs)})")
    if args.check:
        return 0
    output = Path(args.output).expanduser()
    if output.is_dir() or args.output.endswith(("/", "\\")):
        output = output / pb.LIBRARY_NAME
    pb.build_plugin_library(output, toolchain, archs, use_cmake=False if args.no_cmake else None, jobs=args.jobs)
    hint = "" if output.resolve() == pb.default_plugin_path().resolve() else f" --plugin-lib {output}"
    print(f"next: mrcnn-edge build MODEL.onnx -o MODEL.engine{hint}")
    return 0


# ---- build --------------------------------------------------------------------------------------


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    from mrcnn_edge.export.build.engine import default_timing_cache
    from mrcnn_edge.export.build.plugin_library import default_plugin_path

    parser.add_argument("onnx", metavar="MODEL.onnx", help="ONNX model from 'mrcnn-edge export'")
    parser.add_argument("-o", "--output", metavar="MODEL.engine", default=argparse.SUPPRESS,
                        help="engine to write; its metadata goes to MODEL.engine.json "
                             "(default: MODEL.engine next to the ONNX)")
    parser.add_argument("--plugin-lib", metavar="LIB", default=argparse.SUPPRESS,
                        help=f"plugin library (default: {default_plugin_path()}, where 'mrcnn-edge build-plugin' "
                             "writes, when it exists)")
    parser.add_argument("--workspace", type=positive_float, metavar="GIB", default=argparse.SUPPRESS,
                        help="limit of TensorRT's workspace memory pool in GiB (default: TensorRT's, the GPU's memory)")
    parser.add_argument("--timing-cache", metavar="FILE", default=str(default_timing_cache()),
                        help="tactic timing cache to reuse and update")
    parser.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def _describe(meta: dict) -> str:
    size = meta.get("input_size")
    size = "x".join(map(str, size)) if isinstance(size, list) else size
    return (f"{meta.get('arch', '?')}, {meta.get('num_classes', '?')} classes, input {size}, "
            f"batch {meta.get('batch', '?')}, {meta.get('flavor', '?')} flavor, {meta.get('precision', '?')}")


def run_build(args: argparse.Namespace) -> int:
    from mrcnn_edge.export.build.engine import build_engine

    onnx_path = Path(args.onnx).expanduser()
    output = getattr(args, "output", None)
    engine_path = Path(output).expanduser() if output else onnx_path.with_suffix(".engine")
    meta = build_engine(
        onnx_path,
        engine_path,
        plugin_lib=getattr(args, "plugin_lib", None),
        workspace_gib=getattr(args, "workspace", None),
        timing_cache=None if args.no_timing_cache else args.timing_cache,
        verbose=args.verbose,
    )
    print(f"  {_describe(meta)}")
    return 0
