"""The cache stage: creating a KV cache that can be cut back, cutting it, and the masked-hole layout of a batch.

**Creation.** :func:`prepare_upstream_cache` decides which cache a call uses (the user's, a ``StaticCache`` when
asked for, else :func:`make_rollback_cache`: a ``DynamicCache`` whose sliding-window layers record their past, so
that a crop restores an exact earlier state; ``activate_past_recording`` must run *before* the forward passes).
Caches that cannot be rolled back (``StaticCache``, recurrent or linear-attention layers) are handled with a reset
and a re-prefill (:meth:`MaskedKVLayout.crop_trailing`).

**Crop and trim.** ``transformers`` changed ``Cache.crop``: up to 5.0 it took the absolute length to keep, from
5.x on it takes the (negative) number of tokens to remove; :func:`crop_cache_to` hides the difference and checks
the result. :func:`trim_cache` drops the recorded past of sliding layers; :meth:`MaskedKVLayout.trim_accepted` is
the policy of when: once nothing cached can be cut back any more.

**The masked-hole layout.** ``Cache.crop`` cuts every row of a batch at the same column, but rows change
different numbers of tokens at different places. :class:`MaskedKVLayout` keeps replaced tokens in the cache as
**holes** (attention mask 0) and appends each row's new tokens at the end::

    column:   0   1   2   3   4   5   6   7   8
    row 0:    ·   ·   A   B   C   x   x   D   E     x = replaced (masked)
    row 1:    F   G   H   I   ·   ·   ·   ·   J     · = padding or a held step (masked)

A row's token keeps the position it has when the row runs alone (its count of earlier live tokens), so a masked
column adds an exact zero to attention: full-attention models are exact with holes. A sliding window counts
columns, so sliding-window models need a layout without holes (one row at a time). Both the upstream's batch
(:mod:`.engines.transformers_engine`) and the aligner's decoder (:mod:`.aligner_decoding`) use this one layout.

Example (two rows; row 0 loses its last token, row 1 keeps everything):

    >>> layout = MaskedKVLayout(2)
    >>> block = layout.append([[5, 6, 7], [8, 9]])  # right-aligned in one block of 3 columns
    >>> block.mask.tolist(), block.positions.tolist()
    ([[1, 1, 1], [0, 1, 1]], [[0, 1, 2], [0, 0, 1]])
    >>> layout.cut(0, 2)
    >>> layout.tokens, layout.cols, layout.mask.tolist()
    ([[5, 6], [8, 9]], [[0, 1], [1, 2]], [[1, 1, 0], [0, 1, 1]])
    >>> layout.token_matrix(filler=0).tolist()
    [[5, 6, 0], [0, 8, 9]]
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..compat import cache_length, forward_cache_key, record_past

__all__ = [
    "Block",
    "MaskedKVLayout",
    "cache_can_crop",
    "crop_cache_to",
    "has_sliding_layers",
    "make_rollback_cache",
    "model_has_sliding_layers",
    "prepare_upstream_cache",
    "prepare_user_cache",
    "probe_masked_layout",
    "trim_cache",
]


# ---------------------------------------------------------------------------------------------- creation
def make_rollback_cache(model: Any) -> Any:
    """A new ``DynamicCache`` for ``model`` whose every layer can be cropped exactly.

    Sliding-window layers get past recording switched on (so their full states are kept until the next
    crop, which trims them again). Returns a new cache; nothing else is touched.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    prepare_user_cache(cache)
    return cache


