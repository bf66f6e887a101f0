"""The cache stage on its own: the masked-hole layout (exact against rows run alone) and the crop/trim helpers."""

import pytest
import torch
from transformers import DynamicCache, StaticCache

from transformers_stream_aligner.compat import forward_cache_key
from transformers_stream_aligner.runtime.cache import (
    MaskedKVLayout,
    cache_can_crop,
    crop_cache_to,
    has_sliding_layers,
    make_rollback_cache,
    model_has_sliding_layers,
    prepare_user_cache,
    trim_cache,
)

from ..helpers import prompt_ids
from ..tiny_models import cached_tiny


def _alone(model, tokens):
    """Logits of the last token of ``tokens`` run alone, without a cache."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1]


def _feed(model, layout, blocks):
    """Append ``blocks`` to the layout and run them; the logits of every row's last column."""
    block = layout.append(blocks, filler=0)
    with torch.no_grad():
        out = model(
            input_ids=block.ids,
            attention_mask=layout.mask,
            position_ids=block.positions,
            use_cache=True,
            **{forward_cache_key(model): layout.cache},
        )
    return out.logits[:, -1]


@pytest.fixture(scope="module")
def llama():
    return cached_tiny("llama")


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_layout_with_holes_is_exact_per_row(llama):
    model, tok = llama
    a, b = _ids(tok, "The cat is very good. My friend"), _ids(tok, "A dog was")
    layout = MaskedKVLayout(2, cache=DynamicCache(config=model.config))
    _feed(model, layout, [a, b])
    assert layout.width == max(len(a), len(b)) == layout.cache.get_seq_length()
    # row 0 replaces its last 3 tokens (they stay as holes), row 1 just goes on
    layout.cut(0, len(a) - 3)
    assert layout.tokens[0] == a[:-3] and layout.placed(1) == len(b)
    new_a, new_b = _ids(tok, " Our team"), _ids(tok, " fine.")
    logits = _feed(model, layout, [new_a, new_b])
    assert torch.allclose(logits[0], _alone(model, a[:-3] + new_a), atol=1e-10)
    assert torch.allclose(logits[1], _alone(model, b + new_b), atol=1e-10)
    holes = layout.holes()
    assert holes > 0
    # compaction squeezes the holes out and changes nothing
    layout.compact()
    assert layout.holes() == 0 and layout.width == layout.cache.get_seq_length() == max(map(len, layout.tokens))
    more = _ids(tok, " is")
    logits = _feed(model, layout, [more, more])
    assert torch.allclose(logits[0], _alone(model, a[:-3] + new_a + more), atol=1e-10)
    assert torch.allclose(logits[1], _alone(model, b + new_b + more), atol=1e-10)


def test_select_drops_reorders_and_adds_rows(llama):
    model, tok = llama
    a, b = _ids(tok, "The answer is correct."), _ids(tok, "Dr. Smith stays")
    layout = MaskedKVLayout(2, cache=DynamicCache(config=model.config))
    _feed(model, layout, [a, b])
    assert layout.select([1, -1])  # row 1 first, then a new, empty row; row 0 leaves
    assert layout.batch_size == 2 and layout.tokens == [b, []] and layout.cache.layers[0].keys.shape[0] == 2
    c = _ids(tok, "This model")
    logits = _feed(model, layout, [_ids(tok, " quite"), c])
    assert torch.allclose(logits[0], _alone(model, b + _ids(tok, " quite")), atol=1e-10)
    assert torch.allclose(logits[1], _alone(model, c), atol=1e-10)
    # dropping a row without adding one uses the cache's own batch_select_indices
    assert layout.select([1]) and layout.tokens == [c] and layout.cache.layers[0].keys.shape[0] == 1


def test_crop_trailing_cuts_columns_every_row_left(llama):
    model, tok = llama
    layout = MaskedKVLayout(2, cache=DynamicCache(config=model.config))
    _feed(model, layout, [_ids(tok, "The cat"), _ids(tok, "A dog was quite small")])
    layout.cut(1, 1)
    assert layout.crop_trailing()
    keep = max(c[-1] for c in layout.cols) + 1
    assert layout.width == keep == layout.cache.get_seq_length()
    layout.cut(0, 0)
    layout.cut(1, 0)
    assert layout.crop_trailing() and layout.width == 0 == layout.cache.get_seq_length()


def test_crop_trailing_resets_a_cache_that_cannot_be_cut(llama):
    model, tok = llama
    a = _ids(tok, "The cat is fine.")
    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        layer.is_croppable = False  # as recurrent and quantized layers say (static ones too, before transformers 5.24)
    layout = MaskedKVLayout(1, cache=cache)
    _feed(model, layout, [a])
    assert not cache_can_crop(cache)
    layout.cut(0, 2)
    assert layout.crop_trailing() is False  # reset: nothing is placed any more
    assert layout.width == 0 and layout.tokens == [[]] and cache.get_seq_length() == 0


def test_block_token_matrix_and_place_prefix():
    layout = MaskedKVLayout(2)
    block = layout.block([[1, 2], [3]], width=3, align="left", filler=9)
    assert block.ids.tolist() == [[1, 2, 9], [3, 9, 9]] and block.mask.tolist() == [[1, 1, 0], [1, 0, 0]]
    assert layout.width == 0  # block() does not change the layout
    with pytest.raises(ValueError, match="2 tokens for a block of 1"):
        layout.block([[1, 2], []], width=1)
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    layout.place_prefix(ids, mask, 3)
    assert layout.tokens == [[5], [7, 8, 9]] and layout.cols == [[2], [0, 1, 2]]
    assert layout.token_matrix(filler=0).tolist() == [[0, 0, 5], [7, 8, 9]]
    layout.append([[6], [4]], align="left")
    assert layout.block([[1], [2]]).positions.tolist() == [[2], [4]]  # positions count each row's own tokens


