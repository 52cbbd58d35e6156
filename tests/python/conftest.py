"""Fixtures: the real bursar binary in front of the real mock upstream.

Binaries come from BURSAR_BIN_DIR (default: target/debug of the repository),
built by the test command before pytest runs.
"""

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The control-plane address of the session's gateway (set by its fixture).
ADDRS = {}
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


@contextlib.contextmanager
def running_gateway(config: str, env: dict | None = None):
    """`bursar serve` on `config` in a fresh directory, ports chosen by the
    gateway (it prints them on its first stdout line); yields the data-plane
    and control-plane addresses, and stops it on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bursar.toml"
        cfg.write_text(config)
        proc = subprocess.Popen(
            [
                str(BIN_DIR / "bursar"), "serve", "--config", str(cfg),
                "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            ],
            cwd=tmp,
            env={**os.environ, "BURSAR_LOG": "warn", **(env or {})},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            words = proc.stdout.readline().split()
            if words[:3] != ["bursar", "listening", "on"]:
                raise RuntimeError(f"bursar did not start: {words!r}")
            yield words[3], words[5]
        finally:
            proc.terminate()
            proc.wait(timeout=20)


@pytest.fixture(scope="session")
def mock_upstream():
    # Port 0: the mock prints the address it bound on its first stdout line.
    proc = subprocess.Popen(
        [str(BIN_DIR / "bursar-load"), "mock", "--listen", "127.0.0.1:0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    words = proc.stdout.readline().split()
    if words[:3] != ["mock", "listening", "on"]:
        raise RuntimeError(f"bursar-load mock did not start: {words!r}")
    yield f"http://{words[3]}/v1"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gateway(mock_upstream):
    config = f"""
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

[[virtual_keys]]
name = "one-at-a-time"
key = "sk-one-at-a-time"
rate_limit = {{ requests_per_minute = 2 }}

[admin]
token = "admin-secret"

[[virtual_keys]]
name = "logged"
key = "sk-logged-key"

[[virtual_keys]]
name = "strict-dollar"
key = "sk-strict-dollar"
budget = {{ limit_usd = "1", reset = "1d" }}

[[virtual_keys]]
name = "tiny-budget"
key = "sk-tiny-budget"
budget = {{ limit_usd = "0.00002", reset = "1d" }}

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"
"""
    with running_gateway(config) as (data, control):
        ADDRS["admin"] = control
        yield f"http://{data}/v1"


@pytest.fixture()
def admin(gateway):
    """The control plane's base URL (the admin API, with its token)."""
    return f"http://{ADDRS['admin']}"
