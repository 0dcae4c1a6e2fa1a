"""One log format per process: `text` for people, `json` for collectors (`log_format`).

Every line goes to stderr through one handler: the gateway's application lines, the
access lines (`gateway.access`, one per request, with their fields), uvicorn's, and
vLLM's, in the front-end process and in vLLM's engine-core processes alike (vLLM reads
the dictConfig file named by `VLLM_LOGGING_CONFIG_PATH`, written here before vLLM is
imported). A line logged while a request is being served carries its request id (the
`X-Request-ID` the client sent or the one the gateway made), which is also the prefix of
the request ids vLLM logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the request being served, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Never drops a record."""
        if not hasattr(record, "request_id"):
            from gateway.observability.metrics import current_observation

            obs = current_observation()
            record.request_id = obs.request_id if obs is not None else "-"
            if obs is not None and obs.trace is not None:  # the request's trace, when tracing
                record.trace_id = f"{obs.trace.trace_id:032x}"
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the
    record's `fields` (an access line's) at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        t = time.gmtime(record.created)
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", "-")
        if rid != "-":
            data["request_id"] = rid
        trace = getattr(record, "trace_id", None)
        if trace is not None:
            data["trace_id"] = trace
        fields = getattr(record, "fields", None)
        if fields:
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id] message`, an access line's fields as key=value."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of text (and its traceback, if any)."""
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        line = super().format(record)
        trace = getattr(record, "trace_id", None)
        if trace is not None:
            head, sep, rest = line.partition("\n")
            line = f"{head} trace_id={trace}{sep}{rest}"
        fields = getattr(record, "fields", None)
        if fields:
            extra = " ".join(
                f"{k}={v}" for k, v in fields.items() if k not in ("event", "request_id") and v is not None
            )
            head, sep, rest = line.partition("\n")
            line = f"{head} {extra}{sep}{rest}"
        return line


def formatter(kind: str) -> logging.Formatter:
    """The formatter of `kind` ("text" or "json")."""
    return JSONFormatter() if kind == "json" else TextFormatter()


def configure(kind: str, level: str) -> None:
    """Route every logger of this process to one stderr handler in format `kind`, and
    have vLLM (here and in its engine processes) log through the same format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(kind))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings become log lines in the same format
    if kind == "json":
        # Output that bypasses logging, in this process and the engine's: progress bars,
        # torch's C++ warnings, library deprecation notices. Collectors want none of it.
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gateway.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = _vllm_config(kind, level)


def _vllm_config(kind: str, level: str) -> str:
    """A logging dictConfig file for vLLM's loggers, in our format."""
    cls = "JSONFormatter" if kind == "json" else "TextFormatter"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "gateway.observability.logs.RequestIdFilter"}},
        "formatters": {"gateway": {"()": f"gateway.observability.logs.{cls}"}},
        "handlers": {
            "gateway": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["gateway"], "level": level.upper(), "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="gateway-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    return path
