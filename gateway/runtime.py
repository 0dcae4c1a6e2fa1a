"""The state one gateway process shares between its listeners: settings and readers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.continuation import ContinuationStore, make_store
from gateway.errors import GatewayError
from gateway.middleware.guards import key_digests
from gateway.observability.metrics import COLLECTOR
from gateway.registry import EngineFactory, Registry, build_engine
from gateway.serving.budget import Budget
from gateway.settings import Settings


@dataclass(eq=False)
class Runtime:
    """Settings, the reader registry and the process's lifecycle flags."""

    settings: Settings
    registry: Registry
    continuation: ContinuationStore
    key_digests: list[bytes] = field(default_factory=list)
    budgets: set[Budget] = field(default_factory=set)  # of the requests in flight
    draining: bool = False
    started_at: float = field(default_factory=time.time)

    @classmethod
    def create(cls, settings: Settings, factory: EngineFactory = build_engine) -> Runtime:
        """A runtime whose readers are not loaded yet (see `Registry.start_all`)."""
        digests = key_digests((k.get_secret_value() for k in settings.api_keys), settings.api_keys_file)
        runtime = cls(
            settings=settings,
            registry=Registry(settings, factory),
            continuation=make_store(settings.continuation),
            key_digests=digests,
        )
        COLLECTOR.runtime = runtime  # the scrape-time gauges read the latest runtime
        return runtime

    def cut_all(self, error: GatewayError) -> int:
        """Stop every request in flight with `error` (after a drain timed out)."""
        budgets = list(self.budgets)
        for b in budgets:
            b.cut(error)
        return len(budgets)

    async def close(self) -> None:
        """Stop the engines and release the stores."""
        await self.registry.shutdown()
        await self.continuation.close()


def get_runtime(request: Request) -> Runtime:
    """The runtime of the app serving `request`."""
    runtime: Runtime = request.app.state.runtime
    return runtime
