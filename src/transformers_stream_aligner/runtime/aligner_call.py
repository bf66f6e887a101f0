"""The aligner stage of the loop: one request per complete sentence, one call of the aligner for all of them, and
the interface of that call: what it sends (:class:`AlignmentRequest`), who can answer (:data:`CorrectionFn`,
:class:`SupportsCorrect`, :func:`as_correction_fn`) and the marked answers it accepts besides plain text
(:class:`UnfinishedCorrection`, :class:`RejectedCorrection`). Aligners (:mod:`..aligners`) implement it; nothing here
knows a model.

The aligner sees the question, the corrected answer so far (``prefix``, decoded without special tokens and
stripped) and the sentence without its surrounding whitespace (``last``). Whatever the aligner is (a
:class:`~..aligners.model.StreamAligner`, an object with ``correct``, a plain function; see
:func:`as_correction_fn`), it is called once per round with every row's request, and must answer each.

Example:

    >>> from transformers_stream_aligner import AlignmentRequest
    >>> call_aligner(lambda reqs: [r.last.upper() for r in reqs], [AlignmentRequest("q", "", "hi.")], rows=[0])
    ['HI.']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .boundary.tracker import Sentence

__all__ = [
    "AlignerCallFailure",
    "AlignmentRequest",
    "CorrectionFn",
    "RejectedCorrection",
    "SupportsCorrect",
    "UnfinishedCorrection",
    "as_correction_fn",
    "build_request",
    "call_aligner",
]


# ---------------------------------------------------------------------------------------------- the interface
@dataclass(frozen=True)
class AlignmentRequest:
    """One sentence to correct.

    Args:
        question: the user's question (or the prompt text).
        prefix: the answer so far, already corrected, without the sentence itself.
        last: the sentence to correct, without its surrounding whitespace.
    """

    question: str
    prefix: str
    last: str


class UnfinishedCorrection(str):
    """A correction the aligner did not finish: it wrote ``max_correction_tokens`` tokens without an EOS.

    It is the text the aligner wrote (a ``str``), marked: stream-aligned ``generate`` never splices it in but keeps
    the sentence as generated, with a warning, whatever ``invalid_correction`` says and however the text
    re-tokenizes upstream (half a rewrite is worse than the original; a served answer must not fail because an
    aligner rambled).
    """

    __slots__ = ()


class RejectedCorrection(str):
    """The sentence, kept because the aligner's correction broke its config's edit rule (``StreamAlignerConfig.edits``,
    :mod:`.aligner_edits`: a word miscopied by an aligner that may only change numbers, say).

    It is the original sentence (a ``str``, so generation goes on as if the aligner had copied it), marked for
    counting; ``correction`` holds what the aligner wrote, up to where its decoding was stopped.

    >>> kept = RejectedCorrection("Memorizing names is fun.", correction="Membrance is fun.")
    >>> kept, kept.correction
    ('Memorizing names is fun.', 'Membrance is fun.')
    """

    __slots__ = ("correction",)

    def __new__(cls, sentence: str, *, correction: str) -> RejectedCorrection:
        obj = super().__new__(cls, sentence)
        obj.correction = correction
        return obj


@runtime_checkable
class SupportsCorrect(Protocol):
    def correct(self, requests: list[AlignmentRequest]) -> list[str]: ...


CorrectionFn = Callable[[list[AlignmentRequest]], list[str]]


def as_correction_fn(aligner: Any) -> CorrectionFn:
    """Normalise what ``generate(aligner=...)`` accepts into ``fn(list[AlignmentRequest]) -> list[str]``.

    Accepted: a :class:`StreamAligner`, any object with ``correct(list[AlignmentRequest])``, or a
    callable ``fn(question, prefix, last) -> str`` (called once per request).
    """
    if isinstance(aligner, SupportsCorrect):
        return aligner.correct
    if callable(aligner):

        def _per_request(requests: list[AlignmentRequest]) -> list[str]:
            return [aligner(r.question, r.prefix, r.last) for r in requests]

        return _per_request
    raise TypeError(
        "aligner must be a StreamAligner, an object with correct(list[AlignmentRequest]) -> list[str], "
        f"or a callable fn(question, prefix, last) -> str; got {type(aligner).__name__}"
    )


# ---------------------------------------------------------------------------------------------- the call


def build_request(tokenizer: Any, question: str, ids: Sequence[int], prompt_len: int, sentence: Sentence) -> AlignmentRequest:
    """The request for ``sentence`` of a row whose answer starts at ``ids[prompt_len]``. Does not mutate ``ids``."""
    prefix = tokenizer.decode(list(ids[prompt_len : sentence.start]), skip_special_tokens=True).strip()
    return AlignmentRequest(question=question, prefix=prefix, last=sentence.content)


class AlignerCallFailure(Exception):
    """The aligner raised, or did not answer one correction per request. The loop turns it into a
    :class:`~.outputs.StreamAlignmentError` (``output_error``: an :class:`~.outputs.AlignerOutputError`) that
    carries the partial output; ``row`` and ``sentence`` name the request when there was only one."""

    def __init__(self, message: str, *, output_error: bool, row: int | None, sentence: str | None) -> None:
        super().__init__(message)
        self.output_error = output_error
        self.row = row
        self.sentence = sentence


def call_aligner(correct: CorrectionFn, requests: list[AlignmentRequest], *, rows: Sequence[int]) -> list[Any]:
    """Call ``correct`` once with a copy of ``requests``; ``rows[i]`` is the row of ``requests[i]`` (for messages).
    Returns the answers, unchecked (:func:`~.splice.check_correction` checks each). Raises
    :class:`AlignerCallFailure` (an ``Exception`` of the aligner; ``KeyboardInterrupt`` and other
    ``BaseException`` s propagate as they are). Does not mutate ``requests``."""
    only = len(requests) == 1
    row = rows[0] if only else None
    sentence = requests[0].last if only else None
    rows_named = ", ".join(str(r) for r in rows)
    try:
        answers = correct(list(requests))  # a copy: an aligner that edits its list cannot desynchronise the rows
    except Exception as err:
        where = f"sentence {sentence!r}" if only else f"a batch of {len(requests)} sentences (rows {rows_named})"
        raise AlignerCallFailure(
            f"the aligner raised {type(err).__name__} on {where}: {err}", output_error=False, row=row, sentence=sentence
        ) from err
    if not isinstance(answers, (list, tuple)) or len(answers) != len(requests):
        raise AlignerCallFailure(
            f"the aligner must return one correction per request ({len(requests)}, rows {rows_named}); got {answers!r}",
            output_error=True,
            row=row,
            sentence=sentence,
        )
    return list(answers)
