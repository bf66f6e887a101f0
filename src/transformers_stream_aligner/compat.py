"""One home for what differs between the transformers releases this package supports (5.23 to the newest).

Every entry detects a **feature** (an attribute, a signature, a behaviour), never a version string, so a release
that keeps a feature keeps working and one that changes it changes one function here. The rest of the package calls
these functions instead of looking for itself. docs/design.md lists every private transformers name the package still
uses and why.

What moved, and where it is handled:

* the cache keyword: ``past_key_values`` up to 5.23, ``cache`` from 5.24 on (the old name still works there, with a
  warning) — :func:`generate_cache_key`, :func:`pop_cache`, :func:`forward_cache_key`;
* ``GenerationMixin.generate`` behind decorators (5.24) — :func:`generate_code`;
* ``Cache.get_seq_length`` as a 0-d tensor for some layers (5.25) — :func:`cache_length`;
* which layers record their past for a crop (sliding windows; linear-attention layers, whose
  ``activate_past_recording`` takes a count from 5.25 on) — :func:`record_past`;
* the streamer ``transformers serve`` passes to ``generate`` (``DirectStreamer`` up to 5.24, a module-private
  ``_TokenStreamer`` from 5.25 on) — :func:`is_serve_streamer`.

Example:

    >>> from transformers_stream_aligner.compat import pop_cache
    >>> kwargs = {"past_key_values": None, "max_new_tokens": 5}
    >>> pop_cache(kwargs), kwargs
    (None, {'max_new_tokens': 5})
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = [
    "CACHE_KEYS",
    "cache_length",
    "forward_cache_key",
    "generate_cache_key",
    "generate_code",
    "is_serve_streamer",
    "pop_cache",
    "record_past",
]

#: Both names a caller may give the KV cache under; :func:`pop_cache` takes either.
CACHE_KEYS = ("cache", "past_key_values")


@functools.lru_cache(maxsize=1)
def generate_cache_key() -> str:
    """The keyword this transformers' ``generate`` and models take the KV cache under (``cache`` or
    ``past_key_values``): the name of the cache field of its output dataclass."""
    from transformers.generation.utils import GenerateDecoderOnlyOutput

    return "cache" if "cache" in getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {}) else "past_key_values"


def pop_cache(kwargs: dict[str, Any]) -> Any:
    """Remove the KV cache from ``kwargs`` (**mutated**) under either name and return it (``None`` if absent).
    Raises ``ValueError`` when both names carry a cache."""
    given = {key: kwargs.pop(key) for key in CACHE_KEYS if key in kwargs}
    caches = [value for value in given.values() if value is not None]
    if len(caches) > 1:
        raise ValueError("pass the KV cache once, as cache= or past_key_values=, not both")
    return caches[0] if caches else None


def forward_cache_key(model: Any) -> str:
    """The keyword ``model.forward`` takes the cache under: the one its signature names (remote-code models may keep
    the old name), else the library's (:func:`generate_cache_key`)."""
    params = _forward_parameters(type(model))
    for key in CACHE_KEYS:
        if key in params:
            return key
    return generate_cache_key()


@functools.lru_cache(maxsize=64)
def _forward_parameters(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=1)
def generate_code() -> Any:
    """The code object of ``GenerationMixin.generate`` itself, under however many decorators wrap it (a frame of a
    running ``generate`` call has this code)."""
    from transformers import GenerationMixin

    return inspect.unwrap(GenerationMixin.generate).__code__


def cache_length(cache: Any) -> int:
    """How many tokens ``cache`` holds, as an ``int`` (some layers report a 0-d tensor); 0 for ``None``."""
    if cache is None or getattr(cache, "get_seq_length", None) is None:
        return 0
    return int(cache.get_seq_length())


def record_past(cache: Any) -> None:
    """Switch on past recording in the layers of ``cache`` that keep only a window of their states (sliding-window
    attention), so that a crop restores an exact earlier state (**mutates** ``cache``; call it before the first
    forward). Linear-attention layers are left as they are: their recurrent states cannot be rolled back, so
    :func:`.cache.cache_can_crop` reports them and the caller re-prefills instead."""
    layers = getattr(cache, "layers", None)
    if layers is None:  # a cache without per-layer objects: its own switch, if it has one
        if hasattr(cache, "activate_past_recording"):
            cache.activate_past_recording()
        return
    for layer in layers:
        if getattr(layer, "is_sliding", False) and hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()


def is_serve_streamer(streamer: Any) -> bool:
    """Whether ``streamer`` is the one ``transformers serve`` hands to ``generate``: its server catches the exception
    of a failed ``generate`` and reports it on the same stream, so the streamer must not be ended first."""
    return type(streamer).__module__.startswith("transformers.cli.serving")
