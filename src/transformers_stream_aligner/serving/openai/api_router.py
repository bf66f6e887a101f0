"""The routes of ``stream-aligner serve`` (FastAPI): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``,
``/health``; the serving logic is :mod:`.serving`, the bodies :mod:`.protocol`.

A client that disconnects is handled once, the way vLLM's routes do it: :func:`with_cancellation` runs a route as a
task and cancels it when the client leaves, which cancels the stream-aligned call (its engine requests end at their
next token). A streamed answer ends the same way when Starlette stops sending it. Server-sent events are written by
:func:`sse`, one small encoder.

Example:

    >>> from transformers_stream_aligner.serving.openai.api_router import sse
    >>> sse({"a": 1}), sse("[DONE]")
    ('data: {"a": 1}\\n\\n', 'data: [DONE]\\n\\n')
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request  # the serve extra (FastAPI); FastAPI reads the handlers' annotations

from ...errors import StreamAlignmentError
from .config import ServeConfig
from .protocol import (
    ChatChunkChoice,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from .serving import RequestError, StreamAlignedServer, _Job, _Release

__all__ = ["build_app", "serve", "sse", "with_cancellation"]


def sse(payload: BaseModel | dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <JSON>`` (a model, without a top-level ``usage`` it left unset, or a dict) or
    ``data: <text>``, then a blank line."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump()
        if "usage" in payload and payload["usage"] is None:
            del payload["usage"]
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    return f"data: {payload}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the request's body was read before the route ran)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def with_cancellation(route: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Run ``route(body, raw_request)`` as a task, cancelled when the client disconnects (as vLLM's routes are). A
    cancelled route's work ends with it: the stream-aligned call is cancelled and its engine requests end."""

    @functools.wraps(route)
    async def wrapper(body: Any, raw_request: Request) -> Any:
        work = asyncio.create_task(route(body, raw_request))
        gone = asyncio.create_task(_disconnected(raw_request))
        done, pending = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if work in done:
            return work.result()
        try:
            await work  # the route's own cleanup (its slot, its call) runs before we return
        except asyncio.CancelledError:
            pass
        return None  # nobody is listening

    return wrapper


def _finish_reason(output: Any, job: _Job, eos: set[int]) -> str:
    generated = output.sequences[0, len(job.prompt_ids) :].tolist()
    return "stop" if eos.intersection(generated) or len(generated) < job.max_tokens else "length"


def _trace(output: Any) -> list[dict[str, Any]]:
    return [
        {"start": r.start, "original_text": r.original_text, "corrected_text": r.corrected_text, "changed": r.changed,
         "aligned": r.aligned}
        for r in (output.alignment_trace or [[]])[0]
    ]  # fmt: skip


def _usage(job: _Job, generated: int) -> Usage:
    return Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=generated, total_tokens=len(job.prompt_ids) + generated)


def _failure(err: StreamAlignmentError) -> ErrorResponse:
    return ErrorResponse.of(str(err), kind="stream_alignment_error", status=502, partial_text=err.partial_text)


