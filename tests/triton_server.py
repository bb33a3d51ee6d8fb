"""A real Triton Inference Server for the tests: ``tritonserver`` from the ``nvidia-pytriton`` wheel.

The wheel ships Triton (2.51 in 0.7.0) with the Python backend only: the binary in
``pytriton/tritonserver/bin``, its libraries in ``nvidia_pytriton.libs/``, and one Python-backend stub
per Python version in ``pytriton/tritonserver/python_backend_stubs/<X.Y>/``. What it takes to run it
outside pytriton, found by trying:

- the stub of this interpreter's version copied into ``backends/python/`` (where the Python backend
  looks for it; pytriton copies it the same way);
- the server's libraries and this interpreter's own ``LIBDIR`` on ``LD_LIBRARY_PATH`` (the stub
  links ``libpython3.X.so.1.0``; a system libpython of another build must not be picked up);
- the venv's ``bin`` first on ``PATH``: the embedded interpreter finds its prefix, and with it the
  venv's site-packages, through the ``python3`` on ``PATH``;
- numpy < 2 in that environment: with numpy 2 every output of the stub came back empty.

The project's own venv has numpy 2, so the server gets a venv of its own, made on first use under
``~/.cache/mrcnn-edge/`` and keyed by the interpreter, the package pins, this checkout and its
``pyproject.toml``: nvidia-pytriton (without its client-side dependencies), numpy < 2, ONNX Runtime,
OpenCV, and this checkout installed editable (the ``--pre-post server`` model imports
``mrcnn_edge.runtime`` inside Triton). It is built under a temporary name and renamed into place,
under a file lock, so parallel test runs share one. Tests skip, with the reason, only where the
package index cannot be reached or the wheel has no server for this platform.

:class:`TritonServer` binds 127.0.0.1 only, on free ports (kept across :meth:`TritonServer.restart`),
waits for readiness in a bounded loop, and always stops (use it as a context manager or call
:meth:`TritonServer.stop` in a finalizer).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["SERVER_PACKAGES", "server_venv", "TritonServer", "free_port", "serve_onnx_with_python_backend"]

ROOT = Path(__file__).resolve().parents[1]
SERVER_PACKAGES = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime>=1.20", "opencv-python-headless>=4.8")
"""What the server's venv holds besides this checkout (nvidia-pytriton installed without its deps:
they are pytriton's client side, which the server does not run)."""
_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrcnn-edge"
# pip's words when the index or the package cannot be reached: then the tests skip, saying so
_UNREACHABLE = ("No matching distribution", "Could not find a version", "Network is unreachable",
                "Failed to establish a new connection", "Temporary failure in name resolution",
                "Max retries exceeded", "ProxyError", "SSLError")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _venv_name() -> tuple[str, str]:
    """(prefix of this checkout's server venvs, this one's name): keyed by the interpreter, the pins
    and the package layout the editable install maps (pyproject's [tool.setuptools]; the
    dependencies do not matter, the checkout is installed without them)."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib  # Python >= 3.11; on 3.10 the whole file is the key
    except ImportError:
        layout = text
    else:
        layout = json.dumps(tomllib.loads(text)["tool"]["setuptools"], sort_keys=True)
    prefix = f"triton-venv-{_digest(str(ROOT))}-"
    return prefix, prefix + _digest(sys.version, sys.executable, layout, *SERVER_PACKAGES)


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()
        if any(word in out for word in _UNREACHABLE):
            pytest.skip(f"cannot install the Triton server's venv (package index unreachable?): {out.splitlines()[-1]}")
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{out[-3000:]}")


def _stub_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _build(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    _pip(python, "--no-deps", SERVER_PACKAGES[0])
    _pip(python, *SERVER_PACKAGES[1:])
    _pip(python, "--no-deps", "-e", str(ROOT))
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    stub = site / "pytriton" / "tritonserver" / "python_backend_stubs" / _stub_version() / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.skip(f"nvidia-pytriton has no Python-backend stub for Python {_stub_version()}")
    shutil.copy2(stub, site / "pytriton" / "tritonserver" / "backends" / "python" / stub.name)


def server_venv() -> Path:
    """The server's venv (made on first use; see the module docstring)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("nvidia-pytriton ships tritonserver for x86-64 Linux only")
    _CACHE.mkdir(parents=True, exist_ok=True)
    prefix, name = _venv_name()
    venv = _CACHE / name
    with open(_CACHE / "triton-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building the same venv
        if not (venv / "ready").is_file():
            tmp = _CACHE / f"{name}.tmp{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _build(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for stale in _CACHE.glob(prefix + "*"):  # this checkout's older venvs (~0.5 GB each)
                if stale != tmp:
                    shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(venv)  # the venv's scripts name the temporary path; we only run bin/python
            (venv / "ready").write_text(" ".join(SERVER_PACKAGES) + "\n")
    return venv


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{_stub_version()}" / "site-packages"


class TritonServer:
    """``tritonserver`` serving ``repo`` from ``venv`` on 127.0.0.1 (see the module docstring)."""

    def __init__(self, repo: Path, venv: Path, log: Path) -> None:
        self.repo, self.venv, self.log = Path(repo), Path(venv), Path(log)
        self.grpc_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def url(self, model: str) -> str:
        return f"triton://127.0.0.1:{self.grpc_port}/{model}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        server = _site(self.venv) / "pytriton" / "tritonserver"
        return [str(server / "bin" / "tritonserver"), f"--model-repository={self.repo}",
                f"--backend-directory={server / 'backends'}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--allow-metrics=false", "--exit-timeout-secs=10"]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(_site(self.venv) / "nvidia_pytriton.libs")]
        if sysconfig.get_config_var("Py_ENABLE_SHARED"):
            libs.append(str(sysconfig.get_config_var("LIBDIR")))
        env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # nothing of this process's Python
            env.pop(var, None)
        env["OMP_NUM_THREADS"] = "1"
        return env

    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise RuntimeError("tritonserver is already running")
        self.starts += 1
        with open(self.log, "a") as log:
            log.write(f"---- start {self.starts}: {' '.join(self.command())}\n")
            log.flush()
            self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"tritonserver exited with {code} while starting:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM (Triton unloads its models, finishes what is in flight, exits), SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stubs go with it
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def inference_count(self, model: str) -> int:
        """Successful inferences of ``model`` since this server process started (Triton's statistics
        extension, ``GET /v2/models/<model>/stats``)."""
        with urllib.request.urlopen(f"{self.http}/v2/models/{model}/stats", timeout=5) as r:
            stats = json.loads(r.read())
        return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])

    def infer_http(self, model: str, inputs: dict[str, tuple[str, list[int], bytes]]) -> dict:
        """``POST /v2/models/<model>/infer`` as curl would send it, with the standard library only:
        ``inputs`` name -> (KServe datatype, shape, raw bytes) in the binary tensor extension (a BYTES
        element is its 4-byte little-endian length, then the bytes); outputs come back as JSON.
        Returns the response's ``outputs`` by name; an error answer raises ``urllib.error.HTTPError``."""
        header = {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                              "parameters": {"binary_data_size": len(raw)}}
                             for name, (datatype, shape, raw) in inputs.items()]}
        head = json.dumps(header).encode()
        request = urllib.request.Request(
            f"{self.http}/v2/models/{model}/infer", data=head + b"".join(raw for _, _, raw in inputs.values()),
            method="POST", headers={"Inference-Header-Content-Length": str(len(head)),
                                    "Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=60) as r:
            return {o["name"]: o for o in json.loads(r.read())["outputs"]}

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_onnx_with_python_backend(model_dir: Path, **parameters: str) -> None:
    """Make a model folder that ``serve triton model.onnx`` wrote (Triton's ONNX Runtime backend) run
    on this Python-backend-only server: ``backend: "python"`` with ``tests/triton_onnx_model.py`` as
    ``1/model.py``; its tensors, batch, instances and ``parameters`` stay as written, and the
    test-only ``parameters`` given here are added (see that file)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = Path(model_dir) / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    if config.backend != "onnxruntime":
        raise ValueError(f"{path} is not an ONNX Runtime model (backend {config.backend!r})")
    config.backend = "python"
    config.ClearField("default_model_filename")  # the Python backend's default is model.py
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    path.write_text(text_format.MessageToString(config))
    shutil.copy2(Path(__file__).with_name("triton_onnx_model.py"), Path(model_dir) / "1" / "model.py")

