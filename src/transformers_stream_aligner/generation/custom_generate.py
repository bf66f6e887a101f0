"""``custom_generate=stream_aligned_decoding``: stream alignment as the decoding method of transformers' own
``generate``, on a model nobody patched::

    model.generate(**inputs, custom_generate=stream_aligned_decoding, aligner=aligner)

``generate`` prepares the inputs and the generation config, then calls :func:`stream_aligned_decoding` in place of its
sampling loop; it runs :func:`~.generate.stream_aligned_generate`. The folder form of ``custom_generate`` (a
directory or Hub repo, and model directories served by ``transformers serve``) is :mod:`..serving.custom_generate`.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections import Counter
from typing import Any

import torch
from transformers import GenerationMixin, LogitsProcessorList, StoppingCriteriaList

from ..compat import cache_length, generate_cache_key, generate_code, pop_cache
from ..runtime.streamers import StreamerDriver
from .generate import _ALIGNER_KWARGS, stream_aligned_generate

__all__ = ["stream_aligned_decoding"]


def stream_aligned_decoding(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: Any,
    **kwargs: Any,
) -> Any:
    """Stream alignment as the decoding method of transformers' ``generate``: pass it as ``custom_generate=``.

    ``generate`` prepares the inputs and the generation config (with its own warnings), then calls this in place of
    its sampling loop, with the keywords this function declares (``aligner=`` ...). Without ``aligner=`` it is
    transformers' sampling loop.

    What ``generate`` (transformers 5.x) does not pass to a callable, and how this gets it:

    * ``tokenizer=``: dropped; bind it (``custom_generate=functools.partial(stream_aligned_decoding, tokenizer=tok)``),
      or let it be found: a ``pipeline``'s, the one given to ``enable_stream_alignment``, or the model's own
      (``AutoTokenizer.from_pretrained(model.name_or_path)``).
    * ``streamer=``: ``generate`` puts the prompt into it and then drops it; it is taken from that ``generate``
      call, receives the corrected sentences and is ended.
    * the logits processors and stopping criteria arrive merged with those of the generation config; the ones the
      caller added are found by comparing with what the config alone gives, and run in every round.

    Example:

        >>> from transformers_stream_aligner import stream_aligned_decoding
        >>> model.generate(**inputs, custom_generate=stream_aligned_decoding, aligner=fn, max_new_tokens=50)  # doctest: +SKIP
    """
    streamer = _streamer_of_calling_generate(model)
    aligner_kwargs = {name: kwargs.pop(name) for name in (*_ALIGNER_KWARGS, "tokenizer") if name in kwargs}
    model_kwargs = kwargs
    if aligner_kwargs.get("aligner") is None:
        return GenerationMixin._sample(
            model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=streamer, **model_kwargs
        )
    cache = pop_cache(model_kwargs)
    if cache_length(cache) > 0:
        model_kwargs[generate_cache_key()] = cache  # the caller's prefilled cache; an empty one generate made is dropped
    for name in ("position_ids", "logits_to_keep", "use_cache", "cache_position"):
        model_kwargs.pop(name, None)
    config = copy.deepcopy(generation_config)
    # generate turned max_new_tokens/min_new_tokens into absolute lengths and warned; keep the new-token forms
    if config.max_new_tokens is not None:
        config.max_length = None
    if config.min_new_tokens is not None:
        config.min_length = None
    return stream_aligned_generate(
        model,
        input_ids,
        **aligner_kwargs,
        generation_config=config,
        logits_processor=_added(logits_processor, _config_processors(model, generation_config, input_ids, model_kwargs)),
        stopping_criteria=_added(stopping_criteria, model._get_stopping_criteria(generation_config, StoppingCriteriaList())),
        streamer=StreamerDriver(streamer, prompt_sent=True),
        **model_kwargs,
    )


def _decoding_signature() -> inspect.Signature:
    """``stream_aligned_decoding``'s own parameters, then the aligner keywords of ``generate`` (and ``tokenizer``)
    as keyword-only: transformers routes to a ``custom_generate`` callable the keywords its signature names."""
    own = inspect.signature(stream_aligned_decoding).parameters
    aligned = inspect.signature(stream_aligned_generate).parameters
    names = (*_ALIGNER_KWARGS, "tokenizer")
    extra = [aligned[name].replace(kind=inspect.Parameter.KEYWORD_ONLY) for name in names]
    extra[0] = extra[0].replace(default=None)  # aligner: without it, transformers' sampling loop
    positional = [p for p in own.values() if p.kind is not p.VAR_KEYWORD]
    return inspect.Signature([*positional, *extra, own["kwargs"]])


stream_aligned_decoding.__signature__ = _decoding_signature()  # type: ignore[attr-defined]


def _config_processors(model: Any, config: Any, input_ids: torch.Tensor, model_kwargs: dict[str, Any]) -> list[Any]:
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=None,
        logits_processor=LogitsProcessorList(),
        device=input_ids.device,
        model_kwargs=model_kwargs,
    )


def _added(merged: Any, from_config: Any) -> list[Any]:
    """The items of ``merged`` beyond those ``from_config`` has (by type, in order): what the caller added."""
    left = Counter(type(item) for item in from_config or [])
    added = []
    for item in merged or []:
        if left[type(item)] > 0:
            left[type(item)] -= 1
        else:
            added.append(item)
    return added


def _streamer_of_calling_generate(model: Any) -> Any:
    """The ``streamer`` argument of the transformers ``generate`` call that called this decoding method (it
    ``put`` the prompt, and would leave the streamer unended), or ``None``."""
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_code is generate_code() and frame.f_locals.get("self") is model:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None
