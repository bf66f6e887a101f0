"""Stream-aligned ``generate``: its arguments become a plan in numbered ``_prepare_*`` steps, the loop runs it.

The data path, one sentence at a time per row (``docs/design.md``)::

    prompt -> upstream round -> boundary -> aligner -> splice -> cache -> streamer

This module turns ``generate``'s arguments into a :class:`~.plan.GenerationPlan` (steps 1-9 of
:func:`stream_aligned_generate`, in the manner of ``transformers``' own ``generate``); :class:`~.loop.AlignmentLoop`
runs the stages on it; :class:`~.engines.TransformersEngine` runs the upstream. It also holds the two ways to
make ``model.generate(..., aligner=...)`` work: :class:`StreamAlignedGenerationMixin` and
:func:`enable_stream_alignment`.

Exactness: with an aligner that returns every sentence unchanged the tokens equal plain ``generate``;
with a rewriting aligner each sentence is exactly what uncached decoding of the corrected text gives.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessorList,
    MaxTimeCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from ..aligners.config import StreamAlignerConfig
from ..aligners.model import CorrectionFn, StreamAligner, as_correction_fn
from ..compat import cache_length, pop_cache
from ..outputs import StreamAlignedGenerateOutput
from ..runtime.cache import (
    cache_can_crop,
    has_sliding_layers,
    make_rollback_cache,
    model_has_sliding_layers,
    prepare_upstream_cache,
)
from ..runtime.engines.transformers_engine import TransformersEngine
from ..runtime.loop import AlignmentLoop
from ..runtime.plan import GenerationPlan
from ..runtime.prompt import question_from_prompt
from ..runtime.streamers import StreamerDriver
from ..tokens import token_id_list
from .fields import ASSISTED_DECODING, check_generation_fields

__all__ = ["StreamAlignedGenerationMixin", "enable_stream_alignment", "stream_aligned_generate"]


# generate() keywords that belong to stream alignment (popped before the stock generate sees them).
_ALIGNER_KWARGS = (
    "aligner",
    "aligner_question",
    "max_sentence_tokens",
    "max_correction_tokens",
    "terminators",
    "invalid_correction",
    "completed_rows",
)


@torch.no_grad()
def stream_aligned_generate(
    model: Any,
    inputs: torch.Tensor | None = None,
    *,
    aligner: Any,
    tokenizer: Any = None,
    aligner_question: str | list[str] | None = None,
    max_sentence_tokens: int | None = None,
    max_correction_tokens: int | None = None,
    terminators: str | None = None,
    invalid_correction: str = "raise",
    completed_rows: str = "draft",
    generation_config: Any = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: Any = None,
    **kwargs: Any,
) -> torch.LongTensor | StreamAlignedGenerateOutput:
    """Generate with sentence-level alignment. ``model.generate(..., aligner=...)`` calls this.

    Works on a batch of any size (left- or right-padded, with ``attention_mask``) and with
    ``num_return_sequences > 1`` when sampling. Each row finds its own sentence ends; rows whose
    sentence is complete wait (drafting ahead, or held: ``completed_rows``) until the others complete
    theirs, then all of them are corrected in one aligner call and the rows continue together. Every
    row gets exactly what it gets alone.

    Args:
        model: the upstream causal LM.
        inputs: prompt ids ``(batch, prompt_len)`` (or pass ``input_ids=``).
        aligner: a :class:`StreamAligner`, an object with ``correct(list[AlignmentRequest])``, or
            ``fn(question, prefix, last) -> str``.
        tokenizer: the upstream tokenizer (default: the one given to :func:`enable_stream_alignment`).
        aligner_question: the question shown to the aligner, one string or one per prompt (default: the
            last user message of a chat prompt, else the decoded prompt).
        max_sentence_tokens: cut a sentence that never ends after this many tokens (default 256, or
            the aligner config's).
        max_correction_tokens: reject corrections longer than this (default 256, or the aligner config's).
        terminators: sentence terminators (default ``.!?…。！？``).
        invalid_correction: what to do when the aligner returns unusable text (not a string, empty, over
            ``max_correction_tokens``, not valid Unicode, or text the upstream tokenizer cannot keep as plain
            text; control-token strings are plain text): ``"raise"`` (default) an
            :class:`AlignerOutputError` naming the row, after applying the other rows' corrections; or
            ``"keep_original"``: keep the sentence as generated, with a warning. An exception raised by
            the aligner itself always propagates as :class:`StreamAlignmentError`. A correction the aligner did
            not finish (:class:`UnfinishedCorrection`: a :class:`StreamAligner` that reached its
            ``max_correction_tokens`` without an EOS) keeps the sentence as generated, with a warning, whatever
            this says: a served answer should not fail because an aligner rambled.
        completed_rows: in a batch, what a row whose sentence is complete does while the other rows
            finish theirs: ``"draft"`` (default) keeps generating its next sentence, which is kept if the
            aligner leaves the finished sentence unchanged and discarded otherwise (never more forwards
            than holding, exact either way); ``"hold"`` pads it until the round ends (the paper's lockstep).
        generation_config, logits_processor, stopping_criteria, **kwargs: as in ``generate``;
            ``max_new_tokens`` bounds each row's final, corrected output. A cache passed as
            ``past_key_values`` is **mutated** (filled, cut back after corrections).
        streamer: at batch size 1 any ``transformers`` streamer: it receives the prompt once, each
            accepted corrected sentence, then ``end()``; with ``put_draft`` it also receives the
            upstream's draft tokens. For batches, a streamer with ``per_row = True`` (e.g.
            ``StreamAlignerIteratorStreamer(tok, per_row=True)``) receives ``put_alignment(record)``
            for each accepted piece (``record.row`` says which row) and ``end_row(row)``.

    Returns:
        ``sequences`` (a ``LongTensor``, rows laid out as ``generate`` does: the prompt as given, the
        generated tokens, right-padding) or, with ``return_dict_in_generate=True``, a
        :class:`StreamAlignedGenerateOutput` with ``sequences``, ``alignment_trace``,
        ``alignment_stats`` and, at batch size 1, ``past_key_values`` (a batch's cache holds masked
        holes and does not match ``sequences``, so it is not returned).

    Raises:
        ValueError: unsupported settings (beam search, assisted decoding, no tokenizer, ...).
        StreamAlignmentError: the aligner failed or returned unusable text; the error says which row
            and carries every row's partial output.
    """
    # ended on every exit path, so a streaming consumer never waits forever
    driver = streamer if isinstance(streamer, StreamerDriver) else StreamerDriver(streamer)
    try:
        # 1. the aligner, its settings and the call's options
        tokenizer = _prepare_tokenizer(model, tokenizer)
        correct, settings = _prepare_aligner(
            aligner, terminators=terminators, max_sentence_tokens=max_sentence_tokens, max_correction_tokens=max_correction_tokens
        )
        _check_choice("invalid_correction", invalid_correction, ("raise", "keep_original"))
        _check_choice("completed_rows", completed_rows, ("draft", "hold"))

        # 2. the prompt tensors and the generation config (validated: what cannot be exact is refused here)
        input_ids, attention_mask = _prepare_inputs(inputs, kwargs)
        length_defaults = _length_defaults(model, generation_config, kwargs)
        config, model_kwargs = _prepare_generation_config(model, generation_config, kwargs)

        # 3. special tokens, resolved once (no per-round warnings)
        eos_token_ids = _prepare_special_tokens(config, tokenizer)
        return_dict = bool(config.return_dict_in_generate)
        config.return_dict_in_generate = False

        # 4. the prompt rows: attention mask, num_return_sequences copies, each row without padding
        prompt_ids, prompt_mask, rows, n_inputs, expand = _prepare_prompt_rows(input_ids, attention_mask, config, eos_token_ids)
        batch = len(rows)

        # 5. the token budgets (warned about as generate does) and the user's stopping criteria (stop strings and
        #    max_time apply per row across rounds)
        max_new_tokens, min_new_tokens = _prepare_lengths(model, config, prompt_ids, length_defaults)
        user_criteria = _prepare_stopping_criteria(config, stopping_criteria, tokenizer)

        # 6. the KV cache kept across rounds, and whether the rows must run one after another
        cache, user_cache, warned_fallback = _prepare_cache(model, config, model_kwargs, prompt_ids, max_new_tokens, expand)
        row_by_row = _prepare_row_by_row(model, cache, batch, user_cache)

        # 7. the streamer, and what user processors see in a batch
        _prepare_streamer(driver, batch)
        _warn_about_batch_processors(config, logits_processor, batch)

        # 8. the question each row answers
        questions = _prepare_questions(aligner_question, tokenizer, rows, n_inputs, expand)

        # 9. the engine and the plan
        engine_factory = functools.partial(
            _transformers_engine,
            model,
            tokenizer=tokenizer,
            generation_config=config,
            model_kwargs=model_kwargs,
            cache=cache,
            new_cache=row_by_row and cache is not None,
            settings=settings,
            eos_token_ids=eos_token_ids,
            min_new_tokens=min_new_tokens,
            logits_processor=list(logits_processor or []),
            stopping_criteria=user_criteria,
            hold_completed=completed_rows == "hold",
            on_draft=driver.on_draft,
            device=prompt_ids.device,
            prefilled=(prompt_ids, prompt_mask) if cache_length(cache) > 0 else None,
            warned_fallback=warned_fallback,
        )
        plan = GenerationPlan(
            tokenizer=tokenizer,
            correct=correct,
            settings=settings,
            prompt_ids=prompt_ids,
            rows=rows,
            questions=questions,
            max_new_tokens=max_new_tokens,
            eos_token_ids=frozenset(eos_token_ids),
            pad_token_id=int(config.pad_token_id),
            invalid_correction=invalid_correction,
            completed_rows=completed_rows,
            streamer=driver,
            engine_factory=engine_factory,
            row_by_row=row_by_row,
            return_dict=return_dict,
        )
        loop = AlignmentLoop(plan)
        cache = loop.run()
    except BaseException as error:  # KeyboardInterrupt too (a no-op if the loop has ended the streamer)
        driver.abort(error)
        raise
    return loop.output(cache)


# ---------------------------------------------------------------------------------------------- the steps
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


# ---------------------------------------------------------------------------------------------- generate(aligner=...)
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
