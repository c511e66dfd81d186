"""`ServerConfig`: what `gpt2kit serve` listens on, which model it loads, and the limits of every request and of its own state."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gpt2kit.config import Checked
from gpt2kit.errors import GPT2KitError
from gpt2kit.inference import QUANTIZATIONS
from gpt2kit.serve.listen import host_names
from gpt2kit.serve.observe import LOG_FORMATS

logger = logging.getLogger(__name__)


@dataclass
class ServerConfig(Checked):
    model: str = ""  # a model directory or hub id
    host: str = "127.0.0.1"  # this machine only; several: comma-separated
    port: int = 8000
    model_name: str | None = None  # the id clients see; default: the model directory's name
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on every route that reaches the model
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda, cuda:N or mps
    quantize: str | None = None  # int8: int8 weights, about 2x faster decoding on CPU; default fp32
    max_prompt_tokens: int | None = None  # the longest prompt; default: the model's context
    max_tokens_cap: int = 1024  # the largest max_tokens a request may ask for
    max_n: int = 8  # the largest n a request may ask for
    max_choices: int = 32  # the most prompts x n in one request
    max_body_bytes: int = 1_000_000  # the largest request body
    request_timeout_s: float = 300.0  # seconds a request may take
    max_batch_size: int = 16  # sequences decoded together
    max_queued_requests: int = 256  # requests waiting for a place in the batch; more get a 503
    log_format: str = "text"  # the access log: text, or json (one JSON object a line)
    share_prefixes: bool = True  # encode a prompt prefix that joining requests share once, and keep recent ones

    def __post_init__(self) -> None:
        self.check("server config")

    def problems(self) -> list[str]:
        bad = [
            f"{name} must be >= 1, got {getattr(self, name)}"
            for name in (
                "max_tokens_cap",
                "max_n",
                "max_choices",
                "max_body_bytes",
                "max_batch_size",
                "max_queued_requests",
            )
            if getattr(self, name) < 1
        ]
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            bad.append(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if not self.request_timeout_s > 0:
            bad.append(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if not 0 <= self.port < 65536:
            bad.append(f"port must be in 0..65535, got {self.port}")
        if self.quantize not in (None, *QUANTIZATIONS):
            bad.append(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}")
        if self.api_key == "":
            bad.append("api_key must not be empty (leave it out to turn auth off)")
        try:
            host_names(self.host)
        except GPT2KitError as err:
            bad.append(str(err))
        if self.log_format not in LOG_FORMATS:
            bad.append(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        return bad
