"""The one generation pipeline: limits, priority, reader pick, in-flight accounting,
buffered and streamed answers (gateway/machinery/pipeline.py), on the scripted engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine_adapters.base import GenerationRequest, GenerativeEngine, SamplingOptions
from gateway.continuation import MemoryStore
from gateway.errors import BadRequest, NotFound, Overloaded
from gateway.machinery.bodies import ManagedEventSource
from gateway.machinery.engine_streams import Completion
from gateway.machinery.limits import Fields
from gateway.machinery.pipeline import Generation, Pipeline
from gateway.machinery.routing import Target
from gateway.registry import Registry
from gateway.settings import ContinuationSettings, ReaderSettings, Settings


def http_request(headers: dict[str, str] | None = None) -> Request:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive)


async def pipeline(**settings: Any) -> Pipeline:
    readers = [ReaderSettings(id="a", kind="scripted", model="scripted", scripted=settings.pop("scripted", {}))]
    s = Settings(readers=readers, **settings)
    registry = Registry(s)
    await asyncio.gather(*registry.start_all())
    return Pipeline(s, registry, MemoryStore(ContinuationSettings()))


def requests(n: int = 1, **sampling: Any) -> list[GenerationRequest]:
    options = SamplingOptions(**{"max_new_tokens": 4, **sampling})
    return [GenerationRequest(request_id=f"r{i}", prompt="hi", sampling=options) for i in range(n)]


async def answer(_: GenerativeEngine, completions: list[Completion]) -> Response:
    return JSONResponse(
        {"texts": [c.texts[0] for c in completions], "tokens": [c.completion_tokens for c in completions]}
    )


async def events(_: GenerativeEngine, streams: list[AsyncIterator[Any]]) -> AsyncIterator[dict[str, str]]:
    for s in streams:
        async for out in s:
            for d in out.deltas:
                yield {"data": d.text}


def test_buffered_answer_counts_in_flight_only_while_running():
    async def go() -> None:
        p = await pipeline()
        reader = p.registry.readers["a"]
        seen = []

        async def watching(engine: GenerativeEngine, completions: list[Completion]) -> Response:
            seen.append((reader.in_flight, len(p.deadlines)))
            return await answer(engine, completions)

        r = await p.generate(http_request(), Generation(requests(2), watching))
        assert r.status_code == 200 and b'"tokens":[4,4]' in r.body
        assert seen == [(1, 1)] and reader.in_flight == 0 and not p.deadlines
        await p.registry.shutdown()

    asyncio.run(go())


def test_limits_name_the_surface_field():
    async def go() -> None:
        p = await pipeline(max_new_tokens_limit=8, max_user_batch_size=2)
        fields = Fields(prompts="prompts", max_new_tokens="generation_config.max_new_tokens")
        with pytest.raises(BadRequest) as over:
            await p.generate(http_request(), Generation(requests(1, max_new_tokens=9), answer, fields=fields))
        assert over.value.param == "generation_config.max_new_tokens"
        assert str(over.value) == "generation_config.max_new_tokens must be at most 8"
        with pytest.raises(BadRequest) as many:
            await p.generate(http_request(), Generation(requests(3), answer, fields=fields))
        assert many.value.param == "prompts"
        with pytest.raises(BadRequest) as order:
            await p.generate(http_request(), Generation(requests(1, min_new_tokens=5), answer))
        assert order.value.param == "min_new_tokens"
        assert p.registry.readers["a"].in_flight == 0
        await p.registry.shutdown()

    asyncio.run(go())


def test_priority_from_the_header_reaches_every_request():
    async def go() -> None:
        p = await pipeline()
        reqs = requests(2)
        await p.generate(http_request({"X-Priority": "-2"}), Generation(reqs, answer))
        assert [r.priority for r in reqs] == [-2, -2]
        reqs = requests(1)
        await p.generate(http_request({"X-Priority": "-2"}), Generation(reqs, answer, priority=5))
        assert reqs[0].priority == 5  # the body's field wins over the header
        await p.registry.shutdown()

    asyncio.run(go())


def test_a_stream_is_accepted_before_the_answer_and_released_by_its_cleanup():
    async def go() -> None:
        p = await pipeline()
        reader = p.registry.readers["a"]
        response = await p.generate(http_request(), Generation(requests(1), answer, events, stream=True))
        assert isinstance(response, ManagedEventSource)
        engine = reader.engine
        assert reader.in_flight == 1 and len(p.deadlines) == 1 and engine is not None and engine.stats().running == 1
        await response._on_close()  # what the response runs however it ends
        assert reader.in_flight == 0 and not p.deadlines and engine.stats().running == 0
        await p.registry.shutdown()

    asyncio.run(go())


def test_a_stream_that_the_engine_refuses_is_an_error_answer_and_holds_nothing():
    async def go() -> None:
        p = await pipeline(scripted={"max_model_len": 2})
        with pytest.raises(Exception) as exc:
            await p.generate(http_request(), Generation(requests(1), answer, events, stream=True))
        assert type(exc.value).__name__ == "PromptTooLongError"
        assert p.registry.readers["a"].in_flight == 0 and not p.deadlines
        await p.registry.shutdown()

    asyncio.run(go())


def test_admission_control_applies_to_requests_not_status_reads():
    async def go() -> None:
        p = await pipeline()
        reader = p.registry.readers["a"]
        reader.settings.max_in_flight = 1
        reader.acquire()
        with pytest.raises(Overloaded):
            await p.generate(http_request(), Generation(requests(1), answer))
        assert p.status_reader(Target()) is reader and p.registry.rejections == 1
        with pytest.raises(NotFound):
            p.status_reader(Target("elsewhere"))
        await p.registry.shutdown()

    asyncio.run(go())


def test_pooling_work_runs_on_its_reader_in_flight():
    async def go() -> None:
        p = await pipeline()
        seen = []

        async def work(reader: Any) -> str:
            seen.append(reader.in_flight)
            return "done"

        with pytest.raises(NotFound) as exc:
            await p.pool(http_request(), Target(task="embed"), 1, "input", work)
        assert "no consumer group on this server can embed" in str(exc.value)
        with pytest.raises(BadRequest) as many:
            await p.pool(http_request(), Target(), 65, "input", work)
        assert many.value.param == "input" and not seen
        assert await p.pool(http_request(), Target(), 1, "input", work) == "done" and seen == [1]
        await p.registry.shutdown()

    asyncio.run(go())
