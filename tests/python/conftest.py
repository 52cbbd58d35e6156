"""Fixtures: the real bursar binary in front of the real mock upstream.

Binaries come from BURSAR_BIN_DIR (default: target/debug of the repository),
built by the test command before pytest runs.
"""

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("BURSAR_BIN_DIR", ROOT / "target" / "debug"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


@pytest.fixture(scope="session")
def mock_upstream():
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN_DIR / "bursar-load"), "mock", "--listen", f"127.0.0.1:{port}", "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port, proc, "bursar-load mock")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gateway(mock_upstream):
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bursar.toml"
        cfg.write_text(
            f"""
[server]
workers = 2

[[providers]]
name = "local"
kind = "openai"
base_url = "{mock_upstream}"
api_key = "sk-upstream-secret"
models = ["gpt-4o-mini", "text-embedding-3-small"]

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"""
        )
        proc = subprocess.Popen(
            [
                str(BIN_DIR / "bursar"), "serve", "--config", str(cfg),
                "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
            ],
            cwd=tmp,
            env={**os.environ, "BURSAR_LOG": "warn"},
        )
        wait_port(admin, proc, "bursar")
        yield f"http://127.0.0.1:{port}/v1"
        proc.terminate()
        proc.wait(timeout=20)
