"""API keys: who is calling, what they may do, and how much.

Keys come from three places, merged:
* `GATEWAY_API_KEYS` (`api_keys`): inference keys for every consumer group;
* `GATEWAY_ADMIN_API_KEYS` (`admin_api_keys`): keys for the management port too;
* `api_keys_file`: a YAML file of named keys (the Helm chart mounts it from a Secret),
  each plain or as a SHA-256 digest, with scopes, allowed consumer groups and limits:

      keys:
        - name: team-a
          sha256: 9f86d081884c7d65...      # or key: sk-...
          scopes: [inference]              # and/or admin
          groups: [primary, embed]         # default: every group
          max_in_flight: 16                # requests at once (beyond: 429)
          tokens_per_minute: 200000        # prompt + generated tokens (beyond: 429)

  A file of plain lines (a key, or `sha256:<hex>`, per line) still works: inference keys.
  The file is re-read when it changes (checked at most once a second), so a revoked key
  stops working without a restart.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key, so
the time taken tells nothing. A request's `Principal` names the key (never the key
itself) in logs, metrics and the continuation store's tenant scoping. Without any key
there is one tenant, "local".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import Forbidden, Overloaded

log = logging.getLogger(__name__)

INFERENCE = "inference"
ADMIN = "admin"
SCOPES = frozenset({INFERENCE, ADMIN})


@dataclass(eq=False)
class Principal:
    """A caller: the key's name, its scopes, groups and limits, and its live usage."""

    name: str
    scopes: frozenset[str] = SCOPES
    groups: frozenset[str] | None = None  # None: every group
    max_in_flight: int | None = None
    tokens_per_minute: int | None = None
    in_flight: int = 0
    _tokens: deque[tuple[float, int]] = field(default_factory=deque)

    def can(self, scope: str) -> bool:
        """Whether the key has `scope`."""
        return scope in self.scopes

    def check_group(self, group: str) -> None:
        """A 403 unless the key may use consumer group `group`."""
        if self.groups is not None and group not in self.groups:
            raise Forbidden(f"the key {self.name!r} may not use consumer group {group!r}", param="model")

    def _used(self, now: float) -> int:
        while self._tokens and self._tokens[0][0] <= now - 60:
            self._tokens.popleft()
        return sum(n for _, n in self._tokens)

    def admit(self) -> None:
        """Count a request in flight, or refuse it (429) beyond the key's limits."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"the key {self.name!r} has {self.max_in_flight} requests in flight, its limit; retry shortly",
                headers={"Retry-After": "1"},
            )
        if self.tokens_per_minute is not None:
            now = time.monotonic()
            if self._used(now) >= self.tokens_per_minute:
                wait = max(1, int(self._tokens[0][0] + 60 - now) + 1) if self._tokens else 1
                raise Overloaded(
                    f"the key {self.name!r} used its {self.tokens_per_minute} tokens per minute; retry later",
                    headers={"Retry-After": str(wait)},
                )
        self.in_flight += 1

    def release(self, tokens: int) -> None:
        """The request ended, having used `tokens` (prompt and generated)."""
        self.in_flight -= 1
        if tokens and self.tokens_per_minute is not None:
            self._tokens.append((time.monotonic(), tokens))


LOCAL = Principal("local")


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The caller the guard found for this request (an ASGI scope; "local" without keys)."""
    principal: Principal = scope.get("state", {}).get("principal", LOCAL)
    return principal


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


def _entries_of_file(path: Path) -> list[_Entry]:
    text = path.read_text()
    data: Any = None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):  # the older format: one key (or sha256:<hex>) per line
        out = []
        for n, raw in enumerate(text.splitlines()):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            digest = bytes.fromhex(line.removeprefix("sha256:")) if line.startswith("sha256:") else _digest(line)
            out.append(_Entry(digest, Principal(f"file-{n + 1}", frozenset({INFERENCE}))))
        return out
    entries = []
    for i, item in enumerate(data.get("keys") or []):
        if not isinstance(item, dict) or not item.get("name"):
            raise ValueError(f"{path}: keys[{i}] needs a name")
        if ("key" in item) == ("sha256" in item):
            raise ValueError(f"{path}: keys[{i}] needs exactly one of key, sha256")
        digest = _digest(str(item["key"])) if "key" in item else bytes.fromhex(str(item["sha256"]))
        if len(digest) != 32:
            raise ValueError(f"{path}: keys[{i}].sha256 must be 64 hex digits")
        scopes = frozenset(item.get("scopes") or [INFERENCE])
        if not scopes <= SCOPES:
            raise ValueError(f"{path}: keys[{i}].scopes must be among {sorted(SCOPES)}")
        groups = item.get("groups")
        entries.append(
            _Entry(
                digest,
                Principal(
                    str(item["name"]),
                    scopes,
                    frozenset(groups) if groups is not None else None,
                    item.get("max_in_flight"),
                    item.get("tokens_per_minute"),
                ),
            )
        )
    return entries


class KeyRing:
    """Every configured key; `authenticate` finds the caller of a presented key."""

    def __init__(self, inference: Iterable[str], admin: Iterable[str], keys_file: Path | None) -> None:
        self._fixed = [
            _Entry(_digest(k), Principal(f"key-{i + 1}", frozenset({INFERENCE}))) for i, k in enumerate(inference) if k
        ]
        self._fixed += [_Entry(_digest(k), Principal(f"admin-{i + 1}", SCOPES)) for i, k in enumerate(admin) if k]
        self._file = keys_file
        self._file_entries: list[_Entry] = []
        self._mtime: float | None = None
        self._checked = 0.0
        if keys_file is not None:
            self._load()

    def _load(self) -> None:
        assert self._file is not None
        mtime = os.stat(self._file).st_mtime
        fresh = _entries_of_file(self._file)
        # keep the live usage (in flight, tokens) of keys that stay
        old = {e.principal.name: e.principal for e in self._file_entries}
        for e in fresh:
            prev = old.get(e.principal.name)
            if prev is not None:
                e.principal.in_flight = prev.in_flight
                e.principal._tokens = prev._tokens
        self._file_entries, self._mtime = fresh, mtime

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            if os.stat(self._file).st_mtime != self._mtime:
                self._load()
                log.info("re-read the keys file %s: %d keys", self._file, len(self._file_entries))
        except (OSError, ValueError) as exc:  # keep the keys we have; say why
            log.error("cannot re-read the keys file %s: %s", self._file, exc)

    @property
    def configured(self) -> bool:
        """Whether any key exists (else every route is open to this machine)."""
        # a keys file, even one emptied to revoke every key, keeps the server closed
        return bool(self._fixed) or self._file is not None

    def digests(self, scope: str) -> list[bytes]:
        """The SHA-256 digests of the keys that have `scope` (the probe process checks
        `/status` reads against them)."""
        self._refresh()
        return [e.digest for e in (*self._fixed, *self._file_entries) if e.principal.can(scope)]

    def authenticate(self, key: str | None) -> Principal | None:
        """The caller of `key`, or None if it is no configured key."""
        self._refresh()
        if key is None:
            return None
        digest = _digest(key)
        found = None
        for e in (*self._fixed, *self._file_entries):  # no early exit: every key is compared
            if hmac.compare_digest(digest, e.digest):
                found = e.principal
        return found
