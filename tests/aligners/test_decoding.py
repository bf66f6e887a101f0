"""Copy-speculative aligner decoding and aligner KV reuse: token-exact against plain greedy ``generate``.

Tiny models run in float64 (no argmax ties); the real SmolLM2 in float32.
"""

import random

import pytest
import torch
from transformers import GenerationMixin

from transformers_stream_aligner import AlignmentRequest, StreamAligner, StreamAlignerConfig, stream_aligned_generate
from transformers_stream_aligner.aligners.copy_draft import CopyBiasLogitsProcessor, CopyTracker, propose_copy_draft
from transformers_stream_aligner.aligners.decoding import AlignerDecoder


def plain_greedy(model, prompt, max_new_tokens, eos):
    """New tokens of stock greedy ``generate`` for one prompt, up to and including the first EOS."""
    out = GenerationMixin.generate(
        model,
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(eos),
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    end = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return out[:end]


def test_propose_copy_draft():
    src = [10, 11, 12, 13, 11, 12, 14, 99]
    assert propose_copy_draft(src, [], 3) == ([10, 11, 12], 0)
    assert propose_copy_draft(src, [7, 10, 11], 3) == ([12, 13, 11], 2)
    # "11 12" occurs twice: the occurrence after the hint wins, so a repeated word does not send it back
    assert propose_copy_draft(src, [5, 11, 12], 2, hint=4) == ([14, 99], 6)
    assert propose_copy_draft(src, [5, 11, 12], 2, hint=0) == ([13, 11], 3)
    assert propose_copy_draft(src, [42], 3) == ([], 0)  # no match: no draft
    assert propose_copy_draft(src, [1, 2], 0) == ([], 0)
    assert propose_copy_draft(src, [99], 3) == ([], 0)  # a match at the very end has nothing after it


def _prompts(tok, n, seed):
    rng = random.Random(seed)
    words = ["The cat is", "A dog was", "My friend seems", "Dr. Smith is", "17*23 ="]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(n)]
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def test_support_is_decided_by_running_the_forward(tiny_llama, monkeypatch):
    """What the forward does, not the names its signature lists: a forward behind ``**kwargs`` that passes everything
    on is supported; one that drops the position ids or the attention mask is not (a token after a masked hole would
    get other logits than without the hole)."""
    model, _ = tiny_llama
    forward = model.forward
    assert AlignerDecoder.unsupported_reason(model) is None
    with monkeypatch.context() as patch:
        patch.setattr(model, "forward", lambda **kwargs: forward(**kwargs))  # no parameter names at all
        assert AlignerDecoder.unsupported_reason(model) is None
    for dropped in ("position_ids", "attention_mask"):
        with monkeypatch.context() as patch:
            patch.setattr(model, "forward", lambda dropped=dropped, **kwargs: forward(**{k: v for k, v in kwargs.items() if k != dropped}))
            assert "does not honour" in AlignerDecoder.unsupported_reason(model), dropped
    with monkeypatch.context() as patch:
        patch.setattr(model, "forward", lambda input_ids, **kwargs: forward(input_ids=input_ids))  # takes no cache
        assert "does not run a masked cache layout" in AlignerDecoder.unsupported_reason(model)


