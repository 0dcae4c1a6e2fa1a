"""OpenAI's Files and Batch APIs (gateway/batches/, gateway/serving/batches_api.py) on the
scripted engine, driven by the unmodified openai SDK: lines answered as online requests,
checks that name the bad line, tenants, cancel, a restart and two replicas on a real Redis,
and live traffic that batch work never refuses."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gateway.settings import BatchSettings, ContinuationSettings, ReaderSettings
from tests.unit.conftest import make_settings, running

A, B, A2 = "sk-batch-a-0123456789", "sk-batch-b-0123456789", "sk-batch-a2-0123456789"
ADMIN = "sk-batch-admin-0123456789"
FAST = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"eos_after": 6})]
MINILM = ReaderSettings(
    id="embed-0", consumer_group="embed", kind="sentence-transformers", model="embedded:all-minilm-l6-v2"
)


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    keys = [
        {"name": "alice", "key": A, "tenant": "acme"},
        {"name": "alice-2", "key": A2, "tenant": "acme"},
        {"name": "bob", "key": B, "tenant": "globex"},
        {"name": "ops", "key": ADMIN, "permissions": ["admin"]},
    ]
    path.write_text(yaml.safe_dump({"keys": keys}))
    return path


def settings_for(tmp_path: Path, readers: list[ReaderSettings] = FAST, **batches: Any) -> Any:
    conf = {"enabled": True, "directory": tmp_path / "files", "poll_seconds": 0.05, **batches}
    return make_settings(api_keys_file=keys_file(tmp_path), readers=readers, batches=BatchSettings(**conf))


def sdk(c: Any, key: str = A) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=c, max_retries=0)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"question {i}"}]
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "primary", "messages": messages, "max_tokens": 5, "temperature": 0, **body}}  # fmt: skip


def wait_for(
    client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = ("completed",), timeout: float = 60, *runners: Any
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until or batch.status in ("failed", "expired", "cancelled", "completed"):
            return batch
        state = [(r.done, r.deferred, r.lines_in_flight(), dict(r._per_group)) for r in runners]
        assert time.monotonic() < deadline, (batch, state)  # what each replica's runner was doing
        time.sleep(0.05)


def output(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).content.decode().splitlines()]


def paced(token_delay: float, words: int) -> list[ReaderSettings]:
    """A reader whose answers run to max_tokens (a fixed reply of `words` * 2 tokens, no
    end of sequence before it), `token_delay` s a token: lines of a known length."""
    scripted = {"token_delay": token_delay, "eos_after": 10**6, "reply": " go" * words}
    return [ReaderSettings(id="primary-0", kind="scripted", model="scripted", max_in_flight=16, scripted=scripted)]


def start_batch(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    """Upload `lines` and start a chat batch over them."""
    f = client.files.create(file=("a.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def test_a_chat_completions_batch_answers_as_the_online_endpoint(tmp_path):
    with running(settings_for(tmp_path)) as c:
        client = sdk(c)
        lines = [chat_line(i) for i in range(5)]
        f = client.files.create(file=("chat.jsonl", jsonl(lines)), purpose="batch")
        assert f.purpose == "batch" and f.bytes == len(jsonl(lines)) and f.filename == "chat.jsonl"
        raw = c.get(f"/v1/files/{f.id}", headers={"Authorization": f"Bearer {A}"}).json()
        assert not [k for k in raw if k.startswith("_")]  # the gateway's own fields stay inside
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                      metadata={"job": "nightly"})  # fmt: skip
        assert batch.status == "validating" and batch.metadata == {"job": "nightly"}
        done = wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts.total == 5 and done.request_counts.completed == 5
        assert done.error_file_id is None and done.completed_at >= done.created_at
        results = output(client, done.output_file_id)
        assert sorted(r["custom_id"] for r in results) == [f"req-{i}" for i in range(5)]
        for r in results:
            line = next(x for x in lines if x["custom_id"] == r["custom_id"])
            online = c.post("/v1/chat/completions", json=line["body"], headers={"Authorization": f"Bearer {A}"}).json()
            got = r["response"]["body"]
            assert r["response"]["status_code"] == 200 and r["error"] is None and r["response"]["request_id"]
            assert got["choices"] == online["choices"] and got["usage"] == online["usage"]
        # listing, newest first, with cursors
        f2 = client.files.create(file=("again.jsonl", jsonl(lines[:1])), purpose="batch")
        second = client.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
        listed = client.batches.list(limit=1)
        assert [b.id for b in listed.data] == [second.id] and listed.has_more
        assert [b.id for b in client.batches.list(after=second.id).data] == [batch.id]
        assert {x.id for x in client.files.list().data} >= {f.id, f2.id}
        assert wait_for(client, second.id).status == "completed"
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)  # completed
        assert client.files.delete(f.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(f.id)


def test_an_embeddings_batch_answers_as_the_online_endpoint(tmp_path):
    with running(settings_for(tmp_path, [*FAST, MINILM])) as c:
        client = sdk(c)
        emb = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "embed", "input": f"text {i}"}} for i in range(3)]  # fmt: skip
        f2 = client.files.create(file=("emb.jsonl", jsonl(emb)), purpose="batch")
        done = wait_for(client, client.batches.create(input_file_id=f2.id, endpoint="/v1/embeddings",
                                                      completion_window="24h").id)  # fmt: skip
        assert done.status == "completed" and done.request_counts.completed == 3
        for r in output(client, done.output_file_id):
            body = next(x["body"] for x in emb if x["custom_id"] == r["custom_id"])
            online = c.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {A}"}).json()
            assert r["response"]["body"]["data"] == online["data"]


def test_a_bad_line_is_named_by_its_number(tmp_path):
    with running(settings_for(tmp_path)) as c:
        client = sdk(c)
        half_written = (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n{"custom_id": '
        )
        cases = {
            half_written: "line 2",
            jsonl([chat_line(1), chat_line(1)]): "line 2: custom_id 'req-1' repeats",
            jsonl([chat_line(1), {**chat_line(2), "method": "GET"}]): "line 2: method",
            jsonl([{**chat_line(1), "url": "/v1/moderations"}]): "line 1: url",
            jsonl([chat_line(1, stream=True)]): "line 1: a batch request cannot stream",
            b"\n\n": "no requests",
        }
        for data, message in cases.items():
            with pytest.raises(openai.BadRequestError) as e:
                client.files.create(file=("x.jsonl", data), purpose="batch")
            assert message in e.value.body["message"], e.value.body
            assert e.value.body["param"] == "file"
        with pytest.raises(openai.BadRequestError) as e:
            client.files.create(file=("x.jsonl", b"x"), purpose="fine-tune")
        assert e.value.body["param"] == "purpose"
        # a line for another endpoint than the batch's: the batch fails, naming it
        f = client.files.create(file=("x.jsonl", jsonl([chat_line(1)])), purpose="batch")
        failed = wait_for(client, client.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                                        completion_window="24h").id)  # fmt: skip
        assert failed.status == "failed" and failed.errors.data[0].line == 1
        assert failed.errors.data[0].code == "mismatched_endpoint"
        with pytest.raises(openai.NotFoundError) as e:
            client.batches.create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h")
        assert e.value.body["param"] == "input_file_id"
        for bad in ({"completion_window": "48h"}, {"endpoint": "/v1/moderations"}):
            body = {"input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **bad}
            r = c.post("/v1/batches", json=body, headers={"Authorization": f"Bearer {A}"})
            assert r.status_code == 400 and next(iter(bad)) in json.dumps(r.json()), r.text
        r = c.get("/v1/batches", params={"limit": 0}, headers={"Authorization": f"Bearer {A}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
        user = client.files.create(file=("notes.txt", b"free text"), purpose="user_data")
        assert client.files.content(user.id).content == b"free text"


def test_caps_on_file_size_stored_bytes_and_unfinished_batches(tmp_path):
    slow = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"token_delay": 0.2})]
    settings = settings_for(tmp_path, slow, max_file_bytes=4096, max_stored_bytes_per_tenant=6000,
                            max_active_batches_per_tenant=1)  # fmt: skip
    with running(settings) as c:
        client = sdk(c)
        with pytest.raises(openai.APIStatusError) as e:
            client.files.create(file=("big.jsonl", b"x" * 5000), purpose="user_data")
        assert e.value.status_code == 413
        f = client.files.create(
            file=("a.jsonl", jsonl([chat_line(i, max_tokens=50) for i in range(20)])), purpose="batch"
        )
        with pytest.raises(openai.RateLimitError) as e:
            client.files.create(file=("b.jsonl", jsonl([chat_line(i) for i in range(20)])), purpose="batch")
        assert "stores" in e.value.body["message"]
        first = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.RateLimitError):
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        with pytest.raises(openai.ConflictError):
            client.files.delete(f.id)  # an unfinished batch reads it
        # cancel: lines in flight stop, the rest never run, the engine is left idle
        wait_for(client, first.id, until=("in_progress",))
        cancelling = client.batches.cancel(first.id)
        assert cancelling.status in ("cancelling", "cancelled")
        done = wait_for(client, first.id, until=("cancelled",))
        assert done.status == "cancelled" and done.cancelled_at
        errors = output(client, done.error_file_id)
        assert {e["error"]["code"] for e in errors if e["error"]} == {"batch_cancelled"}
        assert len(errors) + len(output(client, done.output_file_id)) == 20
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        deadline = time.monotonic() + 5
        while engine.stats().running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.batches.cancel(first.id).status == "cancelled"  # again: as it is


def test_another_tenant_sees_neither_files_nor_batches(tmp_path):
    with running(settings_for(tmp_path)) as c:
        alice, bob, alice2 = sdk(c, A), sdk(c, B), sdk(c, A2)
        f = alice.files.create(file=("a.jsonl", jsonl([chat_line(1)])), purpose="batch")
        batch = alice.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        for call in (
            lambda: bob.files.retrieve(f.id),
            lambda: bob.files.content(f.id),
            lambda: bob.files.delete(f.id),
            lambda: bob.batches.retrieve(batch.id),
            lambda: bob.batches.cancel(batch.id),
            lambda: bob.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert bob.files.list().data == [] and bob.batches.list().data == []
        # another key of the same tenant shares them
        assert alice2.batches.retrieve(batch.id).id == batch.id
        assert wait_for(alice, batch.id).status == "completed"


def test_batch_work_never_refuses_live_requests(tmp_path):
    slow = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", max_in_flight=4,
                           scripted={"token_delay": 0.02})]  # fmt: skip
    with running(settings_for(tmp_path, slow, live_headroom=2)) as c:
        client = sdk(c)
        reader = c.app.state.runtime.registry.readers["primary-0"]
        f = client.files.create(
            file=("a.jsonl", jsonl([chat_line(i, max_tokens=30) for i in range(40)])), purpose="batch"
        )
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        wait_for(client, batch.id, until=("in_progress",))
        # operators see the batch at work: /status on the management port, and the metrics
        admin = {"Authorization": f"Bearer {ADMIN}"}
        deadline = time.monotonic() + 10
        while batch.id not in c.management.get("/status", headers=admin).json().get("batches_running", {}):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert "batches_running" not in c.get("/status", headers={"Authorization": f"Bearer {A}"}).json()
        assert "gateway_batch_lines_in_flight" in c.management.get("/metrics", headers=admin).text
        peak, statuses = [0], []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], reader.batch_sequences)
                time.sleep(0.005)

        def live() -> None:
            for _ in range(5):
                r = c.post("/v1/chat/completions", json=chat_line(0, max_tokens=10)["body"],
                           headers={"Authorization": f"Bearer {A}"})  # fmt: skip
                statuses.append(r.status_code)

        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=live) for _ in range(4)]  # the reader's whole limit
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        done = wait_for(client, batch.id, timeout=120)
        stop.set()
        watcher.join()
        assert statuses == [200] * 20
        assert 1 <= peak[0] <= 2  # batch lines kept below max_in_flight less the headroom
        runner = c.app.state.runtime.batches
        assert runner.deferred <= 10, runner.deferred  # lines wait for room; they are not sent to be refused
        assert done.status == "completed" and done.request_counts.completed == 40
        metrics = c.management.get("/metrics", headers=admin).text
        assert 'gateway_batch_lines_total{group="primary",outcome="completed"}' in metrics
        assert 'gateway_batch_duration_seconds_count{status="completed"}' in metrics
        assert 'gateway_engine_seconds_total{group="primary",work="batch"}' in metrics
        assert 'gateway_engine_seconds_total{group="primary",work="live"}' in metrics


@pytest.mark.parametrize("replicas", [1, 2])
def test_on_redis_a_restart_or_a_second_replica_finishes_the_batch_with_one_line_per_id(
    tmp_path, redis_server, replicas
):
    # lines of about a second: the first process cannot finish them all before it stops
    slow = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"token_delay": 0.05})]
    store = ContinuationSettings(backend="redis", redis_url=redis_server, key_prefix=f"{{batch-{replicas}}}:")
    settings = settings_for(tmp_path, slow, claim_seconds=2.0, lines_per_reader=4, idle_lines_per_reader=4).model_copy(
        update={"continuation": store}
    )
    lines = [chat_line(i, max_tokens=20) for i in range(30)]
    with running(settings) as first:
        client = sdk(first)
        f = client.files.create(file=("a.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while client.batches.retrieve(batch.id).request_counts.completed < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        if replicas == 2:
            with running(settings) as second:
                runners = [c.app.state.runtime.batches for c in (first, second)]
                done = wait_for(sdk(second), batch.id, ("completed",), 120, *runners)
                ran = [c.app.state.runtime.batches.done for c in (first, second)]
                assert all(ran), ran  # both replicas ran lines
        runner_done = first.app.state.runtime.batches.done
    if replicas == 1:  # the first process stopped mid-batch; a new one finishes it
        assert runner_done < 30
        with running(settings) as again:
            done = wait_for(sdk(again), batch.id, timeout=120)
    assert done.status == "completed" and done.request_counts.total == 30
    with running(settings) as reader:
        results = output(sdk(reader), done.output_file_id)
    assert sorted(r["custom_id"] for r in results) == sorted(x["custom_id"] for x in lines)


def test_an_unwritable_directory_refuses_to_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match=r"batches\.directory"):
        with running(settings_for(tmp_path, directory=blocker / "files")):
            pass


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_cancel_and_a_runner_step_never_overwrite_each_other(backend, request):
    # the store's compare-and-set: a write that expected the status it read loses to a
    # write that came first (a cancel against validation or finishing, and the reverse)
    import asyncio

    from gateway.batches.store import MemoryBatchStore, RedisBatchStore

    async def run() -> list[bool]:
        if backend == "memory":
            store: Any = MemoryBatchStore()
        else:
            url = request.getfixturevalue("redis_server")
            store = RedisBatchStore(ContinuationSettings(backend="redis", redis_url=url, key_prefix="{cas}:"))
        try:
            doc = {"id": "batch_x", "created_at": 1, "status": "validating"}
            await store.put("batch", "acme", "batch_x", doc)
            cancel = await store.replace("batch", "acme", "batch_x", {**doc, "status": "cancelling"}, "validating")
            runner = await store.replace("batch", "acme", "batch_x", {**doc, "status": "in_progress"}, "validating")
            status = (await store.get("batch", "acme", "batch_x"))["status"]
            other = await store.replace("batch", "globex", "batch_x", {**doc, "status": "x"}, "cancelling")
            return [cancel, runner, status == "cancelling", other]
        finally:
            await store.close()

    assert asyncio.run(run()) == [True, False, True, False]


def test_a_line_past_its_timeout_is_stopped_and_run_again_not_failed(tmp_path):
    slow = [ReaderSettings(id="primary-0", kind="scripted", model="scripted", scripted={"token_delay": 0.05})]
    with running(settings_for(tmp_path, slow, line_timeout_seconds=0.3)) as c:
        client = sdk(c)
        f = client.files.create(file=("a.jsonl", jsonl([chat_line(0, max_tokens=200)])), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        runner = c.app.state.runtime.batches
        deadline = time.monotonic() + 20
        while runner.deferred < 2:  # stopped at 0.3 s, and tried again
            assert time.monotonic() < deadline
            time.sleep(0.05)
        now = client.batches.retrieve(batch.id)
        assert now.status == "in_progress" and now.request_counts.failed == 0 and runner.done == 0
        engine = c.app.state.runtime.registry.readers["primary-0"].engine
        client.batches.cancel(batch.id)
        assert wait_for(client, batch.id, ("cancelled",)).status == "cancelled"
        deadline = time.monotonic() + 5
        while engine.stats().running:  # the stopped attempts left nothing in the engine
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_batch_alone_fills_the_reader_and_shrinks_to_its_share_beside_live_traffic(tmp_path):
    # the batch share follows the live load: idle_lines_per_reader while no live request
    # runs (a batch alone fills the engine), lines_per_reader beside live requests; a fixed
    # reply of 400 tokens (64 random words may end before the live request's 300)
    conf = {"live_headroom": 2, "lines_per_reader": 2, "idle_lines_per_reader": 8}
    with running(settings_for(tmp_path, paced(0.02, 200), **conf)) as c:
        registry = c.app.state.runtime.registry
        reader = registry.readers["primary-0"]
        assert (registry.batch_capacity(reader, 0), registry.batch_capacity(reader, 3)) == (8, 2)
        client = sdk(c)
        batch = start_batch(client, [chat_line(i, max_tokens=20) for i in range(60)])

        def live_running() -> bool:
            return reader.sequences - reader.batch_sequences >= 1

        alone, deadline = 0, time.monotonic() + 20
        while alone < 8 and time.monotonic() < deadline:  # the batch alone
            alone = max(alone, reader.batch_sequences)
            time.sleep(0.002)
        answers: list[Any] = []
        body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300}
        live = threading.Thread(
            target=lambda: answers.append(
                c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {A}"})
            )
        )
        live.start()
        # the live stream runs and the lines started alone have ended: from here on the
        # batch keeps to its share beside it (6 s of live tokens)
        deadline = time.monotonic() + 20
        while not (live_running() and reader.batch_sequences <= 2):
            assert time.monotonic() < deadline, (reader.sequences, reader.batch_sequences)
            time.sleep(0.002)
        beside = 0
        while live.is_alive():
            if live_running():
                beside = max(beside, reader.batch_sequences)
            time.sleep(0.002)
        live.join()
        assert answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] == 300
        assert alone == 8  # not lines_per_reader: the reader was idle
        assert 1 <= beside <= 2, beside  # lines kept running beside it, at the smaller share
        assert wait_for(client, batch.id, timeout=120).request_counts.completed == 60


def test_the_headroom_is_kept_below_the_engines_slots_as_well_as_below_max_in_flight(tmp_path):
    # vLLM schedules no waiting request, whatever its priority, while max_num_seqs run: a
    # batch filling every engine slot would make live requests queue behind its lines
    def reader(**extra: Any) -> ReaderSettings:
        return ReaderSettings(id="primary-0", kind="scripted", model="scripted", **extra)

    conf = {"live_headroom": 4, "lines_per_reader": 32, "idle_lines_per_reader": 128}
    cases = [
        (reader(scripted={"max_num_seqs": 128}), (124, 32)),  # no max_in_flight: the engine's slots
        (reader(max_in_flight=136, scripted={"max_num_seqs": 128}), (124, 32)),  # slots below the limit
        (reader(max_in_flight=64, scripted={"max_num_seqs": 128}), (60, 32)),  # the limit below the slots
        (reader(scripted={"max_num_seqs": 3}), (0, 0)),  # no room left for batch work at all
        (reader(), (128, 32)),  # an engine that does not tell its slots: the shares alone
    ]
    for settings, expected in cases:
        with running(settings_for(tmp_path, [settings], **conf)) as c:
            registry = c.app.state.runtime.registry
            r = registry.readers["primary-0"]
            got = (registry.batch_capacity(r, 0), registry.batch_capacity(r, 1))
            assert got == expected, (settings, got)


def test_lines_holding_the_idle_share_give_their_room_back_when_live_traffic_arrives(tmp_path):
    # 3 s lines fill the idle share (8); a live request arrives: the youngest lines are
    # stopped at once (their engine requests aborted), not left to end, and run again
    # later; every line is answered once, whole
    conf = {"live_headroom": 2, "lines_per_reader": 3, "idle_lines_per_reader": 8}
    with running(settings_for(tmp_path, paced(0.01, 200), **conf)) as c:
        reader = c.app.state.runtime.registry.readers["primary-0"]
        engine = reader.engine
        runner = c.app.state.runtime.batches
        client = sdk(c)
        batch = start_batch(client, [chat_line(i, max_tokens=300) for i in range(12)])
        deadline = time.monotonic() + 20
        while reader.batch_sequences < 8:  # the batch alone fills the idle share
            assert time.monotonic() < deadline, reader.batch_sequences
            time.sleep(0.005)
        answers: list[Any] = []
        body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
        live = threading.Thread(
            target=lambda: answers.append(
                c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {A}"})
            )
        )
        t0 = time.monotonic()
        live.start()
        while not (reader.sequences - reader.batch_sequences >= 1 and reader.batch_sequences <= 2):
            assert time.monotonic() - t0 < 1.5, (reader.sequences, reader.batch_sequences)  # lines take 3 s
            time.sleep(0.002)
        assert runner.returned >= 5 and len(engine.aborted) >= 5, (runner.returned, engine.aborted)
        live.join()
        assert answers[0].status_code == 200 and answers[0].json()["usage"]["completion_tokens"] == 200
        done = wait_for(client, batch.id, timeout=120)
        assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 12, 0)
        lines = output(client, done.output_file_id)
        assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(12))
        assert {x["response"]["body"]["usage"]["completion_tokens"] for x in lines} == {300}  # rerun whole
        metrics = c.management.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        name = 'gateway_batch_lines_returned_total{group="primary"}'
        counted = [x for x in metrics.splitlines() if x.startswith(name)]
        assert counted and float(counted[0].split()[-1]) >= runner.returned  # (the counter is the process's)


def test_a_line_is_given_back_once_at_most_so_long_lines_finish_under_live_traffic_that_comes_and_goes(tmp_path):
    # no share beside live traffic (lines_per_reader 1): each live request would stop the
    # 4 s lines again, and they would never finish; given back once, they are left to end
    conf = {"live_headroom": 2, "lines_per_reader": 1, "idle_lines_per_reader": 8}
    with running(settings_for(tmp_path, paced(0.01, 300), **conf)) as c:
        reader = c.app.state.runtime.registry.readers["primary-0"]
        runner = c.app.state.runtime.batches
        client = sdk(c)
        batch = start_batch(client, [chat_line(i, max_tokens=400) for i in range(3)])
        body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
        for visit in range(2):
            deadline = time.monotonic() + 20
            while reader.batch_sequences < 3:  # the lines run (again) while the reader is idle
                assert time.monotonic() < deadline, (visit, reader.batch_sequences)
                time.sleep(0.005)
            r = c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {A}"})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 50
            time.sleep(0.2)  # a round or more after the live request
            assert runner.returned == 3, (visit, runner.returned)  # the first visit's, not the second's
        done = wait_for(client, batch.id, timeout=60)
        assert (done.status, done.request_counts.completed) == ("completed", 3)
        assert {x["response"]["body"]["usage"]["completion_tokens"] for x in output(client, done.output_file_id)} == {
            400
        }


def test_stopping_the_runner_cancels_again_and_never_waits_on_a_task_that_will_not_stop(caplog):
    # a line inside a cancelled wait may need the cancel twice; one that ignores every
    # cancel is left behind with a warning (its claim lapses), the shutdown goes on
    import asyncio

    from gateway.batches.runner import BatchRunner

    async def run() -> tuple[bool, bool, float]:
        async def twice() -> None:
            for _ in range(2):
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass  # swallows the first cancel, as a wait inside wait_for can

        stop_stubborn = asyncio.Event()

        async def stubborn() -> None:
            while not stop_stubborn.is_set():
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue

        runner = BatchRunner.__new__(BatchRunner)
        runner._task = None
        a, b = asyncio.create_task(twice()), asyncio.create_task(stubborn())
        runner._running = {"batch_x": {0: a, 1: b}}
        await asyncio.sleep(0)
        t0 = time.monotonic()
        await runner.stop()
        took = time.monotonic() - t0
        done = (a.done(), b.done())
        stop_stubborn.set()
        b.cancel()
        await asyncio.wait({b}, timeout=1)
        return done[0], done[1], took

    twice_done, stubborn_done, took = asyncio.run(run())
    assert twice_done and not stubborn_done and took < 10
    assert "did not stop" in caplog.text
