"""The one table of API families: which routers each has, on which listeners and under
which paths it is served, the shape of its errors and its metrics label.

Everything that needs to know which API a path belongs to reads this table: the app
builder (`gateway.app`) includes each family's routers on its listeners, the access
observer labels the request's metrics with the family (`api`), and the error handlers
and the guard answer in the family's error shape. Nothing else lists paths.

Adding an API is one entry here plus its translation (developer docs, "A new API").

A *listener* is a port the process serves (`main`, `management`, `openai`); an *API
family* is one wire dialect (Takeoff's, OpenAI's, ...), which may be served on several
listeners. Routers are named as "module:attribute" under `gateway.routes` so that this
module imports no route (the middleware and the observer read it, and sit below routes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.errors import ErrorShape
from gateway.settings import Settings

Listener = Literal["main", "management", "openai"]
LISTENERS: tuple[Listener, ...] = ("main", "management", "openai")

# The error shape of a path no family claims (a 404), by listener.
LISTENER_SHAPES: dict[Listener, ErrorShape] = {"main": "takeoff", "management": "takeoff", "openai": "openai"}


def _always(_: Settings, __: Listener) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Api:
    """One API family (see the module)."""

    name: str
    # "module:attribute" under gateway.routes: an APIRouter, or a function(app) that
    # installs what a router cannot hold (a mount of static files)
    routers: tuple[str, ...]
    listeners: frozenset[Listener]
    paths: tuple[str, ...] = ()  # exact paths
    prefixes: tuple[str, ...] = ()  # paths that start with one of these
    shape: ErrorShape | None = None  # None: the listener's (LISTENER_SHAPES)
    label: str | None = None  # the metrics label, if not the name
    # its bodies carry prompts, which no model can use beyond its context: their size is
    # capped relative to the largest context served (settings.body_bytes_per_context_token)
    prompts: bool = False
    # a header that names the request id besides X-Request-Id (Anthropic's `request-id`)
    id_header: str | None = None
    # whether it is served on a listener with these settings
    when: Callable[[Settings, Listener], bool] = _always
    # the largest body it takes, if not `max_body_bytes` (file uploads)
    max_body: Callable[[Settings], int] | None = None

    @property
    def metrics_label(self) -> str:
        """The value of the `api` label of its requests' metrics."""
        return self.label or self.name

    def shape_on(self, listener: Listener) -> ErrorShape:
        """The error shape of this family's answers on `listener`."""
        return self.shape or LISTENER_SHAPES[listener]


def _on(*listeners: Listener) -> frozenset[Listener]:
    return frozenset(listeners)


APIS: tuple[Api, ...] = (
    Api(
        "takeoff",
        ("takeoff:router", "embeddings:takeoff_router"),
        _on("main"),
        paths=("/generate", "/generate_stream", "/embed", "/classify"),
        shape="takeoff",
        prompts=True,
    ),
    Api(
        "openai",
        ("openai:router", "embeddings:openai_router"),
        _on("main", "openai"),
        paths=("/rerank",),
        prefixes=("/v1/",),
        shape="openai",
        prompts=True,
    ),
    Api(
        "anthropic",
        ("anthropic:router",),
        _on("main", "openai"),
        prefixes=("/v1/messages",),
        shape="anthropic",
        prompts=True,
        id_header="request-id",
    ),
    Api(
        "batches",
        ("batches:router",),
        _on("main", "openai"),
        prefixes=("/v1/files", "/v1/batches"),
        shape="openai",
        when=lambda s, _: s.batches.enabled,
        max_body=lambda s: s.batches.max_file_bytes + 64 * 1024,  # the file and its multipart framing
    ),
    Api(
        "vllm",
        ("vllm:router",),
        _on("main", "openai"),
        paths=("/tokenize", "/detokenize", "/score", "/v1/score", "/pooling", "/v2/rerank", "/invocations"),
        shape="openai",
        prompts=True,
    ),
    Api("generate_api", ("generate_api:router",), _on("main"), prefixes=("/api/",), shape="takeoff", prompts=True),
    Api(
        "chat_service",
        ("chat_service:router",),
        _on("main"),
        paths=("/chat", "/chat/completions", "/embeddings"),
        shape="openai",
        prompts=True,
    ),
    Api(
        "tokenizer",
        ("tokenization:router",),
        _on("main"),
        prefixes=("/tokenize/", "/detokenize/", "/chat_template/"),
        shape="takeoff",
    ),
    Api(
        "management",
        ("management:router",),
        _on("management"),
        paths=("/reader_groups", "/reader", "/usage"),
        prefixes=("/reader/", "/config/"),
        shape="takeoff",
    ),
    Api(
        "ops",
        ("health:router",),
        _on("main", "management", "openai"),
        paths=("/healthz", "/readyz", "/health", "/ping", "/version", "/status"),
    ),
    Api(
        "metrics",
        ("health:metrics_router",),
        _on("main", "management", "openai"),
        paths=("/metrics",),
        label="ops",
        when=lambda s, listener: listener == "management" or s.metrics_on_main_port,
    ),
    Api(
        "ui",
        ("ui:router", "ui:install"),
        _on("main"),
        paths=("/",),
        prefixes=("/ui/",),
        when=lambda s, _: s.ui_enabled,
    ),
)

OTHER = Api("other", (), frozenset(LISTENERS))


class ApiIndex:
    """Which family a path of a listener belongs to: exact paths first, then the longest
    matching prefix, else `OTHER` (built once per app; one dict lookup per request)."""

    def __init__(self, listener: Listener, apis: tuple[Api, ...] = APIS) -> None:
        self.listener = listener
        served = [a for a in apis if listener in a.listeners]
        self._exact = {p: a for a in served for p in a.paths}
        self._prefixes = sorted(((p, a) for a in served for p in a.prefixes), key=lambda pa: -len(pa[0]))

    def api_of(self, path: str) -> Api:
        """The family `path` belongs to on this listener."""
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, api in self._prefixes:
            if path.startswith(prefix):
                return api
        return OTHER

    def shape_of(self, path: str) -> ErrorShape:
        """The error shape of `path` on this listener."""
        return self.api_of(path).shape_on(self.listener)


def served(settings: Settings, listener: Listener) -> list[Api]:
    """The families a listener serves with these settings, in table order."""
    return [a for a in APIS if listener in a.listeners and a.when(settings, listener)]