def test_decoder_is_exact_for_any_draft(tiny):
    """Perfect, partly wrong, random and empty drafts; single rows and a batch; cache reused across calls,
    rows reordered, added and dropped; forced compaction. Every output equals plain greedy decoding."""
    model, tok = tiny
    eos = {tok.eos_token_id}
    reason = AlignerDecoder.unsupported_reason(model)
    if "sliding" in model.config.model_type or getattr(model.config, "sliding_window", None):
        assert reason is not None and "sliding" in reason
        with pytest.raises(ValueError, match="sliding"):
            AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
        return
    assert reason is None
    decoder = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id, num_draft_tokens=8, compact_slack=0)
    rng = random.Random(0)
    prompts = _prompts(tok, 6, seed=1)
    max_new = 24
    expected = [plain_greedy(model, p, max_new, eos) for p in prompts]

    def drafts_for(kind, exp):
        if kind == "perfect":
            return list(exp)
        if kind == "wrong":
            d = list(exp)
            if d:
                d[len(d) // 2] = (d[len(d) // 2] + 1) % len(tok)
            return d
        if kind == "random":
            return [rng.randrange(len(tok)) for _ in range(10)]
        return []

    for kind in ("perfect", "wrong", "random", "empty"):
        for p, exp in zip(prompts, expected, strict=True):
            assert decoder.generate([p], sources=[drafts_for(kind, exp)], max_new_tokens=max_new)[0] == exp, kind
    # Perfect drafts with the prompt already cached: at most 8 draft tokens per forward.
    decoder.generate([prompts[0]], sources=[expected[0]], max_new_tokens=max_new)
    assert decoder.stats.forwards_last_call <= -(-len(expected[0]) // 9) + 1
    # Batches: reordered, grown, shrunk, with mixed drafts.
    for order in ([0, 1, 2], [2, 0, 1, 3, 4], [4, 1], [5, 3, 0, 2, 1, 4]):
        kinds = [rng.choice(["perfect", "wrong", "random", "empty"]) for _ in order]
        outs = decoder.generate(
            [prompts[i] for i in order],
            sources=[drafts_for(k, expected[i]) for k, i in zip(kinds, order, strict=True)],
            max_new_tokens=max_new,
        )
        assert outs == [expected[i] for i in order], (order, kinds)
    assert decoder.stats.reused_tokens > 0
    assert decoder.stats.accepted_tokens > 0
    assert decoder.stats.compactions > 0
    assert decoder.stats.row_drops > 0  # rows that finished early left the forwards of the others


def test_finished_rows_leave_the_batch_and_the_cache_still_serves_the_next_call(tiny_llama):
    """A batch where one row decodes far longer than the others: once most rows are done the rest decode on a copy of
    their cache rows; outputs equal the decoder without it and plain greedy decoding, and the next call (grown
    prompts) still reuses every row's cache."""
    model, tok = tiny_llama
    eos = {tok(" is", add_special_tokens=False).input_ids[-1]}  # an "EOS" the tiny model writes at ragged places
    prompts = _prompts(tok, 6, seed=3)
    expected = [plain_greedy(model, p, 30, eos) for p in prompts]
    assert sorted(len(e) for e in expected)[:3] == [5, 7, 8] and max(len(e) for e in expected) == 30
    dropping = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    riding = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id, drop_finished_rows=False)
    for decoder in (dropping, riding):
        assert decoder.generate(prompts, sources=[[]] * 6, max_new_tokens=30) == expected
    assert dropping.stats.row_drops > 0 and riding.stats.row_drops == 0
    assert dropping.stats.fed_tokens == riding.stats.fed_tokens and dropping.stats.forwards == riding.stats.forwards
    grown = [p + o[:-1] + p[:3] for p, o in zip(prompts, expected, strict=True)]
    before = dropping.stats.reused_tokens
    assert dropping.generate(grown, sources=[[]] * 6, max_new_tokens=8) == [plain_greedy(model, g, 8, eos) for g in grown]
    assert dropping.stats.reused_tokens - before >= sum(len(p) for p in prompts)  # every row's prompt was still cached


def test_decoder_growing_prompts_reuse_the_cache(tiny_llama):
    """Prompts that grow by a piece each call (as stream alignment asks): only the new part is fed."""
    model, tok = tiny_llama
    eos = {tok.eos_token_id}
    decoder = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    text = "The cat is"
    for step in range(5):
        prompt = tok(text, add_special_tokens=False).input_ids
        before = decoder.stats.reused_tokens
        out = decoder.generate([prompt], sources=[[]], max_new_tokens=12)[0]
        assert out == plain_greedy(model, prompt, 12, eos)
        if step:
            assert decoder.stats.reused_tokens - before >= len(prompt) - 12  # all but the new piece
        text += " " + tok.decode(out, skip_special_tokens=True).strip() + " A dog was"
    assert decoder.stats.reused_tokens > decoder.stats.prompt_tokens / 2


def test_decoder_max_new_tokens_and_eos_inside_a_draft(tiny_llama):
    model, tok = tiny_llama
    eos = {tok.eos_token_id}
    decoder = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    prompt = tok("My friend seems", add_special_tokens=False).input_ids
    full = plain_greedy(model, prompt, 40, eos)
    for limit in (1, 2, 5, len(full)):
        assert decoder.generate([prompt], sources=[full + [7, 7, 7]], max_new_tokens=limit)[0] == full[:limit]
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate([prompt], sources=[[]], max_new_tokens=0)
    with pytest.raises(ValueError, match="sources"):
        decoder.generate([prompt], sources=[], max_new_tokens=3)


def test_stream_aligner_fast_path_equals_generate_path(tiny):
    """``StreamAligner.correct`` with copy speculation + KV reuse gives what plain batched ``generate``
    gives, over a sequence of sentences whose prefix grows, for every tiny architecture (the sliding-window
    one falls back to ``generate``)."""
    model, tok = tiny
    fast = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=20))
    slow = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=20, copy_draft_tokens=0, reuse_kv_cache=False))
    assert slow._fast_decoder() is None
    sentences = ["The cat is very good.", "A dog was 3.5 times larger!", "17*23 = 381.", "Dr. Smith is ready now."]
    prefix = ""
    for s in sentences:
        reqs = [AlignmentRequest("What is it?", prefix, s), AlignmentRequest("Why?", "", s)]
        assert fast.correct(reqs) == slow.correct(reqs)
        prefix = (prefix + " " + s).strip()
    sliding = getattr(model.config, "sliding_window", None) is not None
    assert (fast.decoding_stats is None) == sliding


