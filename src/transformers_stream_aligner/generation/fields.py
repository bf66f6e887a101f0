"""Which ``GenerationConfig`` fields stream alignment honours, field by field.

Stream-aligned ``generate`` runs the stock ``generate`` once per sentence (a *round*), from the corrected text. A
field is honoured **exactly** when, with an aligner that returns every sentence unchanged, the tokens are those of
one plain ``generate()`` call; ``tests/reliability/test_settings.py`` checks every field of this table against
``GenerationConfig``, so a field added by a future ``transformers`` release fails the test until it is placed.

* :data:`EXACT_FIELDS`: passed to every round as they are (per-step processors and warpers, special tokens,
  sampling, compilation, ...), with what makes them exact.
* :data:`HANDLED_FIELDS`: applied by stream alignment itself (token budget, stopping, outputs, cache), with how.
* :data:`REFUSED_FIELDS`: the values that leave the field off, and why it cannot be exact; set to anything else,
  :func:`check_generation_fields` raises ``ValueError``.
* :data:`METADATA_FIELDS`: bookkeeping, no effect on tokens.

Example:

    >>> from transformers import GenerationConfig
    >>> check_generation_fields(GenerationConfig(guidance_scale=1.5))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: guidance_scale=1.5 is not supported with an aligner: classifier-free guidance keeps its own ...
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

__all__ = [
    "ASSISTED_DECODING",
    "EXACT_FIELDS",
    "HANDLED_FIELDS",
    "METADATA_FIELDS",
    "REFUSED_FIELDS",
    "check_generation_fields",
]

_PER_STEP = "a per-step processor that reads only the tokens so far, so every round applies it as one call would"
_WARPER = "a sampling warper of each step's scores"
_ASSISTED_ONLY = "used by assisted decoding only, which is refused (prompt_lookup_num_tokens, assistant_model)"
_BEAM_ONLY = "used by beam search only, which is refused (num_beams > 1)"
_PERFORMANCE = "how the forward runs, not which tokens it gives"

#: Fields passed to every round unchanged, and why that is exact.
EXACT_FIELDS: dict[str, str] = {
    "do_sample": "greedy or sampling per step (sampling draws the same random numbers per token as one call)",
    "temperature": _WARPER,
    "top_k": _WARPER,
    "top_p": _WARPER,
    "min_p": _WARPER,
    "typical_p": _WARPER,
    "epsilon_cutoff": _WARPER,
    "eta_cutoff": _WARPER,
    "top_h": _WARPER,
    "repetition_penalty": _PER_STEP + " (in a batch: warned, it sees the padded layout)",
    "no_repeat_ngram_size": _PER_STEP + " (in a batch: warned, it sees the padded layout)",
    "bad_words_ids": _PER_STEP,
    "sequence_bias": _PER_STEP,
    "suppress_tokens": _PER_STEP,
    "renormalize_logits": _PER_STEP,
    "remove_invalid_values": _PER_STEP,
    "watermarking_config": _PER_STEP + " (the watermark hashes the previous tokens)",
    "forced_bos_token_id": "forces a token at absolute position 1, which only the first round can reach",
    "forced_eos_token_id": "forces EOS at the last position of the token budget; every round ends at the same budget",
    "begin_suppress_tokens": "applied to the first round only (where one call's first step is)",
    "bos_token_id": "a special token id",
    "eos_token_id": "ends the row (every round stops at it); also the aligner stage's end of answer",
    "pad_token_id": "pads the batch layout",
    "decoder_start_token_id": "encoder-decoder models only (the upstream is a causal LM)",
    "use_cache": "False decodes without a cache: the same tokens, more forwards",
    "num_return_sequences": "copies of each prompt as rows (with do_sample, as generate requires)",
    "return_dict_in_generate": "returns StreamAlignedGenerateOutput",
    "length_penalty": _BEAM_ONLY,
    "early_stopping": _BEAM_ONLY,
    "max_matching_ngram_size": _ASSISTED_ONLY,
    "num_assistant_tokens": _ASSISTED_ONLY,
    "num_assistant_tokens_schedule": _ASSISTED_ONLY,
    "assistant_confidence_threshold": _ASSISTED_ONLY,
    "assistant_lookbehind": _ASSISTED_ONLY,
    "target_lookbehind": _ASSISTED_ONLY,
    "assistant_ensemble_weight": _ASSISTED_ONLY,
    "speculation_type": _ASSISTED_ONLY,
    "compile_config": _PERFORMANCE,
    "disable_compile": _PERFORMANCE,
    "prefill_chunk_size": _PERFORMANCE,
    "low_memory": _PERFORMANCE + " (contrastive search only)",
    "continuous_batching_config": "read by generate_batch / continuous batching only, not by generate()",
}

#: Fields stream alignment applies itself, and how.
HANDLED_FIELDS: dict[str, str] = {
    "max_new_tokens": "bounds each row's final, corrected output",
    "max_length": "turned into max_new_tokens from the prompt's length",
    "max_time": "a budget per row across rounds (time, so not token-comparable)",
    "stop_strings": "checked across rounds, on the corrected text",
    "cache_implementation": "None, 'dynamic' or 'static' (one row); others are refused",
    "cache_config": "with the cache of cache_implementation",
    "max_cache_len": "the size of a static cache",
    "min_new_tokens": "EOS is held back until the row's corrected output has this many tokens, counted across rounds "
                      "(a correction that shortens the answer below it lets the upstream continue, as one call would "
                      "from the corrected text)",
    "min_length": "turned into min_new_tokens from the prompt's (padded) length, as generate does",
}

_RESTARTS = "stream alignment restarts generate() at every sentence, so it cannot be exact"
_BEAMS = ("stream alignment does not support beam search (a correction replaces the text every beam was scored on); "
          "use greedy decoding or sampling")  # fmt: skip
#: Why assisted decoding of the upstream is refused (also for ``assistant_model=``, which is not a config field).
ASSISTED_DECODING = "stream alignment does not support assisted decoding of the upstream model (assistant_model, " \
    "prompt_lookup_num_tokens, self-speculation, multi-token prediction)"  # fmt: skip
_OUTPUTS = "per-step outputs of replaced sentences would no longer match the returned sequences"

#: Fields refused when set: (the values that leave them off, why).
REFUSED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "num_beams": ((None, 1), _BEAMS),
    "num_beam_groups": ((None, 1), _BEAMS),
    "diversity_penalty": ((None, 0.0), _BEAMS),
    "constraints": ((None, []), _BEAMS),
    "force_words_ids": ((None, []), _BEAMS),
    "penalty_alpha": ((None, 0, 0.0), "contrastive search compares each candidate with the hidden states of the "
                      "text so far, which a correction replaces"),
    "dola_layers": ((None,), "DoLa decoding is a different decoding loop, which stream alignment does not drive"),
    "prompt_lookup_num_tokens": ((None, 0), ASSISTED_DECODING),
    "assistant_early_exit": ((None,), ASSISTED_DECODING),
    "use_mtp": ((None, False), ASSISTED_DECODING),
    "is_assistant": ((None, False), "it makes the upstream a draft model of assisted decoding (it stops on its own "
                     "confidence), which stream alignment does not drive"),
    "token_healing": ((None, False), "token healing rewrites the end of the prompt, and every round's prompt ends "
                      "with the answer so far: " + _RESTARTS),
    "guidance_scale": ((None, 1, 1.0), "classifier-free guidance keeps its own unconditional pass that starts with "
                       "each generate() call: " + _RESTARTS),
    "exponential_decay_length_penalty": ((None,), "the penalty counts tokens from where generate() started: "
                                         + _RESTARTS),
    "encoder_repetition_penalty": ((None, 1, 1.0), "the penalty reads the prompt of each generate() call, which "
                                   "holds the answer so far after the first sentence: " + _RESTARTS),
    "encoder_no_repeat_ngram_size": ((None, 0), "it needs an encoder-decoder model (the upstream is a causal LM)"),
    "output_scores": ((None, False), _OUTPUTS),
    "output_logits": ((None, False), _OUTPUTS),
    "output_attentions": ((None, False), _OUTPUTS),
    "output_hidden_states": ((None, False), _OUTPUTS),
}

#: Bookkeeping fields.
METADATA_FIELDS = frozenset({"_from_model_config", "transformers_version"})

_KNOWN = set(EXACT_FIELDS) | set(HANDLED_FIELDS) | set(REFUSED_FIELDS) | METADATA_FIELDS


def check_generation_fields(config: Any) -> None:
    """Raise ``ValueError`` for a field of :data:`REFUSED_FIELDS` that is set; warn about fields of
    ``GenerationConfig`` this version does not know (added by a newer ``transformers``) that are set away from
    their defaults. Does not mutate ``config``."""
    for name, (off, why) in REFUSED_FIELDS.items():
        value = getattr(config, name, None)
        if value is not None and value not in off:
            raise ValueError(f"{name}={value!r} is not supported with an aligner: {why}")
    unknown = sorted(name for name in config.to_diff_dict() if name in _config_fields() and name not in _KNOWN)
    if unknown:
        warnings.warn(
            f"generation setting(s) {', '.join(unknown)} are not known to transformers-stream-aligner (a newer "
            "transformers?): they are passed to every sentence's round, whose exactness is not verified",
            UserWarning,
            stacklevel=4,
        )


@functools.cache
def _config_fields() -> frozenset[str]:
    """The fields of this ``transformers``' ``GenerationConfig``."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict())
