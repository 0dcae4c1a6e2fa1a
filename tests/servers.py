"""Starting and stopping real gateway processes for e2e and contract tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 600.0


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    """A gateway started by a test, with its URLs and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    management_port: int
    openai_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.openai_port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client on the main port."""
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120.0), **kwargs)

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until /readyz is 200; fail with the log tail if the process dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"gateway not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_loaded(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Block until no reader is loading any more; returns /status's readers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                readers = httpx.get(self.url + "/status", timeout=2).json()["live_readers"]
                if all(r["state"] != "loading" for r in readers.values()):
                    return dict(readers)
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"readers still loading after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM, wait, then kill the whole process group (engine processes included)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.proc.wait()


def start_gateway(
    log_path: Path, config: str = "configs/default.yaml", env: dict[str, str] | None = None, wait: bool = True
) -> GatewayProcess:
    """Start `gateway serve` on free 127.0.0.1 ports, in its own process group."""
    port, mport, oport = free_port(), free_port(), free_port()
    full_env = dict(os.environ)
    full_env.update(
        {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_MANAGEMENT_PORT": str(mport),
            "GATEWAY_OPENAI_PORT": str(oport),
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env or {})
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", config],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=ROOT,
        start_new_session=True,
    )
    log.close()
    gw = GatewayProcess(proc, port, mport, oport, log_path)
    if wait:
        try:
            gw.wait_ready()
        except BaseException:
            gw.stop()
            raise
    return gw


def client_venv(folder: Path, requirement: str) -> Path:
    """The python of a virtual environment of its own holding `requirement`, for a client
    whose pins clash with ours (made once per machine, kept under tests/artifacts/)."""
    python = folder / "bin" / "python"
    if not (folder / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], check=True)
        (folder / ".ready").touch()
    return python


def npm_client(folder: Path, package: str, binary: str) -> Path:
    """The executable `binary` of an npm package installed into a folder of its own
    (made once per machine, kept under tests/artifacts/)."""
    executable = folder / "node_modules" / ".bin" / binary
    if not (folder / ".ready").exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error", package],
            check=True,
        )
        (folder / ".ready").touch()
    return executable
