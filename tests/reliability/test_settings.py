"""Settings: every ``GenerationConfig`` field is exact under stream alignment or refused with a clear error, and
``StreamAlignerConfig`` checks its own fields' types where it is read.

The tables live in :mod:`transformers_stream_aligner.generation.fields`; the first test fails when this
``transformers`` has a field none of them places (a new release), so it is noticed.
"""

import json

import pytest
import torch
from transformers import CompileConfig, GenerationConfig, GenerationMixin, WatermarkingConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from transformers_stream_aligner import CONFIG_NAME, StreamAlignerConfig, stream_aligned_generate
from transformers_stream_aligner.generation.fields import (
    EXACT_FIELDS,
    HANDLED_FIELDS,
    METADATA_FIELDS,
    REFUSED_FIELDS,
)

from ..helpers import prompt_ids

TABLES = {"exact": set(EXACT_FIELDS), "handled": set(HANDLED_FIELDS), "refused": set(REFUSED_FIELDS),
          "metadata": set(METADATA_FIELDS)}  # fmt: skip


def identity(question, prefix, last):
    return last


def test_every_generation_config_field_is_placed_exactly_once():
    fields = set(GenerationConfig().to_dict())
    placed = [name for table in TABLES.values() for name in table]
    assert len(placed) == len(set(placed)), "a field is in two tables"
    assert not fields - set(placed), f"GenerationConfig fields nobody placed (a new transformers?): {fields - set(placed)}"
    assert not set(placed) - fields, f"tables name fields GenerationConfig does not have: {set(placed) - fields}"


# A non-default value for every exact field (token ids of the tiny tokenizer: 5..9 are ordinary tokens).
SAMPLING = {"do_sample": True}
EXACT_VALUES = {
    "do_sample": {"do_sample": True},
    "temperature": {**SAMPLING, "temperature": 0.7},
    "top_k": {**SAMPLING, "top_k": 5},
    "top_p": {**SAMPLING, "top_p": 0.8},
    "min_p": {**SAMPLING, "min_p": 0.1},
    "typical_p": {**SAMPLING, "typical_p": 0.9},
    "epsilon_cutoff": {**SAMPLING, "epsilon_cutoff": 3e-4},
    "eta_cutoff": {**SAMPLING, "eta_cutoff": 1e-3},
    "top_h": {**SAMPLING, "top_h": 0.5},
    "repetition_penalty": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size": {"no_repeat_ngram_size": 2},
    "bad_words_ids": {"bad_words_ids": [[16]]},
    "sequence_bias": {"sequence_bias": [[[16], -5.0]]},
    "suppress_tokens": {"suppress_tokens": [16, 23]},
    "renormalize_logits": {"renormalize_logits": True, "repetition_penalty": 1.2},
    "remove_invalid_values": {"remove_invalid_values": True},
    "watermarking_config": {"watermarking_config": WatermarkingConfig(bias=5.0)},
    "forced_bos_token_id": {"forced_bos_token_id": 7},
    "forced_eos_token_id": {"forced_eos_token_id": 2},
    "begin_suppress_tokens": {"begin_suppress_tokens": [323, 16]},
    "bos_token_id": {"bos_token_id": 7},
    "eos_token_id": {"eos_token_id": [2, 16]},
    "pad_token_id": {"pad_token_id": 0},
    "decoder_start_token_id": {"decoder_start_token_id": 7},
    "use_cache": {"use_cache": False},
    "num_return_sequences": {**SAMPLING, "num_return_sequences": 2},
    "return_dict_in_generate": {"return_dict_in_generate": True},
    "length_penalty": {"length_penalty": 2.0},
    "early_stopping": {"early_stopping": True},
    "max_matching_ngram_size": {"max_matching_ngram_size": 3},
    "num_assistant_tokens": {"num_assistant_tokens": 7},
    "num_assistant_tokens_schedule": {"num_assistant_tokens_schedule": "constant"},
    "assistant_confidence_threshold": {"assistant_confidence_threshold": 0.3},
    "assistant_lookbehind": {"assistant_lookbehind": 5},
    "target_lookbehind": {"target_lookbehind": 5},
    "assistant_ensemble_weight": {"assistant_ensemble_weight": 0.5},
    "speculation_type": {"speculation_type": "dflash"},
    "compile_config": {"compile_config": CompileConfig(fullgraph=False)},
    "disable_compile": {"disable_compile": True},
    "prefill_chunk_size": {"prefill_chunk_size": 2},
    "low_memory": {"low_memory": True},
    "continuous_batching_config": {"continuous_batching_config": ContinuousBatchingConfig(page_size=16)},
    # handled fields with a token-comparable effect
    "max_length": {"max_length": 30},
    "stop_strings": {"stop_strings": ["times"]},
    "min_new_tokens": {"min_new_tokens": 30, "eos_token_id": [2, 16]},
    "min_length": {"min_length": 30, "eos_token_id": [2, 16]},
}


