"""Runs the lines of batches in the capacity live traffic leaves idle.

Every replica runs one `BatchRunner`. Each round it reads the active batches from the
batch store, validates new ones, claims lines (one replica per line) while their group's
readers have room for batch work, and sends each claimed line through the main app in
this process (the same routes, pipeline, limits, budgets and usage ledger as an online
request, as the batch's key) at the lowest priority. A line refused for capacity or a
budget (429) or by a draining server (503) is given back and retried later, never failed;
a line's answer, whatever its status, is its result (the first one written counts). When
every line has a result, one replica writes the output and error files.

Admission: a batch line is admitted only while its reader's sequences stay under its
batch capacity (`Registry.batch_capacity`: the reader's `max_in_flight` and its engine's
slots less `batches.live_headroom`, at most `batches.lines_per_reader` beside live requests
and `batches.idle_lines_per_reader` while none runs); lines past the share beside live
traffic, started while the reader was idle, are stopped and given back; live requests are
admitted against the reader's limit counting live sequences only, so batch work never
refuses a live request; inside vLLM the priority scheduler runs live sequences first and
preempts batch ones (vLLM recomputes a preempted sequence; it does not fail).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from functools import partial
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from engine_adapters.base import Work
from gateway.auth import LOCAL, KeyRing, Principal
from gateway.batches.files import BatchLine, FileDirectory, file_object, new_id, parse_batch_file
from gateway.batches.store import BatchStore
from gateway.errors import GatewayError, NotFound
from gateway.machinery.deadline import PRIORITY_RANGE
from gateway.machinery.routing import Target, group_of
from gateway.middleware.guards import INTERNAL_PRINCIPAL
from gateway.registry import BATCH_WORK, Registry
from gateway.settings import Settings

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")

LINES = Counter("gateway_batch_lines", "Batch lines that ended, by group and outcome", ["group", "outcome"])
DURATION = Histogram(
    "gateway_batch_duration_seconds",
    "Batches from creation to their end",
    ["status"],
    buckets=(10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600),
)
RETURNED = Counter(
    "gateway_batch_lines_returned",
    "Batch lines stopped to give their room to live requests (each runs again later)",
    ["group"],
)
MIN_ROUND_GAP = 0.01  # seconds between rounds at least (line ends wake the runner)


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document without the gateway's own fields (those starting with `_`)."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def _failed(result: dict[str, Any]) -> bool:
    response = result.get("response")
    return response is None or int(response.get("status_code", 500)) >= 400


class BatchRunner:
    """The batch work of one replica (see the module)."""

    def __init__(
        self, settings: Settings, registry: Registry, store: BatchStore, files: FileDirectory, keys: KeyRing
    ) -> None:
        self.settings = settings
        self.conf = settings.batches
        self.registry = registry
        self.store = store
        self.files = files
        self.keys = keys
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.app: ASGIApp | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, dict[int, asyncio.Task[None]]] = {}
        self._per_group: dict[str, int] = {}  # lines in flight per group (admitted or not yet)
        # per group, the lines still waiting for their answer, in the order they started
        self._answering: dict[str, dict[asyncio.Task[None], tuple[str, int]]] = {}
        self._given_back: dict[str, set[int]] = {}  # per batch, lines given back once already
        self._wake = asyncio.Event()  # a line ended: its room may go to the next one
        self._inputs: dict[str, list[BatchLine]] = {}
        self._cursor: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._renewed_at = 0.0
        self._swept_at = 0.0
        self.done = 0  # lines whose result this replica wrote
        self.deferred = 0  # lines refused for now (429, 503) and given back
        self.returned = 0  # lines stopped for live traffic and given back

    # -- life cycle -------------------------------------------------------------------

    def attach(self, app: ASGIApp) -> None:
        """The app batch lines are sent through (the main listener's)."""
        self.app = app

    def start(self) -> None:
        """Start the rounds (with the server's event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        """Stop the rounds and the lines in flight; give their claims back for others.

        Bounded: a task inside a cancelled wait (`wait_for`, a shielded release) may need
        the cancel again, and one that still does not stop is left behind with a warning
        (its claim lapses after `claim_seconds`), never holding the shutdown."""
        tasks = [t for t in (self._task,) if t is not None]
        tasks += [t for lines in self._running.values() for t in lines.values()]
        self._task = None
        for _ in range(3):
            if not tasks:
                return
            for t in tasks:
                t.cancel()
            done, pending = await asyncio.wait(tasks, timeout=2.0)
            for t in done:
                if not t.cancelled():
                    t.exception()  # retrieved: a line's failure is in its result already
            tasks = list(pending)
        log.warning("shutdown: %d batch task(s) did not stop; their claims lapse after claim_seconds", len(tasks))

    def lines_in_flight(self) -> int:
        """Batch lines this replica is running."""
        return sum(len(lines) for lines in self._running.values())

    def running(self) -> dict[str, int]:
        """Lines in flight per batch id (for /status)."""
        return {bid: len(lines) for bid, lines in self._running.items() if lines}

    async def _loop(self) -> None:
        while True:
            try:
                busy = await self.round()
            except asyncio.CancelledError:
                raise
            except GatewayError as exc:  # the store is away: try again later
                log.warning("batch round skipped: %s", exc)
                busy = False
            except Exception:
                log.exception("batch round failed")
                busy = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.05 if busy else self.conf.poll_seconds)
            self._wake.clear()
            await asyncio.sleep(MIN_ROUND_GAP)  # the lines ending in one engine step, in one round

    # -- one round ----------------------------------------------------------------------

    async def round(self) -> bool:
        """Move every active batch along; whether any line was started."""
        # first: every line started by an earlier round has begun to run (the loop has
        # waited since), so a stopped one releases its claim itself
        self._give_back()
        started = False
        for tenant, bid in await self.store.active():
            doc = await self.store.get("batch", tenant, bid)
            if doc is None or doc["status"] in TERMINAL:
                await self.store.set_active(tenant, bid, False)
                self._drop(bid)
                continue
            status = doc["status"]
            if status == "validating":
                await self._validate(tenant, doc)
            elif status in ("cancelling",) or (status == "in_progress" and time.time() >= doc["expires_at"]):
                final = "cancelled" if status == "cancelling" else "expired"
                for task in self._running.get(bid, {}).values():
                    task.cancel()
                if not self._running.get(bid):
                    await self._finish(tenant, doc, final)
            elif status == "in_progress":
                started = await self._dispatch(tenant, doc) or started
                done, _ = await self.store.counts(bid)  # (the API reads the counts live)
                if done >= doc["request_counts"]["total"]:
                    await self._finish(tenant, doc, "completed")
            elif status == "finalizing":  # a replica died while writing the files
                await self._finish(tenant, doc, doc.get("_final", "completed"))
        await self._renew()
        await self._sweep()
        return started

    def _give_back(self) -> None:
        """Stop the youngest lines of a group whose live traffic wants their room back.

        Lines beyond the group's room beside live traffic (admitted while it was idle)
        would otherwise hold engine slots and slow every live token until they end, which
        for long lines is minutes: the ones started last (the least work lost) are
        stopped, their engine requests aborted, and their claims given back to run again
        later. A few lines over the room (an eighth of `lines_per_reader`) are left to
        end, so a live load that comes and goes does not stop lines over and over; and a
        line is given back once at most (run again, it is left to end), so a long line
        under live traffic that comes and goes still finishes."""
        slack = max(1, self.conf.lines_per_reader // 8)
        for group, lines in self._answering.items():
            readers = [r for r in self.registry.groups().get(group, []) if r.serving]
            live = sum(r.sequences - r.batch_sequences for r in readers)
            if not live or not lines:
                continue
            capacity = sum(self.registry.batch_capacity(r, r.sequences - r.batch_sequences) for r in readers)
            excess = len(lines) - max(0, capacity - live)
            if excess <= slack:
                continue
            stopped = 0
            for task, (bid, i) in reversed(list(lines.items())):
                if stopped == excess:
                    break
                returned = self._given_back.setdefault(bid, set())
                if i in returned:
                    continue
                returned.add(i)
                lines.pop(task)
                task.cancel()
                stopped += 1
            if stopped:
                self.returned += stopped
                RETURNED.labels(group).inc(stopped)
                log.info("%d batch line(s) of group %s stopped for live traffic; they run again later", stopped, group)

    async def _sweep(self) -> None:
        """Delete files past their retention (once a minute at most)."""
        now = time.time()
        if now < self._swept_at + 60:
            return
        self._swept_at = now
        for tenant, file_id in await self.store.expired("file", now):
            await asyncio.to_thread(self.files.remove, tenant, file_id)
            await self.store.delete("file", tenant, file_id)

    async def _validate(self, tenant: str, doc: dict[str, Any]) -> None:
        bid = doc["id"]
        data = await asyncio.to_thread(self.files.read, tenant, doc["input_file_id"])
        errors: list[dict[str, Any]] = []
        lines: list[BatchLine] = []
        if data is None:
            errors.append({"code": "file_not_found", "message": "the input file was deleted", "param": "input_file_id"})
        else:
            try:
                lines = parse_batch_file(data, self.conf.max_lines)
            except GatewayError as exc:
                errors.append({"code": "invalid_file", "message": str(exc), "param": "input_file_id"})
            for line in lines:
                if line.url != doc["endpoint"]:
                    errors.append(
                        {
                            "code": "mismatched_endpoint",
                            "message": f"the url {line.url} differs from the batch's endpoint {doc['endpoint']}",
                            "param": "url",
                            "line": line.number,
                        }
                    )
                    break
        now = int(time.time())
        if errors:
            doc.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            if await self.store.replace("batch", tenant, bid, doc, "validating"):  # unless cancelled meanwhile
                await self.store.set_active(tenant, bid, False)
                DURATION.labels("failed").observe(now - doc["created_at"])
            return
        self._inputs[bid] = lines
        doc.update(status="in_progress", in_progress_at=now)
        doc["request_counts"]["total"] = len(lines)
        await self.store.replace("batch", tenant, bid, doc, "validating")

    async def _input(self, tenant: str, doc: dict[str, Any]) -> list[BatchLine] | None:
        bid = doc["id"]
        if bid not in self._inputs:
            data = await asyncio.to_thread(self.files.read, tenant, doc["input_file_id"])
            if data is None:
                return None
            self._inputs[bid] = parse_batch_file(data, self.conf.max_lines)
        return self._inputs[bid]

    def _group(self, line: BatchLine) -> str | None:
        """The consumer group `line` goes to (None: its model is unknown)."""
        task: Work = "embed" if line.url == "/v1/embeddings" else "generate"
        try:
            return group_of(self.registry, Target(line.body.get("model"), task, "model", by_model=True))[0]
        except NotFound:
            return None

    def _room(self, line: BatchLine) -> int:
        """How many more lines of `line`'s group may start now."""
        group = self._group(line)
        if group is None:
            return 1  # the line fails with the online answer's 404
        readers = [r for r in self.registry.groups().get(group, []) if r.serving]
        # live sequences now, and this replica's lines of the group, admitted or on their way
        live = sum(r.sequences - r.batch_sequences for r in readers)
        capacity = sum(self.registry.batch_capacity(r, r.sequences - r.batch_sequences) for r in readers)
        room = capacity - live - self._per_group.get(group, 0)
        return min(room, self.conf.lines_in_flight - self.lines_in_flight())

    async def _dispatch(self, tenant: str, doc: dict[str, Any]) -> bool:
        bid = doc["id"]
        if time.monotonic() < self._paused_until.get(bid, 0.0):
            return False
        lines = await self._input(tenant, doc)
        if lines is None:
            return False
        running = self._running.setdefault(bid, {})
        cursor = self._cursor.get(bid, 0)
        started = False
        while cursor < len(lines) and self._room(lines[cursor]) > 0:
            i, cursor = cursor, cursor + 1
            if i in running:
                continue
            got = await self.store.claim(bid, i, self.owner, self.conf.claim_seconds)
            if got == 1:
                principal = self._principal(doc)
                group = self._group(lines[i]) or ""
                self._per_group[group] = self._per_group.get(group, 0) + 1
                task = asyncio.get_running_loop().create_task(self._run(tenant, doc, i, lines[i], principal, group))
                running[i] = task
                self._answering.setdefault(group, {})[task] = (bid, i)
                task.add_done_callback(partial(self._line_ended, running, i, group))
                started = True
        if cursor >= len(lines):
            cursor = 0  # from the start again: lines other replicas gave up, or this one retries
        self._cursor[bid] = cursor
        return started

    def _line_ended(
        self, running: dict[int, asyncio.Task[None]], line: int, group: str, task: asyncio.Task[None]
    ) -> None:
        running.pop(line, None)
        self._per_group[group] -= 1
        self._answering.get(group, {}).pop(task, None)
        self._wake.set()

    def _principal(self, doc: dict[str, Any]) -> Principal | None:
        """The batch's key as it is now (None: the key is gone, lines fail)."""
        if not self.keys.configured:
            return LOCAL
        return self.keys.by_name(doc["_key"])

    async def _run(
        self, tenant: str, doc: dict[str, Any], i: int, line: BatchLine, principal: Principal | None, group: str
    ) -> None:
        bid = doc["id"]
        try:
            status, body, request_id, _ = await asyncio.wait_for(
                self._send(line, principal), self.conf.line_timeout_seconds
            )
        except TimeoutError:  # stuck somewhere: stopped, and run again later
            log.warning(
                "batch %s line %d took over %.0f s; it will run again", bid, i + 1, self.conf.line_timeout_seconds
            )
            status, body, request_id = 503, {"_retry_after": "1"}, None
        except asyncio.CancelledError:  # cancelled batch, shutdown, room given back: not done
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(bid, i, self.owner))
            raise
        task = asyncio.current_task()
        if task is not None:  # answered: no longer one to give back (its result is kept)
            self._answering.get(group, {}).pop(task, None)
        if status in (429, 503):  # capacity, a budget, a drain: later, never a failure
            self.deferred += 1
            retry = 1.0
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                retry = float(body.get("_retry_after", 1.0))
            self._paused_until[bid] = time.monotonic() + min(max(retry, 0.5), 30.0)
            await self.store.release(bid, i, self.owner)
            return
        result = {
            "id": new_id("batch_req_"),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        failed = status >= 400
        if await self.store.put_result(bid, i, json.dumps(result), failed):
            self.done += 1
            LINES.labels(group, "failed" if failed else "completed").inc()

    async def _send(self, line: BatchLine, principal: Principal | None) -> tuple[int, Any, str | None, str]:
        """The line's status, body, request id and group, as the online endpoint answers it."""
        if principal is None:
            gone = {"message": "the key that created this batch no longer exists", "type": "authentication_error"}
            return 401, {"error": gone}, None, ""
        assert self.app is not None, "attach() the main app first"
        app = self.app

        async def as_the_batch_key(scope: Scope, receive: Receive, send: Send) -> None:
            scope[INTERNAL_PRINCIPAL] = principal
            await app(scope, receive, send)

        headers = {"X-Priority": str(PRIORITY_RANGE)} if self._prioritised(line) else {}
        token = BATCH_WORK.set(True)
        try:
            transport = httpx.ASGITransport(app=as_the_batch_key)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=None) as client:
                r = await client.post(line.url, json=line.body, headers=headers)
        finally:
            BATCH_WORK.reset(token)
        try:
            body: Any = r.json()
        except ValueError:
            body = {"error": {"message": r.text[:1000], "type": "internal_error"}}
        if r.status_code in (429, 503) and isinstance(body, dict):
            body["_retry_after"] = r.headers.get("retry-after", "1")
        return r.status_code, body, r.headers.get("x-request-id"), self._group(line) or ""

    def _prioritised(self, line: BatchLine) -> bool:
        """Whether every reader of the line's group schedules by priority (vLLM refuses a
        priority from a first-come-first-served reader)."""
        group = self._group(line)
        readers = self.registry.groups().get(group, []) if group is not None else []
        return bool(readers) and all(r.settings.scheduling_policy == "priority" for r in readers)

    async def _renew(self) -> None:
        now = time.monotonic()
        if now - self._renewed_at < self.conf.claim_seconds / 3:
            return
        self._renewed_at = now
        for bid, lines in list(self._running.items()):
            if lines:
                await self.store.renew(bid, list(lines), self.owner, self.conf.claim_seconds)

    async def _finish(self, tenant: str, doc: dict[str, Any], final: str) -> None:
        """Write the output and error files and end the batch (one replica does it)."""
        bid = doc["id"]
        if not await self.store.lock("finish:" + bid, self.owner, 120):
            return
        fresh = await self.store.get("batch", tenant, bid)
        if fresh is None or fresh["status"] in TERMINAL:
            return
        doc = fresh
        now = int(time.time())
        if doc["status"] != "finalizing":
            was = doc["status"]
            if was == "in_progress" and final == "cancelled":
                return  # a stale round's view: the batch was not cancelled
            doc.update(status="finalizing", finalizing_at=now, _final=final)
            if not await self.store.replace("batch", tenant, bid, doc, was):
                return  # cancelled (or finished) meanwhile: the next round sees it
        final = doc["_final"]
        results = await self.store.results(bid)
        lines = await self._input(tenant, doc) or []
        out: list[str] = []
        err: list[str] = []
        for i, line in enumerate(lines):
            if i in results:
                (err if _failed(json.loads(results[i])) else out).append(results[i])
            elif final in ("expired", "cancelled"):
                code = "batch_expired" if final == "expired" else "batch_cancelled"
                message = (
                    "the batch expired before this request ran" if final == "expired" else "the batch was cancelled"
                )
                err.append(
                    json.dumps(
                        {
                            "id": new_id("batch_req_"),
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {"code": code, "message": message},
                        }
                    )
                )
        failed = sum(1 for i in results if _failed(json.loads(results[i])))
        doc["output_file_id"] = await self._write(tenant, doc, out, "output") if out else None
        doc["error_file_id"] = await self._write(tenant, doc, err, "errors") if err else None
        doc["request_counts"].update(completed=len(results) - failed, failed=failed)
        doc.update(status=final)
        doc[f"{final}_at"] = now
        doc.pop("_final", None)
        if not await self.store.replace("batch", tenant, bid, doc, "finalizing"):
            return
        await self.store.set_active(tenant, bid, False)
        await self.store.forget(bid)
        self._drop(bid)
        DURATION.labels(final).observe(now - doc["created_at"])

    async def _write(self, tenant: str, doc: dict[str, Any], lines: list[str], kind: str) -> str:
        file_id = new_id("file-")
        data = ("\n".join(lines) + "\n").encode()
        await asyncio.to_thread(self.files.write, tenant, file_id, data)
        now = int(time.time())
        expires = now + self.conf.file_retention_days * 86400
        meta = file_object(file_id, f"{doc['id']}_{kind}.jsonl", "batch_output", len(data), now, expires)
        await self.store.put("file", tenant, file_id, meta)
        return file_id

    def _drop(self, bid: str) -> None:
        self._inputs.pop(bid, None)
        self._cursor.pop(bid, None)
        self._paused_until.pop(bid, None)
        self._given_back.pop(bid, None)
        if not self._running.get(bid):
            self._running.pop(bid, None)
