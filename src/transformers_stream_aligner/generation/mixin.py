"""``model.generate(..., aligner=...)``: the two ways to give a model that keyword, one shared body.

:class:`StreamAlignedGenerationMixin` (a class of your own, as ``transformers`` model classes are made) and
:func:`enable_stream_alignment` (an instance you already have) both run :func:`generate_with_aligner`: the stock
``generate`` without ``aligner=``, :func:`~.generate.stream_aligned_generate` with it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    GenerationMixin,
)

from .generate import _ALIGNER_KWARGS, stream_aligned_generate

__all__ = ["StreamAlignedGenerationMixin", "enable_stream_alignment", "generate_with_aligner"]


def generate_with_aligner(model: Any, stock_generate: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """The body of both ``generate`` overrides: the stock ``generate`` without ``aligner=``, else ours. With
    ``custom_generate=`` the stock ``generate`` runs it, aligner keywords included (the package's own
    ``custom_generate`` folder and callable take them)."""
    if kwargs.get("custom_generate") is not None:
        return stock_generate(*args, **kwargs)
    aligner_kwargs = {name: kwargs.pop(name) for name in _ALIGNER_KWARGS if name in kwargs}
    aligner = aligner_kwargs.pop("aligner", None)
    if aligner is None:
        if aligner_kwargs:
            raise ValueError(f"{sorted(aligner_kwargs)} only apply together with aligner=...")
        return stock_generate(*args, **kwargs)
    if args:
        if len(args) > 1:
            raise ValueError("pass generate() arguments other than the prompt by keyword when using an aligner")
        kwargs["inputs"] = args[0]
    if "inputs" in kwargs and kwargs["inputs"] is None:
        kwargs.pop("inputs")
    if "tokenizer" in kwargs and kwargs["tokenizer"] is None:
        kwargs.pop("tokenizer")
    return stream_aligned_generate(model, aligner=aligner, **aligner_kwargs, **kwargs)


class StreamAlignedGenerationMixin:
    """Adds ``aligner=`` to ``generate``. Put it before the model class in the bases.

    Without ``aligner=`` (or with ``aligner=None``) ``generate`` is the stock one, untouched.

    Example:

        >>> from transformers import LlamaForCausalLM
        >>> from transformers_stream_aligner import StreamAlignedGenerationMixin
        >>> class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
        ...     pass
        >>> # AlignedLlama.from_pretrained(...).generate(ids, aligner=fn, tokenizer=tok)
    """

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return generate_with_aligner(self, super().generate, args, kwargs)  # type: ignore[misc]

    generate.__doc__ = stream_aligned_generate.__doc__


def _aligned_signature() -> inspect.Signature:
    """``GenerationMixin.generate``'s signature (``inputs`` first) with the aligner's keywords before ``**kwargs``."""
    stock = inspect.signature(GenerationMixin.generate)
    params = [p for p in stock.parameters.values() if p.kind is not p.VAR_KEYWORD]
    ours = inspect.signature(stream_aligned_generate).parameters
    names = {p.name for p in params}
    extra = [ours[n].replace(kind=inspect.Parameter.KEYWORD_ONLY) for n in _ALIGNER_KWARGS if n in ours and n not in names]
    tail = [p for p in stock.parameters.values() if p.kind is p.VAR_KEYWORD]
    positional = [p for p in params if p.kind is not p.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind is p.KEYWORD_ONLY]
    return stock.replace(parameters=positional + keyword + extra + tail)


StreamAlignedGenerationMixin.generate.__signature__ = _aligned_signature()  # type: ignore[attr-defined]

_ALIGNED_CLASSES: dict[type, type] = {}


def _aligned_class(cls: type) -> type:
    """``cls`` with :class:`StreamAlignedGenerationMixin` in front, made once per class. It has ``cls``'s name, and
    pickles (``torch.save``, ``copy.deepcopy``) as an instance of itself, rebuilt from ``cls``."""
    if issubclass(cls, StreamAlignedGenerationMixin):
        return cls
    if cls not in _ALIGNED_CLASSES:

        def __reduce_ex__(self: Any, protocol: Any) -> Any:
            reduced = object.__reduce_ex__(self, protocol)  # (copyreg.__newobj__, (class,), state, ...)
            return (_new_aligned, (cls,), *reduced[2:])

        _ALIGNED_CLASSES[cls] = type(
            cls.__name__,
            (StreamAlignedGenerationMixin, cls),
            {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__reduce_ex__": __reduce_ex__},
        )
    return _ALIGNED_CLASSES[cls]


def _new_aligned(cls: type) -> Any:
    """An empty instance of ``cls``'s stream-aligned class (unpickling fills its state)."""
    aligned = _aligned_class(cls)
    return aligned.__new__(aligned)


def enable_stream_alignment(model: Any, tokenizer: Any = None) -> Any:
    """Give ``model`` (this instance only) ``generate(..., aligner=...)``; returns the same model.

    The instance's class becomes a subclass of its own with :class:`StreamAlignedGenerationMixin` (same name,
    ``isinstance`` unchanged), so ``copy.deepcopy``, ``pickle`` and ``torch.save`` keep the patch and copies
    generate with their own weights. ``tokenizer`` (the upstream's) is remembered for calls that do not pass one,
    e.g. from ``pipeline("text-generation")``. Calling it twice is harmless.

    Example:

        >>> from transformers_stream_aligner import enable_stream_alignment
        >>> model = enable_stream_alignment(model, tokenizer)  # doctest: +SKIP
        >>> model.generate(ids, aligner=lambda q, prefix, last: last, max_new_tokens=50)  # doctest: +SKIP
    """
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"enable_stream_alignment needs a transformers generative model, got {type(model).__name__}")
    if tokenizer is not None:
        model._stream_aligner_tokenizer = tokenizer
    model.__class__ = _aligned_class(type(model))
    return model
