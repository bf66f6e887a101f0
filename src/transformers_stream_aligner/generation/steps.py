"""The numbered steps of :func:`~.generate.stream_aligned_generate` (and of
:func:`~.completion.stream_aligned_completion`), each turning some of the call's arguments into a part of the
:class:`~..runtime.plan.GenerationPlan`, with ``generate``'s own rules, warnings and errors (as ``transformers``'
``generate`` has its ``_prepare_*`` methods).
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import threading
import warnings
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    MaxTimeCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from ..aligners.config import StreamAlignerConfig
from ..aligners.model import CorrectionFn, StreamAligner, as_correction_fn
from ..compat import pop_cache
from ..runtime.cache import (
    cache_can_crop,
    has_sliding_layers,
    make_rollback_cache,
    model_has_sliding_layers,
    prepare_upstream_cache,
)
from ..runtime.engines.transformers_engine import TransformersEngine
from ..runtime.prompt import question_from_prompt
from ..runtime.streamers import StreamerDriver
from ..tokens import token_id_list
from .fields import ASSISTED_DECODING, check_generation_fields


def _prepare_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The upstream tokenizer: the one passed, else the calling ``pipeline``'s, else the one given to
    :func:`enable_stream_alignment`, else the model's own (``AutoTokenizer.from_pretrained(model.name_or_path)``,
    as ``pipeline`` loads it, once per path)."""
    if tokenizer is not None:
        return tokenizer
    tokenizer = _calling_pipeline_tokenizer()
    if tokenizer is None:
        tokenizer = getattr(model, "_stream_aligner_tokenizer", None)
    if tokenizer is None:
        tokenizer = _model_tokenizer(getattr(model, "name_or_path", None))
    if tokenizer is None:
        raise ValueError(
            "stream-aligned generation needs the upstream tokenizer: pass tokenizer=... to generate() "
            "or enable_stream_alignment(model, tokenizer) (the model has no name_or_path to load its own from)"
        )
    return tokenizer


def _calling_pipeline_tokenizer(depth: int = 40) -> Any:
    """The tokenizer of the ``transformers`` pipeline this call runs in, if any: a pipeline calls
    ``model.generate`` without one, although it encoded the prompt with its own."""
    from transformers import Pipeline

    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(owner, Pipeline):
            return owner.tokenizer
        frame = frame.f_back
    return None


_MODEL_TOKENIZERS: dict[str, Any] = {}
_MODEL_TOKENIZERS_LOCK = threading.Lock()


def _model_tokenizer(name_or_path: Any) -> Any:
    if not isinstance(name_or_path, str) or not name_or_path:
        return None
    from transformers import AutoTokenizer

    with _MODEL_TOKENIZERS_LOCK:
        if name_or_path not in _MODEL_TOKENIZERS:
            try:
                _MODEL_TOKENIZERS[name_or_path] = AutoTokenizer.from_pretrained(name_or_path)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"stream-aligned generation needs the upstream tokenizer: none was passed and the model's own "
                    f"({name_or_path!r}) cannot be loaded ({err}); pass tokenizer=... to generate() or "
                    "enable_stream_alignment(model, tokenizer)"
                ) from err
        return _MODEL_TOKENIZERS[name_or_path]


def _prepare_aligner(aligner: Any, **overrides: Any) -> tuple[CorrectionFn, StreamAlignerConfig]:
    """The aligner as a correction function, and the sentence settings: the aligner's config (or the defaults of
    :class:`StreamAlignerConfig`, their one home) with the call's overrides (validated by the config)."""
    correct = as_correction_fn(aligner)
    config = getattr(aligner, "config", None) if isinstance(aligner, StreamAligner) else None
    settings = config if isinstance(config, StreamAlignerConfig) else StreamAlignerConfig()
    given = {name: value for name, value in overrides.items() if value is not None}
    return correct, dataclasses.replace(settings, **given) if given else settings


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be " + " or ".join(repr(c) for c in choices) + f", got {value!r}")


