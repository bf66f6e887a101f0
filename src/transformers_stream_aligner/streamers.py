"""Streamers that show the corrected answer as each sentence is accepted.

Stream-aligned ``generate`` drives the user's streamer itself: ``put(prompt)`` once, ``put(ids)`` for
each accepted sentence (corrected), ``end()`` once. Inner upstream rounds never reach it, so any
``transformers`` streamer works; these subclasses add what alignment makes possible:
:class:`StreamAlignerStreamer` can also show the drafts that were replaced, and
:class:`StreamAlignerIteratorStreamer` keeps the per-sentence records for servers.

Example:

    >>> from transformers_stream_aligner import StreamAlignerStreamer
    >>> streamer = StreamAlignerStreamer(tokenizer, show_drafts=True)  # doctest: +SKIP
    >>> model.generate(ids, aligner=aligner, streamer=streamer, max_new_tokens=100)  # doctest: +SKIP
    17*23 = 381. 17*23 = 391.  (the first sentence struck through on a terminal)
"""

from __future__ import annotations

from typing import Any

from transformers import TextIteratorStreamer, TextStreamer

__all__ = ["StreamAlignerIteratorStreamer", "StreamAlignerStreamer"]


class StreamAlignerStreamer(TextStreamer):
    """A ``TextStreamer`` that prints only corrected text, sentence by sentence.

    Args:
        tokenizer: the upstream tokenizer.
        skip_prompt: do not print the prompt (default ``True``).
        show_drafts: also print each replaced draft sentence, struck through, before its correction.
        draft_format: how a replaced draft is shown (``{draft}`` is the original sentence); the
            default uses ANSI strikethrough.
        **decode_kwargs: passed to ``tokenizer.decode`` (``skip_special_tokens`` defaults to ``True``).
    """

    def __init__(
        self,
        tokenizer: Any,
        skip_prompt: bool = True,
        *,
        show_drafts: bool = False,
        draft_format: str = "\x1b[9m{draft}\x1b[0m",
        **decode_kwargs: Any,
    ) -> None:
        decode_kwargs.setdefault("skip_special_tokens", True)
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


class StreamAlignerIteratorStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` of corrected text, for serving generation from another thread.

    Iterating yields text pieces of the corrected answer. :attr:`records` collects each accepted
    :class:`AlignmentRecord` (original and corrected ids and text) as it is accepted.

    Example:

        >>> from threading import Thread
        >>> streamer = StreamAlignerIteratorStreamer(tokenizer)  # doctest: +SKIP
        >>> Thread(target=model.generate, kwargs=dict(input_ids=ids, aligner=a, streamer=streamer)).start()  # doctest: +SKIP
        >>> "".join(streamer)  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = True, timeout: float | None = None, **decode_kwargs: Any):
        decode_kwargs.setdefault("skip_special_tokens", True)
        super().__init__(tokenizer, skip_prompt=skip_prompt, timeout=timeout, **decode_kwargs)
        self.records: list[Any] = []

    def put_alignment(self, record: Any) -> None:
        self.records.append(record)
