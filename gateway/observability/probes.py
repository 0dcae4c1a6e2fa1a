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

The child serves many connections at once (asyncio), each with a deadline for its whole
request and a cap on open connections, so a client that trickles bytes or holds idle
connections delays no probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


# Every connection gets this long for its whole request (line and headers); at most this
# many connections are open at once (more are closed at once). A client that trickles
# bytes, or holds idle connections, can therefore delay no probe (the kubelet's come on
# connections of their own) and hold no more than its share of the cap.
REQUEST_DEADLINE_SECONDS = 2.0
MAX_CONNECTIONS = 256
MAX_HEAD_BYTES = 8192

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def answer(
    snapshot: Snapshot, stall_seconds: float, method: str, path: str, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and extra headers of one probe request."""
    if method not in ("GET", "HEAD"):
        return 405, b'{"detail": "only GET is served here"}', {}
    beat, code, raw = snapshot.read()
    path = path.split("?", 1)[0]
    if path == "/healthz":
        stalled = time.monotonic() - beat
        if stalled > stall_seconds:
            return 503, json.dumps({"status": "event loop stalled", "seconds": round(stalled, 1)}).encode(), {}
        return 200, b'{"status": "ok"}', {}
    if path == "/readyz":
        shared = json.loads(raw)
        return code, json.dumps(shared.get("ready", shared)).encode(), {}  # (or the "busy" fallback)
    if path == "/status":
        shared = json.loads(raw)
        if "status" not in shared:  # no complete snapshot could be read
            return 503, raw, {}
        if shared["keys"] is not None and not _allowed(headers, shared["keys"]):
            body = b'{"detail": "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"}'
            return 401, body, {"WWW-Authenticate": "Bearer"}
        return 200, json.dumps(shared["status"]).encode(), {}
    return 404, b'{"detail": "only /healthz, /readyz and /status are served here"}', {}


def _allowed(headers: dict[str, str], keys: list[str]) -> bool:
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
    if not key:
        return False
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = False
    for k in keys:  # no early exit: every key is compared, as on the API ports
        found |= hmac.compare_digest(digest, k)
    return found


async def _handle(
    snapshot: Snapshot, stall_seconds: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_DEADLINE_SECONDS)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        writer.close()
        return
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    code, body, extra = answer(snapshot, stall_seconds, parts[0], parts[1], headers)
    out = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}", "Content-Type: application/json"]
    out += [f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in extra.items())]
    writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + (body if parts[0] != "HEAD" else b""))
    try:
        await asyncio.wait_for(writer.drain(), REQUEST_DEADLINE_SECONDS)
    except (TimeoutError, ConnectionError):
        pass
    writer.close()


async def _serve_async(host: str, port: int, snapshot: Snapshot, stall_seconds: float, parent: int) -> None:
    open_connections = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= MAX_CONNECTIONS:  # over the cap: no slot is held
            writer.close()
            return
        open_connections += 1
        try:
            await _handle(snapshot, stall_seconds, reader, writer)
        finally:
            open_connections -= 1

    try:
        server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD_BYTES, backlog=1024)
    except OSError as exc:
        print("error", exc, flush=True)
        sys.exit(2)
    print("listening", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        while os.getppid() == parent:  # noqa: ASYNC110 - the gateway went away: so do we
            await asyncio.sleep(1.0)


def _serve(host: str, port: int, name: str, stall_seconds: float, parent: int) -> None:
    """The probe process: answer from the snapshot until the gateway goes away, many
    connections at once, each under a deadline for its whole request."""
    snapshot = Snapshot(name)
    try:
        asyncio.run(_serve_async(host, port, snapshot, stall_seconds, parent))
    finally:
        snapshot.shm.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