def prepare_upstream_cache(
    model: Any,
    cache: Any,
    *,
    use_cache: bool = True,
    implementation: str | None = None,
    batch_size: int = 1,
    prompt_length: int,
    max_cache_len: int,
    copies: int = 1,
) -> tuple[Any, bool]:
    """The KV cache an upstream call keeps across rounds (``None`` without ``use_cache``), and whether it is static
    (cannot be cut back).

    ``cache`` is the user's (``past_key_values``), prepared with :func:`prepare_user_cache` (**mutated**) and checked:
    it must be empty or hold a prefix of the prompt (``prompt_length`` tokens at most; empty when each prompt is
    repeated ``copies`` times). Without one, a new ``StaticCache`` of ``max_cache_len`` when
    ``implementation == "static"``, else :func:`make_rollback_cache`. Raises ``ValueError`` for a static cache with
    a batch (it cannot hold ragged rows) and for other implementations.
    """
    from transformers import StaticCache

    static = implementation == "static" or isinstance(cache, StaticCache)
    if static and batch_size > 1:
        raise ValueError(
            "batched stream alignment needs a cache that can be cut back per row: use the default dynamic "
            "cache (a StaticCache only works for one sequence)"
        )
    if not use_cache:
        return None, False
    if cache is None:
        if static:
            return StaticCache(config=model.config, max_cache_len=max_cache_len), True
        if implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={implementation!r} is not supported with an aligner; "
                "use the default dynamic cache or 'static'"
            )
        return make_rollback_cache(model), False
    prepare_user_cache(cache)
    filled = cache_length(cache)
    if filled > prompt_length or (filled and copies > 1):
        raise ValueError(
            f"past_key_values holds {filled} tokens; with an aligner it must be empty or hold a prefix of the "
            "prompt (and num_return_sequences must be 1)"
        )
    return cache, static


def prepare_user_cache(cache: Any) -> None:
    """Switch on past recording in an empty cache (**mutates** ``cache``; :func:`~.compat.record_past`). Does nothing
    to a filled one."""
    if cache is None or cache_length(cache) > 0:
        return
    record_past(cache)


def has_sliding_layers(cache: Any) -> bool:
    """Whether ``cache`` has sliding-window layers. Does not mutate ``cache``."""
    return any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", []))


def model_has_sliding_layers(model: Any) -> bool:
    """Whether ``model``'s default cache would have sliding-window layers (builds one to look; ``model`` is untouched)."""
    from transformers import DynamicCache

    return has_sliding_layers(DynamicCache(config=model.config))


def cache_can_crop(cache: Any) -> bool:
    """Whether ``crop`` restores an exact earlier state of ``cache``. Does not mutate ``cache``."""
    if cache is None or not hasattr(cache, "crop"):
        return False
    croppable = getattr(cache, "is_croppable", None)
    if croppable is not None and not croppable:
        return False
    # a layer that keeps only a window of its states (sliding window, linear attention) crops exactly only while it
    # records its past
    return all(getattr(layer, "record_past", True) for layer in getattr(cache, "layers", []))


