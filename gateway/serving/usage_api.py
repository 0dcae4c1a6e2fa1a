"""`GET /usage` on the management port: the usage ledger's totals (gateway/usage.py)."""

from __future__ import annotations

import datetime as dt
import time

from starlette.responses import Response

from gateway.errors import BadRequest
from gateway.machinery.bodies import FastJSONResponse
from gateway.runtime import Runtime
from gateway.usage import DIMENSIONS, as_csv, day_of

MAX_DAYS = 400


def _days(since: str | None, until: str | None, today: str) -> list[str]:
    try:
        first = dt.date.fromisoformat(since or until or today)
        last = dt.date.fromisoformat(until or today)
    except ValueError as exc:
        raise BadRequest(f"not a date: {exc}", param="from") from None
    if last < first:
        raise BadRequest("`to` is before `from`", param="to")
    count = (last - first).days + 1
    if count > MAX_DAYS:
        raise BadRequest(f"at most {MAX_DAYS} days at once; {count} were asked for", param="from")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


async def usage(
    runtime: Runtime, since: str | None, until: str | None, filters: dict[str, str], group_by: str, fmt: str
) -> Response:
    """The rows of the ledger for the days and filters asked, as JSON or CSV."""
    dims = [d.strip() for d in group_by.split(",") if d.strip()]
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown or not dims or len(set(dims)) != len(dims):
        raise BadRequest(f"group_by takes distinct names of: {', '.join(DIMENSIONS)}", param="group_by")
    days = _days(since, until, day_of(time.time()))
    rows = await runtime.ledger.query(days, filters, dims)
    if fmt == "csv":
        return Response(as_csv(rows, dims), media_type="text/csv; charset=utf-8")
    return FastJSONResponse({"object": "list", "from": days[0], "to": days[-1], "group_by": dims, "data": rows})
