"""``stream-aligner serve``: an OpenAI-compatible, stream-aligned endpoint (FastAPI on uvicorn).

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
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request  # the serve extra (FastAPI); FastAPI reads the handlers' annotations

from ..aligners.batching import BatchingAligner
from ..errors import Cancelled, StreamAlignmentError
from ..runtime.engines.base import run_cancellable
from ..runtime.streamers import AlignmentStreamerHooks
from ..tokens import tokenize_plain_text
from .server_config import ServeConfig

logger = logging.getLogger(__name__)

__all__ = ["ServeConfig", "StreamAlignedServer", "build_app"]

#: Request fields the server refuses (it could not honour them), with the reason.
UNSUPPORTED = {
    "logprobs": "logprobs are not returned",
    "top_logprobs": "logprobs are not returned",
    "echo": "echo is not supported",
    "best_of": "best_of is not supported",
    "suffix": "suffix is not supported",
    "logit_bias": "logit_bias is not supported",
    "stop": "stop sequences are not supported (sentences end at the aligner's terminators and EOS)",
    "tools": "tools are not supported",
    "tool_choice": "tools are not supported",
    "functions": "functions are not supported",
    "response_format": "response_format is not supported",
}


class RequestError(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(self, message: str, *, status: int = 400, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class _Job:
    """One request, validated: prompt ids, the aligner's question, budget and sampling."""

    prompt_ids: list[int]
    question: str
    max_tokens: int
    sampling: dict[str, Any]
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
            from ..runtime.engines.vllm_engine import VLLMUpstream

            self.upstream = VLLMUpstream(
                config.upstream_url, model=config.upstream_model or self._first_served_model(), timeout=config.upstream_timeout
            )
        else:
            self.upstream = None
        self.aligner = BatchingAligner(aligner if aligner is not None else self._load_aligner(), window=config.batch_window)
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

        from ..generation.mixin import enable_stream_alignment

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
            from ..aligners.vllm import VLLMAligner

            return VLLMAligner.from_pretrained(
                config.aligner,
                base_url=config.aligner_url or config.upstream_url,
                model=config.aligner_vllm_model,
                timeout=config.upstream_timeout,
                trust_remote_code=config.trust_remote_code,
            )
        import torch

        from ..aligners.specs import load_aligner

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

    # ------------------------------------------------------------------ requests
    def job(self, body: dict[str, Any], *, chat: bool) -> _Job:
        """Validate a request body; raises :class:`RequestError`."""
        config = self.config
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != config.served_model_name:
            raise RequestError(
                f"the model {model!r} does not exist; this server serves {config.served_model_name!r}",
                status=404,
                kind="not_found_error",
                param="model",
            )
        for name, reason in UNSUPPORTED.items():
            if body.get(name) not in (None, False, [], {}):
                raise RequestError(reason, param=name)
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported", param="n")
        limit_key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(limit_key)
        max_tokens = config.default_max_tokens if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(f"{limit_key} must be a positive integer", param=limit_key)
        if max_tokens > config.max_tokens_limit:
            raise RequestError(f"{limit_key}={max_tokens} is over this server's limit of {config.max_tokens_limit}", param=limit_key)
        if chat:
            prompt_ids, question = self._chat_prompt(body.get("messages"))
        else:
            prompt_ids, question = self._completion_prompt(body.get("prompt"))
        if len(prompt_ids) > config.max_prompt_tokens:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; this server accepts at most {config.max_prompt_tokens}",
                param="messages" if chat else "prompt",
            )
        sampling = self._sampling(body)
        options = body.get("stream_options") or {}
        return _Job(prompt_ids, question, max_tokens, sampling, bool(body.get("stream")), bool(options.get("include_usage")))

    def _chat_prompt(self, messages: Any) -> tuple[list[int], str]:
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list", param="messages")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
                raise RequestError(f"messages[{i}] must have a role of system, user or assistant", param="messages")
            content = message.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}]
                if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
                    raise RequestError(f"messages[{i}]: only text content is supported", param="messages")
                content = "".join(str(part.get("text", "")) for part in content)
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content must be text", param="messages")
            clean.append({"role": message["role"], "content": content})
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
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise RequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
            return list(prompt), self.tokenizer.decode(prompt, skip_special_tokens=True).strip()
        raise RequestError("prompt must be one string or one list of token ids", param="prompt")

    def _sampling(self, body: dict[str, Any]) -> dict[str, Any]:
        temperature = body.get("temperature")
        temperature = 0.0 if temperature is None else temperature
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise RequestError("temperature must be a number >= 0", param="temperature")
        sampling: dict[str, Any] = {"temperature": float(temperature)}
        for name in ("top_p", "seed"):
            if body.get(name) is not None:
                sampling[name] = body[name]
        if temperature > 0 and self.upstream is None:
            raise RequestError("this server's in-process upstream decodes greedily: send temperature 0", param="temperature")
        return sampling

    # ------------------------------------------------------------------ running one request
    def _run(self, job: _Job, streamer: Any, cancel: threading.Event) -> Any:
        """The stream-aligned answer (a ``StreamAlignedGenerateOutput``), on this thread; raises
        :class:`~.outputs.StreamAlignmentError` (with the partial output) on failure."""
        if self.upstream is not None:
            import dataclasses

            from ..generation.completion import stream_aligned_completion

            upstream = dataclasses.replace(self.upstream, sampling=job.sampling)
            return stream_aligned_completion(
                upstream,
                [job.prompt_ids],
                aligner=self.aligner,
                tokenizer=self.tokenizer,
                max_new_tokens=job.max_tokens,
                aligner_question=job.question,
                streamer=streamer,
                return_dict=True,
                overlap=self.config.overlap,
                cancel=cancel,
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


# ---------------------------------------------------------------------------------------------- the app
def _finish_reason(output: Any, job: _Job, eos: set[int]) -> str:
    generated = output.sequences[0, len(job.prompt_ids) :].tolist()
    return "stop" if eos.intersection(generated) or len(generated) < job.max_tokens else "length"


def _trace(output: Any) -> list[dict[str, Any]]:
    return [
        {
            "start": r.start,
            "original_text": r.original_text,
            "corrected_text": r.corrected_text,
            "changed": r.changed,
            "aligned": r.aligned,
        }
        for r in (output.alignment_trace or [[]])[0]
    ]


def build_app(server: StreamAlignedServer) -> Any:
    """The FastAPI application of ``server`` (run it with uvicorn; ``stream-aligner serve`` does)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    config = server.config
    tokenizer = server.tokenizer
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    app = FastAPI(title="transformers-stream-aligner", description="OpenAI-compatible stream-aligned completions")
    app.state.server = server

    @app.exception_handler(RequestError)
    async def _refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok", "active_requests": server.active, "served_requests": server.served}
        if server.upstream is not None:
            import httpx

            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    upstream_ok = (await client.get(f"{server.upstream.base_url.rstrip('/')}/health")).status_code == 200
            except Exception:  # noqa: BLE001 - reported, not raised
                upstream_ok = False
            body["upstream"] = "ok" if upstream_ok else "unreachable"
            if not upstream_ok:
                body["status"] = "degraded"
                return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.served_model_name, "object": "model", "owned_by": "stream-aligner"}]}

    async def _body(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"the request body is not JSON: {err}") from err

    async def _serve(request: Request, chat: bool) -> Any:
        job = server.job(await _body(request), chat=chat)
        if server.active >= config.max_concurrent_requests:
            raise RequestError(
                f"the server is busy ({config.max_concurrent_requests} requests running); retry later",
                status=429,
                kind="rate_limit_error",
            )
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        server.active += 1  # admitted: released when the answer ends, however it ends
        release = _Release(server)
        if job.stream:
            from starlette.background import BackgroundTask

            events = _events(job, chat, ident, created, release)
            return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(release))
        task = asyncio.create_task(server.answer(job))
        try:
            while not task.done():  # a client that leaves cancels its request (and the engine's)
                await asyncio.wait({task}, timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
            try:
                output = task.result()
            except asyncio.CancelledError:
                return JSONResponse({"error": {"message": "the client disconnected", "type": "cancelled"}}, 499)
            except StreamAlignmentError as err:
                return JSONResponse(_failure(err), status_code=502)
        finally:
            if not task.done():
                task.cancel()
            release()
        generated = output.sequences[0, len(job.prompt_ids) :].tolist()
        text = tokenizer.decode(generated, skip_special_tokens=True)
        finish = _finish_reason(output, job, eos)
        usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(generated),
                 "total_tokens": len(job.prompt_ids) + len(generated)}  # fmt: skip
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": config.served_model_name,
            "choices": [choice],
            "usage": usage,
            "alignment_trace": _trace(output),
            "alignment_stats": output.alignment_stats.to_dict() if output.alignment_stats is not None else None,
        }

    def _failure(err: StreamAlignmentError) -> dict[str, Any]:
        return {
            "error": {
                "message": str(err),
                "type": "stream_alignment_error",
                "param": None,
                "code": 502,
                "partial_text": err.partial_text,
            }
        }

    async def _events(job: _Job, chat: bool, ident: str, created: int, release: _Release) -> AsyncIterator[str]:
        """Server-sent events of the corrected answer; a client that leaves cancels the task (and the request)."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        pieces: asyncio.Queue = asyncio.Queue()
        ids: list[int] = []
        sent = ""

        def chunk(delta: str | None, finish: str | None = None, *, role: bool = False) -> str:
            if chat:
                body: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if delta:
                    body["content"] = delta
                choice: dict[str, Any] = {"index": 0, "delta": body, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish}
            data = {"id": ident, "object": kind, "created": created, "model": config.served_model_name, "choices": [choice]}
            return f"data: {json.dumps(data)}\n\n"

        task = asyncio.create_task(server.answer(job, on_record=pieces.put_nowait))
        try:
            if chat:
                yield chunk(None, role=True)
            while True:
                getter = asyncio.create_task(pieces.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    while not pieces.empty():  # records delivered before the call ended
                        ids.extend(pieces.get_nowait().corrected_ids)
                    break
                ids.extend(getter.result().corrected_ids)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                if text.startswith(sent) and not text.endswith("\ufffd") and len(text) > len(sent):
                    yield chunk(text[len(sent) :])
                    sent = text
            try:
                output = task.result()
            except StreamAlignmentError as err:
                yield f"data: {json.dumps(_failure(err))}\n\n"
                yield "data: [DONE]\n\n"
                return
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(sent) and text.startswith(sent):
                yield chunk(text[len(sent) :])
            yield chunk(None, _finish_reason(output, job, eos))
            if job.include_usage:
                generated = len(output.sequences[0]) - len(job.prompt_ids)
                usage = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": generated,
                         "total_tokens": len(job.prompt_ids) + generated}  # fmt: skip
                data = {"id": ident, "object": kind, "created": created, "model": config.served_model_name,
                        "choices": [], "usage": usage}  # fmt: skip
                yield f"data: {json.dumps(data)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client left (the response was cancelled): end the engine's requests
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - the cancellation we asked for
                    pass
            release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await _serve(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _serve(request, chat=False)

    return app


def serve(config: ServeConfig, **objects: Any) -> None:
    """Load what ``config`` names and serve it with uvicorn until interrupted."""
    import uvicorn

    server = StreamAlignedServer(config, **objects)
    try:
        uvicorn.run(build_app(server), host=config.host, port=config.port, log_level="info")
    finally:
        server.close()
