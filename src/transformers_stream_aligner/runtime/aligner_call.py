"""The aligner stage of the loop: one request per complete sentence, one call of the aligner for all of them.

The aligner sees the question, the corrected answer so far (``prefix``, decoded without special tokens and
stripped) and the sentence without its surrounding whitespace (``last``). Whatever the aligner is (a
:class:`~.aligner.StreamAligner`, an object with ``correct``, a plain function; see
:func:`~.aligner.as_correction_fn`), it is called once per round with every row's request, and must answer each.

Example:

    >>> from transformers_stream_aligner.aligners.model import AlignmentRequest
    >>> call_aligner(lambda reqs: [r.last.upper() for r in reqs], [AlignmentRequest("q", "", "hi.")], rows=[0])
    ['HI.']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..aligners.model import AlignmentRequest, CorrectionFn
from .boundary.tracker import Sentence

__all__ = ["AlignerCallFailure", "build_request", "call_aligner"]


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
