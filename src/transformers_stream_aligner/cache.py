"""KV-cache helpers for the splice: create a cache that can be rolled back, and roll it back.

``transformers`` changed ``Cache.crop``: up to 5.0 it took the absolute length to keep, from 5.x on it
takes the (negative) number of tokens to remove. :func:`crop_cache_to` hides that difference.
Sliding-window layers can only be rolled back exactly when they recorded their past states before
the forward passes; :func:`make_rollback_cache` switches that on. Caches that cannot be rolled back
(``StaticCache``, recurrent/linear-attention layers) are handled by the caller with a re-prefill.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["cache_can_crop", "crop_cache_to", "has_sliding_layers", "make_rollback_cache", "prepare_user_cache", "trim_cache"]


def make_rollback_cache(model: Any) -> Any:
    """A new ``DynamicCache`` for ``model`` whose every layer can be cropped exactly.

    Sliding-window layers get past recording switched on (so their full states are kept until the next
    crop, which trims them again). Returns a new cache; nothing else is touched.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    prepare_user_cache(cache)
    return cache


def prepare_user_cache(cache: Any) -> None:
    """Switch on past recording in an empty cache (mutates ``cache``). Does nothing to a filled one."""
    if cache is None:
        return
    if getattr(cache, "get_seq_length", None) is not None and cache.get_seq_length() > 0:
        return
    if hasattr(cache, "activate_past_recording"):
        cache.activate_past_recording()


def has_sliding_layers(cache: Any) -> bool:
    """Whether ``cache`` has sliding-window layers. Does not mutate ``cache``."""
    return any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", []))


def cache_can_crop(cache: Any) -> bool:
    """Whether ``crop`` restores an exact earlier state of ``cache``. Does not mutate ``cache``."""
    if cache is None or not hasattr(cache, "crop"):
        return False
    croppable = getattr(cache, "is_croppable", None)
    if croppable is not None and not croppable:
        return False
    for layer in getattr(cache, "layers", []):
        if getattr(layer, "is_sliding", False) and not getattr(layer, "record_past", True):
            return False
    return True


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
    current = cache.get_seq_length()
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    remove = current - keep
    if remove <= 0:
        return
    if _crop_takes_absolute_length(cache):
        cache.crop(keep)
    else:
        cache.crop(-remove)
    if cache.get_seq_length() != keep:
        raise RuntimeError(f"cache crop left {cache.get_seq_length()} tokens instead of {keep}")


def trim_cache(cache: Any) -> None:
    """Drop states that no future crop can need (sliding layers back to their window). **Mutates** ``cache``.

    Only call this when every cached token is accepted for good.
    """
    if has_sliding_layers(cache) and not _crop_takes_absolute_length(cache):
        cache.crop(0)
