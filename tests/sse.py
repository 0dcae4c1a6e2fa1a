"""Parsing Server-Sent Events the way the SSE spec (and takeoff-client) does."""

from __future__ import annotations


def sse_events(text: str) -> list[tuple[str, str]]:
    """Parse an SSE body into (event, data) pairs, as the SSE spec (and takeoff-client) does."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data, has_data = "message", [], False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
                has_data = True
        if has_data:
            events.append((name, "\n".join(data)))
    return events
