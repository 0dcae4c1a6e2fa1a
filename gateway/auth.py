"""API keys: who is calling, whose data they may read, what they may do, and how much.

Keys come from three places, merged:
* `GATEWAY_API_KEYS` (`api_keys`): inference keys for every consumer group;
* `GATEWAY_ADMIN_API_KEYS` (`admin_api_keys`): keys for the management port too;
* `api_keys_file`: named keys with permissions, groups, limits and tenants (the Helm chart
  mounts it from a Secret). Its format is explicit, never guessed: by the file's extension
  (`.yaml`, `.yml`, `.json`: the structured format; `.txt`, `.keys`: one key per line) or
  `api_keys_file_format`.

      keys:
        - name: team-a                     # unique; shown in logs and metrics
          sha256: 9f86d081884c7d65...      # or key: sk-... (at least 16 characters)
          tenant: team-a                   # whose data: default, the key's own
          permissions: [inference]         # and/or admin (`scopes` is the older name)
          groups: [primary, embed]         # default: every group
          max_in_flight: 16                # requests at once (beyond: 429)
          tokens_per_minute: 200000        # token budgets (prompt + new tokens), drawn while
          tokens_per_day: 5000000          #   the tokens are made (gateway/budgets.py);
          tokens_per_month: 100000000      #   UTC windows, shared by replicas on Redis
      tenants:                             # budgets of a tenant, over all its keys
        - tenant: team-a
          tokens_per_day: 20000000

Fail closed: a file that does not parse, or parses to anything but this shape (an unknown
field, a duplicate name, a short key), refuses to start (exit 2 naming the line); on a
reload it keeps the keys it had, logs an ERROR and counts `gateway_keys_file_errors`.
Empty or short keys (under 16 characters) in the settings are a settings error.

The *tenant* of a key decides which stored conversations and responses it reaches, and its
share of the prefix cache. It derives from the key itself (an HMAC of its digest with the
server secret), or from an explicit `tenant` in the file, so rotating, reordering or
renaming keys never moves data from one tenant to another; a replacement key keeps its
predecessor's data only when the file gives both the same `tenant`. Without any key there
is one tenant, "local".

Keys are compared as SHA-256 digests with `hmac.compare_digest`, against every key, so
the time taken tells nothing. Live usage (requests in flight) belongs to the key's
identity (its digest), so it survives reloads of the file; token budgets live in the
shared counters (`gateway.metering`), by key name and tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.budgets import Limits
from gateway.errors import Forbidden, RateLimited
from gateway.settings import key_problem

log = logging.getLogger(__name__)

INFERENCE = "inference"
ADMIN = "admin"
PERMISSIONS = frozenset({INFERENCE, ADMIN})
KeysFormat = Literal["yaml", "lines"]
FORMATS_BY_EXTENSION: dict[str, KeysFormat] = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "yaml",
    ".txt": "lines",
    ".keys": "lines",
}

KEYS_FILE_ERRORS = Counter(
    "gateway_keys_file_errors", "Reloads of the keys file that failed (the previous keys stay in force)"
)


class KeysFileError(ValueError):
    """A keys file that cannot be used as it is (the message names the file and line)."""


def keys_format(path: Path, given: KeysFormat | None) -> KeysFormat:
    """The format of the keys file at `path`: `given`, else by its extension."""
    if given is not None:
        return given
    found = FORMATS_BY_EXTENSION.get(path.suffix.lower())
    if found is None:
        raise KeysFileError(
            f"{path}: cannot tell the keys file's format from its name; name it .yaml or .txt, "
            "or set api_keys_file_format (yaml or lines)"
        )
    return found


@dataclass(eq=False)
class Usage:
    """The live usage of one key identity: requests in flight."""

    in_flight: int = 0


@dataclass(eq=False, slots=True)
class Admission:
    """One admitted request of a principal, counted in flight until released."""

    principal: Principal
    released: bool = False

    def release(self) -> None:
        """The request ended (once)."""
        if self.released:
            return
        self.released = True
        self.principal.usage.in_flight -= 1


@dataclass(eq=False)
class Principal:
    """A caller: the key's name, tenant, permissions, groups and limits, and its usage."""

    name: str
    tenant: str
    permissions: frozenset[str] = PERMISSIONS
    groups: frozenset[str] | None = None  # None: every group
    max_in_flight: int | None = None
    limits: Limits = field(default_factory=Limits)  # the key's token budgets
    tenant_limits: Limits = field(default_factory=Limits)  # its tenant's (the keys file's tenants)
    usage: Usage = field(default_factory=Usage)

    @property
    def budgets(self) -> list[tuple[str, str, Limits]]:
        """(kind, name, limits) of the budgets its requests draw on."""
        out = []
        if self.limits:
            out.append(("key", self.name, self.limits))
        if self.tenant_limits:
            out.append(("tenant", self.tenant, self.tenant_limits))
        return out

    @property
    def in_flight(self) -> int:
        """Requests of this key in flight."""
        return self.usage.in_flight

    def can(self, permission: str) -> bool:
        """Whether the key has `permission`."""
        return permission in self.permissions

    def may_use(self, group: str) -> bool:
        """Whether the key may use consumer group `group`."""
        return self.groups is None or group in self.groups

    def check_group(self, group: str) -> None:
        """A 403 unless the key may use consumer group `group`."""
        if not self.may_use(group):
            raise Forbidden(f"the key {self.name!r} may not use consumer group {group!r}", param="model")

    def admit(self) -> Admission:
        """Count a request in flight, or refuse it (429) beyond the key's limit (token
        budgets are drawn by the request's `Allowance`, gateway/budgets.py)."""
        usage = self.usage
        if self.max_in_flight is not None and usage.in_flight >= self.max_in_flight:
            raise RateLimited(
                f"the key {self.name!r} has {self.max_in_flight} requests in flight, its limit; retry shortly",
                headers={"Retry-After": "1"},
            )
        usage.in_flight += 1
        return Admission(self)


