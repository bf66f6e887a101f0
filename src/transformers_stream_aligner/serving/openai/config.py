"""`ServeConfig`: what ``stream-aligner serve`` runs (its flags are generated from these fields).

Example:

    >>> config = ServeConfig(upstream_url="http://127.0.0.1:8000", tokenizer="path/to/model",
    ...                      aligner="my_aligners:check_arithmetic")
    >>> config.host, config.port, config.max_concurrent_requests
    ('127.0.0.1', 8080, 16)
    >>> ServeConfig(aligner="x")
    Traceback (most recent call last):
    ...
    ValueError: give the upstream: --model (a local transformers model) or --upstream-url (a vLLM server)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServeConfig"]


@dataclass
class ServeConfig:
    """The server of ``stream-aligner serve`` (see :mod:`.serving`). The aligner is chosen here, by the operator:
    a request can never name a path, a repo or code to load."""

    aligner: str = field(
        metadata={
            "help": "The aligner: a checkpoint directory or Hub repo id (loaded in process, safetensors only), or "
            "module:attribute (a function fn(question, prefix, last) or an object with correct()). With "
            "--aligner-vllm-model, the checkpoint whose prompt settings and tokenizer the served aligner uses."
        }
    )
    model: str | None = field(
        default=None, metadata={"help": "Upstream in process: a transformers model directory or Hub repo id."}
    )
    upstream_url: str | None = field(
        default=None, metadata={"help": "Upstream on a vLLM server, e.g. http://127.0.0.1:8000 (instead of --model)."}
    )
    upstream_model: str | None = field(
        default=None, metadata={"help": "The vLLM server's model name (default: the first one it lists)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "The upstream's tokenizer (default: --model; required with --upstream-url)."}
    )
    aligner_vllm_model: str | None = field(
        default=None,
        metadata={
            "help": "Decode the aligner on a vLLM server under this name (a LoRA module on the upstream's server, "
            "--lora-modules NAME=DIR, or a server of its own: --aligner-url)."
        },
    )
    aligner_url: str | None = field(
        default=None, metadata={"help": "The aligner's vLLM server (default: --upstream-url)."}
    )
    served_model_name: str = field(
        default="stream-aligned", metadata={"help": "The model name clients send (and /v1/models lists)."}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on."})
    port: int = field(default=8080, metadata={"help": "Port to listen on."})
    dtype: str = field(default="float32", metadata={"help": "dtype of in-process models (--model, an aligner checkpoint)."})
    overlap: bool | None = field(
        default=None,
        metadata={
            "help": "vLLM upstream: keep streaming the next sentence while the aligner corrects (same tokens). "
            "Default: on when vLLM also decodes the aligner (--aligner-vllm-model), where it pays (docs/benchmarks.md)."
        },
    )
    batch_window: float = field(
        default=0.005, metadata={"help": "Seconds to collect concurrent requests' aligner calls into one call."}
    )
    aligner_in_flight: int | None = field(
        default=None,
        metadata={
            "help": "Aligner calls that may run at once (default: 8 when vLLM decodes the aligner, which batches "
            "concurrent calls itself; 1 for an aligner in process)."
        },
    )
    max_concurrent_requests: int = field(
        default=16, metadata={"help": "Requests served at once; more are refused with HTTP 429."}
    )
    default_max_tokens: int | None = field(
        default=None,
        metadata={"help": "max_tokens of a request that gives none (default: the smaller of 256 and --max-tokens-limit)."},
    )
    max_tokens_limit: int = field(default=2048, metadata={"help": "The largest max_tokens a request may ask for."})
    max_prompt_tokens: int = field(default=4096, metadata={"help": "The longest prompt accepted, in tokens."})
    upstream_timeout: float = field(
        default=120.0, metadata={"help": "Seconds to wait for the vLLM servers (connect and each read)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow the operator's models to run their own code (off by default)."}
    )

    def __post_init__(self) -> None:
        if (self.model is None) == (self.upstream_url is None):
            raise ValueError("give the upstream: --model (a local transformers model) or --upstream-url (a vLLM server)")
        if self.upstream_url is not None and self.tokenizer is None:
            raise ValueError("--upstream-url needs --tokenizer (the upstream's tokenizer directory or repo id)")
        if self.aligner_url is not None and self.aligner_vllm_model is None:
            raise ValueError("--aligner-url needs --aligner-vllm-model (the aligner's name on that server)")
        if self.aligner_vllm_model is not None and self.aligner_url is None and self.upstream_url is None:
            raise ValueError("--aligner-vllm-model needs --aligner-url (or an --upstream-url to serve it)")
        if self.default_max_tokens is None:
            self.default_max_tokens = min(256, self.max_tokens_limit)
        if self.overlap is None:
            self.overlap = self.upstream_url is not None and self.aligner_vllm_model is not None
        if self.aligner_in_flight is None:
            self.aligner_in_flight = 8 if self.aligner_vllm_model is not None else 1
        for name in ("max_concurrent_requests", "default_max_tokens", "max_tokens_limit", "max_prompt_tokens",
                     "aligner_in_flight"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("--default-max-tokens cannot exceed --max-tokens-limit")
        if self.batch_window < 0 or self.upstream_timeout <= 0:
            raise ValueError("--batch-window must be >= 0 and --upstream-timeout > 0")
