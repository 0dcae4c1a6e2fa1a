"""Settings: YAML presets in `configs/`, overridden by environment variables.

Precedence, highest first: `GATEWAY_*` environment variables, the Takeoff environment
variables (for the primary reader), the YAML file given with `--config`, the defaults
below. Every field is documented in docs/settings.md.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from engine_adapters.base import ReaderTask
from engine_adapters.factory import ENGINE_KINDS, EngineKind
from gateway import takeoff_config
from gateway.store_settings import BatchSettings, ContinuationSettings, UsageSettings
from gateway.store_settings import Price as Price  # re-exported: the price table's entries

# The consumer group a generation goes to when the request names none (Takeoff's name).
DEFAULT_GROUP = "primary"
Task = ReaderTask


class ReaderSettings(BaseModel):
    """One loaded model (a Takeoff "reader") and the consumer group it serves."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(f"{DEFAULT_GROUP}-0", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    consumer_group: str = Field(DEFAULT_GROUP, min_length=1, max_length=64)
    kind: EngineKind = "vllm"
    # what the reader does; by default "generate" for vllm/scripted, "embed" otherwise
    task: Task | None = None
    model: str = "embedded:smollm2-135m-instruct"
    # the names OpenAI and Anthropic clients may send as `model` (vLLM's
    # --served-model-name): the first is the one answers and model lists give; without
    # any, the model's short name is given and the model as written here is accepted too
    served_model_names: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: str = "auto"
    max_model_len: int | None = Field(None, gt=0)
    max_batch_size: int | None = Field(None, gt=0, description="max sequences per engine batch")
    enforce_eager: bool = False
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)  # null: vLLM's default
    cpu_kv_cache_gib: int | None = Field(None, ge=1)
    cuda_visible_devices: str | None = None
    # One backend per engine (vLLM's rule). "xgrammar" rather than vLLM's "auto": with
    # "auto" the engine fixes its backend at the first constrained request, and a later
    # request that "auto" sends to another backend fails inside the engine.
    structured_outputs_backend: Literal["xgrammar", "guidance", "outlines", "lm-format-enforcer", "auto"] = "xgrammar"
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    enable_prefix_caching: bool | None = None  # null: vLLM's default for the model
    engine_args: dict[str, Any] = Field(default_factory=dict)
    scripted: dict[str, Any] = Field(default_factory=dict)
    # embeddings and classification (sentence-transformers and pooling readers)
    # admission: requests in flight at once (beyond: 429), prompt tokens waiting for
    # prefill in vLLM (beyond: 429), longest prompt accepted (beyond: 400)
    max_in_flight: int | None = Field(None, ge=1)
    max_queued_prompt_tokens: int | None = Field(None, ge=1)
    max_prompt_tokens: int | None = Field(None, ge=1)
    # Takeoff's no_repeat_ngram_size needs a logits processor in the engine
    no_repeat_ngram: bool = True
    # LoRA adapters (vllm readers): name -> local adapter folder, served with the base model
    lora_adapters: dict[str, str] = Field(default_factory=dict)
    max_lora_rank: int = Field(16, ge=1)
    max_loras: int = Field(4, ge=1)
    # chat (vllm readers): vLLM's parser names for "auto" tool calls and for reasoning
    # output, and a chat template file that replaces the model's
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template: str | None = None
    max_batch_wait_ms: float = Field(20.0, ge=0, description="dynamic batching: longest wait for more inputs")
    # vllm readers: the longest a structured-output constraint's check may take before it
    # is refused (the check runs off the event loop, on a pool of its own)
    constraint_check_timeout: float = Field(10.0, gt=0)
    truncate: bool = True
    allow_dimensions: bool = True

    @property
    def effective_task(self) -> Task:
        """The reader's task, with the default of its kind."""
        if self.task is not None:
            return self.task
        return ENGINE_KINDS[self.kind].default_task

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The LoRA adapters it serves (configured; the engine serves them once ready)."""
        return ENGINE_KINDS[self.kind].adapters(self.model_dump())

    @model_validator(mode="after")
    def _check_task(self) -> ReaderSettings:
        generative = ENGINE_KINDS[self.kind].generative
        if generative and self.task not in (None, "generate"):
            raise ValueError(
                f"a {self.kind} reader generates; use kind sentence-transformers or pooling to {self.task}"
            )
        if not generative and self.task == "generate":
            raise ValueError(f"a {self.kind} reader embeds or classifies; use kind vllm to generate")
        return self


MIN_KEY_LENGTH = 16


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key, or None (empty, padded or short keys are refused)."""
    if not key.strip():
        return "an API key is empty"
    if key != key.strip():
        return "an API key starts or ends with whitespace"
    if len(key) < MIN_KEY_LENGTH:
        return f"an API key has {len(key)} characters; keys need at least {MIN_KEY_LENGTH}"
    return None


