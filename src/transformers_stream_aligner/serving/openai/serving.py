"""The serving logic of ``stream-aligner serve`` (an OpenAI-compatible, stream-aligned endpoint: FastAPI on uvicorn).

``POST /v1/chat/completions`` and ``POST /v1/completions`` answer like any OpenAI-compatible server, with the
stream-aligned answer: the upstream is a vLLM server (``--upstream-url``; every request runs its own sentence
loop on :class:`~.engines.vllm_engine.VLLMEngine`, so vLLM batches across users) or a transformers model in process
(``--model``; requests take turns on it). The aligner is the operator's (``--aligner``): in process, or decoded by
vLLM (``--aligner-vllm-model``: a LoRA on the upstream's server, or a server of its own). Concurrent requests'
aligner calls are batched into one call (:class:`~.aligner_batching.BatchingAligner`, ``--batch-window``).

* ``stream: true`` sends server-sent events with the *corrected* text only, a piece per accepted sentence; the
  non-streaming answer carries the alignment trace in the extension field ``alignment_trace`` (and
  ``alignment_stats``).
* A client that disconnects cancels its request: the loop ends its engine requests at their next token.
* ``GET /health`` (503 when the vLLM upstream is not healthy) and ``GET /v1/models``.
* Limits: ``--max-concurrent-requests`` (more get HTTP 429), ``--max-tokens-limit``, ``--max-prompt-tokens``;
  unsupported fields (``n > 1``, ``logprobs``, ``stop``, ``echo``, tools, ...) get HTTP 400 with an OpenAI-style error
  body. An upstream or aligner failure is HTTP 502 (streaming: an ``error`` event) with the partial answer.
* Greedy by default: a request without ``temperature`` decodes greedily (the exact mode); a vLLM upstream samples
  if the request asks for it.
* Text from users and models is plain text in every prompt built here: chat messages are rendered with the
  tokenizer's chat template and ``sanitize_control_tokens=True``, a completion prompt string is tokenized as plain
  text (a list of token ids is taken as given).

Example (a vLLM server on port 8000 running SmolLM2 as ``smol``)::

    stream-aligner serve --upstream-url http://127.0.0.1:8000 --tokenizer MODEL_DIR \\
        --aligner examples.arithmetic.task:check_arithmetic --port 8080

    >>> from openai import OpenAI  # doctest: +SKIP
    >>> client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")  # doctest: +SKIP
    >>> client.chat.completions.create(model="stream-aligned", messages=[{"role": "user", "content": "What is 17*23?"}])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ...aligners.batching import BatchingAligner
from ...errors import Cancelled
from ...runtime.engines.base import run_cancellable
from ...runtime.streamers import AlignmentStreamerHooks
from ...tokens import tokenize_plain_text
from .config import ServeConfig
from .protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, ErrorResponse

logger = logging.getLogger(__name__)

__all__ = ["RequestError", "StreamAlignedServer"]


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body (:class:`~.protocol.ErrorResponse`)."""

    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param

    def response(self) -> ErrorResponse:
        return ErrorResponse.of(str(self), kind=self.kind, status=self.status, param=self.param)


@dataclass
class _Job:
    """One request, checked: prompt ids, the aligner's question, budget and sampling."""

    prompt_ids: list[int]
    question: str
    max_tokens: int
    sampling: dict[str, Any]
    chat: bool
    stream: bool
    include_usage: bool


