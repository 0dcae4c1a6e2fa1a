"""The registry: balancing, admission, candidates and the readers' life (scripted engines)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine_adapters.base import EngineDeadError, UnknownAdapterError
from engine_adapters.factory import build_engine
from engine_adapters.scripted import ScriptedConfig, ScriptedEngine
from gateway.errors import BadRequest, Conflict, NotFound, NotReady, Overloaded
from gateway.registry import Registry
from gateway.settings import ReaderSettings, Settings


def reader(rid: str, group: str = "primary", **kw: Any) -> ReaderSettings:
    return ReaderSettings(id=rid, consumer_group=group, kind="scripted", model="scripted", **kw)


async def loaded(*readers: ReaderSettings, factory: Any = None) -> Registry:
    settings = Settings(readers=list(readers))
    registry = Registry(settings, factory) if factory else Registry(settings)
    await asyncio.gather(*registry.start_all())
    return registry


def test_balance_picks_the_least_loaded_ready_reader():
    async def go() -> None:
        reg = await loaded(reader("a"), reader("b"))
        a, b = reg.readers["a"], reg.readers["b"]
        release = a.acquire()
        assert reg.balance("primary", [a, b]) is b
        release()
        b.acquire()
        assert reg.balance("primary", [a, b]) is a
        await reg.shutdown()

    asyncio.run(go())


def test_admission_refuses_at_the_limit_but_status_reads_pass():
    async def go() -> None:
        reg = await loaded(reader("a", max_in_flight=1))
        a = reg.readers["a"]
        a.acquire()
        with pytest.raises(Overloaded) as exc:
            reg.balance("primary", [a])
        assert exc.value.headers["Retry-After"] == "1" and reg.rejections == 1
        assert reg.balance("primary", [a], admit=False) is a  # a status read
        assert reg.rejections == 1
        await reg.shutdown()

    asyncio.run(go())


def test_candidates_explain_what_is_missing():
    async def go() -> None:
        reg = await loaded(
            reader("a"),
            ReaderSettings(id="e", consumer_group="embed", kind="scripted", model="scripted"),
            reader("l", group="lora", scripted={"lora_adapters": ["sql"]}),
        )
        with pytest.raises(NotFound) as nf:
            reg.candidates("nope")
        assert "embed" in str(nf.value) and "primary" in str(nf.value)
        with pytest.raises(BadRequest) as task:
            reg.candidates("primary", task="embed")
        assert task.value.param == "consumer_group"
        with pytest.raises(BadRequest) as backend:
            reg.candidates("primary", backend="guidance", backend_param="constrained_decoding_backend")
        assert backend.value.param == "constrained_decoding_backend" and "xgrammar" in str(backend.value)
        with pytest.raises(UnknownAdapterError):
            reg.candidates("lora", lora_id="other")
        assert [r.id for r in reg.candidates("lora", lora_id="sql")] == ["l"]
        await reg.shutdown()

    asyncio.run(go())


def test_no_ready_reader_is_503():
    async def go() -> None:
        reg = Registry(Settings(readers=[reader("a", scripted={"start_delay": 3600})]))
        reg.start_all()
        with pytest.raises(NotReady) as exc:
            reg.balance("primary", reg.candidates("primary"))
        assert "a: loading" in str(exc.value)
        await reg.shutdown()

    asyncio.run(go())


def test_a_failed_load_is_reported_and_the_rest_serve():
    def factory(data: dict[str, Any], cache: Path, on_batch: Any) -> Any:
        if data["id"] == "bad":
            raise RuntimeError("no such model")
        return build_engine(data, cache, on_batch)

    async def go() -> None:
        reg = await loaded(reader("good"), reader("bad", group="other"), factory=factory)
        assert reg.readers["good"].state == "ready"
        assert reg.readers["bad"].state == "failed" and "no such model" in (reg.readers["bad"].error or "")
        assert reg.unserved_groups() == ["other"] and not reg.ready()
        await reg.shutdown()

    asyncio.run(go())


def test_add_remove_and_cut_after_the_drain():
    async def go() -> None:
        reg = await loaded(reader("a"))
        with pytest.raises(Conflict):
            reg.add(reader("a"))
        b = reg.add(reader("b"))
        assert b.load_task is not None
        await b.load_task
        assert b.state == "ready" and not b.configured
        cut: list[Exception] = []
        releases = []

        def on_cut(error: Exception) -> None:  # as a request's budget does: stop, then release
            cut.append(error)
            releases[0]()

        releases.append(b.acquire(on_cut))
        await reg.remove("b", drain_timeout=0.05)
        assert "b" not in reg.readers and len(cut) == 1 and "removed" in str(cut[0])
        assert b.in_flight == 0
        await reg.shutdown()

    asyncio.run(go())


def test_engine_death_marks_the_reader_dead_and_tells_the_server():
    async def go() -> None:
        reg = await loaded(reader("a"))
        dead: list[str] = []
        reg.on_engine_death = lambda r: dead.append(r.id)
        engine = reg.readers["a"].engine
        assert isinstance(engine, ScriptedEngine)
        engine.kill()
        for _ in range(100):
            if dead:
                break
            await asyncio.sleep(0.05)
        assert dead == ["a"] and reg.readers["a"].state == "dead" and not reg.ready()
        with pytest.raises(EngineDeadError):
            await engine.check_health()
        await reg.shutdown()

    asyncio.run(go())


class _SpawningEngine(ScriptedEngine):
    """A scripted engine that records the environment its 'workers' would inherit."""

    active = 0
    most = 0
    seen: ClassVar[list[str | None]] = []

    async def start(self) -> None:
        cls = _SpawningEngine
        cls.active += 1
        cls.most = max(cls.most, cls.active)
        cls.seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        await asyncio.sleep(0.05)
        cls.active -= 1
        await super().start()


def test_device_selection_is_per_reader_and_never_overlaps(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    import dataclasses

    from engine_adapters.factory import ENGINE_KINDS

    spawning = dataclasses.replace(ENGINE_KINDS["scripted"], spawns_processes=True)
    monkeypatch.setitem(ENGINE_KINDS, "scripted", spawning)

    def factory(data: dict[str, Any], cache: Path, on_batch: Any) -> Any:
        return _SpawningEngine(ScriptedConfig(name=data["id"]))

    async def go() -> None:
        reg = await loaded(
            reader("a", cuda_visible_devices="0"),
            reader("b", cuda_visible_devices="1"),
            reader("c"),
            factory=factory,
        )
        assert _SpawningEngine.most == 1  # one start at a time
        assert sorted(_SpawningEngine.seen, key=str) == ["0", "1", None]
        assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored after each start
        await reg.shutdown()

    asyncio.run(go())
