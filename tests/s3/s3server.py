"""moto's standalone S3 server on 127.0.0.1, from its own virtual environment.

`moto[server]` needs a newer botocore than s3fs's aiobotocore allows, so it cannot share the project's
venv: `moto_venv` makes `.venv-moto` at the repository root (or `$EMOTIBATCH_MOTO_VENV`) on first use,
and `start` runs `moto_server` from it. The venv ignores itself in git (a `.gitignore` holding `*`).

Run `python tests/s3/s3server.py [PORT]` to keep a server up by hand.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("EMOTIBATCH_MOTO_VENV", ROOT / ".venv-moto"))
REQUIREMENT = "moto[server]>=5.1,<6"
START_TIMEOUT_S = 30.0


def moto_venv() -> Path:
    """`moto_server` in the moto venv, created on first use (under a lock: parallel sessions wait)."""
    server = VENV / "bin" / "moto_server"
    if server.exists():
        return server
    VENV.mkdir(parents=True, exist_ok=True)
    (VENV / ".gitignore").write_text("*\n")
    with open(VENV / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not server.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, REQUIREMENT], check=True)
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A running moto server and its endpoint URL; the caller terminates it."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(moto_venv()), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return process, endpoint
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start on {endpoint}") from None
            time.sleep(0.2)


if __name__ == "__main__":
    server, url = start(int(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"moto S3 server at {url} (Ctrl-C stops it)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.terminate()
