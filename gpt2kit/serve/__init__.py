"""An OpenAI-compatible completions server: the batching `engine` thread and the FastAPI `api` over it."""

from gpt2kit.serve.api import ServerConfig, create_app, serve
from gpt2kit.serve.engine import Engine
from gpt2kit.serve.protocol import APIError, CompletionRequest

__all__ = ["APIError", "CompletionRequest", "Engine", "ServerConfig", "create_app", "serve"]
