"""Stream-aligned ``generate``: the loop that ties the pieces together.

Data path, one sentence at a time (see ``docs/design.md``):

1. **upstream round** – the stock ``GenerationMixin.generate`` runs on the full sequence with our KV
   cache, stopped by :class:`SentenceBoundaryCriteria` once the sentence is complete (plus look-ahead);
2. **boundary** – :func:`find_token_boundary` gives the token index where the sentence ends;
3. **aligner** – the sentence (whitespace stripped) goes to the aligner with the question and the
   corrected answer so far;
4. **splice** – unchanged: nothing to do, the look-ahead is kept. Changed: the correction (plus the
   original whitespace) is tokenized as plain text and replaces the sentence and its look-ahead;
5. **cache** – cut back to the longest common prefix of old and new ids; the next round feeds only
   the rest. Caches that cannot be cut are re-filled from scratch (one warning per call);
6. **streamer** – receives the prompt once, then each accepted (corrected) sentence, then ``end()``.

Exactness: with an aligner that returns every sentence unchanged the tokens equal plain ``generate``;
with a rewriting aligner each sentence is exactly what uncached decoding of the corrected text gives.
"""

from __future__ import annotations

import copy
import inspect
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import GenerationMixin, LogitsProcessorList, StaticCache, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .aligner import AlignmentRequest, StreamAligner, as_correction_fn
from .boundary import decode_span, find_token_boundary
from .cache import (
    cache_can_crop,
    crop_cache_to,
    has_sliding_layers,
    make_rollback_cache,
    prepare_user_cache,
    trim_cache,
)
from .logits_process import HoldCompletedRowsLogitsProcessor
from .prompt import question_from_prompt
from .sentence_splitter import DEFAULT_TERMINATORS, split_whitespace
from .splice import longest_common_prefix, special_token_ids, tokenize_plain_text
from .stopping_criteria import SentenceBoundaryCriteria

__all__ = [
    "AlignerOutputError",
    "AlignmentRecord",
    "StreamAlignedGenerateOutput",
    "StreamAlignedGenerationMixin",
    "StreamAlignmentError",
    "enable_stream_alignment",
    "stream_aligned_generate",
]

_ALIGNER_KWARGS = (
    "aligner",
    "aligner_question",
    "max_sentence_tokens",
    "max_correction_tokens",
    "terminators",
    "invalid_correction",
)
_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
DEFAULT_MAX_CORRECTION_TOKENS = 256
DEFAULT_MAX_SENTENCE_TOKENS = 256