class StreamAlignedServer:
    """The server's state: the upstream route, the batching aligner, the limits (see the module docstring).

    Args:
        config: the operator's :class:`ServeConfig`.
        aligner, model, tokenizer: objects already loaded (tests, notebooks); otherwise loaded from ``config``.
    """

    def __init__(self, config: ServeConfig, *, aligner: Any = None, model: Any = None, tokenizer: Any = None) -> None:
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer()
        self.model = model
        if config.model is not None and self.model is None:
            self.model = self._load_model()
        if config.upstream_url is not None:
            from ...runtime.engines.vllm_engine import VLLMUpstream

            self.upstream = VLLMUpstream(
                config.upstream_url, model=config.upstream_model or self._first_served_model(), timeout=config.upstream_timeout
            )
        else:
            self.upstream = None
        self.aligner = BatchingAligner(aligner if aligner is not None else self._load_aligner(), window=config.batch_window,
                                       max_in_flight=config.aligner_in_flight)  # fmt: skip
        self.active = 0
        self.served = 0
        self._model_lock = threading.Lock()  # an in-process upstream serves one request at a time

    # ------------------------------------------------------------------ loading (operator-chosen only)
    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self.config.tokenizer or self.config.model
        return AutoTokenizer.from_pretrained(source, trust_remote_code=self.config.trust_remote_code)

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        from ...generation.mixin import enable_stream_alignment

        model = AutoModelForCausalLM.from_pretrained(
            self.config.model,
            dtype=getattr(torch, self.config.dtype),
            use_safetensors=True,
            trust_remote_code=self.config.trust_remote_code,
        )
        model.eval()
        return enable_stream_alignment(model, tokenizer=self.tokenizer)

    def _load_aligner(self) -> Any:
        config = self.config
        if config.aligner_vllm_model is not None:
            from ...aligners.vllm import VLLMAligner

            return VLLMAligner.from_pretrained(
                config.aligner,
                base_url=config.aligner_url or config.upstream_url,
                model=config.aligner_vllm_model,
                timeout=config.upstream_timeout,
                trust_remote_code=config.trust_remote_code,
            )
        import torch

        from ...aligners.specs import load_aligner

        # a module:attribute spec imports the operator's code and ignores the loading keywords
        return load_aligner(config.aligner, trust_remote_code=config.trust_remote_code, dtype=getattr(torch, config.dtype))

    def _first_served_model(self) -> str:
        import httpx

        try:
            models = httpx.get(f"{self.config.upstream_url.rstrip('/')}/v1/models", timeout=self.config.upstream_timeout)
            return models.json()["data"][0]["id"]
        except Exception as err:
            raise ValueError(f"could not list the models of the vLLM server at {self.config.upstream_url}: {err}") from err

    def close(self) -> None:
        self.aligner.close()
        close = getattr(self.aligner.aligner, "close", None)
        if callable(close):
            close()
        if self.upstream is not None:
            self.upstream.close()

    # ------------------------------------------------------------------ requests
    def job(self, request: ChatCompletionRequest | CompletionRequest) -> _Job:
        """What a validated request asks for, checked against this server: its model, its limits, the fields it cannot
        honour; raises :class:`RequestError`."""
        config = self.config
        chat = isinstance(request, ChatCompletionRequest)
        if request.model is not None and request.model != config.served_model_name:
            raise RequestError(
                f"the model {request.model!r} does not exist; this server serves {config.served_model_name!r}",
                status=404,
                kind="not_found_error",
                param="model",
            )
        refused = request.unsupported()
        if refused is not None:
            raise RequestError(refused[1], param=refused[0])
        limit_key = "max_completion_tokens" if chat and request.max_completion_tokens is not None else "max_tokens"
        max_tokens = getattr(request, limit_key)
        max_tokens = config.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > config.max_tokens_limit:
            raise RequestError(f"{limit_key}={max_tokens} is over this server's limit of {config.max_tokens_limit}", param=limit_key)
        prompt_ids, question = self._chat_prompt(request.messages) if chat else self._completion_prompt(request.prompt)
        if len(prompt_ids) > config.max_prompt_tokens:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; this server accepts at most {config.max_prompt_tokens}",
                param="messages" if chat else "prompt",
            )
        return _Job(prompt_ids, question, max_tokens, self._sampling(request), chat, request.stream, request.include_usage)

    def _chat_prompt(self, messages: list[ChatMessage]) -> tuple[list[int], str]:
        clean = [{"role": m.role, "content": m.text()} for m in messages]
        users = [m["content"] for m in clean if m["role"] == "user"]
        if not users:
            raise RequestError("messages need at least one user message", param="messages")
        ids = self.tokenizer.apply_chat_template(
            clean, add_generation_prompt=True, tokenize=True, return_dict=True, sanitize_control_tokens=True
        )["input_ids"]
        return list(ids), users[-1].strip()

    def _completion_prompt(self, prompt: Any) -> tuple[list[int], str]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise RequestError("prompt must not be empty", param="prompt")
            try:
                ids = tokenize_plain_text(self.tokenizer, prompt)
            except ValueError as err:
                raise RequestError(str(err), param="prompt") from err
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if getattr(self.tokenizer, "add_bos_token", False) and bos is not None:
                ids = [bos, *ids]
            return ids, prompt.strip()
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise RequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
            return list(prompt), self.tokenizer.decode(prompt, skip_special_tokens=True).strip()
        raise RequestError("prompt must be one string or one list of token ids", param="prompt")

    def _sampling(self, request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
        temperature = request.temperature or 0.0
        sampling: dict[str, Any] = {"temperature": float(temperature)}
        for name in ("top_p", "seed"):
            if getattr(request, name) is not None:
                sampling[name] = getattr(request, name)
        if temperature > 0 and self.upstream is None:
            raise RequestError("this server's in-process upstream decodes greedily: send temperature 0", param="temperature")
        return sampling

    # ------------------------------------------------------------------ running one request
    def _run(self, job: _Job, streamer: Any, cancel: threading.Event) -> Any:
        """The stream-aligned answer (a ``StreamAlignedGenerateOutput``), on this thread; raises
        :class:`~.outputs.StreamAlignmentError` (with the partial output) on failure."""
        if self.upstream is not None:
            from ...generation.completion import stream_aligned_completion

            return stream_aligned_completion(
                self.upstream,  # one upstream and HTTP client for every request; the request's sampling goes along
                [job.prompt_ids],
                aligner=self.aligner,
                tokenizer=self.tokenizer,
                max_new_tokens=job.max_tokens,
                aligner_question=job.question,
                streamer=streamer,
                return_dict=True,
                overlap=self.config.overlap,
                cancel=cancel,
                sampling=job.sampling,
            )
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _CancelCriteria(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if cancel.is_set():
                    raise Cancelled("the call was cancelled")
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        with self._model_lock:
            if cancel.is_set():
                raise Cancelled("the call was cancelled")
            return self.model.generate(
                input_ids=torch.tensor([job.prompt_ids], dtype=torch.long, device=self.model.device),
                attention_mask=torch.ones(1, len(job.prompt_ids), dtype=torch.long, device=self.model.device),
                aligner=self.aligner,
                tokenizer=self.tokenizer,
                aligner_question=job.question,
                max_new_tokens=job.max_tokens,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([_CancelCriteria()]),
                streamer=streamer,
                return_dict_in_generate=True,
            )

    async def answer(self, job: _Job, on_record: Any = None) -> Any:
        """Run ``job`` on a thread of its own (cancelled with the awaiting task); ``on_record(record)`` is called in
        the event loop for each accepted piece."""
        loop = asyncio.get_running_loop()
        streamer = _RecordForwarder(loop, on_record) if on_record is not None else None
        return await run_cancellable(functools.partial(self._run, job, streamer))


class _Release:
    """Releases one admitted request's slot once (whichever of the answer's end and the response's end comes first)."""

    def __init__(self, server: StreamAlignedServer) -> None:
        self.server = server
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.server.active -= 1
            self.server.served += 1


class _RecordForwarder(AlignmentStreamerHooks):
    """A per-row streamer that hands each accepted record to a callback in the event loop (thread-safe)."""

    per_row = True

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        self.loop = loop
        self.callback = callback

    def put_alignment(self, record: Any) -> None:
        self.loop.call_soon_threadsafe(self.callback, record)

    def end_row(self, row: int) -> None:
        pass

    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass

    def put_error(self, error: BaseException) -> None:
        pass
