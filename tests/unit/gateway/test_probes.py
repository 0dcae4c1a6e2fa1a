"""The probe listener: its own port, answered by a child process from a snapshot the event
loop writes, so a busy event loop does not delay probes; liveness fails only when the loop
stops turning. (How fast probes answer under load is measured in benchmarks/frontend.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import httpx

from gateway.auth import KeyRing
from gateway.observability.probes import ProbeServer
from gateway.server import probe_state, watch_loop_lag


class Registry:
    def __init__(self) -> None:
        reader = SimpleNamespace(
            id="primary-0",
            group="primary",
            settings=SimpleNamespace(kind="scripted", model="scripted"),
            task="generate",
            state="ready",
            in_flight=0,
            batch_sequences=0,
            error=None,
            engine=None,
        )
        self.readers = {"primary-0": reader}
        self.is_ready = True

    def ready(self) -> bool:
        return self.is_ready

    def groups(self) -> dict:
        return {"primary": list(self.readers.values())}


def fake_runtime(keys: KeyRing | None = None) -> SimpleNamespace:
    from gateway.continuation import MemoryStore
    from gateway.settings import ContinuationSettings

    return SimpleNamespace(
        registry=Registry(),
        draining=False,
        started_at=time.time(),
        keys=keys or KeyRing([], [], None),
        continuation=MemoryStore(ContinuationSettings()),
    )


def test_probes_answer_while_the_event_loop_is_blocked():
    runtime = fake_runtime()
    probes = ProbeServer(lambda: probe_state(runtime), "127.0.0.1", 0, stall_seconds=1.0)
    probes.start()
    url = f"http://127.0.0.1:{probes.port}"
    try:
        loop = asyncio.new_event_loop()
        beating = loop.create_task(watch_loop_lag(probes))
        loop.run_until_complete(asyncio.sleep(0.3))  # the loop turns: heartbeats
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        # the event loop is busy with Python work for 3 s (the thread alone answers meanwhile)
        latencies = []
        liveness = []
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                r = httpx.get(url + "/readyz", timeout=5)
                latencies.append((time.perf_counter() - t0, r.status_code))
                liveness.append(httpx.get(url + "/healthz", timeout=5).status_code)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()

        def busy() -> None:
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                sum(range(1000))

        loop.call_soon(busy)
        loop.run_until_complete(asyncio.sleep(0))
        done.set()
        prober.join()
        assert len(latencies) >= 10 and all(code == 200 for _, code in latencies)
        # a loop that stopped turning for longer than stall_seconds fails liveness (the
        # first second passes: busy is not stuck)...
        assert liveness[0] == 200 and 503 in liveness, liveness
        # ...and passes again once it turns
        loop.run_until_complete(asyncio.sleep(0.3))
        assert httpx.get(url + "/healthz").status_code == 200
        beating.cancel()
        loop.run_until_complete(asyncio.gather(beating, return_exceptions=True))
        loop.close()
        # readiness follows the registry and draining; other paths are not served here
        runtime.registry.is_ready = False
        probes.beat()  # what the event loop does every 100 ms
        assert httpx.get(url + "/readyz").json()["status"] == "not ready"
        runtime.registry.is_ready, runtime.draining = True, True
        probes.beat()
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and r.json() == {"status": "draining", "readers": {"primary-0": "ready"}}
        assert httpx.get(url + "/generate").status_code == 404
        # without keys, the status is open (as on the API ports) and says draining
        status = httpx.get(url + "/status").json()
        assert status["status"] == "draining" and status["live_readers"]["primary-0"]["state"] == "ready"
    finally:
        probes.stop()
    assert probes.proc.returncode is not None  # the child is gone with its port


def test_a_taken_probe_port_is_a_clear_error():
    import socket

    import pytest

    runtime = fake_runtime()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            ProbeServer(lambda: probe_state(runtime), "127.0.0.1", taken.getsockname()[1])


def test_status_on_the_probe_port_needs_a_key_when_keys_are_configured(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n  - {name: ops, key: sk-ops-0123456789, scopes: [admin]}\n")
    runtime = fake_runtime(KeyRing(["sk-team-0123456789"], ["sk-admin-0123456789"], keys_file))
    probes = ProbeServer(lambda: probe_state(runtime), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{probes.port}"
    try:
        for headers in (
            {},
            {"Authorization": "Bearer sk-wrong-0123456789"},
            {"X-API-Key": "sk-ops-0123456789"},
        ):  # ops: no inference scope
            r = httpx.get(url + "/status", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert "API key" in r.json()["detail"]
        for headers in ({"Authorization": "Bearer sk-team-0123456789"}, {"X-API-Key": "sk-admin-0123456789"}):
            r = httpx.get(url + "/status", headers=headers)
            assert r.status_code == 200 and r.json()["live_readers"]["primary-0"]["consumer_group"] == "primary"
        # probes stay public; the snapshot carries digests, never a key
        assert httpx.get(url + "/readyz").status_code == 200
        assert b"sk-team-0123456789" not in bytes(probes.snapshot.buf[: probes.snapshot.buf.nbytes])
    finally:
        probes.stop()


def test_a_status_that_cannot_be_read_does_not_stop_the_heartbeat():
    runtime = fake_runtime()
    probes = ProbeServer(lambda: probe_state(runtime), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{probes.port}"
    try:
        runtime.registry.groups = None  # status() fails on it
        probes.beat()  # no error: liveness depends on the beats going on
        assert httpx.get(url + "/readyz").status_code == 200
        assert "could not be read" in httpx.get(url + "/status").json()["error"]
    finally:
        probes.stop()


def test_idle_and_trickling_connections_hold_no_probe():
    """64 idle connections and 8 that send a byte every 0.3 s never finishing a line: the
    probes are answered all the same (the old one-at-a-time server timed them all out),
    and each held connection is dropped at its request deadline."""
    import socket

    from gateway.observability import probes as probe_module

    runtime = fake_runtime()
    probes = ProbeServer(lambda: probe_state(runtime), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{probes.port}"
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        for _ in range(64):
            held.append(socket.create_connection(("127.0.0.1", probes.port)))
        tricklers = [socket.create_connection(("127.0.0.1", probes.port)) for _ in range(8)]

        def trickle() -> None:
            while not stop.is_set():
                for s in tricklers:
                    try:
                        s.send(b"G")
                    except OSError:
                        pass
                time.sleep(0.3)

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.2)
        for _ in range(10):
            assert httpx.get(url + "/healthz", timeout=2).json() == {"status": "ok"}
            assert httpx.get(url + "/readyz", timeout=2).status_code == 200
        # past the deadline for a whole request, the held connections are closed by the server
        time.sleep(probe_module.REQUEST_DEADLINE_SECONDS + 0.5)
        for s in [held[0], tricklers[0]]:
            s.settimeout(2)
            assert s.recv(10) == b""
    finally:
        stop.set()
        for s in held:
            s.close()
        probes.stop()


def test_connections_beyond_the_cap_are_closed_at_once():
    import socket

    runtime = fake_runtime()
    probes = ProbeServer(lambda: probe_state(runtime), "127.0.0.1", 0)
    held = []
    try:
        from gateway.observability.probes import MAX_CONNECTIONS

        for _ in range(MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", probes.port)))
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", probes.port))
        extra.settimeout(1.5)
        assert extra.recv(10) == b""  # closed at once, not held open until a deadline
        extra.close()
    finally:
        for s in held:
            s.close()
        probes.stop()