@dataclass
class AlignmentRecord:
    """One aligned piece of a row's answer.

    Attributes:
        start: index in ``sequences[row]`` where the piece begins.
        original_ids: the tokens the upstream generated for it.
        corrected_ids: the tokens that stand at ``start`` in the output.
        original_text: the decoded original (surrounding whitespace included).
        corrected_text: the decoded correction (same whitespace re-attached).
        aligned: whether the aligner was asked (``False`` for pieces without text, e.g. a lone EOS).

    The records of a row tile its generated part in order; they are pass-through (``original_ids ==
    corrected_ids``) when the aligner left the sentence unchanged.
    """

    start: int
    original_ids: list[int]
    corrected_ids: list[int]
    original_text: str
    corrected_text: str
    aligned: bool = True

    @property
    def changed(self) -> bool:
        return self.original_ids != self.corrected_ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StreamAlignedGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` plus ``alignment_trace``: one list of :class:`AlignmentRecord` per row."""

    alignment_trace: list[list[AlignmentRecord]] | None = None


class StreamAlignmentError(RuntimeError):
    """Stream alignment stopped; nothing generated so far is lost.

    Attributes:
        sequences: the prompt plus every accepted sentence, plus the draft sentence being aligned,
            as a ``(1, n)`` tensor.
        alignment_trace: the records accepted so far (one list per row).
        partial_text: the generated part of ``sequences`` decoded without special tokens.
        sentence: the sentence being aligned when it failed.
    """

    def __init__(
        self,
        message: str,
        *,
        sequences: torch.Tensor,
        alignment_trace: list[list[AlignmentRecord]],
        partial_text: str,
        sentence: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sequences = sequences
        self.alignment_trace = alignment_trace
        self.partial_text = partial_text
        self.sentence = sentence


class AlignerOutputError(StreamAlignmentError, ValueError):
    """The aligner returned something unusable (not a string, empty, too long)."""


@dataclass
class _Settings:
    terminators: str = DEFAULT_TERMINATORS
    max_sentence_tokens: int = DEFAULT_MAX_SENTENCE_TOKENS
    max_correction_tokens: int = DEFAULT_MAX_CORRECTION_TOKENS
    eos_ids: frozenset[int] = field(default_factory=frozenset)


class _DraftForwarder:
    """Inner-round streamer: forwards draft tokens to ``streamer.put_draft`` (skips the round's prompt)."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:
            self.first = False
            return
        self.target.put_draft(value)

    def end(self) -> None:
        pass


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _settings_from(aligner: Any, overrides: dict[str, Any]) -> _Settings:
    settings = _Settings()
    config = getattr(aligner, "config", None) if isinstance(aligner, StreamAligner) else None
    if config is not None:
        settings.terminators = config.terminators
        settings.max_sentence_tokens = config.max_sentence_tokens
        settings.max_correction_tokens = config.max_correction_tokens
    for key in ("terminators", "max_sentence_tokens", "max_correction_tokens"):
        if overrides.get(key) is not None:
            setattr(settings, key, overrides[key])
    if settings.max_sentence_tokens < 2:
        raise ValueError(f"max_sentence_tokens must be >= 2, got {settings.max_sentence_tokens}")
    if settings.max_correction_tokens < 1:
        raise ValueError(f"max_correction_tokens must be >= 1, got {settings.max_correction_tokens}")
    return settings


def _validate_generation(config: Any, model_kwargs: dict[str, Any], batch_size: int) -> None:
    if getattr(config, "num_beams", 1) and config.num_beams > 1:
        raise ValueError(
            f"stream alignment does not support beam search (num_beams={config.num_beams}): a correction "
            "replaces the text every beam was scored on. Use greedy decoding or sampling."
        )
    if model_kwargs.get("assistant_model") is not None or getattr(config, "prompt_lookup_num_tokens", None):
        raise ValueError(
            "stream alignment does not support assisted decoding (assistant_model / prompt_lookup_num_tokens) "
            "for the upstream model"
        )
    if model_kwargs.get("custom_generate") is not None:
        raise ValueError("stream alignment cannot be combined with custom_generate")
    for name in _UNSUPPORTED_OUTPUTS:
        if getattr(config, name, False):
            raise ValueError(
                f"{name}=True is not supported with an aligner: per-step outputs of replaced sentences would "
                "no longer match the returned sequences"
            )
    if (getattr(config, "min_new_tokens", None) or 0) > 0 or (getattr(config, "min_length", None) or 0) > 0:
        raise ValueError("min_new_tokens / min_length are not supported with an aligner")
    if batch_size != 1 or (getattr(config, "num_return_sequences", 1) or 1) > 1:
        raise ValueError(
            f"stream-aligned generation currently runs one sequence at a time (got batch size {batch_size}, "
            f"num_return_sequences={getattr(config, 'num_return_sequences', 1)}); loop over the prompts"
        )
    if "inputs_embeds" in model_kwargs:
        raise ValueError("stream alignment needs input_ids (inputs_embeds is not supported)")


def _budget(config: Any, prompt_len: int) -> int:
    if config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    if config.max_length is not None:
        budget = int(config.max_length) - prompt_len
        if budget <= 0:
            raise ValueError(f"max_length={config.max_length} leaves no room after a prompt of {prompt_len} tokens")
        return budget
    return 20  # transformers' default max_length


@torch.no_grad()
def stream_aligned_generate(
    model: Any,
    inputs: torch.Tensor | None = None,
    *,
    aligner: Any,
    tokenizer: Any = None,
    aligner_question: str | None = None,
    max_sentence_tokens: int | None = None,
    max_correction_tokens: int | None = None,
    terminators: str | None = None,
    invalid_correction: str = "raise",
    generation_config: Any = None,
    logits_processor: LogitsProcessorList | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: Any = None,
    **kwargs: Any,
) -> torch.LongTensor | StreamAlignedGenerateOutput:
    """Generate with sentence-level alignment. ``model.generate(..., aligner=...)`` calls this.

    Args:
        model: the upstream causal LM.
        inputs: prompt ids ``(1, prompt_len)`` (or pass ``input_ids=``).
        aligner: a :class:`StreamAligner`, an object with ``correct(list[AlignmentRequest])``, or
            ``fn(question, prefix, last) -> str``.
        tokenizer: the upstream tokenizer (default: the one given to :func:`enable_stream_alignment`).
        aligner_question: the question shown to the aligner (default: the last user message of a chat
            prompt, else the decoded prompt).
        max_sentence_tokens: cut a sentence that never ends after this many tokens (default 256, or
            the aligner config's).
        max_correction_tokens: reject corrections longer than this (default 256, or the aligner config's).
        terminators: sentence terminators (default ``.!?…。！？``).
        invalid_correction: what to do when the aligner returns unusable text (not a string, empty, over
            ``max_correction_tokens``, or text that would become control tokens): ``"raise"`` (default) an
            :class:`AlignerOutputError`, or ``"keep_original"``: keep the sentence as generated, with a warning.
            An exception raised by the aligner itself always propagates as :class:`StreamAlignmentError`.
        generation_config, logits_processor, stopping_criteria, **kwargs: as in ``generate``;
            ``max_new_tokens`` bounds the final, corrected output. A cache passed as ``past_key_values``
            is **mutated** (filled, cut back after corrections) and returned in the output.
        streamer: receives the prompt once, each accepted corrected sentence, then ``end()`` once. If it
            has ``put_draft``, it also receives the upstream's draft tokens as they are generated.

    Returns:
        ``sequences`` (a ``LongTensor``) or, with ``return_dict_in_generate=True``, a
        :class:`StreamAlignedGenerateOutput` with ``sequences``, ``past_key_values`` and ``alignment_trace``.

    Raises:
        ValueError: unsupported settings (beam search, assisted decoding, no tokenizer, ...).
        StreamAlignmentError: the aligner failed or returned unusable text; the error carries the
            partial output.
    """
    if tokenizer is None:
        tokenizer = getattr(model, "_stream_aligner_tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "stream-aligned generation needs the upstream tokenizer: pass tokenizer=... to generate() "
            "or enable_stream_alignment(model, tokenizer)"
        )
    correct = as_correction_fn(aligner)
    if invalid_correction not in ("raise", "keep_original"):
        raise ValueError(f"invalid_correction must be 'raise' or 'keep_original', got {invalid_correction!r}")
    settings = _settings_from(
        aligner,
        {
            "terminators": terminators,
            "max_sentence_tokens": max_sentence_tokens,
            "max_correction_tokens": max_correction_tokens,
        },
    )

    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("stream-aligned generation needs a prompt (input_ids)")
    if input_ids.dim() == 1:
        input_ids = input_ids[None, :]
    attention_mask = kwargs.pop("attention_mask", None)

    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    model_kwargs = config.update(**kwargs)
    _validate_generation(config, model_kwargs, input_ids.shape[0])

    eos_ids = _as_list(config.eos_token_id) or _as_list(getattr(tokenizer, "eos_token_id", None))
    settings.eos_ids = frozenset(eos_ids)
    if config.pad_token_id is None:
        config.pad_token_id = eos_ids[0] if eos_ids else getattr(tokenizer, "pad_token_id", None)
    if config.pad_token_id is None:
        raise ValueError("the upstream needs a pad_token_id or an eos_token_id")
    if eos_ids and config.eos_token_id is None:
        config.eos_token_id = eos_ids
    return_dict = bool(config.return_dict_in_generate)
    config.return_dict_in_generate = False

    prompt_len = input_ids.shape[1]
    budget = _budget(config, prompt_len)
    config.max_length = None

    # The KV cache we keep across rounds.
    use_cache = config.use_cache if config.use_cache is not None else True
    cache = model_kwargs.pop("past_key_values", None)
    static = config.cache_implementation == "static" or isinstance(cache, StaticCache)
    warned_fallback = False
    if use_cache:
        if cache is None and static:
            cache = StaticCache(config=model.config, max_cache_len=prompt_len + budget + 1)
            config.cache_implementation = None
        elif cache is None:
            if config.cache_implementation not in (None, "dynamic"):
                raise ValueError(
                    f"cache_implementation={config.cache_implementation!r} is not supported with an aligner; "
                    "use the default dynamic cache or 'static'"
                )
            cache = make_rollback_cache(model)
        else:
            prepare_user_cache(cache)
    else:
        cache = None
    if cache is not None and static:
        warnings.warn(
            "stream alignment: a StaticCache cannot be cut back; after each correction the whole sequence is "
            "re-prefilled (exact, but slower). Use the default dynamic cache for speed.",
            UserWarning,
            stacklevel=3,
        )
        warned_fallback = True

    question = aligner_question
    if question is None:
        question = question_from_prompt(tokenizer, input_ids[0].tolist())

    device = input_ids.device
    prompt_mask = attention_mask[:, :prompt_len] if attention_mask is not None else None
    ids: list[int] = input_ids[0].tolist()
    records: list[AlignmentRecord] = []
    special_ids = special_token_ids(tokenizer)

    if streamer is not None:
        streamer.put(input_ids.cpu())

    criteria = SentenceBoundaryCriteria(
        tokenizer,
        [prompt_len],
        terminators=settings.terminators,
        max_sentence_tokens=settings.max_sentence_tokens,
        eos_token_id=eos_ids,
    )
    hold = HoldCompletedRowsLogitsProcessor(criteria, config.pad_token_id)
    user_processors = list(logits_processor or [])
    user_criteria = list(stopping_criteria or [])
    draft = _DraftForwarder(streamer) if streamer is not None and hasattr(streamer, "put_draft") else None

    def fail(message: str, cls: type[StreamAlignmentError], sentence: str | None) -> StreamAlignmentError:
        return cls(
            message,
            sequences=torch.tensor([ids], dtype=torch.long, device=device),
            alignment_trace=[list(records)],
            partial_text=tokenizer.decode(ids[prompt_len:], skip_special_tokens=True),
            sentence=sentence,
        )

    def emit(record: AlignmentRecord) -> None:
        records.append(record)
        if streamer is not None:
            if hasattr(streamer, "put_alignment"):
                streamer.put_alignment(record)
            if record.corrected_ids:
                streamer.put(torch.tensor(record.corrected_ids, dtype=torch.long))

    start = prompt_len
    user_stopped = False
    round_cut: int | None = None  # sentence end found by the criterion in the last round
    while True:
        eos_pos = next((i for i in range(start, len(ids)) if ids[i] in settings.eos_ids), None)
        region_end = eos_pos if eos_pos is not None else len(ids)
        budget_left = budget - (len(ids) - prompt_len)
        final = eos_pos is not None or budget_left <= 0 or user_stopped

        if start >= region_end and eos_pos is not None:
            tail = ids[eos_pos:]
            emit(AlignmentRecord(eos_pos, tail, list(tail), "", "", aligned=False))
            break
        if start >= region_end and final:
            break

        if round_cut is not None:
            cut, round_cut = round_cut, None  # the criterion already found it: do not decode again
        else:
            cut = find_token_boundary(
                tokenizer,
                ids,
                start,
                region_end,
                final=final,
                terminators=settings.terminators,
                max_sentence_tokens=settings.max_sentence_tokens,
            )
        if cut is None:
            # ---- upstream round: generate until the sentence (and its look-ahead) is complete.
            if cache is not None and cache.get_seq_length() >= len(ids):
                # Only a user cache pre-filled with the whole prompt: generate needs >= 1 uncached token.
                crop_cache_to(cache, len(ids) - 1)
            criteria.reset([start])
            round_ids = torch.tensor([ids], dtype=torch.long, device=device)
            round_mask = None
            if prompt_mask is not None:
                round_mask = torch.cat(
                    [prompt_mask, torch.ones((1, len(ids) - prompt_len), dtype=prompt_mask.dtype, device=device)],
                    dim=1,
                )
            round_config = copy.copy(config)
            round_config.max_new_tokens = budget_left
            if draft is not None:
                draft.first = True
            out = GenerationMixin.generate(
                model,
                round_ids,
                attention_mask=round_mask,
                generation_config=round_config,
                logits_processor=LogitsProcessorList([*user_processors, hold]),
                stopping_criteria=StoppingCriteriaList([*user_criteria, criteria]),
                past_key_values=cache,
                streamer=draft,
                tokenizer=tokenizer,
                **model_kwargs,
            )
            new_ids = out[0].tolist()
            produced = len(new_ids) - len(ids)
            ids = new_ids
            round_cut = criteria.cuts[0]
            if not criteria.done[0] and produced < budget_left:
                user_stopped = True  # a user stopping criterion ended the round: align what there is, stop
            continue

        # ---- the sentence ids[start:cut] is complete: ask the aligner.
        original_ids = ids[start:cut]
        original_text = decode_span(tokenizer, ids, start, cut)
        lead, content, trail = split_whitespace(original_text)
        if not content:
            emit(AlignmentRecord(start, original_ids, list(original_ids), original_text, original_text, aligned=False))
            start = cut
            continue
        prefix = tokenizer.decode(ids[prompt_len:start], skip_special_tokens=True).strip()
        request = AlignmentRequest(question=question, prefix=prefix, last=content)
        try:
            answers = correct([request])
        except Exception as err:
            raise fail(
                f"the aligner raised {type(err).__name__} on sentence {content!r}: {err}", StreamAlignmentError, content
            ) from err
        if not isinstance(answers, (list, tuple)) or len(answers) != 1:
            raise fail(
                f"the aligner must return one correction per request; got {answers!r} for sentence {content!r}",
                AlignerOutputError,
                content,
            )
        corrected, problem, corrected_ids = answers[0], None, None
        if not isinstance(corrected, str):
            problem = f"the aligner returned {type(corrected).__name__}, not str, for sentence {content!r}"
        elif not corrected.strip():
            problem = f"the aligner returned empty text for sentence {content!r}"
        else:
            corrected = corrected.strip()
            if corrected != content:
                corrected_text = lead + corrected + trail
                try:
                    corrected_ids = tokenize_plain_text(tokenizer, corrected_text)
                except ValueError as err:
                    problem = f"the aligner's correction of sentence {content!r} is unusable: {err}"
                else:
                    n_tokens = len(corrected_ids) - len(tokenize_plain_text(tokenizer, lead + trail))
                    if n_tokens > settings.max_correction_tokens:
                        problem = (
                            f"the aligner's correction of sentence {content!r} has {n_tokens} tokens, over "
                            f"max_correction_tokens={settings.max_correction_tokens}: {corrected[:200]!r}"
                        )
        if problem is not None:
            if invalid_correction == "raise":
                raise fail(problem, AlignerOutputError, content)
            warnings.warn(problem + "; keeping the original sentence", UserWarning, stacklevel=3)
            corrected = content

        if corrected == content:
            # ---- unchanged: keep the tokens, the look-ahead and the cache as they are.
            emit(AlignmentRecord(start, original_ids, list(original_ids), original_text, original_text))
            if cache is not None and has_sliding_layers(cache) and cache.get_seq_length() <= cut and cache_can_crop(cache):
                trim_cache(cache)
            start = cut
            continue

        # ---- splice: the correction's ids replace the sentence; cut the cache to the common prefix.
        assert corrected_ids is not None and not special_ids.intersection(corrected_ids)
        common = longest_common_prefix(original_ids, corrected_ids)
        ids = ids[:start] + corrected_ids
        room = prompt_len + budget - len(ids)
        if room < 0:  # the correction overruns max_new_tokens: keep what fits, then stop
            corrected_ids = corrected_ids[: len(corrected_ids) + room]
            ids = ids[: prompt_len + budget]
        if cache is not None:
            keep = min(start + common, len(ids) - 1)
            if cache_can_crop(cache):
                try:
                    crop_cache_to(cache, keep)
                except (RuntimeError, ValueError):
                    cache.reset()
            else:
                if not warned_fallback:
                    warnings.warn(
                        f"stream alignment: {type(cache).__name__} cannot be cut back; re-prefilling after "
                        "each correction (exact, but slower)",
                        UserWarning,
                        stacklevel=3,
                    )
                    warned_fallback = True
                cache.reset()
        shown_text = decode_span(tokenizer, ids, start, len(ids))
        emit(AlignmentRecord(start, original_ids, list(corrected_ids), original_text, shown_text))
        start = len(ids)

    sequences = torch.tensor([ids], dtype=torch.long, device=device)
    if streamer is not None:
        streamer.end()
    if not return_dict:
        return sequences
    return StreamAlignedGenerateOutput(sequences=sequences, past_key_values=cache, alignment_trace=[records])


def _pop_aligner_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in _ALIGNER_KWARGS if k in kwargs}


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
        aligner_kwargs = _pop_aligner_kwargs(kwargs)
        aligner = aligner_kwargs.pop("aligner", None)
        if aligner is None:
            if aligner_kwargs:
                raise ValueError(f"{sorted(aligner_kwargs)} only apply together with aligner=...")
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        return _dispatch(self, args, kwargs, aligner, aligner_kwargs)


def _dispatch(model: Any, args: tuple, kwargs: dict[str, Any], aligner: Any, aligner_kwargs: dict[str, Any]) -> Any:
    if args:
        if len(args) > 1:
            raise ValueError("pass generate() arguments other than the prompt by keyword when using an aligner")
        kwargs["inputs"] = args[0]
    if "inputs" in kwargs and kwargs["inputs"] is None:
        kwargs.pop("inputs")
    for name in ("tokenizer",):
        if name in kwargs and kwargs[name] is None:
            kwargs.pop(name)
    return stream_aligned_generate(model, aligner=aligner, **aligner_kwargs, **kwargs)


def enable_stream_alignment(model: Any, tokenizer: Any = None) -> Any:
    """Patch ``model`` (this instance only) so that ``model.generate(..., aligner=...)`` works.

    ``tokenizer`` (the upstream's) is remembered for calls that do not pass one, e.g. from
    ``pipeline("text-generation")``. Returns the same model. Calling it twice is harmless.

    Example:

        >>> from transformers_stream_aligner import enable_stream_alignment
        >>> model = enable_stream_alignment(model, tokenizer)  # doctest: +SKIP
        >>> model.generate(ids, aligner=lambda q, prefix, last: last, max_new_tokens=50)  # doctest: +SKIP
    """
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"enable_stream_alignment needs a transformers generative model, got {type(model).__name__}")
    if tokenizer is not None:
        model._stream_aligner_tokenizer = tokenizer
    if getattr(model, "_stream_alignment_enabled", False):
        return model
    original: Callable[..., Any] = model.generate

    @torch.no_grad()
    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        aligner_kwargs = _pop_aligner_kwargs(kwargs)
        aligner = aligner_kwargs.pop("aligner", None)
        if aligner is None:
            if aligner_kwargs:
                raise ValueError(f"{sorted(aligner_kwargs)} only apply together with aligner=...")
            return original(*args, **kwargs)
        return _dispatch(self, args, kwargs, aligner, aligner_kwargs)

    generate.__doc__ = stream_aligned_generate.__doc__
    generate.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
    model.generate = types.MethodType(generate, model)
    model._stream_alignment_enabled = True
    return model
