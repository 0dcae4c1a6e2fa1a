"""Probes on a port of their own (`probe_port`), answered by a thread.

A burst of a thousand streams keeps the event loop busy for up to a second, and a probe on
the API ports waits behind it: Kubernetes would take a pod out of its Service exactly when
it is busiest. This listener runs in its own thread with the standard library's HTTP
server, so a probe waits at most for the interpreter's thread switch, not for the loop.

`/readyz` reads the registry's plain attributes (as `/readyz` on the API ports does).
`/healthz` also checks that the event loop still turns: the loop stamps a heartbeat every
100 ms (`beat`), and a heartbeat older than `stall_seconds` makes liveness fail, so a loop
that is stuck (not merely busy) still gets the pod restarted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any

from gateway.serving.status import readiness_payload

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger("gateway")


class ProbeServer:
    """`/healthz` and `/readyz` on `host:port`, in a daemon thread."""

    def __init__(self, runtime: Runtime, host: str, port: int, stall_seconds: float = 30.0) -> None:
        self.runtime = runtime
        self.stall_seconds = stall_seconds
        self.last_beat = time.monotonic()
        probe = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 2  # one connection at a time: a client that stalls is dropped quickly

            def do_GET(self) -> None:  # the standard library names it
                code, body = probe.answer(self.path.split("?", 1)[0])
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: probes are not requests
                pass

        # one thread serves every probe in turn: no thread to start per probe, which under a
        # busy event loop would cost one more wait for the interpreter lock
        self.httpd = HTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def beat(self) -> None:
        """Called from the event loop: it still turns."""
        self.last_beat = time.monotonic()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/healthz":
            stalled = time.monotonic() - self.last_beat
            if stalled > self.stall_seconds:
                return 503, {"status": "event loop stalled", "seconds": round(stalled, 1)}
            return 200, {"status": "ok"}
        if path == "/readyz":
            for _ in range(3):  # the loop may add or remove a reader while we read
                try:
                    return readiness_payload(self.runtime.registry, self.runtime.draining)
                except RuntimeError:
                    continue
            return 503, {"status": "busy"}
        return 404, {"detail": "only /healthz and /readyz are served here"}

    def start(self) -> None:
        self.thread.start()
        log.info("probes (/healthz, /readyz) on %s:%d, answered by a thread", *self.httpd.server_address[:2])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
