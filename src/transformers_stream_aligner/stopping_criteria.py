"""`SentenceBoundaryCriteria`: ends an upstream round when each row has completed a sentence.

Together with :class:`~transformers_stream_aligner.HoldCompletedRowsLogitsProcessor` it forms the pair
that drives stream alignment inside ``model.generate``: the criterion finds, per row, where the
current sentence ends (one token of look-ahead decides ``3.5`` vs ``3. Then``); the processor holds
rows whose sentence is complete until every row is done.

Example:

    >>> import torch
    >>> from transformers import AutoTokenizer, AutoModelForCausalLM, StoppingCriteriaList
    >>> from transformers_stream_aligner import SentenceBoundaryCriteria
    >>> tok = AutoTokenizer.from_pretrained("path/to/model")  # doctest: +SKIP
    >>> ids = tok("Name a prime.", return_tensors="pt").input_ids  # doctest: +SKIP
    >>> criteria = SentenceBoundaryCriteria(tok, sentence_starts=[ids.shape[1]])  # doctest: +SKIP
    >>> out = model.generate(ids, stopping_criteria=StoppingCriteriaList([criteria]))  # doctest: +SKIP
    >>> criteria.cuts  # token index where row 0's first sentence ends (its look-ahead follows)  # doctest: +SKIP
    [9]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from .boundary import find_token_boundary
from .sentence_splitter import DEFAULT_TERMINATORS

__all__ = ["SentenceBoundaryCriteria"]


class SentenceBoundaryCriteria(StoppingCriteria):
    """Stops each row once its current sentence is complete (per-row, with look-ahead).

    Args:
        tokenizer: the upstream tokenizer (used to decode the current sentence).
        sentence_starts: for each row, the index in ``input_ids`` where its current sentence starts.
            Update it between rounds with :meth:`reset`.
        terminators: characters that end a sentence (newlines always do).
        max_sentence_tokens: a sentence that reaches this many tokens without ending is cut there, so
            text that never ends a sentence cannot run unaligned.
        eos_token_id: end-of-answer token(s); a row that produces one is done (the text before it is
            the final fragment).

    After a round, :attr:`cuts` holds for each row the index where its sentence ends (``None`` if the
    row did not complete one) and :attr:`done` which rows stopped.
    """

    def __init__(
        self,
        tokenizer: Any,
        sentence_starts: Sequence[int],
        *,
        terminators: str = DEFAULT_TERMINATORS,
        max_sentence_tokens: int | None = 256,
        eos_token_id: int | Iterable[int] | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError("SentenceBoundaryCriteria needs the upstream tokenizer")
        self.tokenizer = tokenizer
        self.terminators = terminators
        self.max_sentence_tokens = max_sentence_tokens
        if eos_token_id is None:
            eos: list[int] = []
        elif isinstance(eos_token_id, int):
            eos = [eos_token_id]
        else:
            eos = [int(e) for e in eos_token_id]
        self.eos_token_ids = frozenset(eos)
        self.reset(sentence_starts)

    def reset(self, sentence_starts: Sequence[int], active: Sequence[bool] | None = None) -> None:
        """Start a new round: each row's sentence starts at ``sentence_starts[row]``.

        Rows with ``active[row] == False`` count as done from the start (they are held).
        """
        self.sentence_starts = list(sentence_starts)
        n = len(self.sentence_starts)
        self.cuts: list[int | None] = [None] * n
        self.done: list[bool] = [False] * n if active is None else [not a for a in active]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs: Any) -> torch.BoolTensor:
        batch = input_ids.shape[0]
        if batch != len(self.sentence_starts):
            raise ValueError(
                f"SentenceBoundaryCriteria was set up for {len(self.sentence_starts)} rows, got {batch}"
            )
        newest = input_ids[:, -1].tolist()
        for row in range(batch):
            if self.done[row]:
                continue
            # Only the newest token is new since the last call: an EOS ends the row at once.
            if newest[row] in self.eos_token_ids:
                self.done[row] = True
                continue
            # Read only the current sentence (plus one token of context for decoding), never the
            # whole answer: the per-token cost is bounded by max_sentence_tokens.
            start = self.sentence_starts[row]
            lo = max(start - 1, 0)
            segment = input_ids[row, lo:].tolist()
            cut = find_token_boundary(
                self.tokenizer,
                segment,
                start - lo,
                len(segment),
                final=False,
                terminators=self.terminators,
                max_sentence_tokens=self.max_sentence_tokens,
            )
            if cut is not None:
                self.done[row] = True
                self.cuts[row] = cut + lo
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)
