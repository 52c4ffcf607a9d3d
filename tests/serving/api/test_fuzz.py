"""Schemathesis fuzzing of the generation endpoints against the app's own OpenAPI schema.

Valid and invalid bodies alike must never produce a 5xx or take the server down. Generation cost is
bounded on the way out (token budget and `n` clamped, like a careful api_client) so the fuzz stays a few
seconds of engine time; everything else the fuzzer produces is sent unchanged.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.serving.api.server_process import ServerProcess
from tests.serving.api.sse import read_events

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
EXAMPLES_PER_ENDPOINT = 30
REQUEST_TIMEOUT_S = 30.0
NO_SHRINKING = (Phase.explicit, Phase.reuse, Phase.generate)
"""The first failing body is reported as generated: shrinking re-sends slow requests for minutes."""
CAPS = {"max_tokens": 3, "max_completion_tokens": 3, "n": 2, "min_tokens": 3}


def bounded(body: object) -> object:
    """Clamp integer cost knobs; set `max_tokens` when absent or null (the default is the whole context)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if body.get("max_tokens") is None:
        body["max_tokens"] = CAPS["max_tokens"]
    for key, cap in CAPS.items():
        if exceeds(body.get(key), cap):
            body[key] = cap
    return body


def exceeds(value: object, cap: int) -> bool:
    """Numbers, and numeric strings (pydantic's lax mode reads "500" as 500), above `cap`."""
    if isinstance(value, bool):
        return False
    try:
        return float(value) > cap
    except (TypeError, ValueError, OverflowError):
        return False


@pytest.fixture(scope="module")
def api_schema(http: httpx.Client) -> schemathesis.BaseSchema:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    return schemathesis.openapi.from_dict(response.json())


@pytest.mark.parametrize("path", ENDPOINTS)
def test_fuzzed_requests_never_get_a_server_error(api_schema: schemathesis.BaseSchema, server: ServerProcess,
                                                  path: str) -> None:
    operation = api_schema[path]["POST"]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES_PER_ENDPOINT, deadline=None, database=None, phases=NO_SHRINKING,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def send(case: schemathesis.Case) -> None:
        case.body = bounded(case.body)
        response = case.call(base_url=server.base_url, headers=server.headers, timeout=REQUEST_TIMEOUT_S)
        assert response.status_code < 500, f"{case.body!r} -> {response.status_code} {response.text[:500]}"
        if any(kind.startswith("text/event-stream") for kind in response.headers.get("content-type", [])):
            errors = [e for e in read_events(response.text) if isinstance(e, dict) and "error" in e]
            assert not errors, f"{case.body!r} -> mid-stream {errors}"
        assert server.is_alive(), "server died"

    send()
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
