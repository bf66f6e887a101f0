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

from ...tokens import token_id_list
from .splitter import DEFAULT_TERMINATORS
from .tracker import DEFAULT_MAX_SENTENCE_TOKENS, SentenceTracker

__all__ = ["SentenceBoundaryCriteria"]


class SentenceBoundaryCriteria(StoppingCriteria):
    """Stops each row once its current sentence is complete (per-row, with look-ahead).

    Args:
        tokenizer: the upstream tokenizer (used to decode the current sentence).
        sentence_starts: for each row, the index in ``input_ids`` where its current sentence starts.
            Update it between rounds with :meth:`reset`.
        terminators: characters that end a sentence (newlines always do).
        max_sentence_tokens: a sentence that reaches this many tokens without ending is cut there (at the
            first boundary between two characters from there on), so text that never ends a sentence cannot run
            unaligned.
        eos_token_id: end-of-answer token(s); a row that produces one is done (the text before it is
            the final fragment).
        hold_completed: whether a row whose sentence is complete is *held* (stops, and produces padding
            with :class:`HoldCompletedRowsLogitsProcessor`) while the other rows finish theirs (default), or
            keeps generating a draft of its next sentence until every row is done.

    The criterion keeps, per row, a :class:`~.boundary.SentenceTracker` of the current sentence (plus
    one token of context for decoding) and adds the newest token at each call: it decodes and scans
    only that token's text, so the work per token does not grow with the sentence or the answer. By
    default the sentence's tokens are taken from ``input_ids[row, start - 1:]`` at the first call; a
    caller whose ``input_ids`` contain masked holes (batched stream alignment) passes them to
    :meth:`reset` as ``sentence_ids`` instead.

    After a round, :attr:`cuts` holds for each row the index where its sentence ends (``None`` if the
    row did not complete one), :attr:`done` which rows completed a sentence or stopped, :attr:`held`
    which rows stopped adding tokens, :attr:`produced` how many real tokens each row added, and
    :attr:`stopped_early` which rows were stopped from outside (:meth:`stop_row`, e.g. by a user's
    criterion) or by their token limit. A row counts as finished for ``generate`` once it is held, and
    every row once all are done.
    """

    def __init__(
        self,
        tokenizer: Any,
        sentence_starts: Sequence[int],
        *,
        terminators: str = DEFAULT_TERMINATORS,
        max_sentence_tokens: int | None = DEFAULT_MAX_SENTENCE_TOKENS,
        eos_token_id: int | Iterable[int] | None = None,
        hold_completed: bool = True,
    ) -> None:
        if tokenizer is None:
            raise ValueError("SentenceBoundaryCriteria needs the upstream tokenizer")
        self.tokenizer = tokenizer
        self.terminators = terminators
        self.max_sentence_tokens = max_sentence_tokens
        self.hold_completed = hold_completed
        self.eos_token_ids = frozenset(token_id_list(eos_token_id))
        self.reset(sentence_starts)

    def reset(
        self,
        sentence_starts: Sequence[int],
        active: Sequence[bool] | None = None,
        *,
        sentence_ids: Sequence[Sequence[int]] | None = None,
        max_new_tokens: Sequence[int | None] | None = None,
        complete: Sequence[bool] | None = None,
    ) -> None:
        """Start a new round: each row's sentence starts at ``sentence_starts[row]``.

        Args:
            sentence_starts: index of each row's sentence start (cuts are reported in the same coordinates).
            active: rows with ``active[row] == False`` count as done from the start (they are held).
            sentence_ids: per row, the tokens from ``sentence_starts[row] - 1`` (one token of context;
                none when the start is 0) to the end of what the row has so far. Default: read them from
                ``input_ids`` at the first call.
            max_new_tokens: per row, stop after this many new tokens (``None``: no limit).
            complete: rows whose current sentence is already complete: done from the start, and held
                unless ``hold_completed`` is off (then they draft ahead).
        """
        self.sentence_starts = list(sentence_starts)
        n = len(self.sentence_starts)
        self.cuts: list[int | None] = [None] * n
        self.held: list[bool] = [False] * n if active is None else [not a for a in active]
        if len(self.held) != n:
            raise ValueError(f"active has {len(self.held)} rows, sentence_starts {n}")
        self.done: list[bool] = list(self.held)
        for row, is_complete in enumerate(complete or []):
            if is_complete:
                self.done[row] = True
                self.held[row] = self.held[row] or self.hold_completed
        self.produced: list[int] = [0] * n
        self.stopped_early: list[bool] = [False] * n
        self.limits: list[int | None] = [None] * n if max_new_tokens is None else list(max_new_tokens)
        if (sentence_ids is not None and len(sentence_ids) != n) or len(self.limits) != n:
            raise ValueError("sentence_ids / max_new_tokens must have one entry per row")
        self._trackers: list[SentenceTracker | None] = [None] * n
        if sentence_ids is not None:
            for row, tokens in enumerate(sentence_ids):
                if not self.done[row]:
                    self._trackers[row] = self._tracker(self.sentence_starts[row], tokens)

    def _tracker(self, start: int, tokens: Sequence[int]) -> SentenceTracker:
        return SentenceTracker(
            self.tokenizer,
            tokens,
            start - max(start - 1, 0),
            terminators=self.terminators,
            max_sentence_tokens=self.max_sentence_tokens,
        )

    def stop_row(self, row: int) -> None:
        """Hold ``row`` from now on, with or without a sentence end (its newest token is kept)."""
        if not self.held[row]:
            self._hold(row)
            self.stopped_early[row] = True

    def _hold(self, row: int) -> None:
        self.done[row] = True
        self.held[row] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs: Any) -> torch.BoolTensor:
        batch = input_ids.shape[0]
        if batch != len(self.sentence_starts):
            raise ValueError(
                f"SentenceBoundaryCriteria was set up for {len(self.sentence_starts)} rows, got {batch}"
            )
        newest = input_ids[:, -1].tolist()
        for row in range(batch):
            if self.held[row]:
                continue
            self.produced[row] += 1
            if self.done[row]:  # drafting ahead: only EOS and the token limit matter
                if newest[row] in self.eos_token_ids or (
                    self.limits[row] is not None and self.produced[row] >= self.limits[row]
                ):
                    self._hold(row)
                continue
            # Only the newest token is new since the last call: an EOS ends the row at once.
            if newest[row] in self.eos_token_ids:
                self._hold(row)
                continue
            start = self.sentence_starts[row]
            lo = max(start - 1, 0)
            tracker = self._trackers[row]
            if tracker is None:
                # First call of a round without explicit ids: the sentence so far is in input_ids.
                tracker = self._trackers[row] = self._tracker(start, input_ids[row, lo:].tolist())
                cut = tracker.push()
            else:
                cut = tracker.push(newest[row])
            if cut is not None:
                self.cuts[row] = cut + lo
                self.done[row] = True
                self.held[row] = self.hold_completed
            if not self.held[row] and self.limits[row] is not None and self.produced[row] >= self.limits[row]:
                self._hold(row)
                self.stopped_early[row] = cut is None
        if all(self.done):
            return torch.ones(batch, dtype=torch.bool, device=input_ids.device)
        return torch.tensor(self.held, dtype=torch.bool, device=input_ids.device)
