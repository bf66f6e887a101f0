"""The logits processors of an upstream round.

`MinNewTokensAcrossRoundsLogitsProcessor` holds EOS back until a row's output is long enough, counted across
rounds (``min_new_tokens``: one ``generate`` call counts from its own start, a round's call would restart it).

`HoldCompletedRowsLogitsProcessor` keeps rows whose sentence is complete from adding tokens.

In a batch, rows finish their sentences at different steps. Once :class:`SentenceBoundaryCriteria`
holds a row (its sentence is complete, or it reached EOS or its token limit), this processor forces
the pad token for it until the round ends, so the held row adds nothing the splice has to undo (the
pad is dropped afterwards). At batch size 1 the round ends
as soon as the only row is done, so the processor never has to act.

Example:

    >>> import torch
    >>> from transformers_stream_aligner import HoldCompletedRowsLogitsProcessor
    >>> class Done:  # stands in for SentenceBoundaryCriteria
    ...     done = [True, False]
    >>> proc = HoldCompletedRowsLogitsProcessor(Done(), pad_token_id=0)
    >>> scores = proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 5))
    >>> scores.argmax(-1).tolist(), bool(torch.isinf(scores[0, 1:]).all()), bool((scores[1] == 0).all())
    ([0, 0], True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

__all__ = ["HoldCompletedRowsLogitsProcessor", "MinNewTokensAcrossRoundsLogitsProcessor"]


class HoldCompletedRowsLogitsProcessor(LogitsProcessor):
    """Force ``pad_token_id`` for every row the criteria hold (``criteria.held[row]``, else ``criteria.done[row]``).

    Args:
        criteria: an object with a ``held`` (or ``done``) list of booleans per row (a
            :class:`SentenceBoundaryCriteria`).
        pad_token_id: the token held rows produce.
    """

    def __init__(self, criteria: Any, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("HoldCompletedRowsLogitsProcessor needs a pad_token_id")
        self.criteria = criteria
        self.pad_token_id = int(pad_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = getattr(self.criteria, "held", None)
        if rows is None:
            rows = self.criteria.done
        if not any(rows):
            return scores
        held = torch.tensor(rows, dtype=torch.bool, device=scores.device)
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.pad_token_id] = 0.0
        return torch.where(held[:, None], forced, scores)


class MinNewTokensAcrossRoundsLogitsProcessor(LogitsProcessor):
    """``min_new_tokens`` for a whole stream-aligned answer: EOS scores are ``-inf`` in row ``i`` while
    ``generated_before[i] + criteria.produced[i] < min_new_tokens``.

    ``generated_before`` (set by the engine before each round) is each row's output so far, accepted and pending;
    ``criteria.produced`` counts what the round has added. With an aligner that changes nothing this is
    ``transformers``' ``MinNewTokensLengthLogitsProcessor`` of one call; after a correction the count is that of the
    corrected text, as a call from the corrected text would count. Does not mutate its inputs (returns new scores).

    Example:

        >>> import torch
        >>> class Round:  # stands in for SentenceBoundaryCriteria
        ...     produced = [1, 3]
        >>> proc = MinNewTokensAcrossRoundsLogitsProcessor(Round(), eos_token_ids=[2], min_new_tokens=5)
        >>> proc.generated_before = [2, 2]
        >>> proc(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4))[:, 2].tolist()
        [-inf, 0.0]
    """

    def __init__(self, criteria: Any, eos_token_ids: list[int], min_new_tokens: int) -> None:
        self.criteria = criteria
        self.eos_token_ids = list(eos_token_ids)
        self.min_new_tokens = int(min_new_tokens)
        self.generated_before: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        produced = self.criteria.produced
        short = [before + done < self.min_new_tokens for before, done in zip(self.generated_before, produced, strict=True)]
        if not any(short):
            return scores
        rows = torch.tensor(short, dtype=torch.bool, device=scores.device)
        columns = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        columns[[t for t in self.eos_token_ids if 0 <= t < scores.shape[-1]]] = True
        return scores.masked_fill(rows[:, None] & columns[None, :], -float("inf"))
