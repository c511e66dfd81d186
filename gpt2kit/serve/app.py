"""The FastAPI app and its routes: /v1/completions, /v1/models, /tokenize, /detokenize, /health, /metrics and
the playground, over a model that loads in the background.

The model runs on one engine thread that decodes all requests as one batch (continuous batching: requests join
between decoding steps and leave when done), so the event loop is never blocked by the model and concurrent
requests share each forward pass. Requests talk to the engine through per-request asyncio queues; a request that
disconnects, or runs past its timeout, cancels its sequences, and the engine drops them at the next step."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from gpt2kit.model import GPT
from gpt2kit.serve.completions import CompletionsService, complete
from gpt2kit.serve.config import ServerConfig
from gpt2kit.serve.middleware import ApiKey, BodyLimit, add_error_handlers, route_template
from gpt2kit.serve.observe import AccessLog
from gpt2kit.serve.protocol import (
    ERRORS,
    APIError,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    completion_responses,
)
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def create_app(model: GPT, tokenizer: Tokenizer, config: ServerConfig | None = None, model_name: str = "gpt2kit"):
    """The FastAPI app over a loaded model: it is warmed up before the app starts answering."""
    return build_app(lambda: (model, tokenizer), config, model_name, load_in_background=False)


def build_app(
    load: Callable[[], tuple[GPT, Tokenizer]],
    config: ServerConfig | None = None,
    model_name: str = "gpt2kit",
    *,
    load_in_background: bool = True,
    on_load_error: Callable[[BaseException], None] | None = None,
):
    """The FastAPI app: /v1/completions, /v1/models, /tokenize, /detokenize, /health, /metrics and the playground.

    `load` returns the model and tokenizer. In the background (as `serve` runs it) the app answers at once:
    /health and the model routes say 503 until the model is loaded and warmed up.
    """
    config = config or ServerConfig()
    state: dict[str, Any] = {"service": None, "error": None}

    lifespan = _lifespan(load, config, model_name, state, load_in_background, on_load_error)
    ready = functools.partial(_ready, state)

    app = FastAPI(title="gpt2kit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key is not None:
        app.add_middleware(ApiKey, key=config.api_key)  # added after the body limit, so it runs first
    metrics = lambda: state["service"].metrics if state["service"] is not None else None  # noqa: E731
    route = lambda scope: route_template(app, scope)  # noqa: E731
    app.add_middleware(AccessLog, log_format=config.log_format, metrics=metrics, route=route)  # sees every answer

    add_error_handlers(app)
    _add_info_routes(app, state, model_name)

    async def completions(body: CompletionRequest, request: Request):
        return await complete(ready(), config, body, request)

    async def tokenize(body: TokenizeRequest):
        service = ready()
        tokens = await asyncio.to_thread(service.tokenizer.encode, body.prompt)
        names = [service.token_str(t) for t in tokens] if body.return_token_strs else None
        return {"count": len(tokens), "max_model_len": service.context, "tokens": tokens, "token_strs": names}

    async def detokenize(body: DetokenizeRequest):
        service = ready()
        problem = service.tokenizer.unknown_id(body.tokens)
        if problem:
            raise APIError(400, problem, "tokens")
        return {"prompt": service.tokenizer.decode(body.tokens)}

    _add_route(app, "POST", ("/v1/completions", "/completions"), completions, responses=completion_responses())
    _add_route(app, "POST", ("/tokenize",), tokenize, responses={200: {"model": TokenizeResponse}, **ERRORS})
    _add_route(app, "POST", ("/detokenize",), detokenize, responses={200: {"model": DetokenizeResponse}, **ERRORS})
    return app


def _lifespan(load, config: ServerConfig, model_name: str, state: dict, in_background: bool, on_load_error):
    """Load and warm up the model (in a thread, or before the app answers), and stop the engine at the end."""

    def load_and_warm() -> None:
        try:
            model, tokenizer = load()
            service = CompletionsService(model, tokenizer, config, model_name)
            service.warm_up()
            service.engine.start()
            state["service"] = service
            logger.info("model %s loaded and warmed up: ready", model_name)
        except BaseException as err:  # reported through /health and on_load_error
            state["error"] = err
            if on_load_error is None:
                raise
            on_load_error(err)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if in_background:
            loader = threading.Thread(target=load_and_warm, name="gpt2kit-load", daemon=True)
            loader.start()
        else:
            await asyncio.to_thread(load_and_warm)
        yield
        if state["service"] is not None:
            state["service"].engine.stop()

    return lifespan


def _add_route(app: FastAPI, method: str, paths: tuple[str, ...], handler: Callable, **options) -> None:
    """`handler` at each of `paths`: the first is the one the OpenAPI schema lists, the others its aliases
    (llama.cpp's clients call `/completions` and `/models` without the `/v1`)."""
    for i, path in enumerate(paths):
        app.add_api_route(path, handler, methods=[method], include_in_schema=i == 0, **options)


def _ready(state: dict) -> CompletionsService:
    """The service, or a 503 while the model loads."""
    service = state["service"]
    if service is None:
        raise APIError(503, "the model is still loading; retry shortly", code="model_loading", kind="server_error")
    return service


def _add_info_routes(app: FastAPI, state: dict, model_name: str) -> None:
    """/health, /metrics, /v1/models (and /models) and the playground page."""
    ready = functools.partial(_ready, state)

    @app.get("/health", responses={200: {"model": Health}, **ERRORS, 503: {"model": Health}})
    async def health():
        service = state["service"]
        if service is None:
            failed = state["error"]
            message = f"the model failed to load: {failed}" if failed else "loading the model"
            return JSONResponse({"status": "failed" if failed else "loading", "message": message}, status_code=503)
        return {
            "status": "ok",
            "model": model_name,
            "active_sequences": service.engine.active_sequences,
            "queued_requests": service.engine.queued_requests,
        }

    @app.get("/metrics", response_class=PlainTextResponse, responses=ERRORS)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service = ready()
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": ready().created, "owned_by": "gpt2kit"}

    async def list_models():
        return {"object": "list", "data": [model_card()]}

    async def get_model(name: str):
        if name != model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {model_name!r}",
                "model",
                "model_not_found",
                "not_found_error",
            )
        return model_card()

    _add_route(app, "GET", ("/v1/models", "/models"), list_models, responses={200: {"model": ModelList}, **ERRORS})
    models = ("/v1/models/{name:path}", "/models/{name:path}")
    _add_route(app, "GET", models, get_model, responses={200: {"model": ModelCard}, **ERRORS})

    @app.get("/", response_class=HTMLResponse, responses=ERRORS)
    async def playground():
        return HTMLResponse(resources.files("gpt2kit").joinpath("static", "index.html").read_text(encoding="utf-8"))
