"""OpenTelemetry traces of each request (`tracing: true`; off by default).

One server span per request, with children for what the gateway does before and around
the engine: `gateway.auth` (the key check), `gateway.admission` (the reader pick, limits
and budgets), `gateway.prepare` (the chat template, tokenization and the engine's queue,
until the engine accepted the request), `gateway.store` (continuation and response store
calls) and `gateway.engine` (from acceptance to the last token). The engine span's id is
sent to vLLM in `traceparent`, so vLLM's own spans hang under it; a request that came with
a `traceparent` joins that trace. No span per streamed chunk.

The spans are written when the request ends, from times the observation kept (a few clock
reads per request), straight to the exporter's batch processor: nothing runs per token,
and with tracing off nothing runs at all. Export is OTLP, configured by the standard
variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`),
`OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`),
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `llm-gateway`). Attributes follow
OpenTelemetry's GenAI semantic conventions (`gen_ai.request.model`, `gen_ai.response.model`,
`gen_ai.usage.input_tokens`, ...).
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

from gateway.observability.metrics import Observation

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# the API family -> gen_ai.operation.name
_OPERATIONS = {"openai": "chat", "anthropic": "chat", "chat_service": "chat", "vllm": "embeddings"}


@dataclass(slots=True)
class TraceIds:
    """The ids of one request's spans, chosen when it arrives."""

    trace_id: int
    span_id: int  # the server span
    parent_id: int | None  # the caller's span, from its traceparent
    engine_span_id: int
    sampled: bool = True

    def traceparent(self) -> str:
        """The `traceparent` the engine gets: its span is the gateway's engine span."""
        return f"00-{self.trace_id:032x}-{self.engine_span_id:016x}-{'01' if self.sampled else '00'}"


def _random(bits: int) -> int:
    value = 0
    while value == 0:
        value = random.getrandbits(bits)
    return value


def ids_for(traceparent: str | None) -> TraceIds:
    """The span ids of a request, in the trace its `traceparent` names (else a new one)."""
    if traceparent:
        m = _TRACEPARENT.match(traceparent.strip().lower())
        if m and int(m.group(1), 16) and int(m.group(2), 16):
            sampled = bool(int(m.group(3), 16) & 1)
            return TraceIds(int(m.group(1), 16), _random(64), int(m.group(2), 16), _random(64), sampled)
    return TraceIds(_random(128), _random(64), None, _random(64))


class Tracer:
    """Writes the spans of finished requests to an OTLP exporter."""

    def __init__(self, exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        import gateway

        self.resource = Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "llm-gateway"), "service.version": gateway.__version__}
        )
        self.scope = InstrumentationScope("llm-gateway", gateway.__version__)
        self.processor = BatchSpanProcessor(exporter if exporter is not None else _exporter())

    def export(self, obs: Observation, ids: TraceIds) -> None:
        """The spans of one finished request."""
        if not ids.sampled:
            return
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        # perf_counter times of the observation -> epoch nanoseconds
        now_perf, now_ns = time.perf_counter(), time.time_ns()

        def ns(t: float) -> int:
            return now_ns - int((now_perf - t) * 1e9)

        flags = TraceFlags(TraceFlags.SAMPLED)
        server = SpanContext(ids.trace_id, ids.span_id, is_remote=False, trace_flags=flags)
        parent = SpanContext(ids.trace_id, ids.parent_id, is_remote=True, trace_flags=flags) if ids.parent_id else None
        failed = obs.status >= 500 or obs.status == 0
        attributes: dict[str, Any] = {
            "http.request.method": obs.method,
            "url.path": obs.path,
            "http.route": obs.route or obs.path,
            "http.response.status_code": obs.status,
            "gateway.api": obs.api,
            "gateway.request_id": obs.request_id,
        }
        if obs.group:
            attributes |= {
                "gen_ai.system": "vllm",
                "gen_ai.operation.name": _OPERATIONS.get(obs.api, "text_completion"),
                "gen_ai.request.model": obs.requested_model or obs.group,
                "gen_ai.response.model": obs.model or obs.group,
                "gen_ai.usage.input_tokens": obs.prompt_tokens,
                "gen_ai.usage.output_tokens": obs.generated_tokens,
                "gateway.group": obs.group,
            }
        if obs.key:
            attributes["gateway.key"] = obs.key
        if obs.error_type:
            attributes["error.type"] = obs.error_type
        spans = [
            ReadableSpan(
                f"{obs.method} {obs.route or obs.path}",
                context=server,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=Status(StatusCode.ERROR if failed else StatusCode.UNSET),
                start_time=ns(obs.start),
                end_time=now_ns,
                instrumentation_scope=self.scope,
            )
        ]
        phases = list(obs.phases)
        if obs.admitted_at is not None and obs.accepted_at is not None and obs.accepted_at >= obs.admitted_at:
            phases.append(("gateway.prepare", obs.admitted_at, obs.accepted_at))
        if obs.accepted_at is not None:
            last = obs.last_token_at if obs.last_token_at is not None else now_perf
            phases.append(("gateway.engine", obs.accepted_at, max(last, obs.accepted_at)))
        for name, start, end in phases:
            span_id = ids.engine_span_id if name == "gateway.engine" else _random(64)
            spans.append(
                ReadableSpan(
                    name,
                    context=SpanContext(ids.trace_id, span_id, is_remote=False, trace_flags=flags),
                    parent=server,
                    resource=self.resource,
                    attributes={"gen_ai.response.model": obs.model} if name == "gateway.engine" and obs.model else {},
                    kind=SpanKind.CLIENT if name == "gateway.engine" else SpanKind.INTERNAL,
                    start_time=ns(start),
                    end_time=ns(end),
                    instrumentation_scope=self.scope,
                )
            )
        for span in spans:
            self.processor.on_end(span)

    def shutdown(self) -> None:
        """Send what is queued, then stop."""
        self.processor.shutdown()


def _exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()