# Takeoff's environment variables, kept so existing deployments keep their settings.
# They set fields of the primary reader (the first reader of the default group).
TAKEOFF_ENV = {
    "TAKEOFF_MODEL_NAME": "model",
    "TAKEOFF_DEVICE": "device",
    "TAKEOFF_MAX_SEQUENCE_LENGTH": "max_model_len",
    "TAKEOFF_TENSOR_PARALLEL": "tensor_parallel_size",
    "TAKEOFF_CUDA_VISIBLE_DEVICES": "cuda_visible_devices",
    "TAKEOFF_CONSUMER_GROUP": "consumer_group",
    "TAKEOFF_READER_ID": "id",
}
# Takeoff variables with another translation (see `load_settings`).
TAKEOFF_OTHER = (
    "TAKEOFF_LOG_LEVEL",  # -> log_level
    "TAKEOFF_MAX_USER_BATCH_SIZE",  # -> max_user_batch_size
    "TAKEOFF_DISABLE_CUDA_GRAPH",  # -> the primary reader's enforce_eager
    "TAKEOFF_QUANT_TYPE",  # -> the primary reader's engine_args.quantization
    "TAKEOFF_ACCESS_TOKEN",  # -> HF_TOKEN, for gated hub models
    # -> max_batch_size of a primary reader that batches statically (sentence-transformers);
    # a vLLM reader batches continuously, where Takeoff's static batch size (often 4-30)
    # would cap the sequences in flight: it is named in the start-up warning instead
    "TAKEOFF_MAX_BATCH_SIZE",
)
# kinds of reader whose max_batch_size is a static batch, as Takeoff's was
_STATIC_BATCHING = ("sentence-transformers",)
# Takeoff variables that have no meaning here: named in one warning at start.
TAKEOFF_UNSUPPORTED = {
    "TAKEOFF_BATCH_DURATION_MILLIS": "vLLM batches continuously",
    "TAKEOFF_PAGE_CACHE_SIZE": "use the reader's gpu_memory_utilization or cpu_kv_cache_gib",
    "TAKEOFF_NVLINK_UNAVAILABLE": "vLLM detects the interconnect",
    "TAKEOFF_REDIS_HOST": "use continuation.redis_url",
    "TAKEOFF_REDIS_PORT": "use continuation.redis_url",
    "TAKEOFF_RABBITMQ_HOST": "there is no message queue",
    "TAKEOFF_RABBITMQ_PORT": "there is no message queue",
    "TAKEOFF_RABBITMQ_USERNAME": "there is no message queue",
    "TAKEOFF_RABBITMQ_PASSWORD": "there is no message queue",
    "TAKEOFF_MAX_PROMPT_STRING_BYTES": "use max_body_bytes and the reader's max_prompt_tokens",
    "TAKEOFF_LORAS": "use the reader's lora_adapters",
}
_LOG_LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "warning": "warning"}
_LOG_LEVELS |= {"error": "error", "critical": "error", "fatal": "error"}
_QUANT = {"bnb": "bitsandbytes", "int8": "bitsandbytes", "bitsandbytes": "bitsandbytes", "awq": "awq", "gptq": "gptq"}
# Our own shortcuts for the same fields, which win over the Takeoff names.
PRIMARY_ENV = {
    "GATEWAY_MODEL": "model",
    "GATEWAY_DEVICE": "device",
    "GATEWAY_MAX_BATCH_SIZE": "max_batch_size",
    "GATEWAY_MAX_MODEL_LEN": "max_model_len",
    "GATEWAY_TENSOR_PARALLEL_SIZE": "tensor_parallel_size",
    "GATEWAY_DTYPE": "dtype",
}


