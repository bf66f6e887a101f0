"""Stream-aligned ``generate``: its arguments become a plan in numbered ``_prepare_*`` steps, the loop runs it.

The data path, one sentence at a time per row (``docs/design.md``)::

    prompt -> upstream round -> boundary -> aligner -> splice -> cache -> streamer

This module turns ``generate``'s arguments into a :class:`~..runtime.plan.GenerationPlan` (steps 1-9 of
:func:`stream_aligned_generate`, in the manner of ``transformers``' own ``generate``; the steps: :mod:`.steps`);
:class:`~..runtime.loop.AlignmentLoop` runs the stages on it; :class:`~..runtime.engines.transformers_engine.TransformersEngine`
runs the upstream. The two ways to make ``model.generate(..., aligner=...)`` work are :mod:`.mixin`'s.

Exactness: with an aligner that returns every sentence unchanged the tokens equal plain ``generate``;
with a rewriting aligner each sentence is exactly what uncached decoding of the corrected text gives.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    StoppingCriteriaList,
)

from ..compat import cache_length
from ..outputs import StreamAlignedGenerateOutput
from ..runtime.loop import AlignmentLoop
from ..runtime.plan import GenerationPlan
from ..runtime.streamers import StreamerDriver
from .steps import (
    _check_choice,
    _length_defaults,
    _prepare_aligner,
    _prepare_cache,
    _prepare_generation_config,
    _prepare_inputs,
    _prepare_lengths,
    _prepare_prompt_rows,
    _prepare_questions,
    _prepare_row_by_row,
    _prepare_special_tokens,
    _prepare_stopping_criteria,
    _prepare_streamer,
    _prepare_tokenizer,
    _transformers_engine,
    _warn_about_batch_processors,
)

__all__ = ["stream_aligned_generate"]


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
        max_sentence_tokens: cut a sentence that never ends after this many tokens, at the first boundary
            between two characters from there on (default 256, or the aligner config's).
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
