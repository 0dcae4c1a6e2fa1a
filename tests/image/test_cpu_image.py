"""The CPU image, built the way `make image` builds it and started from its own files.

A process of its own: the image's. `podman run` does not work in this sandbox (crun cannot
set its rlimits), so the test mounts the image (read-only, as the chart's
readOnlyRootFilesystem) and runs its entrypoint with `chroot` as the image's user, with the
image's environment, a writable /tmp and /code/models as the chart gives them. Needs root
(mount, chroot), as `make test` has here. The build takes about five minutes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import needs
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/llm-gateway:cpu-test"
KEY = "sk-image-test-0123456789"


def podman(*args: str) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def image(artifacts: Path) -> str:
    # the build script installs podman, buildah and mmdebstrap with apt
    needs.root("the image test installs podman with apt, mounts the image's root and chroots into it")
    needs.binary("apt-get", "apt")
    with open(artifacts / "image-build.log", "wb") as log:
        proc = subprocess.run(
            [str(ROOT / "deploy" / "docker" / "build-image.sh"), "cpu", TAG], stdout=log, stderr=subprocess.STDOUT
        )
    assert proc.returncode == 0, (artifacts / "image-build.log").read_text()[-4000:]
    subprocess.run(["podman", "image", "prune", "-f"], capture_output=True)  # the previous build's layers
    return TAG


class Mounted:
    """The image's tree, with /proc, /sys, /dev and two writable folders bound in."""

    def __init__(self, tag: str, scratch: Path, code_config: str | None = None) -> None:
        self.tag = tag
        self.root = Path(podman("image", "mount", tag))
        self.binds: list[Path] = []
        try:
            for name in ("proc", "sys", "dev"):
                self._bind(Path("/") / name, self.root / name, recursive=True)
            # /code as Takeoff users mount it: the model cache, and their config.yaml if any
            code = scratch / "code"
            (code / "models").mkdir(parents=True)
            if code_config is not None:
                (code / "config.yaml").write_text(code_config)
            tmp = scratch / "tmp"
            tmp.mkdir()
            for folder in (tmp, code, code / "models"):
                os.chown(folder, 10001, 10001)
            self._bind(tmp, self.root / "tmp")
            self._bind(code, self.root / "code")
        except BaseException:
            self.close()
            raise

    def _bind(self, source: Path, target: Path, recursive: bool = False) -> None:
        subprocess.run(["mount", "--rbind" if recursive else "--bind", str(source), str(target)], check=True)
        self.binds.append(target)

    def close(self) -> None:
        for target in reversed(self.binds):
            subprocess.run(["umount", "-R", str(target)], capture_output=True)
        subprocess.run(["podman", "image", "unmount", self.tag], capture_output=True)


@pytest.fixture
def mounted(image: str, tmp_path: Path) -> Iterator[Mounted]:
    m = Mounted(image, tmp_path)
    try:
        yield m
    finally:
        m.close()


class Running:
    """The image's entrypoint run in the mounted tree as the image's user."""

    def __init__(self, mounted: Mounted, log_path: Path) -> None:
        config = json.loads(podman("image", "inspect", mounted.tag))[0]["Config"]
        self.config = config
        self.port, management, openai = free_port(), free_port(), free_port()
        env = dict(item.split("=", 1) for item in config["Env"])
        env |= {
            "HOME": "/tmp/home",  # as the chart sets it: the root is read-only
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_MANAGEMENT_PORT": str(management),
            "GATEWAY_OPENAI_PORT": str(openai),
            "GATEWAY_API_KEYS": json.dumps([KEY]),
        }
        command = shlex.join([*config["Entrypoint"], *(config.get("Cmd") or [])])
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["chroot", "--userspec=10001:10001", str(mounted.root), "/bin/sh", "-c",
                 f"cd {shlex.quote(config['WorkingDir'])} && exec {command}"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
            )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 900
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()[-6000:]
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()[-6000:]
            time.sleep(1)

    def stop(self) -> int:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        return self.proc.returncode


@pytest.mark.timeout(3000)
def test_the_cpu_image_serves_as_its_user_on_a_read_only_root(mounted: Mounted, artifacts: Path) -> None:
    config = json.loads(podman("image", "inspect", mounted.tag))[0]["Config"]
    assert config["User"] == "10001"
    # the entrypoint picks the settings file: with no arguments and nothing at /code, the preset
    assert config["Entrypoint"] == ["/usr/local/bin/gateway-entrypoint"] and not config.get("Cmd")
    # what the image carries: the installed gateway and its baked models, no tests or venvs
    assert not (mounted.root / "opt" / "llm-gateway" / "tests").exists()
    assert (mounted.root / "opt" / "llm-gateway" / "cache" / "models").is_dir()
    options = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1] == str(mounted.root))  # fmt: skip
    assert "ro" in options.split(","), options

    run = Running(mounted, artifacts / "image-run.log")
    log_path, url = run.log_path, run.url
    try:
        run.wait_ready()
        # the process runs as the image's user, not root
        uid = next(line.split()[1] for line in Path(f"/proc/{run.proc.pid}/status").read_text().splitlines()
                   if line.startswith("Uid:"))  # fmt: skip
        assert uid == "10001"
        r = httpx.post(url + "/generate", json={"text": "Hello", "max_new_tokens": 8}, timeout=120)
        assert r.status_code == 401  # keys are on
        r = httpx.post(
            url + "/generate",
            json={"text": "Hello", "max_new_tokens": 8, "return_metadata": True},
            headers={"X-API-Key": KEY},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["text"], str) and body["text"] and body["metadata"]["generated_tokens"] >= 1
    finally:
        code = run.stop()
    # a clean stop, and nothing written outside the writable folders (the root is read-only)
    assert code == 0, log_path.read_text()[-4000:]
    assert "Read-only file system" not in log_path.read_text()


TAKEOFF_CONFIG = """\
takeoff:
  server_config:
    max_batch_size: 30
    batch_duration_millis: 50
  readers_config:
    reader1:
      model_name: embedded:smollm2-135m-instruct
      device: cpu
      consumer_group: primary
      max_seq_length: 1024
      max_batch_size: 4
      disable_cuda_graph: true
"""


@pytest.mark.timeout(3000)
def test_the_image_serves_a_takeoff_config_mounted_at_code_config_yaml(
    image: str, tmp_path: Path, artifacts: Path
) -> None:
    mounted = Mounted(image, tmp_path, code_config=TAKEOFF_CONFIG)
    try:
        run = Running(mounted, artifacts / "image-run-takeoff.log")
        try:
            run.wait_ready()
            key = {"X-API-Key": KEY}
            r = httpx.post(run.url + "/generate", json={"text": "Hello", "max_new_tokens": 8,
                                                        "return_metadata": True}, headers=key, timeout=120)  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["text"] and r.json()["metadata"]["generated_tokens"] >= 1
            # the Takeoff config's reader, as it named it, with its context length; its
            # static batch size did not cap vLLM's sequences
            groups = httpx.get(run.url + "/v1/models", headers=key).json()
            assert any(m["id"] == "primary" and m["max_model_len"] == 1024 for m in groups["data"]), groups
        finally:
            code = run.stop()
    finally:
        mounted.close()
    log = run.log_path.read_text()
    assert code == 0, log[-4000:]
    assert "is a Takeoff config" in log and "readers_config.reader1.max_batch_size (4)" in log