def test_rollback_cache_records_sliding_layers_and_trims():
    model, tok = cached_tiny("mistral-sliding")
    assert model_has_sliding_layers(model) and not model_has_sliding_layers(cached_tiny("llama")[0])
    cache = make_rollback_cache(model)
    assert has_sliding_layers(cache) and cache_can_crop(cache)
    plain = DynamicCache(config=model.config)
    assert not cache_can_crop(plain)  # sliding layers that do not record their past cannot be cut back exactly
    prepare_user_cache(plain)
    assert cache_can_crop(plain)
    window = model.config.sliding_window
    ids = prompt_ids(tok, "The cat is fine. " * 10)
    with torch.no_grad():
        model(ids, use_cache=True, **{forward_cache_key(model): cache})
    sliding = next(layer for layer in cache.layers if layer.is_sliding)
    assert sliding.keys.shape[2] > window  # the past is kept for a crop
    trim_cache(cache)
    assert sliding.keys.shape[2] <= window and cache.get_seq_length() == ids.shape[1]


def test_crop_cache_to_refuses_a_negative_length(llama):
    model, tok = llama
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt_ids(tok), use_cache=True, **{forward_cache_key(model): cache})
    with pytest.raises(ValueError, match="keep must be >= 0"):
        crop_cache_to(cache, -1)


def test_crop_restores_exact_state_including_sliding_window():
    model, tok = cached_tiny("mistral-sliding")
    window = model.config.sliding_window
    ids = prompt_ids(tok, "The cat is fine. " * 12)
    assert ids.shape[1] > 3 * window
    cache = make_rollback_cache(model)
    assert any(getattr(layer, "is_sliding", False) for layer in cache.layers)
    with torch.no_grad():
        model(ids, use_cache=True, **{forward_cache_key(model): cache})
        keep = ids.shape[1] - window - 3  # cut back past the window
        crop_cache_to(cache, keep)
        assert cache.get_seq_length() == keep
        tail = torch.tensor([[5, 6, 7]])
        cached = model(tail, use_cache=True, **{forward_cache_key(model): cache}).logits
        full = model(torch.cat([ids[:, :keep], tail], dim=1)).logits[:, -3:]
    assert torch.allclose(cached, full, atol=1e-10)


def test_crop_cache_to_never_grows_and_checks(tiny_llama):
    model, tok = tiny_llama
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt_ids(tok), use_cache=True, **{forward_cache_key(model): cache})
    n = cache.get_seq_length()
    crop_cache_to(cache, n + 5)
    assert cache.get_seq_length() == n
    crop_cache_to(cache, 1)
    assert cache.get_seq_length() == 1


def test_prepare_upstream_cache_chooses_and_checks(llama):
    from transformers_stream_aligner.runtime.cache import prepare_upstream_cache

    model, tok = llama
    kw = dict(prompt_length=5, max_cache_len=40)
    cache, static = prepare_upstream_cache(model, None, **kw)
    assert isinstance(cache, DynamicCache) and not static
    assert prepare_upstream_cache(model, None, use_cache=False, **kw) == (None, False)
    cache, static = prepare_upstream_cache(model, None, implementation="static", **kw)
    assert isinstance(cache, StaticCache) and static
    with pytest.raises(ValueError, match="StaticCache only works for one sequence"):
        prepare_upstream_cache(model, None, implementation="static", batch_size=2, **kw)
    with pytest.raises(ValueError, match="not supported with an aligner"):
        prepare_upstream_cache(model, None, implementation="offloaded", **kw)
    filled = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt_ids(tok, "The cat is very good indeed"), use_cache=True, **{forward_cache_key(model): filled})
    with pytest.raises(ValueError, match="must be empty or hold a prefix of the prompt"):
        prepare_upstream_cache(model, filled, **kw)  # more tokens than the prompt has
    with pytest.raises(ValueError, match="num_return_sequences must be 1"):
        prepare_upstream_cache(model, filled, prompt_length=50, max_cache_len=60, copies=2)
    assert prepare_upstream_cache(model, filled, prompt_length=50, max_cache_len=60) == (filled, False)


def test_trim_accepted_waits_until_everything_cached_is_accepted():
    model, tok = cached_tiny("mistral-sliding")
    window = model.config.sliding_window
    layout = MaskedKVLayout(1, cache=make_rollback_cache(model))
    ids = _ids(tok, "The cat is fine. " * 10)
    _feed(model, layout, [ids])
    sliding = next(layer for layer in layout.cache.layers if layer.is_sliding)
    layout.trim_accepted([len(ids) - 1])  # the last token is not accepted yet: a crop may still need the past
    assert sliding.keys.shape[2] > window
    layout.trim_accepted([len(ids)])
    assert sliding.keys.shape[2] <= window and layout.cache.get_seq_length() == len(ids)
    plain = MaskedKVLayout(1, cache=DynamicCache(config=cached_tiny("llama")[0].config))
    plain.trim_accepted([0])  # no sliding layers: nothing to do