def _prepare_inputs(inputs: torch.Tensor | None, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(input_ids, attention_mask)`` as 2D tensors (popped from ``kwargs``, which is **mutated**)."""
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("stream-aligned generation needs a prompt (input_ids)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None, :]
    attention_mask = kwargs.pop("attention_mask", None)
    if attention_mask is not None and attention_mask.dim() == 1:
        attention_mask = attention_mask[None, :]
    return input_ids, attention_mask


def _prepare_generation_config(model: Any, generation_config: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A copy of the generation config with ``kwargs`` applied, and the keywords that are not config fields.
    Refuses what stream alignment cannot do exactly."""
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    model_kwargs = config.update(**kwargs)
    check_generation_fields(config)  # every field: honoured exactly, applied here, or refused
    if model_kwargs.get("assistant_model") is not None:
        raise ValueError(f"assistant_model is not supported with an aligner: {ASSISTED_DECODING}")
    if model_kwargs.get("custom_generate") is not None:
        raise ValueError("stream alignment cannot be combined with custom_generate")
    if (getattr(config, "num_return_sequences", 1) or 1) > 1 and not config.do_sample:
        raise ValueError(
            f"num_return_sequences={config.num_return_sequences} needs do_sample=True: greedy decoding would "
            "return identical sequences"
        )
    if "inputs_embeds" in model_kwargs:
        raise ValueError("stream alignment needs input_ids (inputs_embeds is not supported)")
    return config, model_kwargs


def _prepare_special_tokens(config: Any, tokenizer: Any) -> list[int]:
    """The upstream's EOS ids (the generation config's, else the tokenizer's); sets ``pad_token_id`` and
    ``eos_token_id`` on ``config`` (**mutated**) when they are missing."""
    eos_ids = token_id_list(config.eos_token_id) or token_id_list(getattr(tokenizer, "eos_token_id", None))
    if config.pad_token_id is None:
        config.pad_token_id = eos_ids[0] if eos_ids else getattr(tokenizer, "pad_token_id", None)
    if config.pad_token_id is None:
        raise ValueError("the upstream needs a pad_token_id or an eos_token_id")
    if eos_ids and config.eos_token_id is None:
        config.eos_token_id = eos_ids
    return eos_ids


def _prepare_prompt_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: Any, eos_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], int, int]:
    """The prompt ids and mask with ``num_return_sequences`` copies of each row, each row's real tokens, the number
    of prompts given and the copies of each. Sets ``config.num_return_sequences`` to 1 (**mutated**)."""
    pad_id = int(config.pad_token_id)
    if attention_mask is None:
        if input_ids.shape[0] > 1 and pad_id not in eos_ids and bool((input_ids == pad_id).any()):
            mask = (input_ids != pad_id).long()  # inferred from padding, as generate does
        else:
            mask = torch.ones_like(input_ids)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; "
                "they must match"
            )
        if attention_mask.dim() != 2 or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must be a 2D mask of 0s and 1s")
        mask = attention_mask.long()
    n_inputs = input_ids.shape[0]
    expand = int(config.num_return_sequences or 1)
    config.num_return_sequences = 1
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        mask = mask.repeat_interleave(expand, dim=0)
    empty = [r for r in range(input_ids.shape[0]) if not bool(mask[r].any())]
    if empty:
        raise ValueError(f"row(s) {empty} of the batch have no prompt tokens (their attention_mask is all 0)")
    rows = [
        [t for t, m in zip(row, m_row, strict=True) if m] for row, m_row in zip(input_ids.tolist(), mask.tolist(), strict=True)
    ]
    return input_ids, mask, rows, n_inputs, expand


def _length_defaults(model: Any, generation_config: Any, kwargs: dict[str, Any]) -> tuple[bool, bool]:
    """Whether ``max_length`` and ``min_length`` are left at transformers' defaults (set nowhere: not in the call,
    not in its ``generation_config``, not in the model's), read before the config is built, as ``generate`` does."""

    def unset(name: str) -> bool:
        return (
            kwargs.get(name) is None
            and (generation_config is None or getattr(generation_config, name, None) is None)
            and getattr(model.generation_config, name, None) is None
        )

    return unset("max_length"), unset("min_length")


def _prepare_lengths(model: Any, config: Any, prompt_ids: torch.Tensor, defaults: tuple[bool, bool]) -> tuple[int, int]:
    """Each row's budget of generated tokens and its minimum, computed, warned about and checked by ``generate``'s own
    steps (``_prepare_generated_length``, ``_validate_generated_length``: ``max_length``/``min_length`` count the
    prompt's padded width; with no maximum set, 20 new tokens capped by ``max_position_embeddings``). The budget bounds
    the corrected output; the minimum holds EOS back across rounds. The four length fields of ``config`` are cleared
    (**mutated**): rounds get their own."""
    default_max, default_min = defaults
    width = prompt_ids.shape[1]
    # generate fills what is set nowhere from its global defaults (max_length 20, min_length 0) before these steps
    global_defaults = GenerationConfig._get_default_generation_params()
    for name in ("max_length", "min_length"):
        if getattr(config, name) is None:
            setattr(config, name, global_defaults[name])
    model._prepare_generated_length(
        generation_config=config,
        has_default_max_length=default_max,
        has_default_min_length=default_min,
        model_input_name="input_ids",
        input_ids_length=width,
        inputs_tensor=prompt_ids,
    )
    model._validate_generated_length(config, width, default_max)
    budget, minimum = int(config.max_length) - width, max(int(config.min_length or 0) - width, 0)
    config.max_length = config.max_new_tokens = config.min_new_tokens = config.min_length = None
    return budget, minimum