def _sequences(out):
    return out.sequences if hasattr(out, "sequences") else out


@pytest.mark.parametrize("name", sorted(EXACT_VALUES))
def test_every_exact_field_gives_the_tokens_of_plain_generate(tiny_llama, name):
    model, tok = tiny_llama
    settings = {**({} if "max_length" in EXACT_VALUES[name] else {"max_new_tokens": 40}), **EXACT_VALUES[name]}
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    torch.manual_seed(0)
    plain = GenerationMixin.generate(model, ids, tokenizer=tok, **settings)
    torch.manual_seed(0)
    aligned = stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, **settings)
    assert torch.equal(_sequences(aligned), _sequences(plain)), name


def test_begin_suppress_tokens_apply_to_the_first_step_only(tiny_llama):
    """The field that used to restart every round (item 5): a token suppressed at the beginning may appear later.

    Every token the answer holds after its first is suppressed "at the beginning": one call never meets them there,
    so its answer is the unsuppressed one; a round that restarted the suppression would change the answer at the
    first step of every later round."""
    model, tok = tiny_llama
    ids = prompt_ids(tok, "The cat is wrong. The dog")
    plain = GenerationMixin.generate(model, ids, max_new_tokens=40, do_sample=False)
    first = plain[0, ids.shape[1]].item()
    later = sorted(set(plain[0, ids.shape[1] + 1 :].tolist()) - {first})
    kwargs = {"max_new_tokens": 40, "do_sample": False, "begin_suppress_tokens": later}
    expected = GenerationMixin.generate(model, ids, **kwargs)
    aligned = stream_aligned_generate(model, ids, aligner=identity, tokenizer=tok, **kwargs)
    assert torch.equal(aligned, expected) and torch.equal(expected, plain)


REFUSED_VALUES = {
    "num_beams": 2, "num_beam_groups": 2, "diversity_penalty": 0.5, "constraints": ["x"], "force_words_ids": [[5]],
    "penalty_alpha": 0.6, "dola_layers": "high", "prompt_lookup_num_tokens": 3, "assistant_early_exit": 1,
    "use_mtp": True, "is_assistant": True, "token_healing": True, "guidance_scale": 1.5, "exponential_decay_length_penalty": (5, 1.5),
    "encoder_repetition_penalty": 1.3, "encoder_no_repeat_ngram_size": 2,
    "output_scores": True, "output_logits": True, "output_attentions": True, "output_hidden_states": True,
}  # fmt: skip


def test_refused_values_cover_the_table():
    assert set(REFUSED_VALUES) == set(REFUSED_FIELDS)


@pytest.mark.parametrize("name", sorted(REFUSED_VALUES))
def test_every_refused_field_is_a_clear_error(tiny_llama, name):
    model, tok = tiny_llama
    config = GenerationConfig(max_new_tokens=10, pad_token_id=0, return_dict_in_generate=name.startswith("output_"))
    setattr(config, name, REFUSED_VALUES[name])  # set directly: some values fail GenerationConfig's own validation
    with pytest.raises(ValueError, match=f"{name}=.* is not supported with an aligner"):
        stream_aligned_generate(model, prompt_ids(tok), aligner=identity, tokenizer=tok, generation_config=config)


def test_a_field_unknown_to_this_version_is_warned_about(tiny_llama, monkeypatch):
    from transformers_stream_aligner.generation import fields as generation_fields

    model, tok = tiny_llama
    monkeypatch.setattr(generation_fields, "_KNOWN", generation_fields._KNOWN - {"top_k"})
    with pytest.warns(UserWarning, match="top_k are not known"):
        stream_aligned_generate(model, prompt_ids(tok), aligner=identity, tokenizer=tok, max_new_tokens=5, top_k=3)


# ------------------------------------------------------------------------ StreamAlignerConfig (item 11)
@pytest.mark.parametrize(
    "field, value",
    [("max_correction_tokens", "256"), ("max_correction_tokens", True), ("do_sample", 1), ("prompt_wrapper", 3),
     ("terminators", ["."]), ("temperature", "hot"), ("copy_draft_tokens", 2.5), ("system_prompt", ["x"]),
     ("reuse_kv_cache", "yes"), ("base_model", 1)],
)  # fmt: skip
def test_config_types_are_checked_where_the_file_is_read(tmp_path, field, value):
    StreamAlignerConfig().save_pretrained(tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data[field] = value
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{CONFIG_NAME}.*StreamAlignerConfig.{field} must be"):
        StreamAlignerConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"StreamAlignerConfig.{field} must be"):
        StreamAlignerConfig(**{field: value})


def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(b'{"system_prompt": "caf\xe9"}')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        StreamAlignerConfig.from_pretrained(tmp_path)
    assert StreamAlignerConfig(temperature=1, top_p=1).temperature == 1  # an int is a valid float
