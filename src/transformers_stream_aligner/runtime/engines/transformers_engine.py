"""The upstream round on ``transformers``: the stock ``GenerationMixin.generate`` on a KV cache we keep.

A round is one call of ``generate`` on the engine's whole batch (the rows that have not finished, and finished rows
until at most half of the batch is left: they ride along held), with the
cache of the previous rounds and our pair added to the user's criteria and processors:

- :class:`~..stopping_criteria.SentenceBoundaryCriteria` finds, per row, when its sentence is complete;
- :class:`~..logits_process.HoldCompletedRowsLogitsProcessor` forces padding for rows that are held.

Passing the full sequence with a cache of ``len - k`` columns makes ``generate`` prefill only the last ``k``.
Rows are kept by the loop as plain token lists; a :class:`~..cache.MaskedKVLayout` says which cache column
holds which row's token and builds each round's input: all columns, plus a block with each row's pending tokens
(a correction's tail after the longest common prefix, or the look-ahead) right-aligned, so each row's last real
token is at the last column. A row with nothing new to feed has its last cached token taken out (its column
masked) and fed again. Replaced tokens stay in the cache as masked holes; trailing columns that are holes in
every row are cropped, so a single row never has holes. Caches that cannot be cut back (``StaticCache``,
recurrent layers) are reset and re-filled, with one warning per call.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationMixin, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ...compat import cache_length, generate_cache_key
from ...outputs import AlignmentStats
from ..boundary.stopping_criteria import SentenceBoundaryCriteria
from ..cache import MaskedKVLayout
from ..logits_process import HoldCompletedRowsLogitsProcessor, MinNewTokensAcrossRoundsLogitsProcessor
from ..row_state import RowState
from .base import RoundOutcome, UpstreamEngine

__all__ = ["TransformersEngine"]


class _UserCriteria(StoppingCriteria):
    """Runs the user's stopping criteria and tells :class:`SentenceBoundaryCriteria` which rows they stopped."""

    def __init__(self, criteria: list[Any], boundary: SentenceBoundaryCriteria) -> None:
        self.criteria = StoppingCriteriaList(criteria)
        self.boundary = boundary

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = self.criteria(input_ids, scores, **kwargs)
        if stop.dim() == 0:
            stop = stop.expand(input_ids.shape[0])
        for row in torch.nonzero(stop).flatten().tolist():
            self.boundary.stop_row(row)
        return stop


class _DraftForwarder:
    """The streamer of a round's ``generate``: forwards its new tokens as drafts (skips the round's prompt)."""

    def __init__(self, target: Callable[[torch.Tensor], None]) -> None:
        self.target = target
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first = False
            return
        self.target(value)

    def end(self) -> None:
        pass


@dataclass
class _RoundInput:
    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    block_start: int  # first column of the new block (= the cache length)
    pending: dict[int, list[int]]  # slot -> its tokens in the block (right-aligned)
    refed: int  # tokens taken back out of the cache so that a row has something to feed


