"""`VLLMEngine`: the upstream is a vLLM OpenAI-compatible server (``/v1/completions`` with token ids).

Each round streams every row's continuation from the server (one request per row, all at once, so vLLM batches
them): the prompt is the row's ids (prompt, accepted sentences, corrected text, pending tokens), the stream returns
token ids (``return_token_ids``), and the same :class:`~..boundary.SentenceTracker` as the transformers engine finds
the sentence end; the request is then ended by closing its stream (vLLM aborts it). A correction needs no cache work
here: the next request's prompt holds the corrected text, and vLLM's prefix cache supplies the KV of its unchanged
blocks. Greedy decoding is exact (the continuation of a resubmitted prefix is the continuation of the first run);
sampling is not reproducible across requests.

The client is ``httpx`` (``pip install httpx``; the core package does not need it). vLLM itself runs in its own
environment (``make test-vllm`` builds one): nothing here imports vLLM.

Example:

    >>> from transformers_stream_aligner.generation.completion import stream_aligned_completion
    >>> from transformers_stream_aligner.runtime.engines.vllm_engine import VLLMUpstream
    >>> upstream = VLLMUpstream("http://127.0.0.1:8000", model="smol")  # doctest: +SKIP
    >>> out = stream_aligned_completion(upstream, [prompt_ids], aligner=fn, tokenizer=tok, max_new_tokens=100)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...errors import Cancelled, VLLMUpstreamError
from ...outputs import AlignmentStats
from ...tokens import longest_common_prefix
from ..boundary.tracker import SentenceTracker
from ..row_state import RowState
from .base import RoundOutcome, UpstreamEngine

__all__ = ["VLLMEngine", "VLLMUpstream", "VLLMUpstreamError"]


@dataclass
class VLLMUpstream:
    """Where the upstream runs and how to sample from it.

    Attributes:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"``.
        model: the served model name (``--served-model-name``).
        timeout: seconds to wait for the server (connect and each read).
        sampling: extra ``/v1/completions`` fields (default greedy: ``{"temperature": 0}``).
        api_key: sent as a bearer token if the server wants one.
    """

    base_url: str
    model: str
    timeout: float = 60.0
    sampling: dict[str, Any] = field(default_factory=lambda: {"temperature": 0})
    api_key: str | None = None
    _client: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def client(self) -> Any:
        """The HTTP client of every request to this server: one connection pool shared by every call and thread
        (httpx's ``Client`` is thread-safe), made on first use. A served loop used to make one per call, and with it
        an SSL context and a pool per request (docs/reliability.md: the served soak). :meth:`close` closes it."""
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)  # a stream per row at once
                self._client = httpx.Client(base_url=self.base_url.rstrip("/"), timeout=self.timeout, headers=headers,
                                            limits=limits)  # fmt: skip
            return self._client

    def close(self) -> None:
        """Close the shared client's connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class _RowStream:
    """One open ``/v1/completions`` stream of a row: its token iterator, the ids it continues (``position``) and,
    while the aligner runs (overlap), a thread that drafts ahead into ``buffer``. Only its own thread reads the
    stream while it drafts; :meth:`take_back` and :meth:`abort` end that thread first."""

    def __init__(self, context: Any, tokens: Iterator[int], cancel: threading.Event | None) -> None:
        self._context = context  # the httpx stream context manager (its exit closes the stream: vLLM aborts)
        self._tokens = tokens
        self._cancel = cancel
        self.position: list[int] = []
        self.buffer: list[int] = []
        self.ended = False  # the server finished the request (EOS, max_tokens)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._drafter: threading.Thread | None = None

    def next_token(self) -> int | None:
        """The next token: drafted ones first, then the stream's (``None``: the request ended)."""
        if self.buffer:
            return self.buffer.pop(0)
        if self.ended:
            return None
        try:
            return next(self._tokens)
        except StopIteration:
            self.ended = True
            return None

    def draft(self) -> None:
        """Keep reading the stream into ``buffer`` on a thread until :meth:`take_back` or :meth:`abort`."""
        self._stop.clear()
        self._drafter = threading.Thread(target=self._draft, name="vllm-draft", daemon=True)
        self._drafter.start()

    def _draft(self) -> None:
        try:
            while not self._stop.is_set() and not (self._cancel is not None and self._cancel.is_set()):
                token = next(self._tokens, None)
                if token is None:
                    self.ended = True
                    return
                self.buffer.append(token)
        except BaseException as err:  # noqa: BLE001 - handed to the round that takes the stream back
            self.error = err

    def take_back(self) -> None:
        """End drafting (the thread finishes the token it waits for); re-raise what broke the stream meanwhile."""
        if self._drafter is not None:
            self._stop.set()
            self._drafter.join()
            self._drafter = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def close(self) -> None:
        """End drafting and close the stream (vLLM aborts the request). Never raises."""
        try:
            self.take_back()
        except BaseException:  # noqa: BLE001 - closing after a failure
            pass
        try:
            self._context.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass


class VLLMEngine(UpstreamEngine):
    """The engine seam over a vLLM server (see the module docstring).

    Without ``overlap``, each row's request ends at its sentence end (the stream is closed: vLLM aborts it) and
    the next round sends a new one. With ``overlap``, the request keeps streaming on a thread while the aligner
    corrects (a draft of what follows); the next round continues it if the row's tokens are still the ones it
    continues (the aligner kept the sentence: the draft is what a new request would give, greedy) and closes it
    otherwise (a splice: the draft is dropped and a new request continues the corrected text). The server's prefix
    cache is the engine's memory, so :meth:`replace_tail` and :meth:`drop_rows` only end streams. ``cancel`` (an
    event) makes every row's stream end at its next token with :class:`~.base.Cancelled`.
    """

    def __init__(
        self,
        upstream: VLLMUpstream,
        rows: Sequence[RowState],
        *,
        tokenizer: Any,
        stats: AlignmentStats,
        terminators: str,
        max_sentence_tokens: int,
        eos_token_ids: Iterable[int],
        overlap: bool = False,
        cancel: threading.Event | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        self.upstream = upstream
        self.sampling = dict(upstream.sampling if sampling is None else sampling)
        self.tokenizer = tokenizer
        self.stats = stats
        self.terminators = terminators
        self.max_sentence_tokens = max_sentence_tokens
        self.eos_token_ids = frozenset(eos_token_ids)
        self.overlap = overlap
        self.cancel = cancel
        self._client = upstream.client()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(rows)), thread_name_prefix="vllm-row")
        self._streams: dict[int, _RowStream] = {}  # open streams of rows waiting for the aligner (overlap)
        self._sent: dict[int, list[int]] = {}  # per row: what its last request sent and received
        self._lock = threading.Lock()  # stats and _sent are written by the row threads

    # ------------------------------------------------------------------ the seam
    def run_round(self, rows: Sequence[RowState], drafting: Sequence[RowState]) -> dict[int, RoundOutcome]:
        outcomes = dict(zip([row.index for row in rows], self._pool.map(self._continue, rows), strict=True))
        self.stats.upstream_real_tokens += sum(len(outcome.tokens) for outcome in outcomes.values())
        outcomes.update({row.index: RoundOutcome([]) for row in drafting})
        self.stats.rounds += 1
        return outcomes

    def replace_tail(self, row: RowState, keep: int) -> None:
        self._end_stream(row.index)  # its draft continues the old text; the next request sends the corrected one

    def drop_rows(self, rows: Iterable[RowState]) -> None:
        for row in rows:
            self._end_stream(row.index)

    def close(self) -> Any:
        for index in list(self._streams):
            self._end_stream(index)
        self._pool.shutdown(wait=True)  # rows of a failed round finish or fail; none is left streaming
        return None  # the client is the upstream's, shared with other calls: its streams are closed, it stays open

    # ------------------------------------------------------------------ one row
    def _end_stream(self, index: int) -> None:
        stream = self._streams.pop(index, None)
        if stream is not None:
            stream.close()
            self.stats.draft_tokens_discarded += len(stream.buffer)

    def _continue(self, row: RowState) -> RoundOutcome:
        """Extend ``row`` until its sentence ends (with the look-ahead that decides it), an EOS, or its budget: from
        the stream that drafted ahead if it continues the row's tokens as they are, else from a new request."""
        stream = self._streams.pop(row.index, None)
        if stream is not None:
            if stream.position == row.ids:
                self._check_cancel()
                try:
                    stream.take_back()
                except Exception as err:
                    stream.close()
                    raise self._failure(err) from err
                with self._lock:
                    self.stats.draft_tokens_kept += len(stream.buffer)
            else:  # the row's text changed under the draft
                stream.close()
                with self._lock:
                    self.stats.draft_tokens_discarded += len(stream.buffer)
                stream = None
        if stream is None:
            stream = self._open(row)
        offset = max(row.start - 1, 0)
        tracker = SentenceTracker(
            self.tokenizer,
            row.ids[offset:],
            row.start - offset,
            terminators=self.terminators,
            max_sentence_tokens=self.max_sentence_tokens,
        )
        tokens: list[int] = []
        keep_open = False
        try:
            while len(tokens) < row.budget_left:
                self._check_cancel()
                token = stream.next_token()
                if token is None:
                    break
                tokens.append(token)
                if token in self.eos_token_ids:
                    break
                cut = tracker.push(token)
                if cut is not None:
                    keep_open = self.overlap and not stream.ended and len(tokens) < row.budget_left
                    return RoundOutcome(tokens, cut=offset + cut)
        except (Cancelled, VLLMUpstreamError):
            raise
        except Exception as err:  # httpx's transport errors and timeouts, a broken stream
            raise self._failure(err) from err
        finally:
            with self._lock:
                self._sent[row.index] = list(row.ids) + tokens
            if keep_open:
                stream.position = list(row.ids) + tokens
                self._streams[row.index] = stream
                stream.draft()
            else:
                stream.close()
        return RoundOutcome(tokens)

    def _open(self, row: RowState) -> _RowStream:
        """Send ``row``'s request; returns its stream once the server accepted it."""
        body = {
            "model": self.upstream.model,
            "prompt": list(row.ids),
            "max_tokens": row.budget_left,
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
            **self.sampling,
        }
        self._check_cancel()
        with self._lock:
            previous = self._sent.get(row.index, [])
            self.stats.upstream_requests += 1
            self.stats.upstream_prompt_tokens += len(row.ids)
            self.stats.upstream_new_prompt_tokens += len(row.ids) - longest_common_prefix(previous, row.ids)
        context = self._client.stream("POST", "/v1/completions", json=body)
        try:
            response = context.__enter__()
            if response.status_code != 200:
                response.read()
                raise VLLMUpstreamError(f"vLLM answered {response.status_code}: {response.text[:500]}")
        except VLLMUpstreamError:
            context.__exit__(None, None, None)
            raise
        except Exception as err:
            raise self._failure(err) from err
        return _RowStream(context, _streamed_token_ids(response.iter_lines()), self.cancel)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the call was cancelled")

    def _failure(self, err: BaseException) -> VLLMUpstreamError:
        if isinstance(err, VLLMUpstreamError):
            return err
        kind = "timed out" if "Timeout" in type(err).__name__ else "failed"
        return VLLMUpstreamError(f"the vLLM server at {self.upstream.base_url} {kind}: {type(err).__name__}: {err}")


def _streamed_token_ids(lines: Iterable[str]) -> Iterable[int]:
    """The token ids of a ``/v1/completions`` server-sent event stream (``return_token_ids``)."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise VLLMUpstreamError(f"vLLM stream error: {event['error']}")
        for choice in event.get("choices", []):
            yield from choice.get("token_ids") or []