def _prepare_stopping_criteria(config: Any, stopping_criteria: StoppingCriteriaList | None, tokenizer: Any) -> list[Any]:
    """The user's criteria, with ``stop_strings`` and ``max_time`` moved out of ``config`` (**mutated**) into them:
    they apply per row across rounds."""
    criteria = list(stopping_criteria or [])
    if config.stop_strings:
        criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        config.stop_strings = None
    if config.max_time is not None:
        criteria.append(MaxTimeCriteria(config.max_time))
        config.max_time = None
    return criteria


def _prepare_cache(
    model: Any, config: Any, model_kwargs: dict[str, Any], prompt_ids: torch.Tensor, max_new_tokens: int, expand: int
) -> tuple[Any, bool, bool]:
    """The KV cache kept across rounds, chosen by the cache stage (:func:`~.cache.prepare_upstream_cache`) from
    ``cache`` / ``past_key_values`` (popped from ``model_kwargs``, **mutated**; :func:`~.compat.pop_cache`) and
    ``config`` (its ``cache_implementation`` is cleared once we hold the cache). Returns ``(cache, the user gave it,
    whether it was warned about)``: a static cache that cannot be cut back is warned about here, once per call."""
    batch, width = prompt_ids.shape
    given = pop_cache(model_kwargs)
    user_cache = given is not None
    cache, static = prepare_upstream_cache(
        model,
        given,
        use_cache=config.use_cache is not False,
        implementation=config.cache_implementation,
        batch_size=batch,
        prompt_length=width,
        max_cache_len=width + max_new_tokens + 1,
        copies=expand,
    )
    if cache is not None:
        config.cache_implementation = None
    warned = static and not cache_can_crop(cache)  # static layers crop from transformers 5.24 on
    if warned:
        warnings.warn(
            "stream alignment: this StaticCache cannot be cut back; after each correction the whole sequence is "
            "re-prefilled (exact, but slower). Use the default dynamic cache for speed.",
            UserWarning,
            stacklevel=4,
        )
    return cache, user_cache, warned


def _prepare_row_by_row(model: Any, cache: Any, batch: int, user_cache: bool) -> bool:
    """Whether the rows run one after another: a batch on a sliding-window model (masked holes would shift the
    window), each row then with its own cache. Warns when so."""
    if batch == 1 or not (has_sliding_layers(cache) if cache is not None else model_has_sliding_layers(model)):
        return False
    if user_cache:
        raise ValueError(
            "a batch on a sliding-window model is aligned one row at a time, which cannot use one "
            "past_key_values for all rows: do not pass past_key_values"
        )
    warnings.warn(
        f"{type(model).__name__} has sliding-window attention: batched stream alignment runs the {batch} "
        "rows one after another (exact, but without batching speed-ups)",
        UserWarning,
        stacklevel=4,
    )
    return True


def _prepare_streamer(driver: StreamerDriver, batch: int) -> None:
    """Check that the streamer can follow ``batch`` rows."""
    if driver.streamer is not None and batch > 1 and not driver.per_row:
        raise ValueError(
            f"streamer {type(driver.streamer).__name__} shows one sequence, but the batch has {batch} rows: use "
            "StreamAlignerIteratorStreamer(tokenizer, per_row=True) for batches"
        )


def _warn_about_batch_processors(config: Any, logits_processor: Any, batch: int) -> None:
    if batch > 1 and ((config.repetition_penalty or 1.0) != 1.0 or (config.no_repeat_ngram_size or 0) > 0 or logits_processor):
        warnings.warn(
            "in a batch, logits processors see the batch's padded layout: masked columns (padding, held steps and "
            "replaced sentences) are in input_ids, and rows that finished are held, then leave the batch. repetition_penalty, "
            "no_repeat_ngram_size and custom processors that read input_ids can therefore differ from running "
            "each row alone",
            UserWarning,
            stacklevel=4,
        )


def _prepare_questions(aligner_question: Any, tokenizer: Any, rows: list[list[int]], n_inputs: int, expand: int) -> list[str]:
    if aligner_question is None:
        return [question_from_prompt(tokenizer, ids) for ids in rows]
    if isinstance(aligner_question, str):
        return [aligner_question] * len(rows)
    questions = list(aligner_question)
    if len(questions) != n_inputs or not all(isinstance(q, str) for q in questions):
        raise ValueError(
            f"aligner_question must be a string or a list of {n_inputs} strings (one per prompt), got {aligner_question!r}"
        )
    return [q for q in questions for _ in range(expand)]


def _transformers_engine(
    model: Any, rows: list[Any], stats: Any, *, cache: Any, new_cache: bool, settings: StreamAlignerConfig, **options: Any
) -> TransformersEngine:
    """An engine for ``rows``: on the call's cache, or with ``new_cache`` (each row of a row-by-row batch) on a new one."""
    if new_cache:
        cache = make_rollback_cache(model)
    return TransformersEngine(
        model,
        rows,
        cache=cache,
        stats=stats,
        terminators=settings.terminators,
        max_sentence_tokens=settings.max_sentence_tokens,
        **options,
    )