class TransformersEngine(UpstreamEngine):
    """The upstream is a ``transformers`` causal LM run by ``generate`` on a KV cache (see the module docstring).

    Finished rows leave the cache's batch once at most :attr:`finished_rows_leave_at` of its rows (a share, 0.5) are
    left; until then they ride along held (:meth:`_leave_finished`).

    Args:
        model: the upstream model.
        rows: the rows this engine runs (their ``index`` names them; read, never changed).
        tokenizer: the upstream tokenizer.
        generation_config: the call's resolved generation config (``pad_token_id`` set; ``max_new_tokens`` is set
            per round from the rows' budgets). Not mutated.
        model_kwargs: further keywords for ``generate``.
        cache: the KV cache (``None`` with ``use_cache=False``). **Mutated**: filled, cut back, reset.
        stats: the call's :class:`~..outputs.AlignmentStats`; the engine adds its counters (**mutated**).
        terminators, max_sentence_tokens: the boundary settings.
        eos_token_ids: the upstream's end-of-answer tokens.
        min_new_tokens: EOS is held back until a row's output (accepted and pending tokens) has this many tokens.
        logits_processor, stopping_criteria: the user's, run in every round (rows stopped by a criterion of the user
            are reported as ``stopped``).
        hold_completed: hold rows whose sentence is complete while others finish theirs (else they draft ahead).
        on_draft: receives the tokens each round generates (drafts), or ``None``.
        device: where the round's input tensors go (the prompt's device).
        prefilled: ``(input_ids, attention_mask)`` of the prompt when ``cache`` already holds its first columns.
        warned_fallback: the caller already warned that the cache cannot be cut back.
    """

    finished_rows_leave_at: float = 0.5

    def __init__(
        self,
        model: Any,
        rows: Sequence[RowState],
        *,
        tokenizer: Any,
        generation_config: Any,
        model_kwargs: dict[str, Any],
        cache: Any,
        stats: AlignmentStats,
        terminators: str,
        max_sentence_tokens: int,
        eos_token_ids: Iterable[int],
        min_new_tokens: int = 0,
        logits_processor: Sequence[Any] = (),
        stopping_criteria: Sequence[Any] = (),
        hold_completed: bool = False,
        on_draft: Callable[[torch.Tensor], None] | None = None,
        device: torch.device | str | None = None,
        prefilled: tuple[torch.Tensor, torch.Tensor] | None = None,
        warned_fallback: bool = False,
    ) -> None:
        self.model = model
        self.rows = {row.index: row for row in rows}
        self.tokenizer = tokenizer
        self.config = generation_config
        self.pad = int(generation_config.pad_token_id)
        self.model_kwargs = model_kwargs
        self.stats = stats
        self.warned_fallback = warned_fallback
        # The cache's batch: slots[i] is the index of the row in cache slot i (unfinished rows, and finished ones until
        # _leave_finished drops them).
        self.slots = [row.index for row in rows]
        self._dropped: set[int] = set()
        self.layout = MaskedKVLayout(len(self.slots), device=device if device is not None else model.device, cache=cache)
        if prefilled is not None and cache_length(cache) > 0:
            self.layout.place_prefix(prefilled[0], prefilled[1], cache_length(cache))
        self.criteria = SentenceBoundaryCriteria(
            tokenizer,
            [row.start for row in rows],
            terminators=terminators,
            max_sentence_tokens=max_sentence_tokens,
            eos_token_id=sorted(eos_token_ids),
            hold_completed=hold_completed,
        )
        self.min_new_tokens = (
            MinNewTokensAcrossRoundsLogitsProcessor(self.criteria, sorted(eos_token_ids), min_new_tokens)
            if min_new_tokens > 0 and eos_token_ids
            else None
        )
        minimum = [self.min_new_tokens] if self.min_new_tokens is not None else []
        # the minimum before the hold: a held row is forced to pad even when pad is an EOS
        self.processors = LogitsProcessorList(
            [*logits_processor, *minimum, HoldCompletedRowsLogitsProcessor(self.criteria, self.pad)]
        )
        self.stopping = StoppingCriteriaList([self.criteria])
        if stopping_criteria:
            self.stopping.append(_UserCriteria(list(stopping_criteria), self.criteria))
        self.draft = _DraftForwarder(on_draft) if on_draft is not None else None
        self.rounds_run = 0  # rounds this engine has run

    # ------------------------------------------------------------------ the seam
    def run_round(self, rows: Sequence[RowState], drafting: Sequence[RowState]) -> dict[int, RoundOutcome]:
        self._leave_finished()
        slots = self.slots
        fed = {row.index: row for row in (*rows, *drafting)}
        drafting_rows = {row.index for row in drafting}
        fed_slots = [i for i, index in enumerate(slots) if index in fed]
        limits = [fed[index].budget_left if index in fed else None for index in slots]
        states = [self.rows[index] for index in slots]
        self.criteria.reset(
            [row.start for row in states],
            [index in fed for index in slots],
            sentence_ids=[row.ids[max(row.start - 1, 0) :] for row in states],
            max_new_tokens=limits,
            complete=[index in drafting_rows for index in slots],
        )
        round_input = self._prepare_round([row.ids for row in states], fed_slots)
        if self.min_new_tokens is not None:
            self.min_new_tokens.generated_before = [len(row.ids) - row.prompt_len for row in states]
        round_config = copy.copy(self.config)
        _set_round_lengths(
            round_config,
            self.model.generation_config,
            round_input.input_ids.shape[1],
            max(limit for limit in limits if limit is not None),
        )
        if self.rounds_run:
            round_config.begin_suppress_tokens = None  # one call's first step is in the first round only
        self.rounds_run += 1
        if self.draft is not None:
            self.draft.first = True
        out = GenerationMixin.generate(
            self.model,
            round_input.input_ids,
            attention_mask=round_input.attention_mask,
            generation_config=round_config,
            logits_processor=self.processors,
            stopping_criteria=self.stopping,
            **{generate_cache_key(): self.layout.cache},
            streamer=self.draft,
            tokenizer=self.tokenizer,
            **self.model_kwargs,
        )
        block_end = round_input.input_ids.shape[1]
        produced = {i: self.criteria.produced[i] for i in fed_slots}
        outcomes: dict[int, RoundOutcome] = {}
        for i in fed_slots:
            index = slots[i]
            tokens = out[i, block_end : block_end + produced[i]].tolist()
            if index in drafting_rows:
                outcomes[index] = RoundOutcome(tokens)  # its pending sentence end stays as it is
                continue
            stopped = self.criteria.stopped_early[i] or not self.criteria.done[i]
            outcomes[index] = RoundOutcome(tokens, cut=self.criteria.cuts[i], stopped=stopped)
        real = self._absorb_round(out, round_input, produced)
        stats = self.stats
        stats.rounds += 1
        forwarded = out.shape[1] - 1 - round_input.block_start  # the last sampled token is not forwarded
        stats.upstream_columns += forwarded
        stats.upstream_slots += len(slots) * forwarded
        stats.upstream_real_tokens += real
        stats.refed_tokens += round_input.refed
        stats.peak_cache_columns = max(stats.peak_cache_columns, self.layout.width)
        return outcomes

    def replace_tail(self, row: RowState, keep: int) -> None:
        self.layout.cut(self.slots.index(row.index), keep)

    def drop_rows(self, rows: Iterable[RowState]) -> None:
        # Finished rows leave the cache's batch at a later round, once at most half of it is left (_leave_finished).
        self._dropped.update(row.index for row in rows)

    def commit(self) -> None:
        if not self.layout.crop_trailing():
            self._note_reset()
        self.layout.trim_accepted([self.rows[index].start for index in self.slots])

    def close(self) -> Any:
        return self.layout.cache

    # ------------------------------------------------------------------ the round's input and output
    def _leave_finished(self) -> None:
        """Finished rows leave the batch once at most half of its rows are left. **Mutates** the cache.

        Until then a finished row rides along as a held row (forced padding, masked columns): a decode step of a
        small batch costs about the same for any number of rows (the weights are read once per step), each shrink
        is a gather of the whole cache, and on a CPU some row counts cost more than a larger one (the measurement:
        docs/benchmarks.md, "Finished rows leave the batch once it halves"). Halving bounds the shrinks to
        ``log2(batch)`` and the padded row-slots to half, where the stock ``generate`` pads finished rows to the end.
        The share is :attr:`finished_rows_leave_at` (``1.0``: every finished row leaves at the next round).
        """
        finished = sum(index in self._dropped for index in self.slots)
        if not finished or len(self.slots) - finished > len(self.slots) * self.finished_rows_leave_at:
            return
        keep = [i for i, index in enumerate(self.slots) if index not in self._dropped]
        if not self.layout.select(keep):
            self._note_reset()
        self.slots = [self.slots[i] for i in keep]

    def _prepare_round(self, ids: Sequence[list[int]], active: Sequence[int]) -> _RoundInput:
        """The round's input: every column of the cache, then a block with each active slot's pending tokens.

        An active slot with nothing pending has its last placed token taken back out of the cache (its column
        masked) and fed again, because ``generate`` continues from the block's last column. Held slots get a
        masked block whose last column is marked attended (a filler token that only their own, discarded, steps
        see) so that ``generate`` does not mistake the hole for right padding.
        """
        layout = self.layout
        refed = 0
        for i in active:
            if layout.placed(i) == len(ids[i]):
                layout.cut(i, layout.placed(i) - 1)
                refed += 1
        if refed:
            layout.crop_trailing()
        pending = {i: ids[i][layout.placed(i) :] for i in active}
        width = max(len(p) for p in pending.values())
        block = layout.block([pending.get(i, []) for i in range(layout.batch_size)], width=width, filler=self.pad)
        block.mask[:, -1] = 1
        return _RoundInput(
            input_ids=torch.cat([layout.token_matrix(self.pad), block.ids], dim=1),
            attention_mask=torch.cat([layout.mask, block.mask], dim=1),
            block_start=layout.width,
            pending=pending,
            refed=refed,
        )

    def _absorb_round(self, out: torch.LongTensor, round_input: _RoundInput, produced: dict[int, int]) -> int:
        """Place the fed and generated tokens that are now in the cache; returns how many real row-tokens were
        forwarded. ``produced[i]`` is the number of real tokens slot ``i`` generated (later ones are its held
        padding). The last column is not in the cache (``generate`` does not forward the token it sampled last),
        so tokens there stay pending."""
        layout = self.layout
        block_end = round_input.input_ids.shape[1]
        fed = [round_input.pending.get(i, []) for i in range(layout.batch_size)]
        layout.append(fed, width=block_end - round_input.block_start)
        cached = out.shape[1] - 1 - block_end  # generated columns whose keys and values are in the cache
        generated = [
            out[i, block_end : block_end + min(produced[i], cached)].tolist() if i in produced else []
            for i in range(layout.batch_size)
        ]
        layout.append(generated, width=cached, align="left")
        return sum(len(b) for b in fed) + sum(len(b) for b in generated)

    def _note_reset(self) -> None:
        self.stats.cache_resets += 1
        if not self.warned_fallback:
            warnings.warn(
                f"stream alignment: {type(self.layout.cache).__name__} cannot be cut back; re-prefilling after "
                "each correction (exact, but slower)",
                UserWarning,
                stacklevel=2,
            )
            self.warned_fallback = True


def _set_round_lengths(config: Any, model_config: Any, width: int, limit: int) -> None:
    """Let a round of ``width`` input columns generate ``limit`` tokens, with no minimum (the call's minimum is the
    engine's processor). ``generate`` fills the fields a config leaves ``None`` from the model's generation config,
    so each field is set only in the form the model's config leaves alone: no per-round length warnings, no model
    default taking over. ``config`` is **mutated**."""
    if model_config.max_new_tokens is None:
        config.max_new_tokens, config.max_length = None, width + limit
    else:
        config.max_new_tokens, config.max_length = limit, None
    config.min_new_tokens = 0 if model_config.min_new_tokens is not None else None
    config.min_length = 0 if model_config.min_length is not None else None
