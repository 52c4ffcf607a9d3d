"""Every kind of bad request gets OpenAI's error envelope with the right status, and never a 5xx.

The envelope is `{"error": {"message", "type", "param", "code"}}` with `code` the integer status (vLLM).
For single-field mistakes `param` must name the field (plainly or as pydantic's `body.<field>`), so a
client can point at it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.serving.api.server_process import ENGINE_CONFIG, ServerProcess

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_MODEL_LEN = ENGINE_CONFIG["max_model_len"]
LONG_TEXT = " ".join(["lantern"] * (MAX_MODEL_LEN + 50))
"""Well over the context: each repetition is at least one token."""
NEAR_LIMIT_TEXT = " ".join(["lantern"] * (MAX_MODEL_LEN - 120))


def chat_body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, **fields}


def completion_body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "Say hi.", "max_tokens": 2, **fields}


def assert_error(response: httpx.Response, status: int, params: tuple[str | None, ...] | None = None) -> dict:
    """The OpenAI envelope with `code == status`; if `params` is given, `param` must be one of them."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if params is not None:
        assert names_one_of(error["param"], params), error
    return error


def names_one_of(param: str | None, fields: tuple[str, ...]) -> bool:
    """`top_p`, pydantic's location `body.top_p`, or a part of the field (`body.prompt.str`) all name it."""
    field = (param or "").removeprefix("body.")
    return any(field == name or field.startswith(f"{name}.") for name in fields)


# (path, body fields, acceptable `param` values). `max_tokens` 0 etc. replace the valid defaults.
INVALID_PARAMS = [
    (CHAT, {"temperature": -1.0}, ("temperature",)),
    (CHAT, {"temperature": "hot"}, ("temperature",)),
    (CHAT, {"top_p": 0.0}, ("top_p",)),
    (CHAT, {"top_p": 1.5}, ("top_p",)),
    (CHAT, {"n": 0}, ("n",)),
    (CHAT, {"n": "two"}, ("n",)),
    (CHAT, {"max_tokens": 0}, ("max_tokens",)),
    (CHAT, {"max_completion_tokens": -3}, ("max_completion_tokens", "max_tokens")),
    (CHAT, {"max_tokens": MAX_MODEL_LEN + 1}, ("max_tokens", "max_completion_tokens")),
    (CHAT, {"presence_penalty": 3.0}, ("presence_penalty",)),
    (CHAT, {"logprobs": True, "top_logprobs": 30}, ("top_logprobs",)),
    (CHAT, {"top_logprobs": 2}, ("top_logprobs", "logprobs")),
    (CHAT, {"messages": []}, ("messages",)),
    (CHAT, {"messages": None}, ("messages",)),
    (CHAT, {"messages": [{"content": "no role"}]}, None),
    (CHAT, {"stream_options": {"include_usage": True}}, ("stream_options", "stream")),
    (CHAT, {"seed": 2**64}, ("seed",)),
    (CHAT, {"logit_bias": {"99999999": 1.0}}, ("logit_bias",)),
    (CHAT, {"logit_bias": {"not-an-id": 1.0}}, ("logit_bias",)),
    (CHAT, {"stop": [""]}, ("stop",)),
    (COMPLETIONS, {"logprobs": 30}, ("logprobs",)),
    (COMPLETIONS, {"temperature": -0.5}, ("temperature",)),
    (COMPLETIONS, {"prompt": None}, ("prompt",)),
    (COMPLETIONS, {"prompt": []}, ("prompt",)),
    (COMPLETIONS, {"prompt": [[1, 2], ["x"]]}, None),
    (COMPLETIONS, {"prompt": [999_999_999]}, ("prompt",)),
    (COMPLETIONS, {"stream": False, "stream_options": {"include_usage": True}}, ("stream_options", "stream")),
]


@pytest.mark.parametrize(("path", "fields", "params"), INVALID_PARAMS,
                         ids=[f"{p.split('/')[2]}-{'-'.join(f)}" for p, f, _ in INVALID_PARAMS])
def test_invalid_parameter_is_a_400_naming_it(http: httpx.Client, model_name: str, path: str,
                                              fields: dict[str, Any], params: tuple[str, ...] | None) -> None:
    body = (chat_body if path == CHAT else completion_body)(model_name, **fields)
    assert_error(http.post(path, json=body), 400, params)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_prompt_longer_than_the_context_is_a_400(http: httpx.Client, model_name: str, path: str) -> None:
    body = (chat_body(model_name, messages=[{"role": "user", "content": LONG_TEXT}]) if path == CHAT
            else completion_body(model_name, prompt=LONG_TEXT))
    error = assert_error(http.post(path, json=body), 400)
    assert str(MAX_MODEL_LEN) in error["message"]


def test_prompt_plus_max_tokens_over_the_context_is_a_400(http: httpx.Client, model_name: str) -> None:
    body = completion_body(model_name, prompt=NEAR_LIMIT_TEXT, max_tokens=300)
    error = assert_error(http.post(COMPLETIONS, json=body), 400)
    assert str(MAX_MODEL_LEN) in error["message"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_unknown_model_is_a_404(http: httpx.Client, model_name: str, path: str) -> None:
    body = {**(chat_body if path == CHAT else completion_body)(model_name), "model": "no-such-model"}
    error = assert_error(http.post(path, json=body), 404)
    assert "no-such-model" in error["message"]


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    response = http.post(CHAT, content=b'{"model": "x", "messages": [',
                         headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_non_json_content_type_is_rejected_with_an_envelope(http: httpx.Client, model_name: str) -> None:
    body = json.dumps(chat_body(model_name))
    response = http.post(CHAT, content=body, headers={"content-type": "text/plain"})
    assert response.status_code in (400, 415)
    assert_error(response, response.status_code)


def test_unknown_route_is_a_404(http: httpx.Client) -> None:
    assert http.get("/v1/no-such-route").status_code == 404


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "wrong"}])
def test_missing_or_wrong_api_key_is_a_401(server: ServerProcess, model_name: str,
                                           headers: dict[str, str]) -> None:
    for method, path, body in (("POST", CHAT, chat_body(model_name)), ("GET", "/v1/models", None)):
        response = httpx.request(method, server.base_url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, response.text


def test_health_and_metrics_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{server.base_url}/metrics", timeout=30).status_code == 200


def test_openai_client_raises_its_typed_errors(server: ServerProcess, client: openai.OpenAI,
                                               model_name: str) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_name, messages=messages, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=messages)
    wrong_key = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong_key.chat.completions.create(model=model_name, messages=messages)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_name, messages=messages, logprobs=True, top_logprobs=21,
                                       stream=True)


def test_server_still_answers_after_bad_requests(client: openai.OpenAI, model_name: str) -> None:
    response = client.completions.create(model=model_name, prompt="The sky is", max_tokens=2)
    assert response.choices[0].finish_reason in ("length", "stop")