class GenerateApiDefaults(BaseModel):
    """Defaults of `generation_config` on `/api/generate-one` and `/api/generate-batch`
    (the ".env" defaults of that API's original service)."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0)
    max_new_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    length_penalty: float = 1.0


class ResponsesSettings(BaseModel):
    """The OpenAI Responses API (`/v1/responses`)."""

    model_config = ConfigDict(extra="forbid")

    # tools OpenAI runs itself (web_search, file_search, ...) are dropped instead of refused
    # with a 400; Codex-style clients send them with every request
    drop_builtin_tools: bool = False


class Settings(BaseSettings):
    """Every knob of the gateway. Environment variables are `GATEWAY_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # listeners
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=0, le=65535)
    management_port: int | None = Field(None, ge=0, le=65535, description="default: port + 1")
    openai_port: int | None = Field(3003, ge=0, le=65535, description="null turns it off")

    # models
    # fields every reader created through the management API starts from (e.g. the CPU
    # engine settings of configs/default.yaml); the request's own fields win
    reader_defaults: dict[str, Any] = Field(default_factory=dict)
    readers: list[ReaderSettings] = Field(
        default_factory=lambda: [
            ReaderSettings(),
            ReaderSettings(
                id="embed-0", consumer_group="embed", kind="sentence-transformers", model="embedded:all-minilm-l6-v2"
            ),
        ]
    )
    cache_dir: Path = Path("~/.cache/llm-gateway")
    # true: never touch a model hub; false: hub ids are fetched; null (default): offline
    # unless a configured reader names a hub id (embedded models and folders never need one)
    offline: bool | None = None

    # generation defaults and limits
    default_max_new_tokens: int = Field(128, ge=1)
    max_new_tokens_limit: int | None = Field(None, ge=1)
    max_user_batch_size: int = Field(64, ge=1, description="TAKEOFF_MAX_USER_BATCH_SIZE")
    max_stop_sequences: int = Field(16, ge=0)
    max_n: int = Field(16, ge=1)
    # tool_choice "required" (Anthropic's "any") with parallel calls allowed: at most this
    # many calls (a small model sampling at temperature 1 keeps adding calls otherwise)
    max_parallel_tool_calls: int = Field(4, ge=1, le=128)

    # generate-one / generate-batch and the /chat service
    generate_api_defaults: GenerateApiDefaults = Field(default_factory=GenerateApiDefaults)
    max_beams: int = Field(8, ge=1)
    max_request_id_length: int = Field(256, ge=1)
    continuation: ContinuationSettings = Field(default_factory=ContinuationSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    batches: BatchSettings = Field(default_factory=BatchSettings)
    chat_system_prompt: str | None = None
    responses: ResponsesSettings = Field(default_factory=ResponsesSettings)

    # streams and lifecycle
    sse_keepalive_seconds: float = Field(15.0, gt=0)
    drain_timeout_seconds: float = Field(30.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # every line of the process (access, application, vLLM): "text" for people, "json"
    # (one object per line) for collectors
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces of each request (OTLP; the OTEL_* variables say where and how)
    tracing: bool = False
    access_log: bool = True
    ui_enabled: bool = True
    metrics_on_main_port: bool = False
    metrics_public: bool = False

    # authentication: deny by default once keys exist (see gateway/auth.py)
    api_keys: list[SecretStr] = Field(default_factory=list)  # inference permission, every group
    admin_api_keys: list[SecretStr] = Field(default_factory=list)  # the management port too
    api_keys_file: Path | None = None  # named keys with permissions, groups, limits, tenants
    # the keys file's format; by default told by its extension (.yaml/.yml/.json or .txt/.keys)
    api_keys_file_format: Literal["yaml", "lines"] | None = None
    public_paths: list[str] = Field(default_factory=lambda: ["/healthz", "/readyz", "/health", "/version", "/ping"])
    allow_unauthenticated: bool = False
    # without keys, Host names besides the loopback ones that may reach the server
    trusted_hosts: list[str] = Field(default_factory=list)
    management_host: str = "127.0.0.1"
    # /healthz and /readyz on a port of their own, answered by a child process so probes
    # stay fast while a burst keeps the event loop busy (the Helm chart points its probes here)
    probe_port: int | None = Field(None, ge=1, le=65535)

    # the management API: what POST /reader may create
    allowed_reader_kinds: list[EngineKind] = Field(
        default_factory=lambda: [k for k, info in ENGINE_KINDS.items() if info.creatable]
    )
    allowed_engine_args: list[str] = Field(
        default_factory=lambda: [
            "max_num_batched_tokens",
            "max_num_seqs",
            "block_size",
            "kv_cache_dtype",
            "quantization",
            "swap_space",
            "enable_chunked_prefill",
            "seed",
        ]
    )
    model_roots: list[Path] = Field(default_factory=list)  # folders POST /reader may load models from
    max_readers: int = Field(16, ge=1)
    max_concurrent_loads: int = Field(2, ge=1)

    # limits and admission
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    # bodies that carry prompts are also capped at this many bytes per token of the largest
    # context served (never below 256 KiB): a prompt no model can take is refused before
    # it is parsed; null turns the cap off
    body_bytes_per_context_token: int | None = Field(32, ge=1)
    request_timeout_seconds: float | None = Field(None, gt=0)
    max_request_timeout_seconds: float = Field(3600.0, gt=0)
    min_request_timeout_seconds: float = Field(0.01, gt=0)
    max_stop_length: int = Field(1024, ge=1)
    # completions' echo with logprobs scores every prompt token, which costs the engine
    # prompt length x vocabulary in memory (a known vLLM out-of-memory path): off unless
    # allowed, and then for prompts of at most max_prompt_logprobs_tokens
    allow_prompt_logprobs: bool = False
    max_prompt_logprobs_tokens: int = Field(512, ge=1)
    max_constraint_bytes: int = Field(256 * 1024, ge=1024)
    max_tokenize_chars: int = Field(1_000_000, ge=1)
    cors_allow_origins: list[str] = Field(default_factory=list)

    @field_validator("openai_port", "management_port", "probe_port", mode="before")
    @classmethod
    def _null_port(cls, v: Any) -> Any:
        # `null` from the environment means what it means in YAML (an empty value does not:
        # a template's unset variable must not turn a port off)
        return None if isinstance(v, str) and v.strip().lower() in ("null", "none") else v

    @field_validator("cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expandvars(str(v))).expanduser()

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _real_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # fail closed: an empty key (a template's unset variable) must never mean "no key"
        for i, key in enumerate(keys):
            problem = key_problem(key.get_secret_value())
            if problem is not None:
                raise ValueError(f"[{i}]: {problem}")
        return keys

    @model_validator(mode="after")
    def _check_readers(self) -> Settings:
        ids = [r.id for r in self.readers]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"reader ids must be unique; repeated: {sorted(dup)}")
        if self.batches.enabled:
            # batch lines go at the lowest priority: vLLM readers schedule by priority
            # unless their settings say otherwise
            for r in self.readers:
                if r.kind == "vllm" and "scheduling_policy" not in r.model_fields_set:
                    r.scheduling_policy = "priority"
        return self

    @property
    def batch_directory(self) -> Path:
        """Where the Files API keeps files."""
        return self.batches.directory or self.cache_dir / "batches"

    def hub_models(self) -> list[str]:
        """Configured models that are hub ids (neither embedded nor a local folder)."""
        return [r.model for r in self.readers if ENGINE_KINDS[r.kind].loads_model and is_hub_id(r.model)]

    @property
    def effective_offline(self) -> bool:
        """Whether the process keeps away from model hubs (`offline`, or its default)."""
        return self.offline if self.offline is not None else not self.hub_models()

    @property
    def effective_management_port(self) -> int:
        """The management port: `management_port`, or `port + 1` as in Takeoff."""
        return self.management_port if self.management_port is not None else self.port + 1

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment (over a .env file), then the YAML values passed as init arguments."""
        return _EnvAndDotenv(settings_cls), init_settings


class _EnvAndDotenv(EnvSettingsSource):
    """GATEWAY_* variables of the environment over those of a `.env` file in the working
    directory (the generate-one API's generation defaults live there). Other lines are
    left to `process_env` (TAKEOFF_*) or ignored."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(process_env(), self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def is_hub_id(model: str) -> bool:
    """A model name that is neither `embedded:...` nor a path (`org/name` on a hub)."""
    if model.startswith(("embedded:", "/", ".", "~")):
        return False
    return not Path(model).exists()


def _apply_primary_env(data: dict[str, Any], env: dict[str, str]) -> None:
    """Set fields of the primary reader from TAKEOFF_* and GATEWAY_* shortcuts, then from
    GATEWAY_PRIMARY_READER (a JSON object of its fields; `gateway serve MODEL --vllm-flag`
    lands there; its engine_args are merged key by key)."""
    pairs = [(k, f) for k, f in TAKEOFF_ENV.items() if k in env]
    pairs += [(k, f) for k, f in PRIMARY_ENV.items() if k in env]
    fields = _json_object(env, "GATEWAY_PRIMARY_READER")
    if (not pairs and not fields) or "GATEWAY_READERS" in env:
        return
    primary = _primary(data)
    for key, field in pairs:
        primary[field] = env[key]
    engine_args = fields.pop("engine_args", None)
    primary.update(fields)
    if engine_args:
        primary["engine_args"] = {**(primary.get("engine_args") or {}), **engine_args}


def _json_object(env: dict[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object of reader fields")
    return value


def _primary(data: dict[str, Any]) -> dict[str, Any]:
    readers = data.setdefault("readers", [ReaderSettings().model_dump()])
    if not readers:
        readers.append(ReaderSettings().model_dump())
    return next((r for r in readers if r.get("consumer_group", DEFAULT_GROUP) == DEFAULT_GROUP), readers[0])


def _apply_takeoff_other(data: dict[str, Any], env: dict[str, str]) -> None:
    if "TAKEOFF_MAX_USER_BATCH_SIZE" in env and "GATEWAY_MAX_USER_BATCH_SIZE" not in env:
        data["max_user_batch_size"] = env["TAKEOFF_MAX_USER_BATCH_SIZE"]
    level = env.get("TAKEOFF_LOG_LEVEL", "").lower()
    if level and "GATEWAY_LOG_LEVEL" not in env:
        if level not in _LOG_LEVELS:
            raise ValueError(f"TAKEOFF_LOG_LEVEL={env['TAKEOFF_LOG_LEVEL']!r}: use debug, info, warning or error")
        data["log_level"] = _LOG_LEVELS[level]
    if env.get("VLLM_API_KEY") and not any(k in env for k in ("GATEWAY_API_KEYS", "GATEWAY_API_KEYS_FILE")):
        # vLLM's own variable: its one inference key
        data["api_keys"] = [env["VLLM_API_KEY"]]
    if "GATEWAY_READERS" in env:
        return
    if "TAKEOFF_MAX_BATCH_SIZE" in env and data.get("readers"):
        primary = _primary(data)
        if primary.get("kind", "vllm") in _STATIC_BATCHING and "GATEWAY_MAX_BATCH_SIZE" not in env:
            primary["max_batch_size"] = env["TAKEOFF_MAX_BATCH_SIZE"]
    if env.get("TAKEOFF_DISABLE_CUDA_GRAPH", "").lower() in ("1", "true", "yes", "on"):
        _primary(data)["enforce_eager"] = True
    quant = env.get("TAKEOFF_QUANT_TYPE", "").lower()
    if quant:
        primary = _primary(data)
        primary["engine_args"] = {**primary.get("engine_args", {}), "quantization": _QUANT.get(quant, quant)}


def takeoff_unsupported(env: dict[str, str] | None = None, primary_kind: str = "vllm") -> list[str]:
    """TAKEOFF_* variables that are set and do nothing here, with what to use instead."""
    env = dict(os.environ) if env is None else env
    known = set(TAKEOFF_ENV) | set(TAKEOFF_OTHER)
    out = []
    if "TAKEOFF_MAX_BATCH_SIZE" in env and primary_kind not in _STATIC_BATCHING:
        out.append(
            "TAKEOFF_MAX_BATCH_SIZE (vLLM batches continuously and is not capped by a static batch size; "
            "to cap the sequences in flight set GATEWAY_MAX_BATCH_SIZE or --max-num-seqs)"
        )
    for name in sorted(k for k in env if k.startswith("TAKEOFF_") and k not in known):
        hint = TAKEOFF_UNSUPPORTED.get(name, "not a Takeoff setting this gateway knows")
        out.append(f"{name} ({hint})")
    return out


def load_settings(config: str | Path | None = None) -> Settings:
    """Effective settings from an optional YAML file and the environment."""
    data: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(Path(config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{config}: the top level must be a mapping of settings")
        data = loaded
        if takeoff_config.is_takeoff_config(loaded):
            data, notes = takeoff_config.convert(loaded)
            logging.getLogger(__name__).warning(
                "%s is a Takeoff config, read as the settings `gateway config --from-takeoff` prints: %s",
                config,
                "; ".join(notes),
            )
    env = process_env()
    _apply_primary_env(data, env)
    _apply_takeoff_other(data, env)
    token = env.get("TAKEOFF_ACCESS_TOKEN")
    if token and "HF_TOKEN" not in os.environ:
        os.environ["HF_TOKEN"] = token  # gated hub models (Takeoff's access token)
    return Settings(**data)


def process_env(dotenv: str | Path = ".env") -> dict[str, str]:
    """The environment, over the variables of a `.env` file in the working directory
    (GATEWAY_* and TAKEOFF_* alike; the real environment wins)."""
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(dotenv).items() if v is not None} if Path(dotenv).is_file() else {}
    return {**values, **os.environ}


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets hidden (for `gateway config` and logs)."""
    data = settings.model_dump(mode="json")
    data["api_keys"] = ["**********" for _ in settings.api_keys]
    data["admin_api_keys"] = ["**********" for _ in settings.admin_api_keys]
    data["continuation"]["secret"] = "**********"
    data["continuation"]["redis_url"] = _redact_url(settings.continuation.redis_url.get_secret_value())
    return data


def _redact_url(url: str) -> str:
    """A URL with any password (in its user part or its query) replaced by stars."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":**********@"))
    if parts.query:
        query = [
            (k, "**********" if k.lower() in ("password", "pass", "auth") else v) for k, v in parse_qsl(parts.query)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def non_default(settings: Settings) -> dict[str, Any]:
    """The top-level settings that differ from the built-in defaults, secrets hidden."""
    defaults = redacted(Settings.model_construct())
    defaults["cache_dir"] = str(Settings._expand(Path(defaults["cache_dir"])))
    current = redacted(settings)
    return {k: v for k, v in current.items() if defaults.get(k) != v}
