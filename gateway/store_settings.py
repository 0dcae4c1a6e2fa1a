"""Settings of what the continuation store's backend keeps (this process's memory, or Redis
shared by replicas): the continuation store itself, the usage ledger, and the Files and
Batch APIs' metadata. Part of `gateway.settings`, which re-exports them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class ContinuationSettings(BaseModel):
    """The request_id continuation store of the generate-one/batch API."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # the {hash tag} puts every key of the store in one Redis Cluster slot, so the Lua
    # script that writes and evicts stays in one slot (required for the redis backend)
    key_prefix: str = "{llmgw}:cont:"
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # per tenant (API key, or the keys file's tenant): past these a tenant evicts its own
    # oldest entries first; null: the store's bounds
    max_entries_per_tenant: int | None = Field(2_500, ge=1)
    max_bytes_per_tenant: int | None = Field(64 * 1024 * 1024, ge=1024)
    # redis: the longest a call may take, and the circuit breaker (after this many failures
    # in a row the store is not asked for breaker_seconds: requests fail at once)
    redis_timeout_seconds: float = Field(0.5, gt=0)
    # connections per process (and event loop) to Redis; a call waits up to
    # redis_timeout_seconds for a free one (redis-py's own pool fails at once past 100)
    redis_max_connections: int = Field(64, ge=1)
    breaker_failures: int = Field(3, ge=1)
    breaker_seconds: float = Field(5.0, gt=0)
    ttl_seconds: float = Field(3600.0, gt=0)
    # keys are HMAC(secret, caller's key name + request_id): set the same secret on every
    # replica sharing a Redis store; the built-in default only separates callers
    secret: SecretStr = SecretStr("llm-gateway-continuation")

    @model_validator(mode="after")
    def _one_slot(self) -> ContinuationSettings:
        if self.backend == "redis" and not re.search(r"\{[^{}]+\}", self.key_prefix):
            raise ValueError(
                "continuation.key_prefix needs a Redis hash tag such as '{llmgw}:cont:' so every key "
                "of the store lands in one slot (Redis Cluster runs the store's script on one slot)"
            )
        return self


class Price(BaseModel):
    """What a model's tokens cost, per million (any currency: the ledger only multiplies)."""

    model_config = ConfigDict(extra="forbid")

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(None, ge=0)  # null: as input


class UsageSettings(BaseModel):
    """The usage ledger (gateway/usage.py), kept in the continuation store's backend."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    flush_seconds: float = Field(1.0, gt=0)  # sums are written this often
    retention_days: int = Field(400, ge=1)  # a day's totals expire after this
    prices: dict[str, Price] = Field(default_factory=dict)  # model name -> price, for `cost`


class BatchSettings(BaseModel):
    """OpenAI's Files and Batch APIs (gateway/batches/): files on `directory`, metadata in
    the continuation store's backend (Redis to share work between replicas)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # where files are kept (a volume; shared by the replicas of one Redis); null: <cache_dir>/batches
    directory: Path | None = None
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)  # OpenAI's: 200 MB
    max_lines: int = Field(50_000, ge=1)  # requests per batch file (OpenAI's)
    file_retention_days: int = Field(30, ge=1)  # files (inputs and results) are deleted after
    max_stored_bytes_per_tenant: int = Field(10 * 1024**3, ge=1024)
    max_active_batches_per_tenant: int = Field(4, ge=1)
    # batch lines in flight: per reader at most lines_per_reader beside live requests and
    # idle_lines_per_reader while none runs, and below the reader's max_in_flight by
    # live_headroom sequences either way; per replica at most lines_in_flight
    lines_per_reader: int = Field(32, ge=1)
    idle_lines_per_reader: int = Field(128, ge=1)
    live_headroom: int = Field(4, ge=0)
    lines_in_flight: int = Field(256, ge=1)
    claim_seconds: float = Field(60.0, gt=0)  # a line's claim lapses this long after its replica stops
    # a line that has not answered by then is stopped and tried again later (never failed)
    line_timeout_seconds: float = Field(3600.0, gt=0)
    poll_seconds: float = Field(0.5, gt=0)  # rounds when there is nothing to start
