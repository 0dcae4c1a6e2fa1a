"""Run every listener of one gateway process on one event loop, sharing one runtime.

Order of events: the listeners bind first (so `/healthz` answers and `/readyz` says
503 while models load), then the readers load in the background, then one line with
the URL is printed when the gateway is ready. On SIGTERM or SIGINT readiness turns
503 at once, new requests get 503, in-flight requests get `drain_timeout_seconds`
to finish, and the process exits 0. If an engine dies, or a configured consumer group
has no reader that loaded, the process exits 1 so that a supervisor (Kubernetes) shows
the failure and restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from gateway.apis import Listener
from gateway.app import build_app, open_to_the_network
from gateway.auth import INFERENCE, KeysFileError
from gateway.errors import NotReady
from gateway.observability.metrics import LOOP_LAG
from gateway.observability.probes import ProbeServer, ProbeState
from gateway.registry import Reader
from gateway.runtime import Runtime
from gateway.serving.status import readiness_payload, status
from gateway.settings import Settings, non_default

log = logging.getLogger("gateway")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the gateway (several run at once)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def freeze_startup_heap() -> None:
    """Move what start-up allocated (modules, models, apps) out of the collector's sight.

    Otherwise every full collection walks millions of long-lived objects while tokens
    stream, stealing CPU from the engine core; vLLM's own server does the same.
    """
    gc.collect()
    gc.freeze()
    log.info("froze %d start-up objects out of the garbage collector's scans", gc.get_freeze_count())


def _listeners(runtime: Runtime) -> list[tuple[Listener, FastAPI, int]]:
    s = runtime.settings
    out: list[tuple[Listener, FastAPI, int]] = [
        ("main", build_app(runtime, "main"), s.port),
        ("management", build_app(runtime, "management"), s.effective_management_port),
    ]
    if s.openai_port is not None:
        out.append(("openai", build_app(runtime, "openai"), s.openai_port))
    return out


def _server(app: FastAPI, host: str, port: int, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_seconds)),
    )
    return _Server(config)


async def _drain(runtime: Runtime) -> None:
    """Let in-flight requests finish, up to the drain timeout; then stop the rest with a
    clear error (503, or an error event on a stream) and give those answers a moment."""
    loop = asyncio.get_running_loop()

    deadline = loop.time() + runtime.settings.drain_timeout_seconds
    while runtime.busy() and loop.time() < deadline:  # noqa: ASYNC110 - counters, no event to wait on
        await asyncio.sleep(0.05)
    if runtime.busy():
        n = runtime.cut_all(
            NotReady("the server is shutting down; the request was stopped", headers={"Retry-After": "1"})
        )
        log.warning("drain timeout: stopped %d request(s) still in flight", n)
        deadline = loop.time() + 2.0
        while runtime.busy() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def probe_state(runtime: Runtime) -> ProbeState:
    """What the probe process answers from, as of now: readiness, `/status` (or why it
    could not be read: the heartbeat that liveness depends on must go on regardless) and
    the digests of the keys that may read it."""
    code, ready = readiness_payload(runtime.registry, runtime.draining)
    try:
        # the probe port's /status is read with inference keys: no paths or raw errors
        now = status(runtime.registry, runtime.draining, runtime.started_at, runtime.continuation.health(), False)
    except RuntimeError:
        raise
    except Exception as exc:
        now = {"status": "unknown", "error": f"the status could not be read: {exc}"}
    keys = runtime.keys.digests(INFERENCE) if runtime.keys.configured else None
    return ProbeState(code, ready, now, keys)


def _kill_children() -> None:
    """SIGKILL every process this one started (vLLM's engine core and workers)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()


ENGINE_DEATH_GRACE_SECONDS = 2.0


LOOP_LAG_PERIOD = 0.1


async def watch_loop_lag(probes: ProbeServer | None = None) -> None:
    """Record how late a 100 ms timer fires: the event loop's lag, which every request and
    probe waits behind (the metric gateway_event_loop_lag_seconds); each turn is also the
    heartbeat (and readiness snapshot) the probe process answers from."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_LAG_PERIOD
        await asyncio.sleep(LOOP_LAG_PERIOD)
        LOOP_LAG.observe(max(0.0, loop.time() - due))
        if probes is not None:
            probes.beat()


async def serve(settings: Settings) -> int:
    """Serve until a signal or an engine death; return the process exit code."""
    try:
        runtime = Runtime.create(settings)
    except KeysFileError as exc:  # fail closed: a keys file that cannot be used stops the start
        log.error("cannot start: %s", exc)
        return 2
    refusal = open_to_the_network(settings, runtime.keys)
    if refusal is not None:
        # Deny by default: an open API is only ever offered to this machine. Exit before
        # loading any model, so a misconfigured deployment fails at once, visibly.
        log.error(refusal)
        await runtime.close()
        return 2
    if not runtime.keys.configured:
        log.warning("no API keys are configured: every route is open to this machine")
    changed = non_default(settings)
    if changed:
        log.info("settings that differ from the defaults: %s", changed)
    stop = asyncio.Event()
    exit_code = 0

    def on_signal(sig: signal.Signals) -> None:
        if runtime.draining and stop.is_set():
            # a second Ctrl-C (or SIGTERM): stop now, engine processes included
            log.warning("received %s again: exiting now without draining", sig.name)
            _kill_children()
            os._exit(130)
        log.info("received %s: draining (send it again to exit at once)", sig.name)
        runtime.draining = True
        stop.set()

    def on_engine_death(reader: Reader) -> None:
        nonlocal exit_code
        log.error("engine of reader %s died; exiting so the supervisor restarts us", reader.id)
        exit_code = 1
        stop.set()

    runtime.registry.on_engine_death = on_engine_death
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    servers = [
        (name, _server(app, settings.management_host if name == "management" else settings.host, port, settings))
        for name, app, port in _listeners(runtime)
    ]
    # Bind every port before serving any, so a port in use is one clear error and exit.
    sockets = []
    for name, srv in servers:
        try:
            sockets.append(srv.config.bind_socket())
        except SystemExit:  # uvicorn logs the OSError and exits
            log.error(
                "cannot listen on %s:%d for the %s API; is the port in use?", srv.config.host, srv.config.port, name
            )
            for sock in sockets:
                sock.close()
            await runtime.close()
            return 2
    probes = None
    if settings.probe_port is not None:
        try:
            probes = ProbeServer(lambda: probe_state(runtime), settings.host, settings.probe_port)
        except OSError as exc:
            log.error("cannot listen on %s:%d for the probes: %s", settings.host, settings.probe_port, exc)
            for sock in sockets:
                sock.close()
            await runtime.close()
            return 2
        probes.start()
    tasks = [
        asyncio.create_task(srv.serve(sockets=[sock]), name=f"listener-{name}")
        for (name, srv), sock in zip(servers, sockets, strict=True)
    ]
    while not all(srv.started for _, srv in servers):  # noqa: ASYNC110 - uvicorn offers only this flag
        await asyncio.sleep(0.02)
    ports = ", ".join(f"{name} {srv.config.host}:{srv.config.port}" for name, srv in servers)
    log.info("listening: %s; loading models", ports)

    runtime.start()

    async def announce() -> None:
        await runtime.registry.wait_loaded()
        readers = list(runtime.registry.readers.values())
        for r in readers:
            if r.state == "failed":
                log.error("Reader %s failed to load: %s", r.id, r.error)
        # A configured consumer group with no reader that loaded can never become ready:
        # exit with the reasons rather than stay up unready (a supervisor shows the crash).
        dead_groups = runtime.registry.unserved_groups()
        if dead_groups:
            log.error("no reader of consumer group(s) %s loaded; exiting", ", ".join(dead_groups))
            nonlocal exit_code
            exit_code = 1
            stop.set()
            return
        freeze_startup_heap()
        log.info("Gateway ready: http://%s:%d", settings.host, settings.port)

    announcer = asyncio.create_task(announce())
    lag_watch = asyncio.create_task(watch_loop_lag(probes))
    await stop.wait()
    announcer.cancel()
    runtime.draining = True
    if probes is not None:
        probes.beat()  # the probe port says "draining" now, not at the next beat
    if exit_code == 0:
        await _drain(runtime)
    else:
        # An engine died: stay up a moment so in-flight requests get their errors and
        # probes see /readyz fail, then exit non-zero for the supervisor to restart us.
        await asyncio.sleep(ENGINE_DEATH_GRACE_SECONDS)
    for _, srv in servers:
        srv.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    lag_watch.cancel()  # it kept beating through the drain: liveness holds while draining
    if probes is not None:
        probes.stop()
    await runtime.close()
    log.info("stopped")
    return exit_code
