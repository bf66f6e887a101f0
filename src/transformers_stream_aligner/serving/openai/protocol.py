"""The OpenAI API's request and response bodies that ``stream-aligner serve`` speaks, as pydantic models (FastAPI
validates every request against them; an invalid one is HTTP 400 in OpenAI's error shape, :class:`ErrorResponse`).

Only the fields the server honours are typed; a field it cannot honour (``stop``, ``logprobs``, tools, ...) is
refused by name (:data:`UNSUPPORTED`), and unknown fields are ignored, as OpenAI-compatible servers do.

Example:

    >>> request = ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
    >>> request.messages[0].text(), request.max_tokens, request.stream
    ('Hi', 5, False)
    >>> ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=0)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for ChatCompletionRequest
    max_tokens
      Value error, must be a positive integer [type=value_error, input_value=0, input_type=int]
    ...
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

__all__ = [
    "UNSUPPORTED",
    "AlignedFields",
    "ChatChunkChoice",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionChunkChoice",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "ModelCard",
    "ModelList",
    "ErrorBody",
    "ErrorResponse",
    "StreamOptions",
    "TextPart",
    "Usage",
]

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


class TextPart(BaseModel):
    """A part of a message's content; only text parts are accepted."""

    type: Literal["text"] = Field(description="only text content is supported")
    text: str = ""


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


def _positive(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError("must be a positive integer")
    return value


class _Request(BaseModel):
    """What chat and text completions share."""

    model_config = ConfigDict(extra="allow")  # unknown fields are ignored; UNSUPPORTED ones are refused by name

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None

    _check_max_tokens = field_validator("max_tokens")(_positive)

    def unsupported(self) -> tuple[str, str] | None:
        """``(field, reason)`` of the first field given that the server cannot honour, else ``None``."""
        given = {**(self.model_extra or {})}
        for name, reason in UNSUPPORTED.items():
            if given.get(name) not in (None, False, [], {}):
                return name, reason
        return ("n", "only n=1 is supported") if self.n != 1 else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None

    _check_max_completion_tokens = field_validator("max_completion_tokens")(_positive)

    @field_validator("messages")
    @classmethod
    def _non_empty(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not messages:
            raise ValueError("must be a non-empty list")
        return messages


class CompletionRequest(_Request):
    """``POST /v1/completions``: ``prompt`` is one string or one list of token ids (a list of one of them too)."""

    prompt: str | list[int] | list[str] | list[list[int]]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]


class AlignedFields(BaseModel):
    """The extension fields of a non-streamed answer: the alignment trace (each accepted piece: where it starts, the
    text as drafted and as corrected) and the call's work counters."""

    alignment_trace: list[dict[str, Any]] = Field(default_factory=list)
    alignment_stats: dict[str, Any] | None = None


class ChatCompletionResponse(AlignedFields):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class CompletionResponse(AlignedFields):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop", "length"] | None = None

    @field_serializer("delta")
    def _only_what_changed(self, delta: DeltaMessage) -> dict[str, Any]:
        return delta.model_dump(exclude_none=True)  # OpenAI's deltas name only what they carry


class CompletionChunkChoice(BaseModel):
    index: int = 0
    text: str = ""
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "stream-aligner"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None
    partial_text: str | None = Field(default=None, description="a failed answer's text so far (stream alignment)")


class ErrorResponse(BaseModel):
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorBody

    @classmethod
    def of(cls, message: str, *, kind: str, status: int | None, param: str | None = None, **extra: Any) -> ErrorResponse:
        return cls(error=ErrorBody(message=message, type=kind, param=param, code=status, **extra))
