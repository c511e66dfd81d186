"""An OpenAI-compatible completions server: the batching `engine` thread and the FastAPI `app` over it
(`protocol`, `completions`, `middleware`, `app`, `server`)."""

from gpt2kit.serve.app import build_app, create_app
from gpt2kit.serve.config import ServerConfig
from gpt2kit.serve.engine import Engine
from gpt2kit.serve.protocol import APIError, CompletionRequest
from gpt2kit.serve.server import serve

__all__ = ["APIError", "CompletionRequest", "Engine", "ServerConfig", "build_app", "create_app", "serve"]
