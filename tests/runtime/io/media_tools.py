"""Real counterparts for the recorder tests: ffmpeg serving a live stream on 127.0.0.1, ffprobe
reading what was written, a small tmpfs for a full disk. Imported by the tests of this folder
(pytest's prepend import mode puts it on ``sys.path``); not a test module itself.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None or FFPROBE is None,
                                  reason="needs ffmpeg and ffprobe (apt-get install -y ffmpeg)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``, read from /proc/net/tcp: a probe connection
    would be the one client that ``-listen 1`` serves."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in table.readlines()[1:]))


def serve(port: int, seconds: float, fps: int = 25, size: str = "160x120") -> subprocess.Popen | None:
    """ffmpeg serving one client a synthetic stream in real time (-re) for ``seconds``, returned once
    it listens (a loaded machine can take seconds to start it); None if it never did."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
           "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}", "-c:v", "mpeg2video", "-q:v", "5",
           "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        if listening(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    return None


def serve_or_fail(port: int, seconds: float, **kw) -> subprocess.Popen:
    proc = serve(port, seconds, **kw)
    if proc is None:
        pytest.fail("ffmpeg did not listen on 127.0.0.1 within 15 s")
    return proc


@dataclass
class Probe:
    duration: float      # seconds, as the container says (the stream's when the container has none)
    frames: int          # frames decoded by ffprobe, one by one
    rc: int


def probe(path: str | Path) -> Probe:
    """ffprobe decodes every frame of ``path``'s first video stream and reads its duration."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "format=duration:stream=nb_read_frames,duration", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60)
    info = json.loads(out.stdout or "{}")
    stream = (info.get("streams") or [{}])[0]
    duration = info.get("format", {}).get("duration") or stream.get("duration") or 0
    return Probe(float(duration), int(stream.get("nb_read_frames") or 0), out.returncode)


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int) -> Iterator[bool]:
    """Mount a ``size_kb`` tmpfs on ``folder`` (as root, as CI runs); yields False where mounting
    is refused (the caller then injects the writer's failure instead)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    done = mount is not None and subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    try:
        yield done
    finally:
        if done:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (``.name.xxxx.part...``) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and ".part" in p.name)
