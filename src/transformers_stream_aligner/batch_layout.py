"""The batch layout: which KV-cache column holds which row's token, for ragged splices.

``Cache.crop`` cuts every row of a batch at the same column, but rows change different numbers of
tokens at different places. Instead of cutting all rows back to the shortest common prefix and
recomputing the others' work, the layout keeps replaced tokens in the cache as **masked holes**
(attention mask 0) and appends each row's new tokens at the end:

    column:   0   1   2   3   4   5   6   7   8
    row 0:    ·   ·   A   B   C   x   x   D   E     x = replaced by a correction (masked)
    row 1:    F   G   H   I   ·   ·   ·   ·   J     · = left padding or a held step (masked)

Position ids follow the attention mask (``generate`` derives them from its cumulative sum), so a
row's tokens keep the positions they have when the row is generated alone, and a masked column adds
an exact zero to attention. Full-attention models are therefore exact with holes; a sliding window
counts columns, so sliding-window models need a layout without holes (batch size 1; see
``docs/design.md``).

Invariants, per row ``r`` with real tokens ``ids[r]``:

* ``cols[r][i]`` is the column of ``ids[r][i]`` for the *placed* tokens ``ids[r][:len(cols[r])]``;
  their KV states are in the cache. Columns increase; every other column of row ``r`` is masked.
* the remaining tokens ``ids[r][len(cols[r]):]`` are *pending*: the next round feeds them.
* ``width`` (the number of columns) equals the cache's length.

At batch size 1 there are never holes: replaced tokens are always at the end and are cropped away,
which is exactly the single-sequence splice. Rows that have finished are dropped from the batch with
:meth:`select` (``Cache.batch_select_indices``), so they cost nothing afterwards; the layout's rows are
therefore *slots*, and the caller keeps the map from slots to its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .cache import cache_can_crop, crop_cache_to

__all__ = ["BatchLayout", "RoundInput"]


@dataclass
class RoundInput:
    """What one upstream round feeds to ``generate``: all columns plus the new block at the end."""

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    block_start: int  # first column of the block (= the cache length)
    fed: dict[int, int]  # row -> number of its pending tokens placed in the block (right-aligned)
    refed: int  # tokens taken back out of the cache so that a row has something to feed


class BatchLayout:
    """Columns of the KV cache for a batch of rows (see the module docstring).

    Args:
        batch_size: number of rows.
        filler: token id written into masked columns of the block (never attended).
        device: where the tensors live.
        cache: the upstream KV cache this layout describes, or ``None`` (``use_cache=False``). The
            layout **mutates** it: :meth:`crop_trailing` cuts it and may reset it.
    """

    def __init__(self, batch_size: int, filler: int, device: torch.device, cache: Any = None) -> None:
        self.batch_size = batch_size
        self.filler = int(filler)
        self.device = device
        self.cache = cache
        self.seq = torch.empty((batch_size, 0), dtype=torch.long, device=device)
        self.mask = torch.empty((batch_size, 0), dtype=torch.long, device=device)
        self.cols: list[list[int]] = [[] for _ in range(batch_size)]
        self.resets = 0

    @property
    def width(self) -> int:
        return self.seq.shape[1]

    def place_prefilled(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, length: int) -> None:
        """Describe a cache already filled with ``input_ids[:, :length]`` (a user's pre-filled cache)."""
        self.seq = input_ids[:, :length].clone()
        self.mask = attention_mask[:, :length].clone()
        self.cols = [[c for c in range(length) if self.mask[r, c]] for r in range(self.batch_size)]

    def placed(self, row: int) -> int:
        return len(self.cols[row])

    def prepare_round(self, ids: Sequence[list[int]], active: Sequence[int]) -> RoundInput:
        """Build the next round's input: every active row's pending tokens, right-aligned in a new block.

        An active row with nothing pending has its last placed token taken back out of the cache (its
        column masked) and fed again, because ``generate`` continues from the block's last column.
        Held rows get a masked block; their last column is marked attended (a filler token that only
        their own, discarded, steps see) so that ``generate`` does not mistake the hole for right padding.
        """
        refed = 0
        for r in active:
            if self.placed(r) == len(ids[r]):
                col = self.cols[r].pop()
                self.mask[r, col] = 0
                refed += 1
        if refed:
            self.crop_trailing()
        pending = {r: ids[r][self.placed(r) :] for r in active}
        k = max(len(p) for p in pending.values())
        block = torch.full((self.batch_size, k), self.filler, dtype=torch.long, device=self.device)
        block_mask = torch.zeros((self.batch_size, k), dtype=torch.long, device=self.device)
        block_mask[:, -1] = 1
        for r, tokens in pending.items():
            block[r, k - len(tokens) :] = torch.tensor(tokens, dtype=torch.long, device=self.device)
            block_mask[r, k - len(tokens) :] = 1
        return RoundInput(
            input_ids=torch.cat([self.seq, block], dim=1),
            attention_mask=torch.cat([self.mask, block_mask], dim=1),
            block_start=self.width,
            fed={r: len(p) for r, p in pending.items()},
            refed=refed,
        )

    def absorb_round(self, out: torch.LongTensor, round_input: RoundInput, produced: dict[int, int]) -> int:
        """Take in ``generate``'s output: place the fed and generated tokens, mask everything else.

        ``produced[r]`` is the number of real tokens row ``r`` generated (later tokens are its held
        padding). The last column is not in the cache yet (``generate`` does not forward the token it
        sampled last), so tokens there stay pending. Returns the number of real (non-hole) row-tokens
        that were forwarded this round.
        """
        total = out.shape[1]
        block_start = round_input.block_start
        block_end = round_input.input_ids.shape[1]
        new_width = total - 1
        mask = torch.zeros((self.batch_size, total), dtype=torch.long, device=self.device)
        mask[:, :block_start] = self.mask
        for r, n_fed in round_input.fed.items():
            fed_cols = range(block_end - n_fed, block_end)
            gen_cols = range(block_end, block_end + produced.get(r, 0))
            mask[r, fed_cols.start : fed_cols.stop] = 1
            mask[r, gen_cols.start : gen_cols.stop] = 1
            self.cols[r].extend(c for c in (*fed_cols, *gen_cols) if c < new_width)
        real_forwarded = int(mask[:, block_start:new_width].sum())
        self.seq = out[:, :new_width]
        self.mask = mask[:, :new_width]
        return real_forwarded

    def replace(self, row: int, keep: int) -> None:
        """Row ``row`` keeps only its first ``keep`` tokens in the cache: mask the columns of the others."""
        if self.placed(row) > keep:
            for col in self.cols[row][keep:]:
                self.mask[row, col] = 0
            del self.cols[row][keep:]

    def crop_trailing(self) -> bool:
        """Drop columns after every row's last placed token (they are holes in all rows).

        **Mutates** the cache: crops it, or resets it when it cannot be cropped (then every row's tokens
        become pending and the next round re-fills the cache without holes). Returns ``False`` if the
        cache had to be reset.
        """
        keep = max((c[-1] + 1 for c in self.cols if c), default=0)
        if keep >= self.width:
            return True
        if self.cache is not None:
            if cache_can_crop(self.cache):
                try:
                    crop_cache_to(self.cache, keep)
                except (RuntimeError, ValueError):
                    self.reset()
                    return False
            else:
                self.reset()
                return False
        self.seq = self.seq[:, :keep]
        self.mask = self.mask[:, :keep]
        return True

    def select(self, slots: Sequence[int]) -> bool:
        """Keep only ``slots`` (in this order) in the batch. **Mutates** the cache (``batch_select_indices``,
        then :meth:`crop_trailing`, whose result it returns)."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        if self.cache is not None and self.width > 0:
            self.cache.batch_select_indices(index)
        self.seq = self.seq[index]
        self.mask = self.mask[index]
        self.cols = [self.cols[s] for s in slots]
        self.batch_size = len(self.cols)
        return self.crop_trailing()

    def reset(self) -> None:
        """Empty the cache (**mutates** it) and the layout: every token becomes pending."""
        if self.cache is not None:
            self.cache.reset()
        self.seq = self.seq[:, :0]
        self.mask = self.mask[:, :0]
        self.cols = [[] for _ in range(self.batch_size)]
        self.resets += 1