def test_stream_aligned_generate_with_fast_aligner_equals_plain_aligner(tiny_llama):
    """End to end: stream-aligned generation with the tiny model as its own aligner, fast vs plain decoding."""
    model, tok = tiny_llama
    ids = tok("The cat is", return_tensors="pt").input_ids
    outs = []
    for cfg in (
        StreamAlignerConfig(max_correction_tokens=16),
        StreamAlignerConfig(max_correction_tokens=16, copy_draft_tokens=0, reuse_kv_cache=False),
    ):
        out = stream_aligned_generate(
            model, ids, aligner=StreamAligner(model, tok, cfg), tokenizer=tok, max_new_tokens=60, do_sample=False,
            invalid_correction="keep_original", return_dict_in_generate=True,
        )  # fmt: skip
        outs.append(out)
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    assert outs[0].alignment_trace == outs[1].alignment_trace
    assert outs[0].alignment_stats.sentences_aligned >= 2


def test_sampling_and_processors_fall_back_to_generate(tiny_llama):
    model, tok = tiny_llama
    assert StreamAligner(model, tok, StreamAlignerConfig(do_sample=True))._fast_decoder() is None
    config = model.generation_config
    old = config.repetition_penalty
    try:
        config.repetition_penalty = 1.3
        assert not AlignerDecoder.greedy_is_argmax(config)
        assert StreamAligner(model, tok)._fast_decoder() is None
    finally:
        config.repetition_penalty = old
    assert AlignerDecoder.greedy_is_argmax(config)


@pytest.mark.smollm2
def test_smollm2_copy_costs_one_forward_and_matches_generate(smollm2):
    """The real model: a copy is checked in one forward; outputs equal plain ``generate`` (float32)."""
    model, tok = smollm2
    aligner = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=48))
    plain = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=48, copy_draft_tokens=0, reuse_kv_cache=False))
    answer = ["Photosynthesis turns light into chemical energy.", "It happens in the chloroplasts.", "17*23 = 381."]
    prefix = ""
    for sentence in answer:
        req = AlignmentRequest("How does photosynthesis work?", prefix, sentence)
        assert aligner.correct([req]) == plain.correct([req])
        prefix = (prefix + " " + sentence).strip()
    # Draft = what greedy decoding writes: the prompt is cached and the output is accepted in one forward.
    decoder = aligner._fast_decoder()
    prompt = aligner.config.encode_prompt(tok, question="Q?", prefix="", last="It is green.")
    expected = plain_greedy(model, prompt, 30, set(aligner._eos_token_ids))
    decoder.generate([prompt], sources=[[]], max_new_tokens=30)
    assert decoder.generate([prompt], sources=[expected], max_new_tokens=30)[0] == expected
    assert decoder.stats.forwards_last_call == 1
    assert decoder.stats.reused_tokens >= len(prompt) - 1


# ---------------------------------------------------------------------------------------------- copy bias
def test_copy_tracker_peek_equals_pushing_one_token_at_a_time():
    """``peek`` (used by the decoder on a draft) and ``push`` + ``next_token`` (used by the logits processor one step
    at a time) give the same copy token at every position, repeated words included."""
    rng = random.Random(0)
    for _ in range(200):
        source = [rng.randrange(6) for _ in range(rng.randint(0, 12))]
        path = [rng.choice(source + [7]) if source and rng.random() < 0.9 else rng.randrange(8) for _ in range(rng.randint(0, 15))]
        split = rng.randint(0, len(path))
        tracker, fresh = CopyTracker(source), CopyTracker(source)  # fresh: never peeked, every step computed anew
        for token in path[:split]:
            tracker.push(token)
            fresh.push(token)
        peeked = tracker.peek(path[split:])
        stepped, walked = [], []
        for token in path[split:]:
            stepped.append(fresh.next_token())
            fresh.push(token)
            walked.append(tracker.next_token())  # the peeked tracker walks its kept steps
            tracker.push(token)
        stepped.append(fresh.next_token())
        walked.append(tracker.next_token())
        assert peeked == stepped == walked, (source, path, split)
        assert (tracker.output, tracker.hint) == (fresh.output, fresh.hint)
    # A copy of the source follows it to the end, through repeats.
    tracker = CopyTracker([4, 5, 4, 5, 6, 0])
    assert tracker.peek([4, 5, 4, 5, 6]) == [4, 5, 4, 5, 6, 0]


