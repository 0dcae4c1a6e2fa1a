"""Probes on a port of their own (`probe_port`), answered by a small child process.

A burst of a thousand streams keeps the event loop busy for up to a second, and a probe on
the API ports waits behind it: Kubernetes would take a pod out of its Service exactly when
it is busiest. A thread in this process does not help enough (it waits for the interpreter
lock the busy loop holds: 391-447 ms at the 99th percentile in the benchmark), so the
probes are answered by a child process with an interpreter of its own, from a snapshot the
event loop writes into shared memory every 100 ms.

`/readyz` answers from that snapshot (the body `/readyz` has on the API ports). `/healthz`
also checks that the event loop still turns: a snapshot older than `stall_seconds` makes
liveness fail, so a loop that is stuck (not merely busy) still gets the pod restarted.
`/status` answers the main port's `/status` as of the last snapshot (at most 100 ms old),
to callers with a key of the inference scope when keys are configured (the snapshot
carries the keys' SHA-256 digests, never a key), so a dashboard reads it during a burst
too. The child exits when the gateway does (it watches its parent).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from multiprocessing import shared_memory
from typing import Any

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class ProbeState:
    """What the probe process answers from: readiness (status code and body), the main
    port's `/status` body, and the SHA-256 digests of the keys that may read it (None when
    no key is configured: `/status` is open)."""

    code: int
    ready: dict[str, Any]
    status: dict[str, Any]
    keys: list[bytes] | None


# Called by the event loop every 100 ms; the gateway's server hands it in, so this module
# knows neither the runtime nor the serving layer.
Feed = Callable[[], ProbeState]

# sequence (odd while written), heartbeat (CLOCK_MONOTONIC, shared by every process),
# readiness status code, body length; then the body: JSON with the readiness body
# ("ready"), the status body ("status") and the hex digests of the keys that may read it
# ("keys", null when no key is configured)
HEADER = struct.Struct("<IdHI")
MAX_BODY = 1024 * 1024
SIZE = HEADER.size + MAX_BODY


class Snapshot:
    """The shared memory the gateway writes and the probe process reads (a seqlock)."""

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            self.shm = shared_memory.SharedMemory(create=True, size=SIZE)
            self.owner = True
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            self.owner = False
            # Python < 3.13 registers an attached segment with this process's resource
            # tracker, which would unlink it at exit: the gateway owns it
            from multiprocessing import resource_tracker

            resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]
        self.seq = 0

    @property
    def name(self) -> str:
        return self.shm.name

    @property
    def buf(self) -> memoryview:
        assert self.shm.buf is not None  # None only once closed
        return self.shm.buf

    def write(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        if len(data) > MAX_BODY:  # a status too large to share: readiness still is
            data = json.dumps({**body, "status": {"error": "the status is too large for the probe port"}}).encode()
        buf = self.buf
        self.seq += 1  # odd: being written
        struct.pack_into("<I", buf, 0, self.seq)
        buf[HEADER.size : HEADER.size + len(data)] = data
        self.seq += 1
        HEADER.pack_into(buf, 0, self.seq, time.monotonic(), code, len(data))

    def read(self) -> tuple[float, int, bytes]:
        """Heartbeat, status code and body of the last complete write."""
        buf = self.buf
        for _ in range(100):
            seq, beat, code, length = HEADER.unpack_from(buf, 0)
            body = bytes(buf[HEADER.size : HEADER.size + length])
            if seq % 2 == 0 and struct.unpack_from("<I", buf, 0)[0] == seq:
                return beat, code, body
            time.sleep(0.0005)
        return 0.0, 503, b'{"status": "busy"}'

    def close(self) -> None:
        self.shm.close()
        if self.owner:
            self.shm.unlink()


class ProbeServer:
    """Starts, feeds (from `feed`) and stops the probe process."""

    def __init__(self, feed: Feed, host: str, port: int, stall_seconds: float = 30.0) -> None:
        self.feed = feed
        self.snapshot = Snapshot()
        self.beat()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.observability.probes", host, str(port), self.snapshot.name,
             str(stall_seconds), str(os.getpid())],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().split()  # "listening PORT" or the bind error
        if first[:1] != ["listening"]:
            self.proc.wait(10)
            self.snapshot.close()
            raise OSError(" ".join(first[1:]) or "the probe process did not start")
        self.port = int(first[1])

    def beat(self) -> None:
        """Called from the event loop every 100 ms: it still turns; readiness and status
        as of now (a feed that fails skips this beat's snapshot, never the heartbeat's
        next turn)."""
        try:
            state = self.feed()
        except RuntimeError:  # a reader added or removed while reading: next beat
            return
        keys = [d.hex() for d in state.keys] if state.keys is not None else None
        self.snapshot.write(state.code, {"ready": state.ready, "status": state.status, "keys": keys})

    def start(self) -> None:
        log.info("probes (/healthz, /readyz) on port %d, answered by process %d", self.port, self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.snapshot.close()


def _serve(host: str, port: int, name: str, stall_seconds: float, parent: int) -> None:
    """The probe process: answer from the snapshot until the gateway goes away."""
    snapshot = Snapshot(name)

    class Handler(BaseHTTPRequestHandler):
        timeout = 2  # one connection at a time: a client that stalls is dropped quickly

        def do_GET(self) -> None:  # the standard library names it
            beat, code, raw = snapshot.read()
            path = self.path.split("?", 1)[0]
            stalled = time.monotonic() - beat
            headers = {}
            if path == "/healthz":
                if stalled > stall_seconds:
                    code, body = (
                        503,
                        json.dumps({"status": "event loop stalled", "seconds": round(stalled, 1)}).encode(),
                    )
                else:
                    code, body = 200, b'{"status": "ok"}'
            elif path == "/readyz":
                shared = json.loads(raw)
                body = json.dumps(shared.get("ready", shared)).encode()  # (or the "busy" fallback)
            elif path == "/status":
                shared = json.loads(raw)
                if "status" not in shared:  # no complete snapshot could be read
                    code, body = 503, raw
                elif shared["keys"] is not None and not self._allowed(shared["keys"]):
                    code, body = (
                        401,
                        b'{"detail": "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"}',
                    )
                    headers["WWW-Authenticate"] = "Bearer"
                else:
                    code, body = 200, json.dumps(shared["status"]).encode()
            else:
                code, body = 404, b'{"detail": "only /healthz, /readyz and /status are served here"}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _allowed(self, keys: list[str]) -> bool:
            auth = self.headers.get("Authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else self.headers.get("X-API-Key")
            if not key:
                return False
            digest = hashlib.sha256(key.encode()).hexdigest()
            found = False
            for k in keys:  # no early exit: every key is compared, as on the API ports
                found |= hmac.compare_digest(digest, k)
            return found

        def log_message(self, format: str, *args: Any) -> None:  # quiet: probes are not requests
            pass

    try:
        httpd = HTTPServer((host, port), Handler)
    except OSError as exc:
        print("error", exc, flush=True)
        sys.exit(2)
    print("listening", httpd.server_address[1], flush=True)

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        httpd.serve_forever()
    finally:
        snapshot.shm.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