# ---------------------------------------------------------------------------------------------- crop and trim
def _crop_takes_absolute_length(cache: Any) -> bool:
    try:
        params = list(inspect.signature(cache.crop).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "max_length"


def crop_cache_to(cache: Any, keep: int) -> None:
    """Cut ``cache`` back so that it holds the first ``keep`` tokens. **Mutates** ``cache`` in place.

    Never removes more than the cache holds and never grows it; works with both ``crop`` conventions.
    Raises ``RuntimeError`` if the cache does not end up with ``keep`` tokens.
    """
    current = cache_length(cache)
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    remove = current - keep
    if remove <= 0:
        return
    if _crop_takes_absolute_length(cache):
        cache.crop(keep)
    else:
        cache.crop(-remove)
    if cache_length(cache) != keep:
        raise RuntimeError(f"cache crop left {cache_length(cache)} tokens instead of {keep}")


def trim_cache(cache: Any) -> None:
    """Drop states that no future crop can need (sliding layers back to their window). **Mutates** ``cache``.

    Only call this when every cached token is accepted for good.
    """
    if has_sliding_layers(cache) and not _crop_takes_absolute_length(cache):
        cache.crop(0)


# ---------------------------------------------------------------------------------------------- the layout
@dataclass
class Block:
    """A block of new columns for a batch: ``ids``, ``mask`` and ``positions`` of shape ``(batch, width)``.

    Row ``b``'s tokens sit right-aligned (or left-aligned) in it; its other columns hold a filler, are masked
    and carry the position of the row's next token.
    """

    ids: torch.LongTensor
    mask: torch.LongTensor
    positions: torch.LongTensor


class MaskedKVLayout:
    """Which column of a KV cache holds which row's token (see the module docstring).

    Args:
        batch_size: number of rows.
        device: where the mask lives.
        cache: the KV cache this layout describes, or ``None`` (no cache, or one created later: see
            :attr:`cache`). The layout **mutates** it in :meth:`crop_trailing`, :meth:`select`,
            :meth:`compact` and :meth:`reset`.

    Invariants, per row ``r``:

    * ``tokens[r]`` are the row's ids whose keys and values are in the cache (its *placed* tokens), in order;
      ``cols[r][i]`` is the column of ``tokens[r][i]``. Columns increase; every other column of the row is
      masked. ``mask`` is ``(batch, width)`` with a 1 exactly at those columns.
    * ``width`` equals the cache's length.
    """

    def __init__(self, batch_size: int, *, device: torch.device | str | None = None, cache: Any = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cache = cache
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.cols: list[list[int]] = [[] for _ in range(batch_size)]
        self.mask = torch.zeros((batch_size, 0), dtype=torch.long, device=self.device)

    @property
    def batch_size(self) -> int:
        return len(self.cols)

    @property
    def width(self) -> int:
        """Columns of the layout (= the cache's length)."""
        return self.mask.shape[1]

    def placed(self, row: int) -> int:
        """How many of ``row``'s tokens are in the cache."""
        return len(self.cols[row])

    # ------------------------------------------------------------------ adding columns
    def block(self, blocks: Sequence[Sequence[int]], *, width: int | None = None, align: str = "right", filler: int = 0) -> Block:
        """The tensors of a block of new columns holding ``blocks[b]`` for row ``b`` (see :class:`Block`).

        Does not change the layout; :meth:`append` does. ``width`` defaults to the longest block.
        """
        if len(blocks) != self.batch_size:
            raise ValueError(f"{len(blocks)} blocks for {self.batch_size} rows")
        width = max((len(b) for b in blocks), default=0) if width is None else width
        batch = self.batch_size
        ids = torch.full((batch, width), int(filler), dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        for b, tokens in enumerate(blocks):
            n = len(tokens)
            if n > width:
                raise ValueError(f"row {b} has {n} tokens for a block of {width} columns")
            live = self.placed(b)
            positions[b, :] = live
            if n:
                span = slice(width - n, width) if align == "right" else slice(0, n)
                ids[b, span] = torch.tensor(list(tokens), dtype=torch.long)
                mask[b, span] = 1
                positions[b, span] = torch.arange(live, live + n)
        return Block(ids.to(self.device), mask.to(self.device), positions.to(self.device))

    def append(self, blocks: Sequence[Sequence[int]], *, width: int | None = None, align: str = "right", filler: int = 0) -> Block:
        """Add a block of columns at the end holding ``blocks[b]`` for row ``b`` (their keys and values are, or
        are about to be, in the cache); returns the block's tensors (:meth:`block`)."""
        block = self.block(blocks, width=width, align=align, filler=filler)
        start = self.width
        width = block.mask.shape[1]
        for b, tokens in enumerate(blocks):
            n = len(tokens)
            if n:
                first = start + (width - n if align == "right" else 0)
                self.tokens[b].extend(int(t) for t in tokens)
                self.cols[b].extend(range(first, first + n))
        self.mask = torch.cat([self.mask, block.mask], dim=1)
        return block

    def place_prefix(self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor, length: int) -> None:
        """Describe a cache that already holds ``input_ids[:, :length]`` under ``attention_mask`` (e.g. a user's
        pre-filled prompt cache). Only for an empty layout."""
        if self.width:
            raise ValueError("place_prefix needs an empty layout")
        self.mask = attention_mask[:, :length].to(device=self.device, dtype=torch.long).clone()
        for r in range(self.batch_size):
            cols = [c for c in range(length) if self.mask[r, c]]
            self.cols[r] = cols
            self.tokens[r] = [int(t) for t in input_ids[r, cols].tolist()]

    def token_matrix(self, filler: int) -> torch.LongTensor:
        """``(batch, width)`` ids: each placed token at its column, ``filler`` in every masked column."""
        ids = torch.full((self.batch_size, self.width), int(filler), dtype=torch.long)
        for r, cols in enumerate(self.cols):
            if cols:
                ids[r, cols] = torch.tensor(self.tokens[r], dtype=torch.long)
        return ids.to(self.device)

    # ------------------------------------------------------------------ removing tokens
    def cut(self, row: int, keep: int) -> None:
        """Keep only the first ``keep`` placed tokens of ``row``: mask the columns of the others (they become holes)."""
        dropped = self.cols[row][keep:]
        if dropped:
            self.mask[row, dropped] = 0
            del self.cols[row][keep:]
            del self.tokens[row][keep:]

    def crop_trailing(self) -> bool:
        """Drop columns after every row's last placed token (they are holes in all rows).

        **Mutates** the cache: crops it, or resets it (and the layout) when it cannot be cropped; then every row's
        tokens must be fed again. Returns ``False`` if the cache had to be reset.
        """
        keep = max((c[-1] + 1 for c in self.cols if c), default=0)
        if keep >= self.width:
            return True
        if self.cache is not None:
            if not cache_can_crop(self.cache):
                self.reset()
                return False
            try:
                crop_cache_to(self.cache, keep)
            except (RuntimeError, ValueError):
                self.reset()
                return False
        self.mask = self.mask[:, :keep]
        return True

    def select(self, order: Sequence[int]) -> bool:
        """New batch order: row ``i`` becomes old row ``order[i]`` (``-1``: a new, empty row). Rows not named
        leave the batch. **Mutates** the cache (``batch_select_indices``, or an index over its layers when new
        rows are added), then :meth:`crop_trailing`, whose result it returns."""
        order = [int(o) for o in order]
        n_old = self.batch_size
        if order == list(range(n_old)):
            return True
        device = self.mask.device
        grows = any(o < 0 for o in order)
        index = torch.tensor([o if o >= 0 else n_old for o in order], dtype=torch.long, device=device)
        if self.cache is not None and self.width > 0:
            if not grows and hasattr(self.cache, "batch_select_indices"):
                self.cache.batch_select_indices(index)
            else:
                for layer in _filled_layers(self.cache):
                    for name in ("keys", "values"):
                        t = getattr(layer, name)
                        padded = torch.cat([t, t.new_zeros((1, *t.shape[1:]))], dim=0)
                        setattr(layer, name, padded.index_select(0, index.to(t.device)))
        padded_mask = torch.cat([self.mask, self.mask.new_zeros((1, self.width))], dim=0)
        self.mask = padded_mask.index_select(0, index)
        self.cols = [list(self.cols[o]) if o >= 0 else [] for o in order]
        self.tokens = [list(self.tokens[o]) if o >= 0 else [] for o in order]
        return self.crop_trailing()

    def subset(self, rows: Sequence[int]) -> MaskedKVLayout:
        """A new layout of ``rows`` (in that order) over a new cache holding copies of their columns
        (``index_select``), cropped to its own rows. Reads this layout and its cache, never mutates them: a caller can
        decode a few rows on the copy and come back to this layout unchanged."""
        import copy

        index = torch.tensor([int(r) for r in rows], dtype=torch.long, device=self.mask.device)
        part = copy.copy(self)
        if self.cache is not None:
            cache = copy.copy(self.cache)
            cache.layers = [copy.copy(layer) for layer in self.cache.layers]
            for layer in _filled_layers(cache):
                for name in ("keys", "values"):
                    t = getattr(layer, name)
                    setattr(layer, name, t.index_select(0, index.to(t.device)))
            part.cache = cache
        part.mask = self.mask.index_select(0, index)
        part.cols = [list(self.cols[r]) for r in rows]
        part.tokens = [list(self.tokens[r]) for r in rows]
        part.crop_trailing()
        return part

    def trim_accepted(self, accepted: Sequence[int]) -> None:
        """The trim policy: once every row's placed tokens lie within its first ``accepted[row]`` tokens (accepted
        for good: no crop can need their past any more), sliding layers drop their recorded past
        (:func:`trim_cache`). **Mutates** the cache; does nothing to a cache without croppable sliding layers."""
        cache = self.cache
        if cache is None or not has_sliding_layers(cache) or not cache_can_crop(cache):
            return
        if all(self.placed(row) <= accepted[row] for row in range(self.batch_size)):
            trim_cache(cache)

    def holes(self) -> int:
        """Masked columns beyond the longest row (what :meth:`compact` would free)."""
        return self.width - max((len(c) for c in self.cols), default=0)

    def compact(self) -> None:
        """Squeeze out the holes: every row's tokens moved right-aligned into ``longest`` columns (a gather over the
        cache's layers; exact, since positions do not change). **Mutates** the cache."""
        longest = max((len(c) for c in self.cols), default=0)
        batch = self.batch_size
        device = self.mask.device
        index = torch.zeros((batch, longest), dtype=torch.long, device=device)
        mask = torch.zeros((batch, longest), dtype=self.mask.dtype, device=device)
        for b, cols in enumerate(self.cols):
            if cols:
                index[b, longest - len(cols) :] = torch.tensor(cols, dtype=torch.long, device=device)
                mask[b, longest - len(cols) :] = 1
            self.cols[b] = list(range(longest - len(cols), longest))
        if self.cache is not None:
            for layer in _filled_layers(self.cache):
                for name in ("keys", "values"):
                    t = getattr(layer, name)
                    gather = index.to(t.device)[:, None, :, None].expand(t.shape[0], t.shape[1], longest, t.shape[3])
                    setattr(layer, name, t.gather(2, gather))
        self.mask = mask

    def reset(self) -> None:
        """Empty the cache (**mutates** it) and the layout: no token is placed any more."""
        if self.cache is not None:
            self.cache.reset()
        self.mask = self.mask[:, :0]
        self.cols = [[] for _ in range(self.batch_size)]
        self.tokens = [[] for _ in range(self.batch_size)]


def _filled_layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "is_initialized", False)]


def probe_masked_layout(model: Any) -> str | None:
    """Why ``model``'s forward cannot run a :class:`MaskedKVLayout` (``None`` when it can), found by running it:
    a token after a masked hole must get the logits it gets without the hole, with the cache under
    :func:`~.compat.forward_cache_key`, the layout's attention mask and explicit position ids. Two forwards of
    three tokens in all, without gradients; the model's weights and state are untouched."""
    from transformers import DynamicCache

    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 4:
        return "its config names no vocabulary"
    device = getattr(model, "device", torch.device("cpu"))
    a, hole, b = 1, 2, 3

    def last_logits(blocks: list[list[int]], cut_after_first: bool) -> torch.Tensor:
        layout = MaskedKVLayout(1, device=device, cache=DynamicCache(config=model.config))
        out = None
        for i, tokens in enumerate(blocks):
            block = layout.append([tokens])
            out = model(input_ids=block.ids, attention_mask=layout.mask, position_ids=block.positions, use_cache=True,
                        **{forward_cache_key(model): layout.cache})  # fmt: skip
            if cut_after_first and i == 0:
                layout.cut(0, 1)  # the hole: its key and value stay in the cache, masked
        if cache_length(layout.cache) != layout.width:
            raise ValueError(f"the cache holds {cache_length(layout.cache)} columns, the layout {layout.width}")
        return out.logits[0, -1].float()

    try:
        with torch.no_grad():
            plain = last_logits([[a, b]], cut_after_first=False)
            holed = last_logits([[a, hole], [b]], cut_after_first=True)
    except Exception as err:  # noqa: BLE001 - whatever the forward refuses makes the model unsupported
        return f"its forward does not run a masked cache layout ({type(err).__name__}: {err})"
    if not torch.allclose(plain, holed, rtol=1e-3, atol=1e-3 * float(plain.abs().max()) + 1e-6):
        return "its forward does not honour the attention mask and position ids of a masked cache layout"
    return None
