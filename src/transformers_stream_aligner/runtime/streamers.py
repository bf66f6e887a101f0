"""The streamer stage: the corrected answer, as each sentence is accepted.

Stream-aligned ``generate`` drives the user's streamer itself: ``put(prompt)`` once, ``put(ids)`` for
each accepted sentence (corrected), ``end()`` once. Inner upstream rounds never reach it, so any
``transformers`` streamer works. Alignment adds events, declared as no-op hooks by
:class:`AlignmentStreamerHooks`: ``put_alignment(record)`` for each accepted piece, ``end_row(row)`` when a row
of a batch ends (``per_row = True`` streamers get these instead of ``put``), ``put_draft(ids)`` for the upstream's
draft tokens. :class:`StreamerDriver` is the one place that adapts any streamer to these events, so the loop
calls every event unconditionally.

:class:`StreamAlignerStreamer` can also show the drafts that were replaced, and
:class:`StreamAlignerIteratorStreamer` (threads) and :class:`StreamAlignerAsyncIteratorStreamer` (asyncio) keep the
per-sentence records for servers. All three are drop-ins for ``transformers``' ``TextStreamer``,
``TextIteratorStreamer`` and ``AsyncTextIteratorStreamer``: same arguments, same defaults.

Example:

    >>> from transformers_stream_aligner import StreamAlignerStreamer
    >>> streamer = StreamAlignerStreamer(tokenizer, skip_prompt=True, show_drafts=True)  # doctest: +SKIP
    >>> model.generate(ids, aligner=aligner, streamer=streamer, max_new_tokens=100)  # doctest: +SKIP
    17*23 = 381. 17*23 = 391.  (the first sentence struck through on a terminal)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AsyncTextIteratorStreamer, TextIteratorStreamer, TextStreamer

from ..compat import is_serve_streamer

logger = logging.getLogger(__name__)

__all__ = [
    "AlignmentStreamerHooks",
    "StreamAlignerAsyncIteratorStreamer",
    "StreamAlignerIteratorStreamer",
    "StreamAlignerStreamer",
    "StreamEvent",
    "StreamerDriver",
]


class AlignmentStreamerHooks:
    """The events stream-aligned ``generate`` sends beyond ``put``/``end``, as no-op hooks to override.

    Mix it into any ``transformers`` streamer (the streamers of this module do). Streamers that do not inherit it
    may define the same methods; :class:`StreamerDriver` finds them.

    Attributes:
        per_row: ``True`` for streamers that follow the rows of a batch: they get ``put_alignment`` and ``end_row``
            events but no ``put`` of token ids (a batch needs one).
    """

    per_row: bool = False

    def put_alignment(self, record: Any) -> None:
        """An accepted piece (an :class:`~.outputs.AlignmentRecord`, ``record.row`` says which row), right before
        its corrected tokens are ``put``."""

    def end_row(self, row: int) -> None:
        """Row ``row`` of the batch has ended (per-row streamers)."""

    def put_draft(self, value: torch.Tensor) -> None:
        """Tokens the upstream drafted before the aligner saw them (single sequence; only when overridden)."""

    def put_error(self, error: BaseException) -> None:
        """The call failed with ``error`` (a :class:`~.outputs.StreamAlignmentError` carries the partial output);
        ``end()`` follows. Streamers are ended on every exit path, so a consumer never waits forever."""


class StreamerDriver:
    """How the loop talks to the user's streamer (any ``transformers`` streamer, or ``None``).

    Every method may be called whatever the streamer is: the streamer's own hooks are looked up once, here.
    Does not own the streamer (``end`` is forwarded once, by :meth:`end`).
    """

    def __init__(self, streamer: Any, *, prompt_sent: bool = False) -> None:
        self.streamer = streamer
        self.ended = False
        #: the streamer already has the prompt (transformers' generate put it before calling a custom decoding method)
        self.prompt_sent = prompt_sent
        self.per_row = bool(getattr(streamer, "per_row", False))
        self._put_alignment = getattr(streamer, "put_alignment", None)
        self._end_row = getattr(streamer, "end_row", None) if self.per_row else None
        draft = getattr(streamer, "put_draft", None)
        overridden = draft is not None and getattr(type(streamer), "put_draft", None) is not AlignmentStreamerHooks.put_draft
        #: where the upstream's draft tokens go (``None``: nobody wants them, so engines need not forward them).
        self.on_draft: Callable[[torch.Tensor], None] | None = draft if overridden and not self.per_row else None

    def prompt(self, prompt_ids: torch.Tensor) -> None:
        """The prompt, once, as ``generate`` sends it (not to per-row streamers)."""
        if self.streamer is not None and not self.per_row and not self.prompt_sent:
            self.prompt_sent = True
            self.streamer.put(prompt_ids.cpu())

    def record(self, record: Any) -> None:
        """An accepted piece: ``put_alignment(record)``, then ``put`` of its corrected ids."""
        if self._put_alignment is not None:
            self._put_alignment(record)
        if self.streamer is not None and not self.per_row and record.corrected_ids:
            self.streamer.put(torch.tensor(record.corrected_ids, dtype=torch.long))

    def row_end(self, row: int) -> None:
        if self._end_row is not None:
            self._end_row(row)

    def end(self) -> None:
        """The call is over: ``end()`` once."""
        if not self.ended:
            self.ended = True
            if self.streamer is not None:
                self.streamer.end()

    def abort(self, error: BaseException, rows: Sequence[int] = ()) -> None:
        """The call failed with ``error``: ``end_row`` for each of ``rows`` (those not ended yet), ``put_error``,
        then ``end()``, each attempted even if another raised (logged: ``error`` is what the caller sees). Does
        nothing if the streamer has ended already, or if its owner reports the failure on it itself (``transformers
        serve``'s streamer: ending it would turn the error event into a normal end)."""
        if self.ended:
            return
        self.ended = True
        if self.streamer is None or _reports_failures_itself(self.streamer):
            return
        put_error = getattr(self.streamer, "put_error", None)
        steps = [functools.partial(self.row_end, row) for row in rows]
        steps += [functools.partial(put_error, error)] if put_error is not None else []
        for step in [*steps, self.streamer.end]:
            try:
                step()
            except Exception:
                logger.warning("the streamer raised while ending a failed call", exc_info=True)


def _reports_failures_itself(streamer: Any) -> bool:
    """Whether the streamer's owner catches generate's exception and reports it on the same stream (transformers
    serve's streamer): ending it first would make a failed answer look finished."""
    return is_serve_streamer(streamer)


class StreamAlignerStreamer(AlignmentStreamerHooks, TextStreamer):
    """A ``TextStreamer`` that prints only corrected text, sentence by sentence.

    A drop-in for ``TextStreamer``: the same arguments and defaults (the prompt is printed unless
    ``skip_prompt=True``; special tokens are printed unless ``skip_special_tokens=True``), and without an aligner
    it prints what ``TextStreamer`` prints.

    Args:
        tokenizer: the upstream tokenizer.
        skip_prompt: do not print the prompt (default ``False``, as ``TextStreamer``).
        show_drafts: also print each replaced draft sentence, struck through, before its correction.
        draft_format: how a replaced draft is shown (``{draft}`` is the original sentence); the
            default uses ANSI strikethrough.
        **decode_kwargs: passed to ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``).
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        *,
        show_drafts: bool = False,
        draft_format: str = "\x1b[9m{draft}\x1b[0m",
        **decode_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, skip_prompt=skip_prompt, **decode_kwargs)
        self.show_drafts = show_drafts
        self.draft_format = draft_format
        self.records: list[Any] = []

    def put_alignment(self, record: Any) -> None:
        """Called with each :class:`AlignmentRecord` right before its corrected tokens are ``put``."""
        self.records.append(record)
        if self.show_drafts and record.changed and record.original_text.strip():
            # Flush what is pending so the draft appears where the sentence goes.
            if self.token_cache:
                text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
                printable = text[self.print_len :]
                self.token_cache = []
                self.print_len = 0
                self.on_finalized_text(printable)
            self.on_finalized_text(self.draft_format.format(draft=record.original_text))


@dataclass
class StreamEvent:
    """One event of a per-row :class:`StreamAlignerIteratorStreamer`.

    Attributes:
        row: the row of the batch (index into ``sequences``).
        text: the corrected text of the piece (empty for a lone EOS and for the final event).
        record: the :class:`AlignmentRecord` (original and corrected ids and text); ``None`` for the
            final event of a row.
        finished: ``True`` for the row's last event (it has nothing more to say).
    """

    row: int
    text: str
    record: Any = None
    finished: bool = False


class _RecordQueueStreamer(AlignmentStreamerHooks):
    """What the iterator streamers share: the records, per-row events and the error, on a queue that the subclass
    fills with ``_send`` (a thread-safe queue, or an asyncio loop's). Put before the ``transformers`` class."""

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = False,
        timeout: float | None = None,
        *,
        per_row: bool = False,
        raise_errors: bool = True,
        **decode_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, skip_prompt=skip_prompt, timeout=timeout, **decode_kwargs)  # type: ignore[call-arg]
        self.per_row = per_row
        self.raise_errors = raise_errors
        self.records: list[Any] = []
        #: the exception ``generate`` failed with, if it did.
        self.error: BaseException | None = None

    def _send(self, item: Any) -> None:
        raise NotImplementedError

    def put_error(self, error: BaseException) -> None:
        """Keep ``error`` for the consumer (raised by iteration after the last piece, with ``raise_errors``)."""
        self.error = error

    def put_alignment(self, record: Any) -> None:
        """Called with each accepted :class:`AlignmentRecord` (``record.row`` says which row)."""
        self.records.append(record)
        if self.per_row:
            self._send(StreamEvent(record.row, record.corrected_text, record))

    def end_row(self, row: int) -> None:
        """Called once when ``row`` has finished (per-row mode)."""
        if self.per_row:
            self._send(StreamEvent(row, "", None, finished=True))

    def put(self, value: Any) -> None:
        if self.per_row:
            return  # per-row mode streams records, not token ids
        super().put(value)  # type: ignore[misc]

    def end(self) -> None:
        if self.per_row:
            self._send(self.stop_signal)  # type: ignore[attr-defined]
            return
        super().end()  # type: ignore[misc]


class StreamAlignerIteratorStreamer(_RecordQueueStreamer, TextIteratorStreamer):
    """A ``TextIteratorStreamer`` of corrected text, for serving generation from another thread.

    A drop-in for ``TextIteratorStreamer``: the same arguments and defaults (``skip_prompt=False``, no
    ``decode_kwargs``). Iterating yields text pieces of the corrected answer. :attr:`records` collects each accepted
    :class:`AlignmentRecord` (original and corrected ids and text) as it is accepted.

    With ``per_row=True`` (needed for batches, also fine for one row) iterating yields a
    :class:`StreamEvent` per accepted sentence of any row, as soon as it is accepted, and one event
    with ``finished=True`` when a row ends.

    When ``generate`` fails, every row still gets its final event and iteration ends; with ``raise_errors``
    (default) the consumer's loop then raises the error (:attr:`error`; a :class:`~.outputs.StreamAlignmentError`
    carries the partial output), so a server can tell a failed answer from a finished one.

    Example:

        >>> from threading import Thread
        >>> streamer = StreamAlignerIteratorStreamer(tokenizer, skip_prompt=True)  # doctest: +SKIP
        >>> Thread(target=model.generate, kwargs=dict(input_ids=ids, aligner=a, streamer=streamer)).start()  # doctest: +SKIP
        >>> "".join(streamer)  # doctest: +SKIP
        >>> batch_streamer = StreamAlignerIteratorStreamer(tokenizer, per_row=True)  # doctest: +SKIP
        >>> Thread(target=model.generate, kwargs=dict(**batch, aligner=a, streamer=batch_streamer)).start()  # doctest: +SKIP
        >>> for event in batch_streamer:  # doctest: +SKIP
        ...     print(event.row, event.text)
    """

    def _send(self, item: Any) -> None:
        self.text_queue.put(item, timeout=self.timeout)

    def __next__(self) -> Any:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            if self.error is not None and self.raise_errors:
                raise self.error
            raise StopIteration()
        return value


class StreamAlignerAsyncIteratorStreamer(_RecordQueueStreamer, AsyncTextIteratorStreamer):
    """An ``AsyncTextIteratorStreamer`` of corrected text, for asyncio servers (``async for`` in the event loop while
    ``generate`` runs in a thread).

    A drop-in for ``AsyncTextIteratorStreamer`` (same arguments and defaults; create it inside a coroutine, it binds
    the running loop). Like :class:`StreamAlignerIteratorStreamer`: :attr:`records` collects the accepted
    :class:`AlignmentRecord` objects, ``per_row=True`` yields a :class:`StreamEvent` per accepted piece of any row and
    one ``finished`` event per row, and a failed ``generate`` ends the iteration by raising its error
    (:attr:`error`, with the partial output) unless ``raise_errors=False``. ``timeout`` raises ``TimeoutError`` as
    the stock streamer does.

    Example:

        >>> import asyncio, threading
        >>> async def answer(model, ids, aligner, tokenizer):  # doctest: +SKIP
        ...     streamer = StreamAlignerAsyncIteratorStreamer(tokenizer, skip_prompt=True)
        ...     kwargs = dict(input_ids=ids, aligner=aligner, streamer=streamer, max_new_tokens=100)
        ...     threading.Thread(target=model.generate, kwargs=kwargs).start()
        ...     return "".join([text async for text in streamer])
    """

    def _send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.text_queue.put_nowait, item)

    async def __anext__(self) -> Any:
        try:
            return await super().__anext__()
        except StopAsyncIteration:
            if self.error is not None and self.raise_errors:
                raise self.error from None
            raise
