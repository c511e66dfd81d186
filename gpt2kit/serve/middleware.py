"""What every request passes through before a route: the body limit, the API key (checked before the body is
read), route templates for the metrics, and errors in OpenAI's shape."""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from gpt2kit.serve.observe import UNMATCHED
from gpt2kit.serve.protocol import (
    APIError,
    validation_error,
)

logger = logging.getLogger(__name__)

# What api_key guards (every route that reaches the model); /health, /metrics and the playground page stay open.
PROTECTED_PATHS = ("/v1/", "/completions", "/models", "/tokenize", "/detokenize")


class BodyLimit:
    """ASGI middleware: a request body over the limit gets a 400 before any handler parses it."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            400, f"request body is larger than this server's limit of {self.limit} bytes", code="request_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(too_large, scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await send_error(too_large, scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class ApiKey:
    """ASGI middleware: a request to the model without 'Authorization: Bearer KEY' gets a 401, its body unread."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PATHS):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "missing or incorrect API key (send 'Authorization: Bearer KEY')"
                error = APIError(401, message, code="invalid_api_key", kind="authentication_error")
                await send_error(error, scope, receive, send)
                return
        await self.app(scope, receive, send)


async def send_error(error: APIError, scope, receive, send) -> None:
    await error_response(error)(scope, receive, send)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def route_template(app: FastAPI, scope) -> str:
    """The route a request is for (`/v1/models/{name:path}`), whether or not it got that far; every path that
    is no route shares one label, so the metrics' series stay as few as the routes."""
    for route in app.routes:
        if route.matches(scope)[0] != Match.NONE:
            return route.path
    return UNMATCHED


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's shape, an invalid request with a 400 naming the field; an unexpected
    error is logged and answered 500 without details."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return error_response(validation_error(list(error.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        # The headers carry what the status needs: a 405's Allow.
        return error_response(APIError(error.status_code, str(error.detail), kind=kind, headers=error.headers))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        logger.exception("unexpected error")
        return error_response(APIError(500, "internal server error", kind="server_error"))
