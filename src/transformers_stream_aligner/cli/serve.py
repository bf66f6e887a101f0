"""``stream-aligner serve``: the OpenAI-compatible stream-aligned endpoint (:mod:`..serving.openai`).

Upstream on a vLLM server, aligner in process::

    stream-aligner serve --upstream-url http://127.0.0.1:8000 --tokenizer MODEL_DIR \\
        --aligner examples/arithmetic/trained_aligner --port 8080

the aligner as a LoRA on the same vLLM server (started with ``--enable-lora --lora-modules aligner=ADAPTER_DIR``
and, on vLLM's CPU build, ``--max-loras 2``: see :func:`~transformers_stream_aligner.aligners.vllm.lora_slot_problem`)::

    stream-aligner serve --upstream-url http://127.0.0.1:8000 --tokenizer MODEL_DIR \\
        --aligner ADAPTER_DIR --aligner-vllm-model aligner

or everything in process: ``stream-aligner serve --model MODEL_DIR --aligner ALIGNER``. Listens on 127.0.0.1 unless
``--host`` says otherwise. Needs the ``serve`` extra (FastAPI, uvicorn, httpx).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..serving.openai.config import ServeConfig
from ._dataclasses import from_namespace

__all__ = ["add_parser", "normalize_argv", "run"]


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        dataclass_types=[ServeConfig],
        help="serve stream-aligned completions (OpenAI-compatible; upstream: vLLM or a local model)",
        description="Serve /v1/chat/completions and /v1/completions with stream alignment: the upstream is a vLLM "
        "server (--upstream-url) or a transformers model in process (--model); the aligner is --aligner.",
    )


def normalize_argv(argv: list[str]) -> list[str]:
    return argv


def run(namespace: argparse.Namespace) -> int:
    """Run ``stream-aligner serve`` until interrupted."""
    from ..serving.openai.api_router import serve

    serve(from_namespace(namespace, ServeConfig))
    return 0
