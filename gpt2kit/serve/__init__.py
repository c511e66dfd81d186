"""An OpenAI-compatible completions server: the batching `engine` thread and the FastAPI `api` over it."""

from gpt2kit.serve.api import APIError, CompletionRequest, ServerConfig, create_app, serve
from gpt2kit.serve.engine import Engine

__all__ = ["APIError", "CompletionRequest", "Engine", "ServerConfig", "create_app", "serve"]
