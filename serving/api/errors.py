"""Every failure becomes OpenAI's error envelope `{"error": {message, type, param, code}}`.

Statuses follow vLLM: user mistakes (validation, bad sampling values, prompts that do not fit) are 400,
unknown models and routes 404, a dead engine 503; only real faults are 500. FastAPI's own 422 for a
malformed body is turned into a 400 too, because that is what OpenAI clients and vLLM's tests expect.
"""

from __future__ import annotations

import http
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException

from tpuserve.serving.api.responses import ErrorInfo, ErrorResponse
from tpuserve.serving.engine.async_engine import EngineDeadError
from tpuserve.serving.sampling_params import SamplingParamsError

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """A request the server refuses, with the HTTP status and the field (`param`) to blame."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def error_body(message: str, status: int, param: str | None = None) -> ErrorResponse:
    error_type = ERROR_TYPES.get(
        status, "InternalServerError" if status >= 500 else http.HTTPStatus(status).phrase
    )
    return ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=status))


def as_api_error(error: Exception) -> APIError:
    """Classify an exception from rendering, validation or the engine (vLLM's mapping)."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, SamplingParamsError):
        return APIError(str(error), param=error.param)
    if isinstance(error, EngineDeadError):
        return APIError("the engine is not running", status=503)
    if isinstance(error, ValueError | TypeError | OverflowError | TemplateError):
        return APIError(str(error))
    log.exception("internal error", exc_info=error)
    return APIError(f"Internal server error: {type(error).__name__}", status=500)


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.message, error.status, error.param)
    return JSONResponse(body.model_dump(), status_code=error.status)


def sse_error(error: Exception) -> str:
    """A mid-stream failure: the status is already sent, so the envelope goes out as an SSE event."""
    api_error = as_api_error(error)
    body = error_body(api_error.message, api_error.status, api_error.param)
    return f"data: {json.dumps(body.model_dump())}\n\n"


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    problems = error.errors()
    details = "; ".join(
        f"{'.'.join(str(p) for p in problem['loc'])}: {problem['msg']} ({problem['type']})"
        for problem in problems
    )
    first = problems[0] if problems else {"loc": ()}
    # A cross-field rule (protocol.FieldRuleError) knows its field better than pydantic's location does.
    rule = first.get("ctx", {}).get("error")
    param = getattr(rule, "param", None) or ".".join(str(p) for p in first["loc"]) or None
    count = len(problems)
    return f"{count} validation error{'s' if count != 1 else ''}: {details}", param


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return error_response(APIError(message, param=param))

    async def on_http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(APIError(str(error.detail), status=error.status_code))

    async def on_any_error(_: Request, error: Exception) -> JSONResponse:
        return error_response(as_api_error(error))

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_any_error)
