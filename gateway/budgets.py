"""Token budgets per key and per tenant, per UTC minute, day and month, enforced while the
tokens are made.

A request's `Allowance` leases tokens from every window of its key's and its tenant's
budgets (`gateway.metering`: atomic, shared by replicas on Redis): at admission the
prompt (estimated from the body) plus a first slice of output, and up to the whole answer
(at most FIRST_LEASE) where the window has plenty left; then a slice at a time as the
engine makes tokens beyond that. A window with nothing left refuses new requests (429 with
`Retry-After` at the window's reset); a stream whose next engine step finds no lease left
is delivered that step (already made, so billed) and then ends cleanly, so no stream
overshoots its allowance by more than one engine step. When the request ends, the unused
part of its leases goes back, and tokens counted but never drawn (a pooling request's) are
added: every window ends up holding exactly the tokens used.

With no budget configured none of this runs (no allowance, no counter).
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field

from gateway.errors import RateLimited
from gateway.metering import Meter

# tokens leased per window at a time beyond the first lease, beyond what a step needs: a
# slice, doubling at each lease of a stream up to MAX_SLICE (a stream of n tokens makes
# about log2(n/32) Redis calls, not n/32); near the limit a lease is at most a quarter of
# what is left
SLICE = 32
MAX_SLICE = 512
# the most of a request's answer leased at admission where the window has plenty left (the
# quarter rule bounds it near the limit): most answers then cost one lease and one refund
FIRST_LEASE = 4096
WINDOWS = ("minute", "day", "month")


@dataclass(frozen=True, slots=True)
class Limits:
    """Token budgets (prompt + generated tokens) of one key or tenant; None: no limit."""

    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def windows(self) -> list[tuple[str, int]]:
        """(window, limit) of every budget set."""
        limits = (self.tokens_per_minute, self.tokens_per_day, self.tokens_per_month)
        return [(window, limit) for window, limit in zip(WINDOWS, limits, strict=True) if limit is not None]

    def __bool__(self) -> bool:
        return any(x is not None for x in (self.tokens_per_minute, self.tokens_per_day, self.tokens_per_month))


def window_of(window: str, now: float) -> tuple[str, float]:
    """The id of the `window` ("minute", "day", "month") holding `now`, and when it resets
    (epoch seconds, UTC)."""
    t = time.gmtime(now)
    if window == "minute":
        return time.strftime("%Y-%m-%dT%H:%M", t), (int(now) // 60 + 1) * 60.0
    if window == "day":
        return time.strftime("%Y-%m-%d", t), (int(now) // 86400 + 1) * 86400.0
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return time.strftime("%Y-%m", t), float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


@dataclass(slots=True)
class _Lease:
    key: str  # the window's counter
    scope: str  # "key team-a" or "tenant acme", for messages
    window: str
    limit: int
    reset_at: float
    ttl: int
    left: int = 0  # leased and not yet spent


@dataclass(eq=False)
class Allowance:
    """One request's draw on its budgets."""

    meter: Meter
    leases: list[_Lease] = field(default_factory=list)
    spent: int = 0  # drawn, as of the leases' last update (`_sync`)
    # what every lease held still covers, less what `take` drew since: the only number
    # the path of each engine step reads and writes (the leases catch up in `_sync`)
    credit: int = 0
    synced: int = 0  # `credit` when the leases were last brought up to date
    exhausted: bool = False
    closed: bool = False
    slice: int = SLICE  # the next lease's size (doubles up to MAX_SLICE)
    cause: _Lease | None = None  # the window that ran out

    @classmethod
    def of(cls, meter: Meter, scopes: list[tuple[str, str, Limits]], now: float | None = None) -> Allowance | None:
        """The allowance of a request whose budgets are `scopes` ((kind, name, limits) of
        its key and tenant); None when no budget applies."""
        now = time.time() if now is None else now
        leases = []
        for kind, name, limits in scopes:
            for window, limit in limits.windows():
                wid, reset_at = window_of(window, now)
                key = f"b:{kind}:{name}:{window}:{wid}"
                leases.append(_Lease(key, f"{kind} {name!r}", window, limit, reset_at, int(reset_at - now) + 120))
        return cls(meter, leases) if leases else None

    async def open(self, reserve: int, want: int | None = None) -> None:
        """Lease `reserve` tokens (the prompt's estimate and a first slice) from every
        window, and up to `want` (the whole answer, bounded) where the window has plenty
        left (a quarter of what is left at most, the leases' rule): a request then makes
        one or two leases, not one per doubling slice. A window with nothing left refuses
        the request (429 until it resets)."""
        want = max(reserve, want or 0)
        if want > reserve:  # a long answer: its next lease is as large
            self.slice = MAX_SLICE
        for i, lease in enumerate(self.leases):
            granted, _ = await self.meter.lease(lease.key, lease.limit, max(1, want), lease.ttl, max(1, reserve))
            if granted == 0:
                for earlier in self.leases[:i]:  # give back what was leased already
                    await self._refund(earlier)
                self.closed = True
                wait = max(1, int(lease.reset_at - time.time()) + 1)
                raise RateLimited(
                    f"the {lease.scope} used its {lease.limit} tokens per {lease.window}; "
                    f"the budget resets in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            lease.left = granted
        self._sync()

    def take(self, n: int) -> bool | None:
        """Spend `n` tokens from the leases held: True, or None when a lease must grow
        (`extend`). No await and no loop: the path of almost every engine step."""
        credit = self.credit - n
        if credit < 0:
            return None
        self.credit = credit
        return True

    def _sync(self) -> None:
        """Bring the leases up to date with what `take` drew, and the credit with them."""
        drawn = self.synced - self.credit
        if drawn:
            for lease in self.leases:
                lease.left -= drawn
            self.spent += drawn
        self.credit = self.synced = min((lease.left for lease in self.leases), default=0)

    async def extend(self, n: int) -> bool:
        """Grow the leases to cover `n` tokens and spend them; False when a budget has
        run out (the `n` tokens, made already, are counted anyway: the stream must end).
        The request's other streams may `take` while this waits for the meter: `_sync`
        counts their draws after."""
        self._sync()
        ok = True
        for lease in self.leases:
            if lease.left < n:
                need = n - lease.left
                granted, _ = await self.meter.lease(lease.key, lease.limit, max(need, self.slice), lease.ttl, need)
                lease.left += granted
                if lease.left < n:
                    ok = False
                    self.cause = self.cause or lease
        self.slice = min(self.slice * 2, MAX_SLICE)
        for lease in self.leases:
            if lease.left >= n:
                lease.left -= n
            else:  # beyond the limit by part of one step: counted, never leased
                await self.meter.add(lease.key, n - lease.left, lease.ttl)
                lease.left = 0
        self.spent += n
        self._sync()  # (and what other streams of the request drew meanwhile)
        if not ok:
            self.exhausted = True
        return ok

    async def close(self, used: int | None = None) -> None:
        """The request ended, having used `used` tokens in all (when known): count what
        was used but not drawn, and give back what was leased but not used."""
        if self.closed:
            return
        self.closed = True
        self._sync()
        self.credit = self.synced = 0
        extra = max(0, (used or 0) - self.spent)
        for lease in self.leases:
            if extra:
                taken = min(extra, lease.left)
                lease.left -= taken
                if extra > taken:
                    await self.meter.add(lease.key, extra - taken, lease.ttl)
            await self._refund(lease)

    async def _refund(self, lease: _Lease) -> None:
        if lease.left > 0:
            await self.meter.add(lease.key, -lease.left, lease.ttl)
            lease.left = 0

    def why(self) -> str:
        """What ended the request: the budget that ran out and when it resets."""
        lease = self.cause or (self.leases[0] if self.leases else None)
        if lease is None:
            return "a token budget ran out"
        wait = max(1, int(lease.reset_at - time.time()) + 1)
        return f"the {lease.scope} used its {lease.limit} tokens per {lease.window}; the budget resets in {wait} s"

    def remaining(self) -> dict[str, int]:
        """Tokens still leased per window (for tests and status)."""
        self._sync()
        return {lease.key: lease.left for lease in self.leases}
