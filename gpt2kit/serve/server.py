"""`serve()`: bind the host, load the model in the background, and run the app under uvicorn until interrupted."""

from __future__ import annotations

import logging
from pathlib import Path

from gpt2kit.errors import GPT2KitError
from gpt2kit.inference import prepare_for_decoding
from gpt2kit.model import GPT
from gpt2kit.serve.app import build_app
from gpt2kit.serve.config import ServerConfig
from gpt2kit.serve.listen import bind, host_names
from gpt2kit.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def default_model_name(spec: str) -> str:
    path = Path(spec)
    return path.resolve().name if path.is_dir() else spec


def serve(config: ServerConfig) -> None:
    """Serve until interrupted; the model loads in the background while /health answers 503.

    The host is bound first, so an unusable one stops `serve` in one line before anything loads.
    """
    import uvicorn

    from gpt2kit.checkpoint import load

    sockets = bind(config.host, config.port)
    for sock in sockets[1:]:  # uvicorn names the first
        logger.info("also listening on %s", sock.getsockname()[:2])
    failure: list[BaseException] = []

    def load_model() -> tuple[GPT, Tokenizer]:
        loaded = load(config.model, device=config.device, quantize=config.quantize)
        prepare_for_decoding(loaded.model)
        return loaded.model, loaded.tokenizer

    def give_up(err: BaseException) -> None:
        failure.append(err)
        server.should_exit = True

    name = config.model_name or default_model_name(config.model)
    app = build_app(load_model, config, name, on_load_error=give_up)
    first = host_names(config.host)[0]
    server = uvicorn.Server(uvicorn.Config(app, host=first, port=config.port, log_level="info", access_log=False))
    server.run(sockets=sockets)
    if failure:
        if isinstance(failure[0], GPT2KitError):
            raise failure[0]
        raise GPT2KitError(f"{config.model}: cannot load the model ({type(failure[0]).__name__}: {failure[0]})")
