"""One row of a stream-aligned call: its tokens, where its current sentence starts, its budget and its records.

The loop (:mod:`.loop`) owns every row and applies what the stages decide; an engine (:mod:`.engines`) reads a row
and never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..outputs import AlignmentRecord

__all__ = ["RowState"]


@dataclass
class RowState:
    """One row of a stream-aligned ``generate`` call.

    Attributes:
        index: the row of the batch (of ``sequences``).
        ids: the row's prompt without padding, then its answer so far (accepted sentences, then tokens not yet
            aligned: the current sentence, its look-ahead and any draft).
        prompt_len: the prompt's length in ``ids``.
        question: what the aligner is told the row answers.
        max_new_tokens: the row's budget of generated tokens (it bounds the corrected output).
        offset: ``sequences[index][i + offset]`` is ``ids[i]`` for generated tokens (the prompt is left-padded there).
        start: where the current sentence starts in ``ids``.
        known_cut: where the current sentence ends, when an upstream round found it.
        stopped: a stopping criterion ended the row (what it has is final).
        finished: the row is done.
        records: its accepted pieces, in order.
    """

    index: int
    ids: list[int]
    prompt_len: int
    question: str
    max_new_tokens: int
    offset: int = 0
    start: int = -1
    known_cut: int | None = None
    stopped: bool = False
    finished: bool = False
    records: list[AlignmentRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.start < 0:
            self.start = self.prompt_len

    @property
    def budget_left(self) -> int:
        """Tokens the row may still generate."""
        return self.max_new_tokens - (len(self.ids) - self.prompt_len)

    def advance(self, cut: int) -> None:
        """The sentence ending at ``cut`` is accepted: the next one starts there."""
        self.start = cut
        self.known_cut = None