def build_app(server: StreamAlignedServer) -> Any:
    """The FastAPI application of ``server`` (run it with uvicorn; ``stream-aligner serve`` does)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask

    config = server.config
    tokenizer = server.tokenizer
    eos = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    app = FastAPI(title="transformers-stream-aligner", description="OpenAI-compatible stream-aligned completions")
    app.state.server = server

    @app.exception_handler(RequestError)
    async def _refused(request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(error.response().model_dump(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in problems)
        param = ".".join(str(p) for p in problems[0]["loc"][1:2]) if problems and len(problems[0]["loc"]) > 1 else None
        body = ErrorResponse.of(message or "invalid request", kind="invalid_request_error", status=400, param=param)
        return JSONResponse(body.model_dump(), status_code=400)

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
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=config.served_model_name)])

    async def _serve(request: ChatCompletionRequest | CompletionRequest) -> Any:
        job = server.job(request)
        if server.active >= config.max_concurrent_requests:
            raise RequestError(
                f"the server is busy ({config.max_concurrent_requests} requests running); retry later",
                status=429,
                kind="rate_limit_error",
            )
        ident = ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        server.active += 1  # admitted: released when the answer ends, however it ends
        release = _Release(server)
        if job.stream:
            events = _events(job, ident, created, release)
            return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(release))
        try:
            output = await server.answer(job)  # cancelled with this route when the client leaves (with_cancellation)
        except StreamAlignmentError as err:
            return JSONResponse(_failure(err).model_dump(), status_code=502)
        finally:
            release()
        generated = output.sequences[0, len(job.prompt_ids) :].tolist()
        text = tokenizer.decode(generated, skip_special_tokens=True)
        finish = _finish_reason(output, job, eos)
        common = {"id": ident, "created": created, "model": config.served_model_name, "usage": _usage(job, len(generated)),
                  "alignment_trace": _trace(output),
                  "alignment_stats": output.alignment_stats.to_dict() if output.alignment_stats is not None else None}  # fmt: skip
        if job.chat:
            choice = ChatCompletionChoice(message=ChatCompletionMessage(content=text), finish_reason=finish)
            return ChatCompletionResponse(choices=[choice], **common)
        return CompletionResponse(choices=[CompletionChoice(text=text, finish_reason=finish)], **common)

    def _chunk(job: _Job, ident: str, created: int, delta: str | None, finish: str | None = None, *, role: bool = False) -> str:
        common = {"id": ident, "created": created, "model": config.served_model_name}
        if job.chat:
            message = DeltaMessage(role="assistant", content="") if role else DeltaMessage(content=delta or None)
            return sse(ChatCompletionChunk(choices=[ChatChunkChoice(delta=message, finish_reason=finish)], **common))
        return sse(CompletionChunk(choices=[CompletionChunkChoice(text=delta or "", finish_reason=finish)], **common))

    async def _events(job: _Job, ident: str, created: int, release: _Release) -> AsyncIterator[str]:
        """Server-sent events of the corrected answer; when the client leaves, Starlette stops this generator and the
        call is cancelled (its engine requests end)."""
        pieces: asyncio.Queue = asyncio.Queue()
        ids: list[int] = []
        sent = ""
        task = asyncio.create_task(server.answer(job, on_record=pieces.put_nowait))
        try:
            if job.chat:
                yield _chunk(job, ident, created, None, role=True)
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
                    yield _chunk(job, ident, created, text[len(sent) :])
                    sent = text
            try:
                output = task.result()
            except StreamAlignmentError as err:
                yield sse(_failure(err))
                yield sse("[DONE]")
                return
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(sent) and text.startswith(sent):
                yield _chunk(job, ident, created, text[len(sent) :])
            yield _chunk(job, ident, created, None, _finish_reason(output, job, eos))
            if job.include_usage:
                usage = _usage(job, len(output.sequences[0]) - len(job.prompt_ids))
                kind = ChatCompletionChunk if job.chat else CompletionChunk
                yield sse(kind(id=ident, created=created, model=config.served_model_name, choices=[], usage=usage))
            yield sse("[DONE]")
        finally:
            if not task.done():  # the client left (the response was cancelled): end the engine's requests
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001 - the cancellation we asked for
                    pass
            release()

    @app.post("/v1/chat/completions")
    @with_cancellation
    async def chat_completions(body: ChatCompletionRequest, raw_request: Request) -> Any:
        return await _serve(body)

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(body: CompletionRequest, raw_request: Request) -> Any:
        return await _serve(body)

    return app


def serve(config: ServeConfig, **objects: Any) -> None:
    """Load what ``config`` names and serve it with uvicorn until interrupted."""
    import uvicorn

    server = StreamAlignedServer(config, **objects)
    try:
        uvicorn.run(build_app(server), host=config.host, port=config.port, log_level="info")
    finally:
        server.close()
