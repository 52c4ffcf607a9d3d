"""Server-sent events read off the wire, and the small checks every stream must pass."""

from __future__ import annotations

import json
from typing import Any

import httpx

DONE = "[DONE]"


def read_events(body: str) -> list[Any]:
    """Each `data:` payload of an SSE body, JSON-decoded except the final `[DONE]` marker.

    Events are separated by blank lines; a payload that is neither JSON nor `[DONE]` fails loudly here.
    """
    events = []
    for block in body.split("\n\n"):
        data = [line.removeprefix("data:").strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            payload = "\n".join(data)
            events.append(payload if payload == DONE else json.loads(payload))
    return events


def stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request and return its events after checking the SSE framing."""
    response = http.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    events = read_events(response.text)
    assert events.count(DONE) == 1 and events[-1] == DONE
    return events[:-1]


def finish_chunks(chunks: list[dict[str, Any]]) -> dict[int, list[str]]:
    """choice index -> every finish_reason that appeared for it (must end up exactly one each)."""
    finishes: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice.get("finish_reason") is not None:
                finishes.setdefault(choice["index"], []).append(choice["finish_reason"])
    return finishes
