"""``model.generate(..., aligner=...)``: the two ways to give a model that keyword, one shared body.

:class:`StreamAlignedGenerationMixin` (a class of your own, as ``transformers`` model classes are made) and
:func:`enable_stream_alignment` (an instance you already have) both run :func:`generate_with_aligner`: the stock
``generate`` without ``aligner=``, :func:`~.generate.stream_aligned_generate` with it.
"""
from __future__ import annotations

import functools
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


_ALIGNER_DOC = """

With ``aligner=`` (transformers-stream-aligner), the answer is stream-aligned: each complete sentence is corrected by
the aligner and generation goes on from the corrected text; the keywords are those of
:func:`transformers_stream_aligner.stream_aligned_generate` (``aligner``, ``tokenizer``, ``max_sentence_tokens``,
...). Without it this is the stock ``generate``."""


def _stock_generate(cls: type) -> Callable[..., Any] | None:
    """The ``generate`` that ``cls`` would have without :class:`StreamAlignedGenerationMixin`."""
    mro = cls.__mro__
    after = mro[mro.index(StreamAlignedGenerationMixin) + 1 :]
    return next((c.__dict__["generate"] for c in after if "generate" in c.__dict__), None)


def _generate_like(stock: Callable[..., Any]) -> Callable[..., Any]:
    """A ``generate`` that adds ``aligner=`` to the ``generate`` after :class:`StreamAlignedGenerationMixin` in the
    instance's class order and shows ``stock``'s (that one's) name, signature and documentation, as
    ``functools.wraps`` gives them: tools and pipelines read ``inspect.signature(model.generate)``."""

    @functools.wraps(stock)
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return generate_with_aligner(self, super(StreamAlignedGenerationMixin, self).generate, args, kwargs)

    generate.__doc__ = (stock.__doc__ or "") + _ALIGNER_DOC
    return generate


class StreamAlignedGenerationMixin:
    """Adds ``aligner=`` to ``generate``. Put it before the model class in the bases.

    Without ``aligner=`` (or with ``aligner=None``) ``generate`` is the stock one, untouched, and
    ``inspect.signature(model.generate)`` is the stock signature (the aligner's keywords go through ``**kwargs``).

    Example:

        >>> import inspect
        >>> from transformers import LlamaForCausalLM
        >>> from transformers_stream_aligner import StreamAlignedGenerationMixin
        >>> class AlignedLlama(StreamAlignedGenerationMixin, LlamaForCausalLM):
        ...     pass
        >>> inspect.signature(AlignedLlama.generate) == inspect.signature(LlamaForCausalLM.generate)
        True
        >>> # AlignedLlama.from_pretrained(...).generate(ids, aligner=fn, tokenizer=tok)
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        stock = _stock_generate(cls)
        if "generate" not in cls.__dict__ and stock is not None:
            cls.generate = _generate_like(stock)  # type: ignore[method-assign]

    generate = _generate_like(GenerationMixin.generate)


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