def _tenant_of(digest: bytes, secret: bytes) -> str:
    return "k-" + hmac.new(secret, digest, hashlib.sha256).hexdigest()[:24]


LOCAL = Principal("local", "local")


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The caller the guard found for this request (an ASGI scope; "local" without keys)."""
    principal: Principal = scope.get("state", {}).get("principal", LOCAL)
    return principal


def digest_of(key: str) -> bytes:
    """The SHA-256 digest a key is kept as."""
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class FileKey(BaseModel):
    """One key of the structured keys file (unknown fields are refused: a misspelt limit
    must not silently mean "no limit")."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")
    key: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    tenant: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")
    permissions: list[Literal["inference", "admin"]] | None = None
    scopes: list[Literal["inference", "admin"]] | None = None
    groups: list[str] | None = None
    max_in_flight: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and (problem := key_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> FileKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of key, sha256")
        if self.permissions is not None and self.scopes is not None:
            raise ValueError("give permissions or its older name scopes, not both")
        return self


class TenantBudget(BaseModel):
    """Token budgets of one tenant, over all its keys."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    tokens_per_month: int | None = Field(None, ge=1)


class KeysFile(BaseModel):
    """The structured keys file."""

    model_config = ConfigDict(extra="forbid")

    keys: list[FileKey]
    tenants: list[TenantBudget] = Field(default_factory=list)


def _line_of(text: str, index: int) -> int | None:
    """The line of `keys[index]` in the YAML text (1-based), if it can be found."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None
    if not isinstance(root, yaml.MappingNode):
        return root.start_mark.line + 1 if root is not None else None
    for key_node, value in root.value:
        if key_node.value == "keys" and isinstance(value, yaml.SequenceNode) and index < len(value.value):
            return int(value.value[index].start_mark.line) + 1
    return None


def _yaml_entries(path: Path, text: str, secret: bytes) -> list[_Entry]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "somewhere"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise KeysFileError(f"{path}: {where}: {problem}") from None
    try:
        parsed = KeysFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        index = next((p for p in err["loc"] if isinstance(p, int)), None)
        line = _line_of(text, index) if index is not None else 1
        where = ".".join(str(p) for p in err["loc"]) or "the file"
        raise KeysFileError(f"{path}: line {line}: {where}: {err['msg']}") from None
    entries = []
    names: dict[str, int] = {}
    tenants: dict[str, Limits] = {}
    for t in parsed.tenants:
        if t.tenant in tenants:
            raise KeysFileError(f"{path}: the tenant {t.tenant!r} has two budgets")
        tenants[t.tenant] = Limits(t.tokens_per_minute, t.tokens_per_day, t.tokens_per_month)
    for i, item in enumerate(parsed.keys):
        line = _line_of(text, i)
        if item.name in names:
            raise KeysFileError(f"{path}: line {line}: the name {item.name!r} repeats keys[{names[item.name]}]")
        names[item.name] = i
        digest = digest_of(item.key) if item.key is not None else bytes.fromhex(item.sha256 or "")
        listed: list[str] = [*(item.permissions or item.scopes or ["inference"])]
        permissions = frozenset(listed)
        tenant = item.tenant or _tenant_of(digest, secret)
        principal = Principal(
            item.name,
            tenant,
            permissions,
            frozenset(item.groups) if item.groups is not None else None,
            item.max_in_flight,
            Limits(item.tokens_per_minute, item.tokens_per_day, item.tokens_per_month),
            tenants.get(tenant, Limits()),
        )
        entries.append(_Entry(digest, principal))
    if len({e.digest for e in entries}) != len(entries):
        raise KeysFileError(f"{path}: the same key appears twice")
    return entries


def _line_entries(path: Path, text: str, secret: bytes) -> list[_Entry]:
    entries = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("sha256:"):
            hexdigest = line.removeprefix("sha256:")
            try:
                digest = bytes.fromhex(hexdigest)
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise KeysFileError(f"{path}: line {n}: sha256: needs 64 hex digits")
        else:
            problem = key_problem(line)
            if problem is not None:
                raise KeysFileError(f"{path}: line {n}: {problem}")
            digest = digest_of(line)
        tenant = _tenant_of(digest, secret)
        entries.append(_Entry(digest, Principal(f"key-{tenant[2:10]}", tenant, frozenset({INFERENCE}))))
    return entries


def read_keys_file(path: Path, fmt: KeysFormat | None, secret: bytes) -> list[_Entry]:
    """The keys of the file at `path`; a `KeysFileError` naming the line if it cannot be
    used as it is."""
    kind = keys_format(path, fmt)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot read the keys file: {exc}") from None
    return _yaml_entries(path, text, secret) if kind == "yaml" else _line_entries(path, text, secret)


class KeyRing:
    """Every configured key; `authenticate` finds the caller of a presented key."""

    def __init__(
        self,
        inference: Iterable[str],
        admin: Iterable[str],
        keys_file: Path | None,
        *,
        secret: bytes = b"llm-gateway",
        file_format: KeysFormat | None = None,
    ) -> None:
        self._secret = secret
        self._usage: dict[bytes, Usage] = {}  # by key digest: survives reloads
        fixed: list[_Entry] = []
        for keys, permissions in ((inference, frozenset({INFERENCE})), (admin, PERMISSIONS)):
            for key in keys:
                problem = key_problem(key)
                if problem is not None:
                    raise KeysFileError(problem)
                digest = digest_of(key)
                tenant = _tenant_of(digest, secret)
                fixed.append(_Entry(digest, Principal(f"key-{tenant[2:10]}", tenant, permissions)))
        self._fixed = self._with_usage(fixed)
        self._file = keys_file
        self._format = file_format
        self._file_entries: list[_Entry] = []
        self._mtime: float | None = None
        self._checked = 0.0
        if keys_file is not None:
            self._load()  # fails closed: a KeysFileError stops the start

    def _with_usage(self, entries: list[_Entry]) -> list[_Entry]:
        for e in entries:
            e.principal.usage = self._usage.setdefault(e.digest, e.principal.usage)
        return entries

    def _load(self) -> None:
        assert self._file is not None
        mtime = os.stat(self._file).st_mtime
        fresh = read_keys_file(self._file, self._format, self._secret)
        self._file_entries, self._mtime = self._with_usage(fresh), mtime

    def _refresh(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < 1.0:
            return
        self._checked = now
        try:
            if os.stat(self._file).st_mtime == self._mtime:
                return
            self._load()
            log.info("re-read the keys file %s: %d keys", self._file, len(self._file_entries))
        except (OSError, KeysFileError) as exc:  # keep the keys we have; say why, loudly
            KEYS_FILE_ERRORS.inc()
            log.error("the keys file %s could not be used; the previous keys stay in force: %s", self._file, exc)

    @property
    def configured(self) -> bool:
        """Whether any key exists (else the API answers only to this machine). A keys
        file, even one emptied to revoke every key, keeps the server closed."""
        return bool(self._fixed) or self._file is not None

    def digests(self, permission: str) -> list[bytes]:
        """The SHA-256 digests of the keys that have `permission` (the probe process checks
        `/status` reads against them)."""
        self._refresh()
        return [e.digest for e in (*self._fixed, *self._file_entries) if e.principal.can(permission)]

    def by_name(self, name: str) -> Principal | None:
        """The principal of the key named `name` as configured now (None: no such key any
        more), for work a key started earlier (batch lines)."""
        self._refresh()
        for e in (*self._fixed, *self._file_entries):
            if e.principal.name == name:
                return e.principal
        return None

    def authenticate(self, key: str | None) -> Principal | None:
        """The caller of `key`, or None if it is no configured key."""
        self._refresh()
        if key is None:
            return None
        digest = digest_of(key)
        found = None
        for e in (*self._fixed, *self._file_entries):  # no early exit: every key is compared
            if hmac.compare_digest(digest, e.digest):
                found = e.principal
        return found