def biased_greedy(model, prompt, source, bias, max_new_tokens, eos):
    """Stock greedy ``generate`` with the copy bias as a logits processor (the reference for the decoder)."""
    from transformers import LogitsProcessorList

    processor = CopyBiasLogitsProcessor([source], bias, prompt_length=len(prompt))
    out = GenerationMixin.generate(
        model, torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(eos), pad_token_id=0,
        logits_processor=LogitsProcessorList([processor]),
    )[0, len(prompt) :].tolist()  # fmt: skip
    end = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return out[:end]


def test_decoder_with_copy_bias_equals_generate_with_the_processor(tiny):
    """For every tiny architecture the decoder supports: with a copy bias, single rows and batches (drafts, KV reuse,
    dropped rows), the decoder's tokens are those of stock ``generate`` with :class:`CopyBiasLogitsProcessor`; the bias
    changes outputs (the test can fail), and a huge one makes every output the source, EOS included."""
    model, tok = tiny
    if AlignerDecoder.unsupported_reason(model) is not None:
        pytest.skip("the decoder does not run this architecture (the aligner uses generate + the processor)")
    eos = {tok.eos_token_id}
    prompts = _prompts(tok, 5, seed=3)
    max_new = 20
    plain = [plain_greedy(model, p, max_new, eos) for p in prompts]
    rng = random.Random(1)
    # Sources: the plain output with a token changed (a copy the model disagrees with) and unrelated text.
    sources = []
    for out in plain:
        src = [t for t in out if t not in eos][:12] or [5, 6, 7]
        src[rng.randrange(len(src))] = rng.randrange(10, len(tok))
        sources.append(src + [tok.eos_token_id])
    sources[-1] = tok("A dog was 3.5 times larger!", add_special_tokens=False).input_ids + [tok.eos_token_id]
    changed = 0
    for bias in (0.5, 2.0, 6.0):
        expected = [biased_greedy(model, p, s, bias, max_new, eos) for p, s in zip(prompts, sources, strict=True)]
        changed += sum(e != p for e, p in zip(expected, plain, strict=True))
        decoder = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id, num_draft_tokens=6, copy_bias=bias)
        for p, s, e in zip(prompts, sources, expected, strict=True):
            assert decoder.generate([p], sources=[s], max_new_tokens=max_new)[0] == e, bias
        for order in ([0, 1, 2, 3, 4], [3, 1], [4, 2, 0]):
            outs = decoder.generate([prompts[i] for i in order], sources=[sources[i] for i in order], max_new_tokens=max_new)
            assert outs == [expected[i] for i in order], (bias, order)
    assert changed > 0  # the bias did something
    decoder = AlignerDecoder(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id, copy_bias=1e4)
    for p, s in zip(prompts, sources, strict=True):
        assert decoder.generate([p], sources=[s], max_new_tokens=max_new)[0] == s
        assert biased_greedy(model, p, s, 1e4, max_new, eos) == s


def test_stream_aligner_copy_bias_fast_path_equals_generate_path(tiny):
    """``StreamAligner.correct`` with ``copy_bias``: the fast decoder and the stock ``generate`` (batched, left-padded,
    with the processor) give the same corrections; with a huge bias every sentence is kept as written."""
    model, tok = tiny
    cfg = {"max_correction_tokens": 20, "copy_bias": 3.0}
    fast = StreamAligner(model, tok, StreamAlignerConfig(**cfg))
    slow = StreamAligner(model, tok, StreamAlignerConfig(**cfg, copy_draft_tokens=0, reuse_kv_cache=False))
    unbiased = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=20))
    keep_all = StreamAligner(model, tok, StreamAlignerConfig(max_correction_tokens=40, copy_bias=1e4))
    sentences = ["The cat is very good.", "A dog was 3.5 times larger!", "17*23 = 381.", "Dr. Smith is ready now."]
    prefix, differs = "", 0
    for s in sentences:
        reqs = [AlignmentRequest("What is it?", prefix, s), AlignmentRequest("Why?", "", s)]
        out = fast.correct(reqs)
        assert out == slow.correct(reqs)
        differs += out != unbiased.correct(reqs)
        assert keep_all.correct(reqs) == [s, s]
        prefix = (prefix + " " + s).strip()
    assert differs > 0


def test_copy_bias_is_validated_and_saved(tmp_path):
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="copy_bias"):
            StreamAlignerConfig(copy_bias=bad)
    StreamAlignerConfig(copy_bias=2.5).save_pretrained(tmp_path)
    assert StreamAlignerConfig.from_pretrained(tmp_path).copy_bias == 2.5
