"""Which reader serves a request (gateway/machinery/routing.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine_adapters.base import Constraint, GenerationRequest
from gateway.errors import BadRequest, NotFound
from gateway.machinery.routing import Target, group_of, resolve
from gateway.registry import Registry
from gateway.settings import ReaderSettings, Settings


def scripted(rid: str, group: str, **kw: Any) -> ReaderSettings:
    return ReaderSettings(id=rid, consumer_group=group, kind="scripted", model=kw.pop("model", "scripted"), **kw)


async def registry() -> Registry:
    reg = Registry(
        Settings(
            readers=[
                scripted("p", "primary", model="small-model"),
                scripted("l", "tuned", scripted={"lora_adapters": ["sql"]}),
                scripted("e", "vectors", task=None),
            ]
        )
    )
    await asyncio.gather(*reg.start_all())
    return reg


def test_names_resolve_to_groups_models_and_adapters():
    async def go() -> None:
        reg = await registry()
        assert group_of(reg, Target()) == ("primary", None)
        assert group_of(reg, Target("tuned")) == ("tuned", None)
        assert group_of(reg, Target("small-model", by_model=True)) == ("primary", None)
        assert group_of(reg, Target("sql", by_model=True)) == ("tuned", "sql")
        assert group_of(reg, Target("gpt-4o", by_model=True, fallback=True)) == ("primary", None)
        with pytest.raises(NotFound) as exc:
            group_of(reg, Target("gpt-4o", param="model", by_model=True))
        assert exc.value.param == "model" and "small-model" in str(exc.value) and "sql" in str(exc.value)
        await reg.shutdown()

    asyncio.run(go())


def test_an_adapter_named_as_the_model_is_set_on_the_requests():
    async def go() -> None:
        reg = await registry()
        req = GenerationRequest(request_id="x", prompt="hi")
        assert resolve(reg, Target("sql", by_model=True), [req]).id == "l" and req.lora_id == "sql"
        await reg.shutdown()

    asyncio.run(go())


def test_a_constraint_backend_picks_a_reader_with_it():
    async def go() -> None:
        reg = await registry()
        req = GenerationRequest(
            request_id="x",
            prompt="hi",
            constraint=Constraint(
                kind="regex", value="a+", backend="outlines", backend_param="structured_outputs.backend"
            ),
        )
        with pytest.raises(BadRequest) as exc:
            resolve(reg, Target(), [req])
        assert exc.value.param == "structured_outputs.backend"
        await reg.shutdown()

    asyncio.run(go())


def test_unknown_groups_and_tasks_without_a_group():
    async def go() -> None:
        reg = await registry()
        with pytest.raises(NotFound) as exc:
            resolve(reg, Target("nope"))
        assert "primary" in str(exc.value) and exc.value.param == "consumer_group"
        with pytest.raises(NotFound) as embed:
            resolve(reg, Target(task="embed", param="model"))
        assert "no consumer group on this server can embed" in str(embed.value)
        await reg.shutdown()

    asyncio.run(go())
