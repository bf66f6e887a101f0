"""The package's public exceptions, in one place.

- :class:`StreamAlignmentError` (and :class:`StreamAlignmentCancelled`, :class:`AlignerOutputError`): a stream-aligned
  call stopped; each carries everything generated so far;
- :class:`UpstreamFailure`, :class:`Cancelled`: what an engine reports to the loop (:mod:`.runtime.engines.base`);
  :class:`VLLMUpstreamError`: the vLLM server's failure;
- :class:`TrainingDataError`: a data file or record that cannot be used;
- :class:`CalculationError`: a calculation the aligner's calculator cannot do;
- :class:`AdapterBaseNotFoundError`: an adapter checkpoint whose base model cannot be loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterBaseNotFoundError",
    "AlignerOutputError",
    "CalculationError",
    "Cancelled",
    "StreamAlignmentCancelled",
    "StreamAlignmentError",
    "TrainingDataError",
    "UpstreamFailure",
    "VLLMUpstreamError",
]


class StreamAlignmentError(RuntimeError):
    """Stream alignment stopped; nothing generated so far is lost.

    Attributes:
        sequences: every row's prompt plus its accepted sentences, plus the draft sentence being
            aligned, laid out like ``generate``'s output (``(batch, n)``, right-padded).
        alignment_trace: the records accepted so far (one list per row).
        partial_texts: per row, the generated part of ``sequences`` decoded without special tokens.
        row: the row whose sentence failed (``None`` when the aligner raised for a whole batch).
        partial_text: ``partial_texts[row]`` (row 0 when ``row`` is ``None``).
        sentence: the sentence being aligned when it failed.
    """

    def __init__(
        self,
        message: str,
        *,
        sequences: Any,
        alignment_trace: list[list[Any]],
        partial_texts: list[str],
        sentence: str | None = None,
        row: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sequences = sequences
        self.alignment_trace = alignment_trace
        self.partial_texts = partial_texts
        self.partial_text = partial_texts[row or 0] if partial_texts else ""
        self.sentence = sentence
        self.row = row

class StreamAlignmentCancelled(StreamAlignmentError):
    """The caller cancelled the call (a served client disconnected): the engine's requests were ended; the output so
    far is kept like any :class:`StreamAlignmentError`'s."""

class AlignerOutputError(StreamAlignmentError, ValueError):
    """The aligner returned something unusable (not a string, empty, too long, control tokens)."""

class UpstreamFailure(RuntimeError):
    """Raised by an engine whose upstream failed (a server down, an error answer, a broken stream, a timeout); the
    loop turns it into a :class:`~..outputs.StreamAlignmentError` with the output so far."""

class Cancelled(Exception):
    """Raised by an engine whose caller cancelled the call (e.g. a served client disconnected); the loop turns it
    into a :class:`~..outputs.StreamAlignmentCancelled` with the output so far."""

class VLLMUpstreamError(UpstreamFailure):
    """The vLLM server could not be reached, answered with an error, or its stream broke off."""

class TrainingDataError(ValueError):
    """A data file or record that cannot be used; the message names the source, record and field."""

    def __init__(self, message: str, *, source: str | None = None, record: int | None = None, field: str | None = None):
        where = []
        if source is not None:
            where.append(str(source))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__((": ".join([", ".join(where), message])) if where else message)
        self.source = source
        self.record = record
        self.field = field

class CalculationError(ValueError):
    """An annotation the calculator cannot evaluate (not an arithmetic expression, too long, a division by zero)."""

class AdapterBaseNotFoundError(OSError):
    """An adapter checkpoint loaded, but the base model it names could not be: the message names the base and how to
    supply it (``base_model_name_or_path=`` or ``base_model=``)."""
